"""One serving replica: its state, and applying the iterations its scheduler forms (vLLM v1-style continuous batching).

A replica owns a KV-block pool (``capacity`` blocks, ``used`` of them
allocated), the running and waiting queues, the lazy decode state
(decode_state.py), the prefix or prompt cache (kv_cache.py), its activity
timeline (timeline.py) and writes finished requests into the shared results
arrays (results.py). The batch of each iteration is formed by the
:class:`~kavier_opendc.engine.scheduler.Scheduler` it derives from; this
module applies an iteration when it ends: tokens computed, prompts sampled,
blocks registered in the prefix cache, completions and branching samples.

A request of P prompt tokens that has generated g tokens holds P+g tokens, of
which ``computed`` have KV; an iteration computes the rest (or a chunk of it)
and, once all are computed, samples token g+1. Blocks held between iterations
are ceil(computed / 16).

Speed: decoding sequences are stored *lazily* against the replica's decode
counter G (computed = c_off + G, generated = g_off + G), so one iteration, or
a run of many identical decode-only iterations, advances them all in O(1). A
run is advanced in closed form up to the next event: a completion, the
iteration whose blocks would no longer fit, or an arrival routed here (which
cuts the run at the first boundary at or after it). ``exact`` mode takes one
iteration per event instead; both give the same per-request results.
"""

from __future__ import annotations

import heapq
from collections import deque

from kavier_opendc.engine.cost_model import BLOCK_SIZE, CostModel
from kavier_opendc.engine.decode_state import DecodeState
from kavier_opendc.engine.kv_cache import PrefixCache, PromptCache
from kavier_opendc.engine.request import DECODE, DONE, WAITING, Fork, Req, blocks_for
from kavier_opendc.engine.results import Results
from kavier_opendc.engine.scheduler import Scheduler
from kavier_opendc.engine.timeline import Timeline


class Replica(Scheduler):
    """One replica: ``tp`` GPUs serving one model copy, with its own KV pool and queues."""

    def __init__(self, idx: int, cm: CostModel, capacity_blocks: int, *, max_num_seqs: int,
                 max_batched_tokens: int, kv_cache: bool, exact: bool, results: Results,
                 merge_tol: float = 1e-3, prefix=None):
        self.idx = idx
        self.cm = cm
        self.capacity = capacity_blocks
        self.max_num_seqs = max_num_seqs
        self.budget = max_batched_tokens
        self.kv_on = kv_cache
        self.fast = not exact and kv_cache
        self.res = results
        self.timeline = Timeline(merge_tol)
        self.running: list[Req] = []
        self.waiting: deque[Req] = deque()
        self.dec = DecodeState()           # the decoding sequences, lazily against the decode counter G
        self.used = 0                      # KV blocks allocated (invariant: used <= capacity after _fit)
        self.peak_used = 0
        self.n_prefilling = 0
        self.outstanding = 0               # requests routed here and not finished
        self.version = 0                   # invalidates stale heap events
        self.t = 0.0                       # time of the latest applied boundary
        self.busy = False                  # an event for this replica is in the heap
        self.next_time = 0.0
        self.pending = None                # iteration(s) in flight
        self.iterations = 0
        self.preemptions = 0
        self.busy_time = 0.0
        # prefix caching (see kv_cache.py); ``prefix`` is the simulator's PrefixSetup or None
        self.policy = prefix.policy if prefix is not None and kv_cache else "none"
        self.index = prefix.index if prefix is not None else None
        self.min_tokens = prefix.min_tokens if prefix is not None else 0   # shorter prompts are never cached
        self.pc = None
        self.gpu_cache = None          # the prefix cache when its blocks live in GPU memory (for the timeline)
        self.prompt_cache = None
        self.extra_time = 0.0          # host-to-GPU cache transfers of the iteration being scheduled
        if self.policy == "block":
            block_bytes = BLOCK_SIZE * cm.kv_bytes_per_token
            cap_blocks = None
            if prefix.capacity_tokens is not None:
                cap_blocks = (float("inf") if prefix.capacity_tokens == float("inf")
                              else int(prefix.capacity_tokens // BLOCK_SIZE))
            host_blocks = int(prefix.host_memory_gb * 1e9 // block_bytes) if prefix.host_memory_gb else 0
            self.pc = PrefixCache(capacity_blocks, capacity_blocks=cap_blocks, host_capacity_blocks=host_blocks)
            if not self.pc.separate:
                self.gpu_cache = self.pc
            self.host_s_per_block = block_bytes / (cm.gpu.pcie_gbs * 1e9 * cm.tp)
        elif self.policy in ("prefill", "full"):
            self.prompt_cache = PromptCache(prefix.capacity_prompts)

    # ------------------------------------------------------------ decoders
    @property
    def D(self) -> int:
        """Decoding sequences."""
        return self.dec.D

    # ------------------------------------------------------------ KV blocks and the prefix cache
    def _release(self, req: Req, computed: int) -> None:
        """Free the KV blocks of a request leaving the GPU (finished or preempted).

        With prefix caching its cached units stay in memory as evictable (tail
        first); with sessions, its completed answer blocks are cached too.
        """
        blocks = blocks_for(computed) if self.kv_on else 0
        pc = self.pc
        fork = req.fork
        if fork is not None:
            # own blocks go now; the shared prompt blocks when the last sibling leaves
            req.fork = None
            self.used -= blocks - fork.shared if self.kv_on else 0
            fork.alive -= 1
            if fork.alive == 0 and self.kv_on:
                units = fork.units
                self.used -= fork.shared - sum(pc.size[u] for u in units) if units else fork.shared
                if units:
                    self.used -= pc.release(units[::-1])
            return
        if pc is None or req.uids is None:
            self.used -= blocks
            return
        held = req.held
        hb = req.held_blocks
        ids = req.uids[:held]
        if (self.index.source == "sessions" and held == len(req.uids) and req.prompt >= self.min_tokens):
            for uid in self.index.output_units(req.idx, hb, computed // BLOCK_SIZE):
                if not pc.register(uid, 1):
                    self.used += pc.take(uid) - 1
                ids.append(uid)
                hb += 1
        self.used -= blocks - hb
        ids.reverse()
        self.used -= pc.release(ids)
        req.held = 0
        req.held_blocks = 0

    def _register(self, req: Req) -> None:
        """Units whose blocks this request has just computed become reusable by others."""
        pc = self.pc
        uids, sizes = req.uids, req.usizes
        h, hb, comp = req.held, req.held_blocks, req.computed
        n = len(uids)
        while h < n:
            b = sizes[h]
            if (hb + b) * BLOCK_SIZE > comp:
                break
            uid = uids[h]
            if not pc.register(uid, b):      # an equal unit was cached meanwhile: share it, drop our copy
                self.used += pc.take(uid) - b
            h += 1
            hb += b
        req.held = h
        req.held_blocks = hb

    def _fit(self) -> None:
        """Evict LRU cached units until referenced plus cached blocks fit in GPU memory (with a prefix cache)."""
        pc = self.pc
        free_plain = self.capacity - self.used - pc.evictable_in_gpu()
        if free_plain < 0:
            pc.make_room(free_plain, 0)

    def _blocks_allocated_at(self, now: float) -> int:
        """Blocks allocated at the latest scheduling point before ``now`` (inside a decode run, too)."""
        p = self.pending
        if p is not None and p[0] == 2:
            _, t0, n, drun, alloc0 = p
            return self.used + self.dec.blocks_needed(drun.iterations_until(now - t0, n)) - alloc0
        return self.used

    def kv_load_at(self, now: float) -> float:
        """Fraction of KV blocks allocated at the latest scheduling point before ``now``."""
        return self._blocks_allocated_at(now) / self.capacity if self.capacity else 1.0

    def cached_prefix_blocks(self, req: Req, now: float) -> int:
        """Blocks of ``req``'s prompt this replica holds in GPU memory at ``now`` (prefix-affinity routing)."""
        pc = self.pc
        if pc is None or not req.uids:
            return 0
        gone: set | frozenset = frozenset()
        if self.pending is not None and self.pending[0] == 2:
            # a decode run applies its evictions when it ends: those due by ``now`` already happened
            used = self._blocks_allocated_at(now)
            gone = pc.lru_head(used + pc.evictable_in_gpu() - self.capacity)
        return pc.matched_blocks(req.uids, req.usizes, (req.prompt - 1) // BLOCK_SIZE, gone)

    # ------------------------------------------------------------ arrivals
    def enqueue(self, req: Req) -> None:
        self.waiting.append(req)
        self.outstanding += 1

    def cut(self, now: float) -> float:
        """An arrival routed here at ``now``: end a decode run at the first boundary >= now.

        Returns the (possibly earlier) time of this replica's next boundary.
        """
        p = self.pending
        if p is None or p[0] != 2:
            return self.next_time
        _, t0, n, drun, alloc0 = p
        k = drun.iterations_until(now - t0, n)
        if k < n:
            self.pending = (2, t0, k, drun, alloc0)
            self.next_time = t0 + drun.total_time(k)
            self.version += 1
        return self.next_time

    # ------------------------------------------------------------ boundary
    def boundary(self, t: float) -> float | None:
        """Apply the iteration(s) ending at ``t``, schedule the next; return its end time or None if idle."""
        if self.pending is not None:
            self._apply(t)
        elif t > self.t:  # waking up from idle
            gc = self.gpu_cache
            self.timeline.add(self.t, t, 0.0, 0.0, self.used / self.capacity if self.capacity else 0.0, 0, 0,
                              gc.lru_blocks / self.capacity if gc is not None and self.capacity else 0.0)
        self.t = t
        return self._schedule(t)

    def _finish(self, req: Req, t: float) -> None:
        self.res.record_finish(req, t, self.idx)
        req.state = DONE
        self.outstanding -= 1
        self.running.remove(req)
        if self.prompt_cache is not None and req.prompt >= self.min_tokens:
            self.prompt_cache.insert(self.index.prompt_key(req.idx))

    def _apply(self, t: float) -> None:
        p = self.pending
        self.pending = None
        if p[0] == 2:  # a decode run of n iterations
            _, t0, n, drun, alloc0 = p
            self.used += self.dec.blocks_needed(n) - alloc0
            if self.pc is not None:  # evictions only with a prefix cache
                self._fit()
            self.dec.G += n
            self.iterations += n
            flops, byts = drun.totals(n)
            d = self.dec.D
            gc = self.gpu_cache
            self.timeline.add(t0, t, self.cm.activity(t - t0, flops, byts), d,
                              self.used / self.capacity if self.capacity else 0.0, 0, d * n,
                              gc.lru_blocks / self.capacity if gc is not None and self.capacity else 0.0)
            self.busy_time += t - t0
        else:
            _, t0, dec_all, skipped, chunks, flops, byts, batch, ptoks, dtoks = p
            dec = self.dec
            for req in skipped:          # decoders left out of this iteration stay put
                dec.remove(req)
            if dec_all or skipped:
                dec.G += 1
            for req in skipped:
                dec.add(req)
            self.iterations += 1
            gc = self.gpu_cache
            self.timeline.add(t0, t, self.cm.activity(t - t0, flops, byts), batch,
                              self.used / self.capacity if self.capacity else 0.0, ptoks, dtoks,
                              gc.lru_blocks / self.capacity if gc is not None and self.capacity else 0.0)
            self.busy_time += t - t0
            pc = self.pc
            for req, n in chunks:
                req.computed += n
                if pc is not None and req.uids and req.prompt >= self.min_tokens:
                    self._register(req)
                if req.computed >= req.prompt + req.gen:   # all tokens computed: sample one
                    req.gen += 1
                    if req.first_token < 0:
                        req.first_token = t
                    self.n_prefilling -= 1
                    if req.n > 1 and req.gen == 1:
                        self._fork(req, t)
                    if req.gen >= req.out:
                        self._release(req, req.computed)
                        self._finish(req, t)
                    else:
                        self.dec.add(req)
        # completions of decoders (inline: this runs once per iteration)
        dec = self.dec
        heap = dec.done_heap
        g = dec.G
        while heap and heap[0][0] <= g:
            _, _, ver, req = heapq.heappop(heap)
            if ver != req.ver or req.state != DECODE:
                continue                    # stale: the request left the decoders since it was pushed
            dec.remove(req)
            self._release(req, req.computed)
            if req.first_token < 0:
                req.first_token = t
            self._finish(req, t)

    def _fork(self, req: Req, t: float) -> None:
        """Branching (DP3): after the shared prefill, the prompt's n samples decode separately.

        Full prompt blocks stay shared; each new sample copies the partly
        filled last prompt block (copy-on-write at the first divergent block).
        A sample whose copy does not fit waits, to be recomputed like a
        preempted request.
        """
        n = req.n
        req.n = 1
        shared = req.prompt // BLOCK_SIZE
        units = req.uids[:req.held] if req.uids is not None else []
        fork = Fork(shared, units)
        req.fork = fork
        req.held = req.held_blocks = 0
        cow = 1 if self.kv_on and req.prompt % BLOCK_SIZE else 0
        for _ in range(n - 1):
            child = Req(req.idx, req.arrival, req.prompt, req.out)
            child.first_sched = req.first_sched
            child.first_token = t
            child.gen = 1
            self.outstanding += 1
            if cow and self.capacity - self.used < cow:
                child.state = WAITING
                child.preempt = 1
                self.preemptions += 1
                self.waiting.appendleft(child)
                continue
            self.used += cow
            if self.pc is not None:  # evictions only with a prefix cache
                self._fit()
            child.computed = req.computed
            child.fork = fork
            fork.alive += 1
            self.running.append(child)
            if child.gen >= child.out:
                self._release(child, child.computed)
                self._finish(child, t)
            else:
                self.dec.add(child)
