"""The per-request results arrays: what the simulation reports about each request of the trace."""

from __future__ import annotations

import numpy as np

#: values of Results.status
PENDING, FINISHED, REJECTED = 0, 1, 2


class Results:
    """Per-request outcome arrays, indexed by the request's row in the trace, filled as requests finish.

    Times are NaN until set; a request with several samples (branching) keeps
    the first sample's scheduling and first-token times and the last sample's
    finish time, and is FINISHED only when its last sample is.
    """

    def __init__(self, n: int):
        self.replica = np.full(n, -1, dtype=np.int32)
        self.first_sched = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.cached = np.zeros(n, dtype=np.int64)
        self.busy = np.zeros(n)  # attributed replica busy time, utilisation x s (engine/energy.py)
        self.status = np.zeros(n, dtype=np.int8)  # PENDING, FINISHED or REJECTED
        self.remaining: np.ndarray | None = None  # per request: samples still running (only for traces with n > 1)

    def record_finish(self, req, t: float, replica: int) -> None:
        """``req`` (one sample of request ``req.idx``) finished at ``t`` on ``replica``."""
        i = req.idx
        if self.remaining is not None:  # branching prompts: the request ends with its last sample
            self.remaining[i] -= 1
            self.preemptions[i] += req.preempt
            last = self.remaining[i] <= 0
        else:
            self.preemptions[i] = req.preempt
            last = True
        self.busy[i] += req.act  # samples of one prompt add up
        if req.cached:
            self.cached[i] = req.cached
        if self.first_sched[i] != self.first_sched[i]:  # NaN: not set yet
            self.first_sched[i] = req.first_sched
            self.first_token[i] = req.first_token
        self.finish[i] = t  # events come in time order: the last sample sets it
        if last:
            self.status[i] = FINISHED
        self.replica[i] = replica

    def record_reject(self, i: int, replica: int, t: float) -> None:
        """Request ``i`` can never be served (refused at ``t`` by ``replica``)."""
        self.status[i] = REJECTED
        self.replica[i] = replica

    def record_cached(self, i: int, replica: int, t: float, cached: int) -> None:
        """Request ``i``'s whole answer came from ``replica``'s prompt cache at ``t``: done on arrival."""
        self.first_sched[i] = self.first_token[i] = self.finish[i] = t
        self.cached[i] = cached
        self.status[i] = FINISHED
        self.replica[i] = replica
