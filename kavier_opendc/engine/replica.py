"""One serving replica: vLLM (v1)-style continuous batching over a KV-block pool.

Scheduling, at every iteration boundary (vLLM v1 ``Scheduler.schedule``):
1. Running requests, in admission order, each get their next tokens within the
   iteration's token budget (``max_batched_tokens``): one token for a decoding
   sequence, the next prompt chunk for one still in prefill (chunked prefill).
   KV blocks (16 tokens each) are allocated for the new tokens; when the pool is
   empty the *last* running request (the newest) is preempted: its blocks are
   freed and it goes back to the front of the waiting queue, to be recomputed
   from scratch later (prompt plus the tokens it already generated).
2. If nothing was preempted, waiting requests are admitted in FIFO order while
   the budget lasts, fewer than ``max_num_seqs`` run, and their first chunk's
   blocks fit.

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
from array import array
from collections import deque

from kavier_opendc.engine.cost_model import BLOCK_SIZE, CostModel
from kavier_opendc.engine.kv_cache import PrefixCache, PromptCache

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3
_MASK = BLOCK_SIZE - 1


def blocks_for(tokens: int) -> int:
    return (tokens + _MASK) // BLOCK_SIZE


class Req:
    """A request inside the engine (exists from arrival to completion only)."""

    __slots__ = ("idx", "arrival", "prompt", "out", "gen", "computed", "c_off", "g_off",
                 "ver", "state", "first_sched", "first_token", "preempt", "cached",
                 "uids", "usizes", "held", "held_blocks", "n", "fork")

    def __init__(self, idx: int, arrival: float, prompt: int, out: int):
        self.idx, self.arrival, self.prompt, self.out = idx, arrival, prompt, out
        self.gen = 0
        self.computed = 0
        self.c_off = self.g_off = 0
        self.ver = 0
        self.state = WAITING
        self.first_sched = -1.0
        self.first_token = -1.0
        self.preempt = 0
        self.cached = 0
        self.uids = None          # prefix-cache unit identities of the prompt (loaded at admission)
        self.usizes = None
        self.held = 0             # leading units referenced in the prefix cache
        self.held_blocks = 0
        self.n = 1                # samples of this prompt (branching, DP3)
        self.fork = None          # Fork shared with its sibling samples, while they share prompt blocks


class Fork:
    """Sibling samples of one prompt sharing its full prompt blocks (and the parent's cached units)."""

    __slots__ = ("alive", "shared", "units")

    def __init__(self, shared: int, units: list):
        self.alive = 1            # members still holding the shared blocks
        self.shared = shared      # full prompt blocks, held once for all members
        self.units = units        # prefix-cache units among them (released when the last member leaves)


class Results:
    """Per-request outcome arrays, filled as requests finish."""

    def __init__(self, n: int):
        import numpy as np

        self.replica = np.full(n, -1, dtype=np.int32)
        self.first_sched = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.cached = np.zeros(n, dtype=np.int64)
        self.status = np.zeros(n, dtype=np.int8)  # 0 pending, 1 finished, 2 rejected
        self.remaining = None     # per request: samples still running (only for traces with n > 1)


class Timeline:
    """Piecewise-constant activity segments of one replica, merged on the fly.

    Adjacent segments whose activity differs by less than ``merge_tol`` are
    folded into one (duration-weighted means), so the timeline grows with the
    number of changes, not with the number of iterations.
    """

    __slots__ = ("start", "end", "util", "batch", "kv", "prefill", "decode", "merge_tol")

    def __init__(self, merge_tol: float = 1e-3):
        # compact typed arrays: a million-request run has millions of segments
        self.start = array("d")
        self.end = array("d")
        self.util = array("d")
        self.batch = array("d")
        self.kv = array("d")
        self.prefill = array("q")
        self.decode = array("q")
        self.merge_tol = merge_tol

    def add(self, t0: float, t1: float, util: float, batch: float, kv: float,
            prefill: int, decode: int) -> None:
        if t1 <= t0:
            return
        if self.end and self.end[-1] == t0 and abs(self.util[-1] - util) <= self.merge_tol:
            a = self.end[-1] - self.start[-1]
            b = t1 - t0
            w = a + b
            self.util[-1] = (self.util[-1] * a + util * b) / w
            self.batch[-1] = (self.batch[-1] * a + batch * b) / w
            self.kv[-1] = (self.kv[-1] * a + kv * b) / w
            self.prefill[-1] += prefill
            self.decode[-1] += decode
            self.end[-1] = t1
            return
        self.start.append(t0)
        self.end.append(t1)
        self.util.append(util)
        self.batch.append(batch)
        self.kv.append(kv)
        self.prefill.append(prefill)
        self.decode.append(decode)


class Replica:
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
        self.G = 0
        self.hist = [0] * BLOCK_SIZE       # decoders by c_off mod 16
        self.ctx_off_sum = 0               # sum of c_off over decoders
        self.D = 0                         # decoding sequences
        self.done_heap: list = []          # (G at completion, seq, ver, req)
        self._heap_seq = 0
        self.used = 0                      # KV blocks allocated
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
            self.host_s_per_block = block_bytes / (cm.gpu.pcie_gbs * 1e9 * cm.tp)
        elif self.policy in ("prefill", "full"):
            self.prompt_cache = PromptCache(prefix.capacity_prompts)

    # ------------------------------------------------------------ decoders
    def _add_decoder(self, req: Req) -> None:
        g = self.G
        req.state = DECODE
        req.c_off = c = req.computed - g
        req.g_off = req.gen - g
        self.hist[c & _MASK] += 1
        self.ctx_off_sum += c
        self.D += 1
        self._heap_seq += 1   # unique, deterministic tie-break (samples of one prompt share idx)
        heapq.heappush(self.done_heap, (req.out - req.g_off, self._heap_seq, req.ver, req))

    def _remove_decoder(self, req: Req) -> None:
        g = self.G
        req.computed = req.c_off + g
        req.gen = req.g_off + g
        self.hist[req.c_off & _MASK] -= 1
        self.ctx_off_sum -= req.c_off
        self.D -= 1
        req.ver += 1
        req.state = PREFILL  # caller sets the final state

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
            for uid in self.index.output_units(req.idx, hb, computed >> 4):
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

    def _head_eviction_limit(self) -> int:
        """New blocks the decoders may take before an eviction reaches the waiting head's cached prefix.

        Returns -1 when no closed-form bound holds (host tier), so the caller steps one iteration.
        """
        pc = self.pc
        if pc.separate:
            return 1 << 62
        if pc.host_cap:
            return -1
        req = self.waiting[0]
        if req.computed or not req.uids:
            return 1 << 62
        k = pc.match(req.uids, req.usizes, (req.prompt + req.gen - 1) // BLOCK_SIZE)[0]
        mine = {u for u in req.uids[:k] if u in pc.lru}
        if not mine:
            return 1 << 62
        before = 0
        for uid, b in pc.lru.items():
            if uid in mine:
                break
            before += b
        return self.capacity - self.used - pc.lru_blocks + before

    def _fit(self) -> None:
        """Evict LRU cached units until referenced plus cached blocks fit in GPU memory."""
        pc = self.pc
        if pc is not None:
            free_plain = self.capacity - self.used - pc.evictable_in_gpu()
            if free_plain < 0:
                pc.make_room(free_plain, 0)

    def _blocks_allocated_at(self, now: float) -> int:
        """Blocks allocated at the latest scheduling point before ``now`` (inside a decode run, too)."""
        p = self.pending
        if p is not None and p[0] == 2:
            _, t0, n, drun, alloc0 = p
            return self.used + self._run_blocks(drun.iterations_until(now - t0, n)) - alloc0
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

    def _run_blocks(self, n: int) -> int:
        """New blocks the decoders need over n more iterations: f(n) = D*q + #{p < r}."""
        if n <= 0 or not self.kv_on:
            return 0
        q, r = divmod(n, BLOCK_SIZE)
        g = self.G
        hist = self.hist
        extra = 0
        for p in range(r):  # free slots p in the last block: needs a block once n > p
            extra += hist[(-p - g) & _MASK]
        return self.D * q + extra

    def _max_run_for_blocks(self, free: int) -> int:
        d = self.D
        if not self.kv_on or d == 0:
            return 1 << 62
        q = free // d
        rem = free - q * d
        g = self.G
        hist = self.hist
        cum = 0
        r = 0
        for p in range(BLOCK_SIZE - 1):
            cum += hist[(-p - g) & _MASK]
            if cum > rem:
                break
            r = p + 1
        return q * BLOCK_SIZE + r

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
            self.timeline.add(self.t, t, 0.0, 0.0, self.used / self.capacity if self.capacity else 0.0, 0, 0)
        self.t = t
        return self._schedule(t)

    def _finish(self, req: Req, t: float) -> None:
        res = self.res
        i = req.idx
        if res.remaining is not None:      # branching prompts: the request ends with its last sample
            res.remaining[i] -= 1
            res.preemptions[i] += req.preempt
            last = res.remaining[i] <= 0
        else:
            res.preemptions[i] = req.preempt
            last = True
        if req.cached:
            res.cached[i] = req.cached
        if res.first_sched[i] != res.first_sched[i]:   # NaN: not set yet
            res.first_sched[i] = req.first_sched
            res.first_token[i] = req.first_token
        res.finish[i] = t                  # events come in time order: the last sample sets it
        if last:
            res.status[i] = 1
        res.replica[i] = self.idx
        req.state = DONE
        self.outstanding -= 1
        self.running.remove(req)
        if self.prompt_cache is not None and req.prompt >= self.min_tokens:
            self.prompt_cache.insert(self.index.prompt_key(i))

    def _apply(self, t: float) -> None:
        p = self.pending
        self.pending = None
        if p[0] == 2:  # a decode run of n iterations
            _, t0, n, drun, alloc0 = p
            self.used += self._run_blocks(n) - alloc0
            self._fit()
            self.G += n
            self.iterations += n
            flops, byts = drun.totals(n)
            d = self.D
            self.timeline.add(t0, t, self.cm.activity(t - t0, flops, byts), d,
                              self.used / self.capacity if self.capacity else 0.0, 0, d * n)
            self.busy_time += t - t0
        else:
            _, t0, dec_all, skipped, chunks, flops, byts, batch, ptoks, dtoks = p
            for req in skipped:          # decoders left out of this iteration stay put
                self._remove_decoder(req)
            if dec_all or skipped:
                self.G += 1
            for req in skipped:
                self._add_decoder(req)
            self.iterations += 1
            self.timeline.add(t0, t, self.cm.activity(t - t0, flops, byts), batch,
                              self.used / self.capacity if self.capacity else 0.0, ptoks, dtoks)
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
                        self._add_decoder(req)
        # completions of decoders
        heap = self.done_heap
        g = self.G
        while heap and heap[0][0] <= g:
            _, _, ver, req = heapq.heappop(heap)
            if ver != req.ver or req.state != DECODE:
                continue
            self._remove_decoder(req)
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
            self._fit()
            child.computed = req.computed
            child.fork = fork
            fork.alive += 1
            self.running.append(child)
            if child.gen >= child.out:
                self._release(child, child.computed)
                self._finish(child, t)
            else:
                self._add_decoder(child)

    def _preempt(self, victim: Req) -> None:
        if victim.state == DECODE:
            self._remove_decoder(victim)
        else:
            self.n_prefilling -= 1
        self._release(victim, victim.computed)
        victim.computed = 0
        victim.state = WAITING
        victim.preempt += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)

    def _schedule(self, t: float) -> float | None:
        running = self.running
        if not running and not self.waiting:
            self.busy = False
            return None
        self.busy = True
        kv_on = self.kv_on
        budget = self.budget
        cap = self.capacity
        g = self.G
        alloc = 0
        chunks: list = []
        skipped: list = []
        dec_all = False
        n_dec = 0                                  # decoders in this iteration
        preempted = False
        n_tok = 0
        pairs = 0
        kv_read = 0
        d = self.D
        h0 = self.hist[(-g) & _MASK] if kv_on else 0
        free = cap - self.used if kv_on else 1 << 62
        bulk = (kv_on and d <= budget and h0 <= free
                and (self.n_prefilling == 0 or (self.n_prefilling == 1 and running[-1].state == PREFILL)))
        if bulk and self.n_prefilling == 1 and budget - d > 0:
            req = running[-1]
            comp = req.computed
            need = req.prompt + req.gen - comp
            if need > budget - d:
                need = budget - d
            if blocks_for(comp + need) - blocks_for(comp) > free - h0:
                bulk = False
        if bulk:
            dec_all = d > 0
            n_dec = d
            alloc = h0
            budget -= d
            n_tok = d
            ctx = self.ctx_off_sum + d * g           # cached tokens of all decoders
            pairs = ctx + d
            kv_read = ctx
            if self.n_prefilling == 1 and budget > 0:
                req = running[-1]
                comp = req.computed
                need = req.prompt + req.gen - comp
                if need > budget:
                    need = budget
                alloc += blocks_for(comp + need) - blocks_for(comp)
                budget -= need
                chunks.append((req, need))
        else:
            # generic path: walk the running list in order, preempting the newest when blocks run out
            i = 0
            while i < len(running) and budget > 0:
                req = running[i]
                if req.state == DECODE:
                    comp = req.c_off + g
                    need = 1
                else:
                    comp = req.computed
                    need = req.prompt + req.gen - comp
                    if need > budget:
                        need = budget
                nb = blocks_for(comp + need) - blocks_for(comp) if kv_on else 0
                self_preempted = False
                while nb > cap - self.used - alloc:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is req:
                        self_preempted = True
                        break
                if self_preempted:
                    break
                alloc += nb
                budget -= need
                if req.state == DECODE:
                    n_dec += 1
                    if kv_on:
                        n_tok += 1
                        pairs += comp + 1
                        kv_read += comp
                    else:  # no KV cache: recompute the whole context for every new token
                        c = comp + 1
                        n_tok += c
                        pairs += c * (c + 1) // 2
                else:
                    chunks.append((req, need))
                i += 1
            for req in running[i:]:
                if req.state == DECODE:
                    skipped.append(req)
            dec_all = n_dec > 0 and not skipped
        # admit waiting requests (only when nothing was preempted, as vLLM does)
        if not preempted:
            waiting = self.waiting
            max_seqs = self.max_num_seqs
            pc = self.pc
            while waiting and budget > 0 and len(running) < max_seqs:
                req = waiting[0]
                comp = req.computed
                total = req.prompt + req.gen
                k = hb = hk = hhb = revive = 0
                if comp == 0:
                    if pc is not None:
                        uids = req.uids
                        if uids is None:
                            uids, req.usizes = self.index.prompt_units(req.idx)
                            req.uids = uids
                        if uids:  # longest cached prefix, leaving at least one token to compute
                            k, hb, hk, hhb, revive = pc.match(uids, req.usizes, (total - 1) // BLOCK_SIZE)
                            comp = (hb + hhb) * BLOCK_SIZE
                    elif (self.prompt_cache is not None and req.first_sched < 0
                          and self.prompt_cache.lookup(self.index.prompt_key(req.idx))):
                        comp = total - 1   # the whole prompt is cached: only the last token is computed
                need = total - comp
                if need > budget:
                    need = budget
                nb = blocks_for(comp + need) - hb if kv_on else 0
                if nb + revive > cap - self.used - alloc:
                    break
                waiting.popleft()
                running.append(req)
                req.state = PREFILL
                self.n_prefilling += 1
                if k:
                    self.used += pc.acquire(req.uids, req.usizes, k)
                if hk:
                    pc.load_from_host(req.uids, req.usizes, k, hk)
                    self.extra_time += hhb * self.host_s_per_block
                if comp:
                    req.held = k + hk
                    req.held_blocks = hb + hhb
                    req.computed = comp
                    if pc is not None:
                        pc.hits_gpu_blocks += hb
                        pc.hits_host_blocks += hhb
                if req.first_sched < 0:
                    req.first_sched = t
                    req.cached = comp
                alloc += nb
                budget -= need
                chunks.append((req, need))
        for req, need in chunks:  # prefill chunks: ``need`` new tokens on top of ``computed`` cached ones
            comp = req.computed
            if kv_on:
                n_tok += need
                pairs += need * comp + need * (need + 1) // 2
                kv_read += comp
            else:  # no KV cache: the chunk recomputes the context before it too
                c = comp + need
                n_tok += c
                pairs += c * (c + 1) // 2
        if n_tok == 0:
            # nothing schedulable (cannot happen with a feasible request; guard against livelock)
            self.busy = False
            return None
        # a decode-only iteration that will repeat unchanged: advance a whole run
        if self.fast and bulk and not chunks and d > 0:
            heap = self.done_heap
            while heap[0][2] != heap[0][3].ver:
                heapq.heappop(heap)
            n = heap[0][0] - g
            nb_max = self._max_run_for_blocks(cap - self.used)
            if self.pc is not None and self.waiting and len(running) < self.max_num_seqs and budget > 0:
                # the waiting head was refused for lack of blocks; evicting its own cached prefix would
                # shrink what it needs, so the run must end before the LRU reaches that prefix
                limit = self._head_eviction_limit()
                if limit < 0:
                    nb_max = 0
                else:
                    nb2 = self._max_run_for_blocks(limit)
                    if nb2 < nb_max:
                        nb_max = nb2
            if nb_max < n:
                n = nb_max
            if n > 1:
                drun = self.cm.decode_run(d, self.ctx_off_sum + d * g)
                self.used += alloc
                self._fit()
                if self.used > self.peak_used:
                    self.peak_used = self.used
                self.pending = (2, t, n, drun, alloc)
                self.next_time = t + drun.total_time(n)
                self.version += 1
                return self.next_time
        self.used += alloc
        self._fit()
        if self.used > self.peak_used:
            self.peak_used = self.used
        dt, flops, byts = self.cm.iteration(n_tok, pairs, kv_read, n_dec + len(chunks))
        if self.extra_time:
            dt += self.extra_time
            self.extra_time = 0.0
        ptoks = sum(n for _, n in chunks)
        self.pending = (1, t, dec_all, skipped, chunks, flops, byts,
                        n_dec + len(chunks), ptoks, n_dec)
        self.next_time = t + dt
        self.version += 1
        return self.next_time
