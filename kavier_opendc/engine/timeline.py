"""A replica's activity over time: piecewise-constant segments, the input of the OpenDC export."""

from __future__ import annotations

import numpy as np

#: numbers per segment in the log: start, end, util, batch, kv, cached, prefill, decode
WIDTH = 8
#: numbers in the log's list before they move into a float64 chunk (Timeline._flush)
FLUSH = 1 << 16


class Timeline:
    """Piecewise-constant activity segments of one replica, merged on the fly.

    Adjacent segments whose activity differs by less than ``merge_tol`` are
    folded into one (duration-weighted means), so the timeline grows with the
    number of changes, not with the number of iterations.

    Speed: ``add`` runs once per event, so a segment is one extend of a flat
    Python list (eight numbers), not eight array appends; the list moves into
    float64 chunks now and then to bound the memory (token counts stay exact:
    they are far below 2^53). The columns (``start``, ``end``, ``util``,
    ``batch``, ``kv``, ``cached``: float64; ``prefill``, ``decode``: int64)
    are numpy arrays built when read.
    """

    __slots__ = ("_log", "_parts", "_cache", "merge_tol")

    def __init__(self, merge_tol: float = 1e-3):
        # Invariant: segment k covers [start[k], end[k]); segments are in time order and do not overlap.
        # util: GPU utilisation (cost model's activity), 0..1; batch: mean sequences per iteration; kv:
        # fraction of KV blocks allocated to running requests; cached: fraction of KV blocks free but holding
        # cached prefixes (evictable); prefill: prompt tokens computed in the segment; decode: tokens decoded
        self._log: list = []  # the latest segments, flat; the last one always stays here (a merge edits it)
        self._parts: list[np.ndarray] = []  # older segments, (k, WIDTH) float64 chunks
        self._cache: tuple | None = None  # (key, table) of the latest read
        self.merge_tol = merge_tol

    def add(
        self, t0: float, t1: float, util: float, batch: float, kv: float, prefill: int, decode: int, cached: float = 0.0
    ) -> None:
        if t1 <= t0:
            return
        log = self._log
        if log and log[-7] == t0 and abs(log[-6] - util) <= self.merge_tol:
            a = log[-7] - log[-8]
            b = t1 - t0
            w = a + b
            log[-6] = (log[-6] * a + util * b) / w
            log[-5] = (log[-5] * a + batch * b) / w
            log[-4] = (log[-4] * a + kv * b) / w
            log[-3] = (log[-3] * a + cached * b) / w
            log[-2] += prefill
            log[-1] += decode
            log[-7] = t1
            return
        if len(log) > FLUSH:
            self._flush()
            log = self._log
        log += (t0, t1, util, batch, kv, cached, prefill, decode)

    def _flush(self) -> None:
        """Move every segment but the last into a float64 chunk."""
        log = self._log
        self._parts.append(np.array(log[:-WIDTH], dtype=np.float64).reshape(-1, WIDTH))
        self._log = log[-WIDTH:]

    def _table(self) -> np.ndarray:
        """All segments as a (WIDTH, segments) float64 array, a row per column (kept until the timeline changes)."""
        log = self._log
        key = (len(self._parts), len(log), tuple(log[-WIDTH:]))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        tail = np.array(log, dtype=np.float64).reshape(-1, WIDTH)
        # one contiguous row per column: a strided column would change how numpy sums it (its last bits)
        table = np.ascontiguousarray((np.concatenate([*self._parts, tail]) if self._parts else tail).T)
        self._cache = (key, table)
        return table

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts) + len(self._log) // WIDTH

    @property
    def start(self) -> np.ndarray:
        return self._table()[0]

    @property
    def end(self) -> np.ndarray:
        return self._table()[1]

    @property
    def util(self) -> np.ndarray:
        return self._table()[2]

    @property
    def batch(self) -> np.ndarray:
        return self._table()[3]

    @property
    def kv(self) -> np.ndarray:
        return self._table()[4]

    @property
    def cached(self) -> np.ndarray:
        return self._table()[5]

    @property
    def prefill(self) -> np.ndarray:
        return self._table()[6].astype(np.int64)

    @property
    def decode(self) -> np.ndarray:
        return self._table()[7].astype(np.int64)
