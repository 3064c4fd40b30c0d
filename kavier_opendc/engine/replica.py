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
import math
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.engine.decode_state import DecodeState
from kavier_opendc.engine.kv_manager import BLOCK_MASK, BLOCK_SIZE, KVManager
from kavier_opendc.engine.request import DECODE, DONE, WAITING, Fork, Req
from kavier_opendc.engine.request_queue import FCFSQueue
from kavier_opendc.engine.results import Results
from kavier_opendc.engine.sched_output import DecodeRunPlan, Iteration
from kavier_opendc.engine.scheduler import Scheduler
from kavier_opendc.engine.speculative import NGRAM_SEQ_S, NGRAM_STEP_S
from kavier_opendc.engine.timeline import Timeline

if TYPE_CHECKING:  # pragma: no cover
    from kavier_opendc.engine.kv_cache import PrefixCache, PromptCache
    from kavier_opendc.workload.prefix import PrefixIndex


@mypyc_attr(allow_interpreted_subclasses=True)  # policies, disaggregated roles (compiled.py)
class Replica(Scheduler):
    """One replica: ``tp`` GPUs serving one model copy, with its own KV pool and queues."""

    def __init__(
        self,
        idx: int,
        cm: CostModel,
        capacity_blocks: int,
        *,
        max_num_seqs: int,
        max_batched_tokens: int,
        kv_cache: bool,
        exact: bool,
        results: Results,
        merge_tol: float = 1e-3,
        prefix=None,
    ):
        self.idx = idx
        self.cm = cm
        self.max_num_seqs = max_num_seqs
        self.budget = max_batched_tokens
        self.kv_on = kv_cache
        self.fast = not exact and kv_cache
        self.res = results
        self.timeline = Timeline(merge_tol)
        self.running: list[Req] = []
        self.waiting = FCFSQueue()
        self.dec = DecodeState()  # the decoding sequences, lazily against the decode counter G
        # the KV blocks and the prefix cache (see kv_manager.py); ``prefix`` is the simulator's PrefixSetup
        self.kv = KVManager(
            capacity_blocks,
            kv_cache=kv_cache,
            kv_bytes_per_token=cm.kv_bytes_per_token,
            pcie_gbs=cm.gpu.pcie_gbs,
            gpus=cm.tp,
            prefix=prefix,
        )
        self.n_prefilling = 0
        self.outstanding = 0  # requests routed here and not finished
        self.version = 0  # invalidates stale heap events
        self.t = 0.0  # time of the latest applied boundary
        self.busy = False  # an event for this replica is in the heap
        self.next_time = 0.0
        self.pending: Iteration | DecodeRunPlan | None = None  # the work in flight (sched_output.py)
        self.iterations = 0
        self.events = 0  # boundaries applied (one per event of the simulator's loop)
        self.preemptions = 0
        self.busy_time = 0.0
        self.extra_time = 0.0  # host-to-GPU cache transfers of the iteration being scheduled
        # energy attribution weights (engine/energy.py): activity per token, per weight byte, per attended
        # pair, per KV token, and per decode step's context token (pair + KV token)
        self._e_lin = cm._u_flop * cm.flops_per_lin_token
        self._e_wb = cm._u_wbyte
        self._e_pair = cm._u_flop * cm.flops_per_attn_pair
        self._e_kvt = cm._u_kvbyte * cm.kv_bytes_per_token
        self._e_y = self._e_pair + self._e_kvt
        self._e_tp = float(cm.tp)
        self.clocked = cm.clocked  # a power cap or SM clock: the activity is not the raw shares' sum
        # the same, in one tuple: _apply unpacks it once per event instead of looking up six attributes
        self._e = (self._e_lin, self._e_wb, self._e_pair, self._e_kvt, self._e_y, self._e_tp)

    # ------------------------------------------------------------ speculative decoding (engine/speculative.py)
    def use_speculative(self, spec, draft_cm: CostModel | None = None) -> None:
        """Decode with speculative decoding ``spec``: k+1 tokens verified per decoder and step, E emitted on
        average (the j-th decode step emits floor(j E) - floor((j-1) E)); decode runs are stepped one by one."""
        self.spec = spec
        self.spec_q = spec.k + 1
        self._spec_e = spec.mean_tokens_per_step
        self._spec_j = 0  # decode steps taken
        self._draft_cm = draft_cm
        self.spec_seq_steps = 0  # decoder-steps taken, and the tokens they emitted (summary.json)
        self.spec_tokens = 0
        self.fast = False
        self.spec_m = self._spec_next()

    def _spec_next(self) -> int:
        """Tokens the next decode step emits: floor((j+1) E) - floor(j E), at least 1 and at most k+1."""
        e, j = self._spec_e, self._spec_j
        return max(1, min(self.spec_q, math.floor((j + 1) * e) - math.floor(j * e)))

    def _spec_step(self) -> None:
        self._spec_j += 1
        self.spec_m = self._spec_next()

    def _draft_time(self, d: int, ctx: int) -> float:
        sp = self.spec
        assert sp is not None
        if sp.method == "ngram":
            return NGRAM_STEP_S + NGRAM_SEQ_S * d
        cm = self._draft_cm if self._draft_cm is not None else self.cm
        # k sequential draft steps over the same d contexts, each one token longer; they run inside the
        # target's step (vLLM v1's proposer), so they pay GPU time, not the framework's CPU time per step
        p = cm.timer.profile
        cpu = p.overhead_fixed_s + p.overhead_per_seq_s * d
        t = 0.0
        for j in range(sp.k):
            t += cm.iteration(d, ctx + d * (j + 1), ctx + d * j, d)[0] - cpu
        return t if self._draft_cm is not None else t / self.cm.model.num_layers  # eagle/mtp: one layer

    # ------------------------------------------------------------ read-only views (reports, tests)
    @property
    def D(self) -> int:
        """Decoding sequences."""
        return self.dec.D

    @property
    def capacity(self) -> int:
        return self.kv.capacity

    @property
    def used(self) -> int:
        return self.kv.used

    @property
    def peak_used(self) -> int:
        return self.kv.peak

    @property
    def pc(self) -> PrefixCache | None:
        return self.kv.pc

    @property
    def prompt_cache(self) -> PromptCache | None:
        return self.kv.prompt_cache

    @property
    def policy(self) -> str:
        return self.kv.policy

    @property
    def index(self) -> PrefixIndex | None:
        return self.kv.index

    # ------------------------------------------------------------ KV load seen from outside
    def _blocks_allocated_at(self, now: float) -> int:
        """Blocks allocated at the latest scheduling point before ``now`` (inside a decode run, too)."""
        p = self.pending
        if p is not None and p.is_decode_run:
            return self.kv.used + self.dec.blocks_needed(p.run.iterations_until(now - p.t0, p.n)) - p.allocated
        return self.kv.used

    def kv_load_at(self, now: float) -> float:
        """Fraction of KV blocks allocated at the latest scheduling point before ``now``."""
        cap = self.kv.capacity
        return self._blocks_allocated_at(now) / cap if cap else 1.0

    def cached_prefix_blocks(self, req: Req, now: float) -> int:
        """Blocks of ``req``'s prompt this replica holds in GPU memory at ``now`` (prefix-affinity routing)."""
        p = self.pending
        # a decode run applies its evictions when it ends: those due by ``now`` already happened
        used = self._blocks_allocated_at(now) if p is not None and p.is_decode_run else None
        return self.kv.matched_blocks(req, used)

    # ------------------------------------------------------------ arrivals
    def enqueue(self, req: Req) -> None:
        self.waiting.add(req)
        self.outstanding += 1

    def in_decode_run(self) -> bool:
        """A decode run is in flight (an arrival may cut it)."""
        p = self.pending
        return p is not None and p.is_decode_run

    def cut(self, now: float) -> float:
        """An arrival routed here at ``now``: end a decode run at the first boundary >= now.

        Returns the (possibly earlier) time of this replica's next boundary.
        """
        p = self.pending
        if p is None or not p.is_decode_run:
            return self.next_time
        k = p.run.iterations_until(now - p.t0, p.n)
        if self.async_sched and k < p.n:
            k += 1  # async scheduling: the step after the first boundary was already fixed (scheduler.py)
        if k < p.n:
            p.n = k
            self.next_time = p.t0 + p.run.total_time(k)
            self.version += 1
        return self.next_time

    # ------------------------------------------------------------ boundary
    def boundary(self, t: float) -> float | None:
        """Apply the iteration(s) ending at ``t``, schedule the next; return its end time or None if idle."""
        self.events += 1
        self._advance(t)
        return self._schedule(t)

    def _advance(self, t: float) -> None:
        """Bring the replica to ``t``: apply the iteration(s) ending then, or record the idle span before it."""
        if self.pending is not None:
            if self.async_sched:  # the start of the step ending at t (scheduler.py, async scheduling)
                p = self.pending
                self.cutoff = p.t0 + p.run.total_time(p.n - 1) if p.is_decode_run else p.t0
            self._apply(t)
        elif t > self.t:  # waking up from idle (no cutoff: an idle engine schedules an arrival at once)
            kv = self.kv
            self.timeline.add(self.t, t, 0.0, 0.0, kv.load(), 0, 0, kv.cached_load())
        self.t = t

    def _finish(self, req: Req, t: float) -> None:
        """``req`` sampled its last token at ``t``: its blocks are freed and its result written."""
        self.kv.release(req, req.computed)
        self.res.record_finish(req, t, self.idx)
        req.state = DONE
        self.outstanding -= 1
        self.running.remove(req)
        self.kv.finished(req)

    def _apply(self, t: float) -> None:
        p = self.pending
        assert p is not None  # boundary() applies pending work only
        self.pending = None
        kv = self.kv
        if p.is_decode_run:  # a decode run of n iterations
            n = p.n
            dec = self.dec
            kv.extend(dec.blocks_needed(n) - p.allocated)
            g0 = dec.G
            dec.G = g0 + n
            self.iterations += n
            run = p.run
            flops, wbytes, kvbytes = run.totals(n)
            d = dec.D
            t0 = p.t0
            u = run.cm.activity(t - t0, flops, wbytes, kvbytes)  # the run's own clock (engine/clock.py)
            if d:  # the run's busy time over its decoders, in closed form (engine/energy.py), inlined
                e_lin, e_wb, _, _, e_y, e_tp = self._e
                x = e_lin + e_wb * run.wb / d
                gsum = n * g0 + n * (n + 1) * 0.5  # sum of G after each of the n iterations
                if u < 1.0 and not self.clocked:  # uncapped: the raw shares sum to u x dt x tp
                    s = e_tp
                else:  # scaled to the busy time u x dt x tp (u = 1 at the power limit; below it, clocked)
                    s = u * (t - t0) * e_tp / (n * d * x + e_y * (n * dec.ctx_off_sum + d * gsum))
                sy = s * e_y
                dec.ex += s * n * x
                dec.eg += sy * n
                dec.eq += sy * gsum
            # the run's gaps (engine/itl.py): iteration k takes a + b k; tokens reach the client once per
            # scheduler step block of s iterations, so block j takes A + B j
            steps = self.scheduler_steps
            if steps == 1:
                a, b = run.a, run.b
                first = t0 + a + b
                dec.segs += (first, a, b, n)
            else:
                b = run.b * steps * steps
                a = steps * run.a + run.b * steps * (steps + 1) / 2.0 - b
                first = t0 + a + b
                dec.segs += (first, a, b, n // steps)
            dec.T = t
            # kv.load() and kv.cached_load(), inlined: this runs once per event
            cap, gc = kv.capacity, kv.gpu_cache
            self.timeline.add(
                t0,
                t,
                u,
                d,
                kv.used / cap if cap else 0.0,
                0,
                d * n,
                gc.lru_blocks / cap if gc is not None and cap else 0.0,
            )
            self.busy_time += t - t0
        else:
            dec = self.dec
            skipped = p.skipped
            for req in skipped:  # decoders left out of this iteration stay put
                dec.remove(req)
            t0 = p.t0
            u = self.cm.activity(t - t0, p.flops, p.weight_bytes, p.kv_bytes)
            advance = p.all_decoders or bool(skipped)
            if u < 1.0 and self.kv_on and not self.clocked and self.spec is None:
                # uncapped, the raw shares sum to the busy time u x dt exactly (they are the activity's own
                # terms): scale tp, no second pass (the general case is _attribute_iteration)
                lin, e_wb, pair, kvt, e_y, tp = self._e
                batch = p.batch
                w1 = e_wb * p.weight_bytes / batch if batch else 0.0
                for req, c in p.chunks:
                    comp = req.computed
                    req.act += tp * (w1 + lin * c + pair * (c * comp + c * (c + 1) * 0.5) + kvt * (comp + c))
                if advance and dec.D:
                    ty = tp * e_y
                    dec.ex += tp * (w1 + lin)
                    dec.eg += ty
                    dec.eq += ty * (dec.G + 1)
            else:
                self._attribute_iteration(p, advance, u * (t - t0) * self._e_tp)
            if advance:
                if self.spec is None:
                    dec.G += 1
                else:  # a verify step emits spec_m tokens to every decoder, delivered as one chunk
                    dec.G += self.spec_m
                    self.spec_seq_steps += dec.D
                    self.spec_tokens += dec.D * self.spec_m
                    self._spec_step()
                dec.segs += (t, 0.0, 0.0, 1)
                dec.T = t
            for req in skipped:
                dec.add(req)
            self.iterations += 1
            cap, gc = kv.capacity, kv.gpu_cache
            self.timeline.add(
                t0,
                t,
                u,
                p.batch,
                kv.used / cap if cap else 0.0,
                p.prefill_tokens,
                p.decode_tokens,
                gc.lru_blocks / cap if gc is not None and cap else 0.0,
            )
            self.busy_time += t - t0
            caching = kv.pc is not None
            for req, n in p.chunks:
                req.computed += n
                if caching:
                    kv.register_computed(req)
                if req.computed >= req.prompt + req.gen:  # all tokens computed: sample one
                    req.gen += 1
                    if req.first_token < 0:
                        req.first_token = t
                    elif req.last_tok >= 0:  # a token after recomputation: one gap outside the decoders
                        dec.extra += (req.idx, t - req.last_tok)
                    req.last_tok = t
                    self.n_prefilling -= 1
                    if req.n > 1 and req.gen == 1:
                        self._fork(req, t)
                    if req.gen >= req.out:
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
                continue  # stale: the request left the decoders since it was pushed
            dec.remove(req)
            if req.first_token < 0:
                req.first_token = t
            self._finish(req, t)

    # ------------------------------------------------------------ prompt chunks applied at once
    def _prefill_run(self, t: float) -> float:
        """Apply right away the iterations from ``t`` that are every decoder plus one chunk of the prefilling
        request filling the rest of the token budget; returns the time of the last boundary applied.

        Such an iteration admits nobody (no budget is left), so an arrival cannot change it, and neither can
        the iteration after it when that one is of the same kind: iteration k is applied here, exactly as
        boundary() would (same operations, same order), when iteration k+1 also fills the budget with a
        partial chunk, iteration k completes no decoder (a completion is seen outside: a freed client, the
        outstanding count) and both fit in the free blocks. The simulator turns this on only where no router
        reads a replica's KV state between its boundaries. Long prompts, stepped one chunk per event before,
        cost one event for all their chunks but the last two.
        """
        req = self.running[-1]
        dec = self.dec
        d = dec.D
        c = self.budget - d  # the chunk: the budget left after one token per decoder
        comp = req.computed
        total = req.prompt + req.gen
        if c <= 0 or comp + 2 * c >= total:
            return t
        kv, cm, tl = self.kv, self.cm, self.timeline
        cap, gc, hist = kv.capacity, kv.gpu_cache, dec.hist
        caching = kv.pc is not None
        heap = dec.done_heap
        stop = heap[0][0] if d and heap else 1 << 62  # the decode counter at the next completion (or stale entry)
        g = dec.G
        n_tok = d + c
        batch = d + 1
        lin, e_wb, pair, kvt, e_y, tp = self._e
        uncapped = not self.clocked
        ty = tp * e_y
        t_prev = t
        applied = 0
        while comp + 2 * c < total and g + 1 < stop:
            b1 = (comp + c + BLOCK_MASK) // BLOCK_SIZE
            alloc = hist[(-g) & BLOCK_MASK] + b1 - (comp + BLOCK_MASK) // BLOCK_SIZE
            free = cap - kv.used - alloc
            if free < 0:
                break
            nxt = (hist[(-g - 1) & BLOCK_MASK] if d else 0) + (comp + 2 * c + BLOCK_MASK) // BLOCK_SIZE - b1
            if nxt > free:
                break
            # the iteration as _schedule forms it
            kv_read = dec.ctx_off_sum + d * g
            pairs = kv_read + d + c * comp + c * (c + 1) // 2
            kv_read += comp
            if alloc or kv.used > kv.peak:
                kv.allocate(alloc)
            dt, flops, wbytes, kvbytes = cm.iteration(n_tok, pairs, kv_read, batch)
            t1 = t + dt
            # ... and as _apply applies it
            u = cm.activity(t1 - t, flops, wbytes, kvbytes)
            if u < 1.0 and uncapped:
                w1 = e_wb * wbytes / batch
                req.act += tp * (w1 + lin * c + pair * (c * comp + c * (c + 1) * 0.5) + kvt * (comp + c))
                if d:
                    dec.ex += tp * (w1 + lin)
                    dec.eg += ty
                    dec.eq += ty * (g + 1)
            else:
                p = Iteration(t, d > 0, [], [(req, c)], flops, wbytes, kvbytes, batch, c, d)
                self._attribute_iteration(p, d > 0, u * (t1 - t) * tp)
            if d:
                g += 1
                dec.G = g
                dec.segs += (t1, 0.0, 0.0, 1)
                dec.T = t1
            self.iterations += 1
            tl.add(
                t,
                t1,
                u,
                batch,
                kv.used / cap if cap else 0.0,
                c,
                d,
                gc.lru_blocks / cap if gc is not None and cap else 0.0,
            )
            self.busy_time += t1 - t
            comp += c
            req.computed = comp
            if caching:
                kv.register_computed(req)
            t_prev, t = t, t1
            applied += 1
        if applied:
            self.t = t
            if self.async_sched:
                self.cutoff = t_prev  # the start of the step that ended at t, as _advance would set it
        return t

    # ------------------------------------------------------------ energy attribution (engine/energy.py)
    def _attribute_iteration(self, p: Iteration, advance: bool, busy: float) -> None:
        """Split one iteration's busy time (utilisation x s) over its prefill chunks and decoders.

        Called before the chunks' tokens and the decode counter move. A sequence's raw share is its
        weight-read term (the pass's weight bytes split equally per sequence), its linear-layer FLOPs
        (per token), its attention FLOPs (per attended pair) and its KV bytes, each weighted as in the
        activity; the shares are scaled to the iteration's busy time (the activity is capped at 1)."""
        w1 = self._e_wb * p.weight_bytes / p.batch if p.batch else 0.0
        lin, pair, kvt, y = self._e_lin, self._e_pair, self._e_kvt, self._e_y
        raws = []
        raw = 0.0
        kv_on = self.kv_on
        for req, n in p.chunks:
            comp = req.computed
            if kv_on:
                r = w1 + lin * n + pair * (n * comp + n * (n + 1) / 2.0) + kvt * (comp + n)
            else:  # no KV cache: the chunk recomputes its context
                c = comp + n
                r = w1 + (lin + kvt) * c + pair * (c * (c + 1) / 2.0)
            raws.append(r)
            raw += r
        dec = self.dec
        d = dec.D if advance else 0
        g1 = dec.G + self.spec_m  # a decoder attends to, and reads, c_off + G_after tokens
        q = self.spec_q  # tokens per decoder (k+1 with speculative decoding; their pairs counted as q reads)
        if q > 1:
            lin *= q
            y *= q
        if d:
            raw += d * (w1 + lin) + y * (dec.ctx_off_sum + d * g1)
        if raw <= 0.0:
            return
        s = busy / raw
        for (req, _), r in zip(p.chunks, raws, strict=True):
            req.act += s * r
        if d:
            dec.ex += s * (w1 + lin)
            dec.eg += s * y
            dec.eq += s * y * g1

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
        units: list = req.uids[: req.held] if req.uids is not None else []
        fork = Fork(shared, units)
        req.fork = fork
        req.held = req.held_blocks = 0
        cow = 1 if self.kv_on and req.prompt % BLOCK_SIZE else 0
        for _ in range(n - 1):
            child = Req(req.idx, req.arrival, req.prompt, req.out)
            child.first_sched = req.first_sched
            child.first_token = child.last_tok = t
            child.gen = 1
            self.outstanding += 1
            if cow and not self.kv.copy_on_write(cow):
                child.state = WAITING
                child.preempt = 1
                self.preemptions += 1
                self.waiting.put_back(child)
                continue
            child.computed = req.computed
            child.fork = fork
            fork.alive += 1
            self.running.append(child)
            if child.gen >= child.out:
                self._finish(child, t)
            else:
                self.dec.add(child)
