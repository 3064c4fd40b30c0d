"""Routers: which replica an arriving request goes to (prompt workflow, step 3).

A router sees each replica's state *at the arrival instant*: requests it holds
(queued or running) and the KV blocks allocated at its latest scheduling point.
Ties go to the lowest replica index, so routing is deterministic.
"""

from __future__ import annotations

from kavier_opendc.base.errors import KavierInputError

ROUTERS = ("round-robin", "least-outstanding", "least-kv", "random", "session-affinity", "prefix-affinity")
_ALIASES = {
    "rr": "round-robin",
    "roundrobin": "round-robin",
    "lor": "least-outstanding",
    "least-outstanding-requests": "least-outstanding",
    "least-kv-load": "least-kv",
    "kv": "least-kv",
    "session": "session-affinity",
    "sticky": "session-affinity",
    "prefix": "prefix-affinity",
    "cache-aware": "prefix-affinity",
}

# prefix-affinity: a replica is a candidate while its outstanding requests are at most
# LOAD_SLACK_FACTOR x the least loaded replica's plus LOAD_SLACK_ABS (bounded load, so a hot
# prefix cannot pile all traffic onto one replica)
LOAD_SLACK_FACTOR = 1.25
LOAD_SLACK_ABS = 4


def normalise_router(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ROUTERS:
        raise KavierInputError(f"unknown router '{name}'", location="router", expected="one of " + ", ".join(ROUTERS))
    return key


class Router:
    def __init__(self, policy: str, replicas: list, seed: int = 0, sessions=None):
        self.policy = normalise_router(policy)
        self.replicas = replicas
        self._next = 0
        self._rng = None
        if self.policy == "random":  # numpy.random only where it is drawn from (its import is 10 ms)
            import numpy as np

            self._rng = np.random.default_rng(seed)
        self.sessions = sessions  # per-request session ids (session-affinity)
        self._home: dict[int, int] = {}

    def _least_outstanding(self) -> int:
        reps = self.replicas
        best, best_v = 0, reps[0].outstanding
        for i in range(1, len(reps)):
            v = reps[i].outstanding
            if v < best_v:
                best, best_v = i, v
        return best

    def choose(self, now: float, req=None) -> int:
        reps = self.replicas
        if len(reps) == 1:
            return 0
        p = self.policy
        if p == "session-affinity":
            if self.sessions is None or req is None:
                return self._least_outstanding()
            s = int(self.sessions[req.idx])
            home = self._home.get(s)
            if home is None:
                home = self._home[s] = self._least_outstanding()
            return home
        if p == "prefix-affinity":
            least = min(r.outstanding for r in reps)
            bound = least * LOAD_SLACK_FACTOR + LOAD_SLACK_ABS
            best, best_v = 0, None
            for i, r in enumerate(reps):
                if r.outstanding > bound:
                    continue
                v = (r.cached_prefix_blocks(req, now) if req is not None else 0, -r.outstanding)
                if best_v is None or v > best_v:
                    best, best_v = i, v
            return best
        if p == "round-robin":
            i = self._next
            self._next = (i + 1) % len(reps)
            return i
        if p == "least-outstanding":
            return self._least_outstanding()
        if p == "least-kv":
            best, best_v = 0, None
            for i, r in enumerate(reps):
                v = (r.kv_load_at(now), r.outstanding)
                if best_v is None or v < best_v:
                    best, best_v = i, v
            return best
        assert self._rng is not None  # made for the random policy, the one left
        return int(self._rng.integers(len(reps)))
