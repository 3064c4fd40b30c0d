"""The event loop of disaggregated prefill/decode serving (DistServe, Splitwise): two pools and a KV link.

Flow of a request (the topology and the link model are in kv_link.py):

1. It arrives and is routed to the prefill replica with the fewest prompt
   tokens routed to it and not yet prefilled (ties: lowest index).
2. The prefill replica runs it as a one-token request (vLLM v1 scheduling,
   chunked prefill, prefix caching): its first token is sampled there, so
   TTFT ends with the prefill. It keeps the request's KV blocks.
3. Its KV moves to the decode replica with the most free blocks (then the
   fewest outstanding requests) among those that could ever hold the whole
   request, across all decode pools (ties: lowest index, i.e. earlier pool);
   with ``decode_routing`` free-slots, to the one with the most free slots
   (``max_num_seqs`` less the requests it holds: running, landed and in
   flight), then the most free blocks, among those with room for its KV now.
   It uses the link of the (prefill pool, decode pool) pair: its own when
   declared, else the one shared link. The decode replica takes the blocks
   of the prompt's KV when the
   transfer starts; when no candidate has them free, the request waits, in
   FIFO order, until one has (``decode_wait_s``): a receiver never
   over-commits. A decode replica inside a fast-forwarded decode run offers
   what a stepping replica has free at that instant (the blocks of the
   iteration running then are taken); when the run would take some of the
   blocks received before it ends, it is cut to end with that iteration. So
   fast runs place requests exactly as ``--exact`` does.
4. When the last byte lands, the prefill replica frees the blocks and the
   request joins the decode replica's next iteration as a decoder, its
   prompt's KV computed and its first token generated, if fewer than the
   replica's ``max_num_seqs`` sequences run then (vLLM's KV consumer, SGLang's
   decode server): otherwise it waits in the replica's FIFO of landed
   requests, its blocks held, until a sequence finishes. The time from the
   first boundary that could not take it to the one that did is added to its
   ``decode_wait_s`` (``PDRecord.slot_wait`` keeps that part alone).

Decode replicas never prefill, with one documented exception: a decoder
preempted for lack of blocks is recomputed there (prompt plus the tokens it
generated), as vLLM's recompute preemption does; prefill replicas never
decode (a request of one output token finishes on its prefill replica,
without a transfer). Events at one time: arrivals, then transfers landing,
then replica boundaries, so a request landing at a boundary joins it.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.kv_link import Disaggregation, KVLink
from kavier_opendc.engine.kv_manager import blocks_for
from kavier_opendc.engine.replica import Replica
from kavier_opendc.engine.request import DONE, Req
from kavier_opendc.engine.results import Results


class PrefillReplica(Replica):
    """A replica of the prefill pool: requests end at their first token, and keep their KV blocks until
    the transfer to a decode replica completes (``handoffs`` collects them for the event loop)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.handoffs: list[Req] = []  # prefilled at the latest boundary, for the event loop to move
        self.queued_prompt_tokens = 0  # prompt tokens routed here and not yet prefilled (the router's key)
        self.held = 0  # requests prefilled whose KV has not left yet

    def _finish(self, req: Req, t: float) -> None:
        req.state = DONE
        self.outstanding -= 1
        self.running.remove(req)
        self.kv.finished(req)
        self.queued_prompt_tokens -= req.prompt
        self.held += 1
        self.handoffs.append(req)

    def release_transferred(self, req: Req) -> None:
        """The KV of ``req`` has left: free its blocks."""
        self.kv.release(req, req.computed)
        self.held -= 1


class DecodeReplica(Replica):
    """A replica of the decode pool: requests arrive with their prompt's KV and first token, and decode,
    at most ``max_num_seqs`` of them at once."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        # KV landed, not running yet; their blocks are held since the transfer began. They join a boundary
        # while fewer than max_num_seqs sequences run, in landing order, before any recomputation waiting in
        # ``waiting`` (that one needs its blocks anew, these have theirs)
        self.incoming: list[Req] = []  # landed since the latest boundary (the event loop appends)
        self.held: deque[Req] = deque()  # landed before it, refused there for want of a slot
        self.held_since: dict[int, float] = {}  # request -> the first boundary that had no slot for it
        self.slot_wait: np.ndarray | None = None  # per request, seconds held back for a slot (the event loop's)

    def receivable_blocks(self, now: float) -> int:
        """Blocks free at ``now`` for a new request's KV: those a stepping replica has free then (inside a
        decode run, the blocks allocated by the iteration running at ``now`` are taken)."""
        return self.kv.capacity - self._blocks_allocated_at(now)

    def make_room(self, blocks: int, now: float) -> None:
        """Before receiving ``blocks`` at ``now``: a decode run in flight that would take some of them before it
        ends is cut to end with the iteration running now (a stepping replica would have them taken then)."""
        p = self.pending
        if p is not None and p.is_decode_run:
            if self.kv.capacity - self.kv.used - (self.dec.blocks_needed(p.n) - p.allocated) < blocks:
                self.cut(now)

    def boundary(self, t: float) -> float | None:
        self._advance(t)
        if self.incoming or self.held:
            self._admit_landed(t)
        nt = self._schedule(t)
        # NOTE: every running sequence preempted itself (the held KV has the blocks they needed): nothing runs,
        # so the held requests have slots now; without this the replica would idle with no event to wake it
        while nt is None and self.held and len(self.running) < self.max_num_seqs:
            self._admit_landed(t)
            nt = self._schedule(t)
        return nt

    def _admit_landed(self, t: float) -> None:
        """Landed requests join the running ones while fewer than max_num_seqs run: the held ones first,
        then those landed since the latest boundary; the rest are held."""
        incoming, held, running = self.incoming, self.held, self.running
        room = self.max_num_seqs - len(running)
        while held and room > 0:  # blocks taken at the transfer's start; the decode counter applies now
            req = held.popleft()
            running.append(req)
            self.dec.add(req)
            room -= 1
            wait = t - self.held_since.pop(req.idx)
            if self.slot_wait is not None:
                self.slot_wait[req.idx] = wait
        for req in incoming:
            if room > 0:
                running.append(req)
                self.dec.add(req)
                room -= 1
            else:
                held.append(req)
                self.held_since[req.idx] = t
        incoming.clear()


@dataclass
class PDRecord:
    """Per-request arrays of a disaggregated run (requests.parquet's P/D columns)."""

    prefill_replica: np.ndarray
    decode_replica: np.ndarray
    transfer_start: np.ndarray
    transfer_end: np.ndarray
    decode_wait: np.ndarray  # end of prefill to the transfer's start, plus slot_wait (decode_wait_s)
    link: KVLink  # the shared link
    prefill_ids: list[int]
    decode_ids: list[int]
    links: list[KVLink] = dataclasses.field(default_factory=list)  # the shared link, then each pair's own
    pool_of: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)  # replica -> (role, pool)
    # the part of decode_wait after the KV landed: the decode replica ran max_num_seqs sequences
    slot_wait: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @classmethod
    def empty(cls, n: int, link: KVLink, prefill_ids: list[int], decode_ids: list[int]) -> PDRecord:
        return cls(
            np.full(n, -1, dtype=np.int32),
            np.full(n, -1, dtype=np.int32),
            np.full(n, np.nan),
            np.full(n, np.nan),
            np.full(n, np.nan),
            link,
            prefill_ids,
            decode_ids,
            [link],
            slot_wait=np.zeros(n),
        )


def run_disaggregated(
    topology: Disaggregation,
    prefill: list[PrefillReplica],
    decode: list[DecodeReplica],
    res: Results,
    arrivals: list,
    prompts: list,
    outs: list,
    max_len: int,
    full_cache_key=None,
    progress=None,
) -> PDRecord:
    """Simulate a trace on the two pools; fills ``res`` and returns the P/D per-request record.

    ``full_cache_key(i)``: the prompt key of request i when the 'full' prompt cache is on (None: off)."""
    n = len(arrivals)
    reps: list[Replica] = [*prefill, *decode]
    link = KVLink(topology.link)
    rec = PDRecord.empty(n, link, [r.idx for r in prefill], [r.idx for r in decode])
    # replicas are laid out pool after pool: each one's pool, and each pool pair's link
    for role, reps_of_role in (("prefill", prefill), ("decode", decode)):
        sizes = [pool.replicas for pool in topology.pools(role)]
        owner = [k for k, size in enumerate(sizes) for _ in range(size)]
        for rep, k in zip(reps_of_role, owner, strict=True):
            rec.pool_of[rep.idx] = (role, k)
    pair_link: dict[tuple[int, int], KVLink] = {}
    for pl in topology.pair_links:
        pair_link[(pl.prefill, pl.decode)] = own = KVLink(pl.spec)
        rec.links.append(own)
    pool_of = rec.pool_of
    by_slots = topology.decode_routing == "free-slots"
    for d in decode:
        d.slot_wait = rec.slot_wait
    kv_bytes = topology.prefill.model.kv_bytes_per_token
    layers = topology.prefill.model.num_layers
    pre_cap = min(r.kv.capacity for r in prefill)
    dec_cap = max(r.kv.capacity for r in decode)
    heap: list = []
    push, pop = heapq.heappush, heapq.heappop
    waiting: list = []  # (req, prefill replica, prefill end): prefilled, no decode replica had room
    wait_head = 0
    in_flight: list = []  # transfer id -> (req, prefill replica, decode replica)
    t_out = [0] * n  # output tokens of each request (the prefill side runs them with one)
    inf = math.inf
    i = 0

    def wake(rep: Replica, t: float) -> None:
        if not rep.busy:
            if rep.running or rep.waiting or getattr(rep, "incoming", None):
                rep.busy = True
                rep.version += 1
                push(heap, (t, rep.version, rep.idx))
        elif rep.in_decode_run():
            old = rep.version
            nt = rep.cut(t)
            if rep.version != old:
                push(heap, (nt, rep.version, rep.idx))

    def place(req: Req, pre: PrefillReplica, t_ready: float, now: float) -> bool:
        """Start the transfer of ``req``'s KV at ``now`` if a decode replica has room; False otherwise."""
        need_total = blocks_for(req.prompt + t_out[req.idx] - 1)
        blocks = blocks_for(req.computed)
        best, best_key = None, None
        if by_slots:  # the most free slots among those with room for the KV now, then the most free blocks
            for d in decode:
                if d.kv.capacity < need_total:
                    continue
                free = d.receivable_blocks(now)
                if free < blocks:
                    continue
                key = (d.outstanding - d.max_num_seqs, -free)
                if best_key is None or key < best_key:
                    best, best_key = d, key
            if best is None:
                return False
        else:  # the most free blocks, then the fewest requests: when it has no room, none has
            for d in decode:
                if d.kv.capacity < need_total:
                    continue
                key = (-d.receivable_blocks(now), d.outstanding)
                if best_key is None or key < best_key:
                    best, best_key = d, key
            if best is None or -best_key[0] < blocks:  # type: ignore[index]
                return False
        old = best.version
        best.make_room(blocks, now)
        if best.version != old:  # its run was cut: its next boundary is earlier
            push(heap, (best.next_time, best.version, best.idx))
        assert best.kv.receive(blocks)
        best.outstanding += 1
        waited = now > t_ready
        on = pair_link.get((pool_of[pre.idx][1], pool_of[best.idx][1]), link) if pair_link else link
        start, _, landed = on.reserve(now, req.computed * kv_bytes, layers, None if waited else req.first_sched)
        j = req.idx
        rec.decode_replica[j] = best.idx
        rec.transfer_start[j] = start
        rec.transfer_end[j] = landed
        rec.decode_wait[j] = now - t_ready
        in_flight.append((req, pre, best))
        push(heap, (landed, -1, len(in_flight) - 1))
        return True

    def drain_waiting(now: float) -> None:
        nonlocal wait_head
        while wait_head < len(waiting):
            req, pre, t_ready = waiting[wait_head]
            if not place(req, pre, t_ready, now):
                break
            waiting[wait_head] = None
            wait_head += 1

    while True:
        ta = arrivals[i] if i < n else inf
        if heap and heap[0][0] < ta:
            t, ver, r = pop(heap)
            if ver < 0:  # a transfer landed
                req, pre, dst = in_flight[r]
                in_flight[r] = None
                pre.release_transferred(req)
                wake(pre, t)
                req.out = t_out[req.idx]
                dst.incoming.append(req)
                wake(dst, t)
                continue
            rep = reps[r]
            if ver != rep.version:
                continue
            nt = rep.boundary(t)
            if nt is not None:
                push(heap, (nt, rep.version, r))
            if isinstance(rep, PrefillReplica):
                if rep.handoffs:
                    for req in rep.handoffs:
                        if t_out[req.idx] <= 1:  # nothing to decode: done where it was prefilled
                            rep.release_transferred(req)
                            res.record_finish(req, t, rep.idx)
                        else:
                            waiting.append((req, rep, t))
                    rep.handoffs.clear()
                    wake(rep, t)
                    drain_waiting(t)
            elif wait_head < len(waiting):
                drain_waiting(t)
            continue
        if i >= n:
            break
        if ta == inf:  # cannot happen: every request in flight ends, and its end frees a client
            raise RuntimeError(f"closed loop stalled before request {i}")
        p, o = prompts[i], outs[i]
        t_out[i] = o
        req = Req(i, ta, p, 1)
        best_pre = None
        for rep in prefill:
            if best_pre is None or rep.queued_prompt_tokens < best_pre.queued_prompt_tokens:
                best_pre = rep
        assert best_pre is not None
        rec.prefill_replica[i] = best_pre.idx
        if blocks_for(p) > pre_cap or blocks_for(p + o - 1) > dec_cap or p + o > max_len:
            res.record_reject(i, best_pre.idx, ta)
        elif full_cache_key is not None and best_pre.kv.prompt_cache.lookup(full_cache_key(i)):  # type: ignore[union-attr]
            res.record_cached(i, best_pre.idx, ta, p)
        else:
            best_pre.enqueue(req)
            best_pre.queued_prompt_tokens += p
            wake(best_pre, ta)
        i += 1
        if progress is not None and not i & 0x3FFF:
            progress.update(i)
    if wait_head < len(waiting):  # cannot happen: every waiting request fits an idle decode replica
        raise KavierInputError(
            f"{len(waiting) - wait_head} prefilled requests never found room in the decode pool", location="decode_gpu"
        )
    held = rec.slot_wait > 0.0
    if held.any():  # only where a request was held: elsewhere decode_wait stays bit for bit as it was
        rec.decode_wait[held] += rec.slot_wait[held]
    return rec
