"""Batch formation: which requests run in a replica's next iteration, and with how many tokens (vLLM v1's scheduler).

At every iteration boundary (vLLM v1 ``Scheduler.schedule``):

1. Running requests, in admission order, each get their next tokens within the
   iteration's token budget (``max_batched_tokens``): one token for a decoding
   sequence, the next prompt chunk for one still in prefill (chunked prefill).
   KV blocks (16 tokens each) are allocated for the new tokens; when the pool is
   empty the *last* running request (the newest) is preempted: its blocks are
   freed and it goes back to the front of the waiting queue, to be recomputed
   from scratch later (prompt plus the tokens it already generated).
2. If nothing was preempted, waiting requests are admitted in FIFO order while
   the budget lasts, fewer than ``max_num_seqs`` run, and their first chunk's
   blocks fit (after the longest cached prefix is taken from the prefix cache).
3. A decode-only iteration that would repeat unchanged becomes a *decode run*
   of n iterations, advanced in closed form up to the next event (see
   decode_state.py).

With async scheduling (``async_sched``: vLLM v1's ``--async-scheduling``,
the default from 0.14) the engine core keeps two steps in flight
(``EngineCore.step_with_batch_queue``): it reads new requests, and schedules
the step after next, only when the older step ends. So while requests keep
running, the step starting at a boundary was fixed when the step ending
there began: a request admitted at a boundary must have arrived by that
start (``cutoff``). A later one waits one more step; an idle engine (nothing
running) schedules at once.

The result is the replica's ``pending`` work, an
:class:`~kavier_opendc.engine.sched_output.Iteration` or a
:class:`~kavier_opendc.engine.sched_output.DecodeRunPlan`;
:class:`kavier_opendc.engine.replica.Replica` applies it when it ends. KV
blocks are asked of the replica's
:class:`~kavier_opendc.engine.kv_manager.KVManager`, which alone changes them.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from kavier_opendc.engine.kv_manager import BLOCK_MASK, BLOCK_SIZE, NO_MATCH, blocks_for
from kavier_opendc.engine.request import DECODE, PREFILL, WAITING, Req
from kavier_opendc.engine.sched_output import DecodeRunPlan, Iteration

#: slack on the async-scheduling cutoff: an arrival that cut a decode run lies at its boundary up to rounding
ASYNC_EPS_S = 1e-9

if TYPE_CHECKING:  # pragma: no cover
    from kavier_opendc.engine.cost_model import CostModel
    from kavier_opendc.engine.decode_state import DecodeState
    from kavier_opendc.engine.kv_manager import KVManager
    from kavier_opendc.engine.request_queue import FCFSQueue
    from kavier_opendc.engine.results import Results


@mypyc_attr(allow_interpreted_subclasses=True)  # the other policies derive from it (compiled.py)
class Scheduler:
    """The scheduling half of a replica: forms each iteration's batch over the replica's state.

    :class:`~kavier_opendc.engine.replica.Replica` derives from it and owns
    the state scheduled over: ``running`` (admission order) and ``waiting``
    (FIFO) queues, the KV blocks ``kv`` (with the prefix cache), the lazy
    decode state ``dec``, and the limits ``budget`` (tokens per iteration)
    and ``max_num_seqs``. The methods
    are on the replica itself (not a separate object) because they run once
    per iteration, where an extra indirection on every field would cost.
    """

    #: waiting requests join an iteration that has decoders in it (vLLM v1); scheduler_v0 says no
    admits_in_decode = True
    #: the policy may shorten a decode run (``_cap_run``): scheduler_sglang's admission changes every step
    caps_runs = False
    #: decode steps per scheduler call (vLLM's --num-scheduler-steps; scheduler_multistep.py uses it)
    scheduler_steps = 1
    #: vLLM v1's async scheduling (module doc); ``cutoff``: the latest arrival the step being formed may hold
    async_sched = False
    cutoff = 0.0
    #: speculative decoding (engine/speculative.py, Replica.use_speculative): None off; spec_q tokens verified
    #: per decoding request and step (k+1), spec_m tokens the next decode step keeps (emits)
    spec: Any = None
    spec_q = 1
    spec_m = 1
    #: prompt chunks applied as they are formed (Replica._prefill_run), set by the simulator where nothing
    #: outside the replica reads its state between its boundaries
    prefill_runs = False

    # the replica's state scheduled over, set in Replica.__init__ (declared here for the type checker only)
    idx: int
    cm: CostModel
    max_num_seqs: int
    budget: int
    kv_on: bool
    fast: bool
    res: Results
    running: list[Req]
    waiting: FCFSQueue
    dec: DecodeState
    kv: KVManager
    n_prefilling: int
    outstanding: int
    version: int
    busy: bool
    t: float  # time of the latest applied boundary
    next_time: float
    pending: Iteration | DecodeRunPlan | None
    preemptions: int
    extra_time: float

    def _schedule(self, t: float) -> float | None:
        """Form the iteration starting at ``t``; return its end time, or None when idle.

        NOTE: the common case (every decoder plus at most one prefill chunk, then a decode run) is
        inlined here rather than cut into helpers: this runs once per iteration, and a call per step
        costs a few percent of the whole simulation. The rare paths (walking the running list with
        preemption, admitting waiting requests) are methods of their own.
        """
        running = self.running
        if not running and not self.waiting:
            self.busy = False
            return None
        self.busy = True
        if self.prefill_runs and self.n_prefilling == 1 and running[-1].state == PREFILL:
            t = self._prefill_run(t)
        # step 1: the running requests' tokens. Fast path (``bulk``): every decoder takes one token and at
        # most one prefill chunk follows, without preemption, counted from the decode state's aggregates
        # instead of walking the list (inlined: this runs once per iteration)
        kv_on = self.kv_on
        kv = self.kv
        budget = self.budget
        dec = self.dec
        g = dec.G
        d = dec.D
        h0 = dec.hist[(-g) & BLOCK_MASK] if kv_on else 0
        free = kv.capacity - kv.used if kv_on else 1 << 62
        n_prefilling = self.n_prefilling
        bulk = (
            kv_on
            and self.spec is None
            and d <= budget
            and h0 <= free
            and (n_prefilling == 0 or (n_prefilling == 1 and running[-1].state == PREFILL))
        )
        if bulk and n_prefilling == 1 and budget - d > 0:
            req = running[-1]
            comp = req.computed
            need = req.prompt + req.gen - comp
            if need > budget - d:
                need = budget - d
            if blocks_for(comp + need) - blocks_for(comp) > free - h0:
                bulk = False
        if bulk:
            chunks: list = []
            skipped: list = []
            preempted = False
            dec_all = d > 0
            n_dec = n_tok = d
            alloc = h0
            budget -= d
            kv_read = dec.ctx_off_sum + d * g  # cached tokens of all decoders
            pairs = kv_read + d
            if n_prefilling == 1 and budget > 0:
                req = running[-1]
                comp = req.computed
                need = req.prompt + req.gen - comp
                if need > budget:
                    need = budget
                alloc += blocks_for(comp + need) - blocks_for(comp)
                budget -= need
                chunks.append((req, need))
        else:
            (budget, alloc, chunks, skipped, dec_all, n_dec, preempted, n_tok, pairs, kv_read) = self._walk_running(
                budget, g
            )
        dec_ctx = kv_read  # the decoders' cached tokens (the drafts attend to them)
        # step 2: admit waiting requests (only when nothing was preempted, as vLLM does; never under v0's rules,
        # which admit prompts in iterations of their own)
        if not preempted and self.waiting and self.admits_in_decode:
            budget, alloc = self._admit_waiting(t, budget, alloc, chunks)
        ptoks = 0
        for req, need in chunks:  # prefill chunks: ``need`` new tokens on top of ``computed`` cached ones
            comp = req.computed
            ptoks += need
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
        # step 3: a decode-only iteration that will repeat unchanged: advance a whole run up to the next
        # event. Only in fast mode, which needs the KV cache on, so block counts come from the decode state.
        if self.fast and bulk and not chunks and d > 0:
            heap = dec.done_heap
            while heap[0][2] != heap[0][3].ver:  # drop stale completions
                heapq.heappop(heap)
            n = heap[0][0] - g
            free = kv.capacity - kv.used
            # n iterations need at most d blocks per BLOCK_SIZE iterations begun: only when that bound
            # does not fit can the free blocks, not the next completion, end the run
            if d * ((n + BLOCK_SIZE - 1) // BLOCK_SIZE) > free:
                nb_max = dec.max_iterations_for(free)
                if nb_max < n:
                    n = nb_max
            if kv.pc is not None and self.waiting and len(running) < self.max_num_seqs and budget > 0:
                # the waiting head was refused for lack of blocks; evicting its own cached prefix would
                # shrink what it needs, so the run must end before the LRU reaches that prefix
                limit = kv.evictable_before(self.waiting[0])
                if limit < 0:
                    n = 0
                else:
                    nb2 = dec.max_iterations_for(limit)
                    if nb2 < n:
                        n = nb2
            if self.caps_runs:
                n = self._cap_run(n)
            if self.async_sched and self.waiting and self.waiting[0].arrival > self.cutoff + ASYNC_EPS_S:
                n = 1  # a request arrived during the step that just ended: it joins the one after this
            if n > 1:
                drun = self.cm.decode_run(d, dec.ctx_off_sum + d * g)
                # no new block: nothing to evict, only a peak to note (copy-on-write forks raise it)
                if alloc or kv.used > kv.peak:
                    kv.allocate(alloc)
                self.pending = DecodeRunPlan(t, n, drun, alloc)
                self.next_time = t + drun.total_time(n)
                self.version += 1
                return self.next_time
        if alloc or kv.used > kv.peak:
            kv.allocate(alloc)
        if self.spec is None:
            dt, flops, wbytes, kvbytes = self.cm.iteration(n_tok, pairs, kv_read, n_dec + len(chunks))
            dec_tokens = n_dec
        else:  # the LM head (and sampler) run on all k+1 positions of each decoding request
            dt, flops, wbytes, kvbytes = self.cm.iteration(n_tok, pairs, kv_read, n_dec * self.spec_q + len(chunks))
            if n_dec:
                dt += self._draft_time(n_dec, dec_ctx)
            dec_tokens = n_dec * self.spec_m
        if self.extra_time:
            dt += self.extra_time
            self.extra_time = 0.0
        self.pending = Iteration(
            t, dec_all, skipped, chunks, flops, wbytes, kvbytes, n_dec + len(chunks), ptoks, dec_tokens
        )
        self.next_time = t + dt
        self.version += 1
        return self.next_time

    def _prefill_run(self, t: float) -> float:
        """Apply the prompt chunks that cannot depend on what arrives meanwhile; returns the time reached."""
        return t

    def _draft_time(self, d: int, ctx: int) -> float:
        """Seconds of drafting for ``d`` decoding requests with ``ctx`` cached tokens (engine/speculative.py)."""
        return 0.0

    def _cap_run(self, n: int) -> int:
        """The decode iterations a run may take when the policy has its own limit (``caps_runs``)."""
        return n

    def _walk_running(self, budget: int, g: int) -> tuple:
        """Step 1, generic path: walk the running list in order, preempting the newest when blocks run out.

        Returns budget, alloc, chunks, skipped, dec_all, n_dec, preempted, n_tok, pairs, kv_read."""
        running = self.running
        kv_on = self.kv_on
        kv = self.kv
        cap = kv.capacity
        alloc = 0
        chunks: list = []
        skipped: list = []
        n_dec = 0  # decoders in this iteration
        preempted = False
        n_tok = 0
        pairs = 0
        kv_read = 0
        i = 0
        q, m = self.spec_q, self.spec_m  # tokens verified and kept per decoder (1 and 1 without speculation)
        reserve = 0  # speculative decoding: blocks of the rejected drafts, held during the step only
        while i < len(running) and budget > 0:
            req = running[i]
            if req.state == DECODE:
                comp = req.c_off + g
                need = q
                if need > budget:  # speculative decoding: not k+1 tokens left in the budget
                    break
            else:
                comp = req.computed
                need = req.prompt + req.gen - comp
                if need > budget:
                    need = budget
            nb = blocks_for(comp + need) - blocks_for(comp) if kv_on else 0
            self_preempted = False
            while nb > cap - kv.used - alloc - reserve:
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    self_preempted = True
                    break
            if self_preempted:
                break
            if q > 1 and req.state == DECODE:  # only the kept tokens' blocks stay; the drafts' are rolled back
                kept = blocks_for(comp + m) - blocks_for(comp)
                reserve += nb - kept
                nb = kept
            alloc += nb
            budget -= need
            if req.state == DECODE:
                n_dec += 1
                if kv_on:
                    n_tok += q
                    pairs += q * comp + q * (q + 1) // 2
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
        return budget, alloc, chunks, skipped, dec_all, n_dec, preempted, n_tok, pairs, kv_read

    def _admit_waiting(self, t: float, budget: int, alloc: int, chunks: list) -> tuple[int, int]:
        """Step 2: admit waiting requests in FIFO order, each with its longest cached prefix; returns budget, alloc."""
        running = self.running
        waiting = self.waiting
        kv_on = self.kv_on
        kv = self.kv
        cap = kv.capacity
        max_seqs = self.max_num_seqs
        caching = kv.pc is not None or kv.prompt_cache is not None
        # async scheduling: with requests still running, this step was fixed when the last one began
        cutoff = self.cutoff + ASYNC_EPS_S if self.async_sched and running else None
        while waiting and budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            if cutoff is not None and req.arrival > cutoff:
                break  # arrived during the step that just ended (the queue is in arrival order)
            comp = req.computed
            total = req.prompt + req.gen
            match = NO_MATCH
            if comp == 0 and caching:
                match = kv.match_prefix(req)
                comp = match[5]
            need = total - comp
            if need > budget:
                need = budget
            nb = blocks_for(comp + need) - match[1] if kv_on else 0
            if nb + match[4] > cap - kv.used - alloc:
                break
            waiting.popleft()
            running.append(req)
            req.state = PREFILL
            self.n_prefilling += 1
            if match is not NO_MATCH:
                self.extra_time += kv.admit(req, match)
            if req.first_sched < 0:
                req.first_sched = t
                req.cached = comp
            alloc += nb
            budget -= need
            chunks.append((req, need))
        return budget, alloc

    def _preempt(self, victim: Req) -> None:
        """Free ``victim``'s blocks and put it back at the head of the queue, to be recomputed."""
        if victim.state == DECODE:
            self.dec.remove(victim)
        else:
            self.n_prefilling -= 1
        self.kv.release(victim, victim.computed)
        victim.computed = 0
        victim.state = WAITING
        victim.preempt += 1
        self.preemptions += 1
        self.waiting.put_back(victim)
