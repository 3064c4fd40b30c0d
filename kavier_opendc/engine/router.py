"""Routers: which replica an arriving request goes to (prompt workflow, step 3).

A router sees each replica's state *at the arrival instant*: requests it holds
(queued or running) and the KV blocks allocated at its latest scheduling point.
Ties go to the lowest replica index, so routing is deterministic.
"""

from __future__ import annotations

from kavier_opendc.errors import KavierInputError

ROUTERS = ("round-robin", "least-outstanding", "least-kv", "random")
_ALIASES = {"rr": "round-robin", "roundrobin": "round-robin", "lor": "least-outstanding",
            "least-outstanding-requests": "least-outstanding", "least-kv-load": "least-kv",
            "kv": "least-kv"}


def normalise_router(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ROUTERS:
        raise KavierInputError(f"unknown router '{name}'", location="--router",
                               expected="one of " + ", ".join(ROUTERS))
    return key


class Router:
    def __init__(self, policy: str, replicas: list, seed: int = 0):
        import numpy as np

        self.policy = normalise_router(policy)
        self.replicas = replicas
        self._next = 0
        self._rng = np.random.default_rng(seed)

    def choose(self, now: float) -> int:
        reps = self.replicas
        if len(reps) == 1:
            return 0
        p = self.policy
        if p == "round-robin":
            i = self._next
            self._next = (i + 1) % len(reps)
            return i
        if p == "least-outstanding":
            best, best_v = 0, reps[0].outstanding
            for i in range(1, len(reps)):
                v = reps[i].outstanding
                if v < best_v:
                    best, best_v = i, v
            return best
        if p == "least-kv":
            best, best_v = 0, None
            for i, r in enumerate(reps):
                v = (r.kv_load_at(now), r.outstanding)
                if best_v is None or v < best_v:
                    best, best_v = i, v
            return best
        return int(self._rng.integers(len(reps)))
