"""Closed-loop clients: a fixed number of clients, each sending its next request when its previous one ends.

Benchmark clients (``vllm bench serve --max-concurrency``, aiperf, genai-perf)
measure this way. The first C requests arrive at the trace's first time; each
later one (in trace order) arrives when a client is freed, at the finish time
of a request (plus a constant think time). A rejected request, or one answered
from the full-answer cache, frees its client at once.

Finishes happen only at replica boundaries (a decode run already ends at its
next completion), so the freed clients' arrivals are exact event times: the
simulator reads them from the same arrival list as an open-loop trace, which
holds ``inf`` for a request whose client is not free yet.
"""

from __future__ import annotations

import math

from kavier_opendc.engine.results import FINISHED, Results
from kavier_opendc.workload.trace import ClosedLoop


class ClientPool:
    """The arrival times of ``n`` requests sent by ``spec.concurrency`` closed-loop clients."""

    __slots__ = ("arrivals", "n", "known", "think", "spec")

    def __init__(self, n: int, spec: ClosedLoop, t0: float):
        first = min(spec.concurrency, n)
        self.arrivals = [t0] * first + [math.inf] * (n - first)  # the simulator's arrival list, filled in
        self.n = n
        self.known = first  # requests whose arrival time is known
        self.think = float(spec.think_time_s)
        self.spec = spec

    def free(self, t: float) -> None:
        """A client got its answer (or refusal) at ``t``: it sends the next request of the trace."""
        k = self.known
        if k < self.n:
            self.arrivals[k] = t + self.think
            self.known = k + 1


class ClosedLoopResults(Results):
    """Results that free a client whenever a request ends (finished, rejected or served from the cache)."""

    def __init__(self, n: int, pool: ClientPool):
        super().__init__(n)
        self.pool = pool

    def record_finish(self, req, t: float, replica: int) -> None:
        super().record_finish(req, t, replica)
        if self.status[req.idx] == FINISHED:  # its last sample: the client has the whole answer
            self.pool.free(t)

    def record_reject(self, i: int, replica: int, t: float) -> None:
        super().record_reject(i, replica, t)
        self.pool.free(t)

    def record_cached(self, i: int, replica: int, t: float, cached: int) -> None:
        super().record_cached(i, replica, t, cached)
        self.pool.free(t)
