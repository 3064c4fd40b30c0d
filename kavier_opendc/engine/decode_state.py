"""The replica's lazy decode state: every decoding sequence advanced by one counter, in O(1) per iteration.

A decoding request is stored against the replica's decode counter ``G``
(computed = c_off + G, generated = g_off + G), so one decode iteration, or a
run of n identical decode-only iterations, is ``G += n`` for all of them at
once. What a run needs in closed form is kept alongside: how many decoders
sit at each position inside their last KV block (to count the new blocks of
n iterations), the sum of their context offsets (tokens attended to), and a
heap of their completion counters.

For the inter-token gaps (engine/itl.py) the state also logs every advance of
G, one *segment* per applied iteration or run (six numbers, not one per
token), and every stay of a request among the decoders (a *stint*: the
segments it took part in and the time of its token before them).
"""

from __future__ import annotations

import bisect
import heapq
import itertools

import numpy as np

from kavier_opendc.engine.kv_manager import BLOCK_MASK, BLOCK_SIZE
from kavier_opendc.engine.request import DECODE, PREFILL, Req

#: numbers in the segment log's list before it moves into a float64 chunk (DecodeState._flush)
FLUSH = 1 << 16


class DecodeState:
    """The decoding sequences of one replica, held lazily against the decode counter ``G``."""

    __slots__ = (
        "G",
        "hist",
        "ctx_off_sum",
        "D",
        "done_heap",
        "heap_seq",
        "ex",
        "eg",
        "eq",
        "T",
        "segs",
        "seg_base",
        "seg_parts",
        "stints",
        "stint_parts",
        "extra",
    )

    def __init__(self) -> None:
        self.G = 0  # decode iterations so far (the lazy clock of every decoder)
        self.hist = [0] * BLOCK_SIZE  # decoders by c_off mod BLOCK_SIZE
        self.ctx_off_sum = 0  # sum of c_off over decoders: context = ctx_off_sum + D * G
        self.D = 0  # decoding sequences
        # (G at completion, seq, ver, req), a min-heap: the replica pops the entries due at each boundary and
        # the scheduler peeks at the next one to size a decode run; an entry whose ver differs from req.ver
        # is stale (the request left the decoders) and is skipped
        self.done_heap: list = []
        self.heap_seq = 0  # unique, deterministic tie-break (samples of one prompt share idx)
        # energy attribution, lazily like G (engine/energy.py): per decoder and decode iteration k, its
        # share is s_k (X_k + Y (c_off + G_k)); ex = sum s_k X_k, eg = sum s_k Y, eq = sum s_k Y G_k
        self.ex = self.eg = self.eq = 0.0
        # inter-token gaps (engine/itl.py): T is the time of the latest advance of G; segs holds per advance
        # four numbers (first delivery time, then gaps A + B*j for j = 2..m, m; its gap since the previous
        # advance and its decoders follow from the log and the stints);
        # stints per stay (request, first segment, end segment, time of its token before); extra per token
        # sampled outside the decoders after the first (recomputation): (request, gap). Flat Python lists
        # (a list append is ~20x an array's), moved into float64 chunks now and then to bound the memory;
        # seg_base counts the numbers moved, so segment indices stay absolute.
        self.T = 0.0
        self.segs: list = []
        self.seg_base = 0
        self.seg_parts: list = []
        self.stints: list = []
        self.stint_parts: list = []
        self.extra: list = []

    def _flush(self) -> None:
        """Move the logs into float64 chunks (called on a join when they are long: a join is once per stay)."""
        if self.segs:
            self.seg_parts.append(np.array(self.segs, dtype=np.float64))
            self.seg_base += len(self.segs)
            self.segs = []
        if self.stints:
            self.stint_parts.append(np.array(self.stints, dtype=np.float64))
            self.stints = []

    def logs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The segment, stint and extra-gap logs as flat float64 arrays."""
        self._flush()
        seg = np.concatenate(self.seg_parts) if self.seg_parts else np.zeros(0)
        st = np.concatenate(self.stint_parts) if self.stint_parts else np.zeros(0)
        return seg, st, np.array(self.extra, dtype=np.float64)

    def add(self, req: Req) -> None:
        """``req`` starts (or resumes) decoding: store it against G."""
        g = self.G
        req.state = DECODE
        if len(self.segs) > FLUSH:
            self._flush()
        req.itl_s0 = self.seg_base + len(self.segs)
        req.c_off = c = req.computed - g
        req.g_off = req.gen - g
        self.hist[c & BLOCK_MASK] += 1
        self.ctx_off_sum += c
        self.D += 1
        req.ex0, req.eg0, req.eq0 = self.ex, self.eg, self.eq
        self.heap_seq += 1
        heapq.heappush(self.done_heap, (req.out - req.g_off, self.heap_seq, req.ver, req))

    def remove(self, req: Req) -> None:
        """``req`` leaves the decoders: its lazy counts become real ones (the caller sets its state)."""
        g = self.G
        c = req.c_off
        req.computed = c + g
        req.gen = req.g_off + g
        s1 = self.seg_base + len(self.segs)
        s0 = req.itl_s0
        if s1 > s0:  # it took part in an advance: a stint, and its latest token came at T
            self.stints += (req.idx, s0, s1, req.last_tok)
            req.last_tok = self.T
        self.hist[c & BLOCK_MASK] -= 1
        self.ctx_off_sum -= c
        req.act += (self.ex - req.ex0) + c * (self.eg - req.eg0) + (self.eq - req.eq0)
        self.D -= 1
        req.ver += 1
        req.state = PREFILL

    def blocks_needed(self, n: int) -> int:
        """New KV blocks the decoders need over n more iterations: f(n) = D*q + #{p < r}, n = q*BLOCK_SIZE + r."""
        if n <= 0:
            return 0
        q, r = divmod(n, BLOCK_SIZE)
        if r == 0:
            return self.D * q
        # decoders with p < r free slots in their last block: hist[(-p - G) mod B] for p = 0..r-1, a
        # descending run of indices from (-G) mod B that may wrap; summed by slices (runs once per iteration)
        hist = self.hist
        start = (-self.G) & BLOCK_MASK
        lo = start - r + 1
        extra = sum(hist[lo : start + 1]) if lo >= 0 else sum(hist[: start + 1]) + sum(hist[BLOCK_SIZE + lo :])
        return self.D * q + extra

    def max_iterations_for(self, free: int) -> int:
        """The most decode iterations whose new blocks fit in ``free`` blocks (the inverse of blocks_needed)."""
        d = self.D
        if d == 0:
            return 1 << 62
        q = free // d
        rem = free - q * d
        # the largest r < BLOCK_SIZE whose first r positions (as in blocks_needed) hold at most rem decoders
        hist = self.hist
        start = (-self.G) & BLOCK_MASK
        order = hist[start::-1] + hist[:start:-1]
        return q * BLOCK_SIZE + min(bisect.bisect_right(list(itertools.accumulate(order)), rem), BLOCK_SIZE - 1)
