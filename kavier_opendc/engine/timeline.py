"""A replica's activity over time: piecewise-constant segments, the input of the OpenDC export."""

from __future__ import annotations

from array import array


class Timeline:
    """Piecewise-constant activity segments of one replica, merged on the fly.

    Adjacent segments whose activity differs by less than ``merge_tol`` are
    folded into one (duration-weighted means), so the timeline grows with the
    number of changes, not with the number of iterations.
    """

    __slots__ = ("start", "end", "util", "batch", "kv", "cached", "prefill", "decode", "merge_tol")

    def __init__(self, merge_tol: float = 1e-3):
        # compact typed arrays: a million-request run has millions of segments.
        # Invariant: segment k covers [start[k], end[k]); segments are in time order and do not overlap.
        self.start = array("d")
        self.end = array("d")
        self.util = array("d")  # GPU utilisation (cost model's activity), 0..1
        self.batch = array("d")  # mean sequences per iteration
        self.kv = array("d")  # fraction of KV blocks allocated to running requests
        self.cached = array("d")  # fraction of KV blocks free but holding cached prefixes (evictable)
        self.prefill = array("q")  # prompt tokens computed in the segment
        self.decode = array("q")  # tokens decoded in the segment
        self.merge_tol = merge_tol

    def add(
        self, t0: float, t1: float, util: float, batch: float, kv: float, prefill: int, decode: int, cached: float = 0.0
    ) -> None:
        if t1 <= t0:
            return
        if self.end and self.end[-1] == t0 and abs(self.util[-1] - util) <= self.merge_tol:
            a = self.end[-1] - self.start[-1]
            b = t1 - t0
            w = a + b
            self.util[-1] = (self.util[-1] * a + util * b) / w
            self.batch[-1] = (self.batch[-1] * a + batch * b) / w
            self.kv[-1] = (self.kv[-1] * a + kv * b) / w
            self.cached[-1] = (self.cached[-1] * a + cached * b) / w
            self.prefill[-1] += prefill
            self.decode[-1] += decode
            self.end[-1] = t1
            return
        self.start.append(t0)
        self.end.append(t1)
        self.util.append(util)
        self.batch.append(batch)
        self.kv.append(kv)
        self.cached.append(cached)
        self.prefill.append(prefill)
        self.decode.append(decode)
