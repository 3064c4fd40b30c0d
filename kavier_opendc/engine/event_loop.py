"""The discrete-event loop of co-located serving: arrivals -> router -> replicas (simulator.py sets it up).

Events are request arrivals (known in advance from the trace, or filled in by closed-loop clients as
boundaries free them) and replica iteration boundaries (in a heap of (time, version, replica); an entry
whose version is not the replica's is stale). At equal times an arrival is handled first. A module of its
own so that it can be compiled with the replicas (engine/compiled.py): it runs once per event.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from kavier_opendc.engine.kv_manager import blocks_for
from kavier_opendc.engine.replica import Replica
from kavier_opendc.engine.request import Req


def run_events(
    reps: list[Replica],
    router: Any,
    res: Any,
    arrivals: list[float],
    prompts: list[int],
    outs: list[int],
    samples: list[int] | None,
    rows: list[int] | None,
    prefix: Any,
    affinity: bool,
    full_cache: bool,
    kv_on: bool,
    max_len: float,
    chain: bool,
    bar: Any,
) -> None:
    """Run every request of the trace to its end: finished, rejected, or served from the prompt cache.

    ``arrivals`` (s, in the order taken: ``rows`` maps position to trace row when held requests reorder
    them; closed loop: the client pool's list, inf until sent), ``prompts``/``outs``/``samples`` by trace
    row; ``chain``: a replica's boundaries before the next arrival are taken at once (open loop only).
    """
    n = len(prompts)
    heap: list[tuple[float, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    inf = math.inf
    i = 0
    while True:
        ta = arrivals[i] if i < n else inf
        if heap and heap[0][0] < ta:
            t, ver, r = pop(heap)
            rep = reps[r]
            if ver != rep.version:
                continue
            nt = rep.boundary(t)
            if chain:
                # replicas meet only at arrivals (the router): this one's boundaries before the next
                # arrival are taken now, without the heap (open loop: the arrivals are known)
                while nt is not None and nt < ta:
                    nt = rep.boundary(nt)
            if nt is not None:
                push(heap, (nt, rep.version, r))
            continue
        if i >= n:
            break
        if ta == inf:  # cannot happen: every request in flight ends, and its end frees a client
            raise RuntimeError(f"closed loop stalled before request {i}")
        # arrival (of trace row j)
        j = i if rows is None else rows[i]
        p, o = prompts[j], outs[j]
        req = Req(j, ta, p, o)
        if samples is not None:
            req.n = samples[j]
        if affinity:  # (affinity and full_cache imply a prefix setup, and full_cache its prompt caches)
            req.uids, req.usizes = prefix.index.prompt_units(j)
        r = router.choose(ta, req)
        rep = reps[r]
        if (kv_on and blocks_for(p + o - 1) > rep.kv.capacity) or p + o > max_len:
            res.record_reject(j, r, ta)
        elif full_cache and rep.kv.prompt_cache.lookup(prefix.index.prompt_key(j)):  # type: ignore[union-attr]
            # the answer is served from the cache: done on arrival, nothing runs on the GPU
            res.record_cached(j, r, ta, p)
        else:
            rep.enqueue(req)
            if not rep.busy:
                rep.busy = True
                rep.version += 1
                push(heap, (ta, rep.version, r))
            elif rep.in_decode_run():
                old = rep.version
                nt = rep.cut(ta)
                if rep.version != old:
                    push(heap, (nt, rep.version, r))
        i += 1
        if not i & 0x3FFF:
            bar.update(i)
