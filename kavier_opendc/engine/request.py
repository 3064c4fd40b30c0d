"""The engine's request records (Vidur's entities): a request in flight, and sibling samples sharing a prompt.

A :class:`Req` exists from arrival to completion only; what outlives it is
written into :class:`kavier_opendc.engine.results.Results`.
"""

from __future__ import annotations

#: a request's life: queued, computing its prompt (or recomputing after preemption), decoding, finished
WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class Req:
    """A request inside the engine (exists from arrival to completion only).

    A request of ``prompt`` tokens that has generated ``gen`` tokens holds
    prompt + gen tokens, of which ``computed`` have KV. While decoding, those
    two are stored lazily against the replica's decode counter G (see
    decode_state.py): computed = c_off + G, gen = g_off + G.
    """

    __slots__ = (
        "idx",
        "arrival",
        "prompt",
        "out",
        "gen",
        "computed",
        "c_off",
        "g_off",
        "ver",
        "state",
        "first_sched",
        "first_token",
        "preempt",
        "cached",
        "uids",
        "usizes",
        "held",
        "held_blocks",
        "n",
        "fork",
        "act",
        "ex0",
        "eg0",
        "eq0",
        "last_tok",
        "itl_s0",
    )

    def __init__(self, idx: int, arrival: float, prompt: int, out: int):
        self.idx, self.arrival, self.prompt, self.out = idx, arrival, prompt, out
        self.gen = 0
        self.computed = 0
        self.c_off = self.g_off = 0
        self.ver = 0  # bumped whenever the request leaves the decoders: stale heap entries skip
        self.state = WAITING
        self.first_sched = -1.0
        self.first_token = -1.0
        self.preempt = 0
        self.cached = 0
        self.uids: list | None = None  # prefix-cache unit identities of the prompt (loaded at admission)
        self.usizes: list | None = None
        self.held = 0  # leading units referenced in the prefix cache
        self.held_blocks = 0
        self.n = 1  # samples of this prompt (branching, DP3)
        self.fork: Fork | None = None  # Fork shared with its sibling samples, while they share prompt blocks
        # energy attribution (engine/energy.py): busy time (utilisation x s) attributed so far, and the
        # decode state's counters when it last started decoding (its decode share is their difference)
        self.act = 0.0
        self.ex0 = self.eg0 = self.eq0 = 0.0
        self.last_tok = -1.0  # time of the latest token delivered (inter-token gaps, engine/itl.py)
        self.itl_s0 = 0  # the decode state's segment log length when this request last joined the decoders


class Fork:
    """Sibling samples of one prompt sharing its full prompt blocks (and the parent's cached units)."""

    __slots__ = ("alive", "shared", "units")

    def __init__(self, shared: int, units: list):
        self.alive = 1  # members still holding the shared blocks
        self.shared = shared  # full prompt blocks, held once for all members
        self.units = units  # prefix-cache units among them (released when the last member leaves)
