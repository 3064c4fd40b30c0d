"""What a scheduler forms at an iteration boundary: one iteration, or a run of identical decode iterations.

The replica holds one of these as its ``pending`` work and applies it when it
ends (replica.py). Plain ``__slots__`` classes: one is made per scheduling
decision, so they stay as cheap as the tuples they replace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from kavier_opendc.engine.cost_model import DecodeRun
    from kavier_opendc.engine.request import Req


class Iteration:
    """One forward pass: decoders that advance, prefill chunks, and the pass's work (for power)."""

    __slots__ = (
        "t0",
        "all_decoders",
        "skipped",
        "chunks",
        "flops",
        "weight_bytes",
        "kv_bytes",
        "batch",
        "prefill_tokens",
        "decode_tokens",
    )
    is_decode_run: Literal[False] = False

    def __init__(
        self,
        t0: float,
        all_decoders: bool,
        skipped: list[Req],
        chunks: list[tuple[Req, int]],
        flops: float,
        weight_bytes: float,
        kv_bytes: float,
        batch: int,
        prefill_tokens: int,
        decode_tokens: int,
    ):
        self.t0 = t0
        self.all_decoders = all_decoders  # every decoder takes a token (the decode counter advances)
        self.skipped = skipped  # decoders left out (token budget), which stay where they are
        self.chunks = chunks  # (request, new tokens) of each prompt chunk
        self.flops = flops
        self.weight_bytes = weight_bytes  # weights read (HBM)
        self.kv_bytes = kv_bytes  # KV cache read and written (HBM)
        self.batch = batch  # sequences in the pass
        self.prefill_tokens = prefill_tokens
        self.decode_tokens = decode_tokens


class DecodeRunPlan:
    """``n`` consecutive decode-only iterations of the same decoders, advanced in closed form."""

    __slots__ = ("t0", "n", "run", "allocated")
    is_decode_run: Literal[True] = True

    def __init__(self, t0: float, n: int, run: DecodeRun, allocated: int):
        self.t0 = t0
        self.n = n
        self.run = run  # closed-form times and work (cost_model.DecodeRun)
        self.allocated = allocated  # blocks allocated when the run was scheduled (its first iteration's)
