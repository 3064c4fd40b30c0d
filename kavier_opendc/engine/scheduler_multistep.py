"""vLLM 0.6's multi-step scheduling (``--num-scheduler-steps N``) over vLLM v0's rules (scheduler_v0.py).

Written from vLLM's V0 engine at tag v0.6.0 (vllm/core/scheduler.py,
``Scheduler.schedule`` and ``_get_num_lookahead_slots``; vllm/engine/llm_engine.py,
``LLMEngine.step``, which calls the scheduler only when the previous block has
no steps left):

1. The scheduler runs at a *block* boundary only. Its decision is v0's:
   waiting prompts first, whole, in an iteration of their own (a prompt gets
   no lookahead slots, so a prefill block is one step, which samples the
   first token), else every running request decodes.
2. A decode block is N steps of the same batch: each sequence gets blocks for
   its next token plus N - 1 lookahead slots when the block is scheduled (the
   newest are preempted, recompute, until they fit). Nothing joins the batch
   and nothing leaves it during the block: a request arriving meanwhile waits
   for the block's end, and a sequence that reaches its last token inside the
   block still runs the remaining steps (their tokens are discarded).
3. The block's tokens are processed and streamed when it ends: a request's
   finish (and so its e2e and time per output token) is the end of the block
   holding its last token; a client sees N tokens at a time (its inter-token
   gap is a block, about N x the time per token).

Fast mode (decode runs, as under v1) advances several blocks at once while
nothing can change the decision: up to the block holding the next completion,
while the blocks fit, cut by an arrival at the first block boundary after it;
one block after a preemption (the preempted request may be admitted at the
next boundary, its blocks being free).
Exact mode takes one block per event; both give the same per-request results.
"""

from __future__ import annotations

import heapq

from kavier_opendc.engine.sched_output import DecodeRunPlan
from kavier_opendc.engine.scheduler_v0 import SchedulerV0


class SchedulerMultiStep(SchedulerV0):
    """vLLM v0 scheduling with decode blocks of ``scheduler_steps`` steps (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduler_steps = 10  # on the instance: see SchedulerV0.__init__ (the simulator sets the profile's)

    def _schedule(self, t: float) -> float | None:
        if self.waiting:
            end = self._prefill_iteration(t)
            if end is not None:
                return end
        if not self.running:
            if not self.waiting:
                self.busy = False
            return None
        return self._decode_block(t)

    def _decode_block(self, t: float) -> float | None:
        """A decode block of N steps (fast mode: whole blocks up to the next change)."""
        steps = self.scheduler_steps
        dec = self.dec
        kv = self.kv
        running = self.running
        # the next token plus N - 1 lookahead slots per sequence must fit: preempt the newest until they do
        preempted = False
        while running and dec.blocks_needed(steps) > kv.capacity - kv.used:
            self._preempt(running.pop())
            preempted = True
        if not running:
            return self._schedule(t)  # every decoder went back to the queue: the head is a prompt again
        self.busy = True
        d = dec.D
        n = steps
        if self.fast and not preempted:  # a preempted request may be admitted at the next block boundary
            heap = dec.done_heap
            while heap[0][2] != heap[0][3].ver:  # drop stale completions
                heapq.heappop(heap)
            to_done = heap[0][0] - dec.G
            blocks = max(1, -(-to_done // steps))
            fit = dec.max_iterations_for(kv.capacity - kv.used) // steps
            n = steps * max(1, min(blocks, fit))
        first = dec.blocks_needed(steps)
        kv.allocate(first)
        drun = self.cm.decode_run(d, dec.ctx_off_sum + d * dec.G)
        self.pending = DecodeRunPlan(t, n, drun, first)
        self.next_time = t + drun.total_time(n)
        self.version += 1
        return self.next_time

    def cut(self, now: float) -> float:
        """An arrival at ``now``: a run of several blocks ends at the first block boundary >= now."""
        p = self.pending
        if p is None or not p.is_decode_run:
            return self.next_time
        steps = self.scheduler_steps
        k = p.run.iterations_until(now - p.t0, p.n)
        k = min(p.n, -(-k // steps) * steps)
        if k < p.n:
            p.n = k
            self.next_time = p.t0 + p.run.total_time(k)
            self.version += 1
        return self.next_time
