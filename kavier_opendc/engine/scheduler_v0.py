"""Batch formation by vLLM v0's rules (vLLM 0.5-0.6 ``Scheduler._schedule_default``, chunked prefill off).

At every iteration boundary:

1. *Prefill first*: waiting requests are admitted in FIFO order, each with its
   whole prompt (a preempted one with prompt plus the tokens it generated, to
   be recomputed), while the prompts fit in the token budget
   (``max_num_batched_tokens``), fewer than ``max_num_seqs`` sequences run and
   the blocks fit with a watermark of 1 % of the pool kept free
   (``BlockSpaceManager.can_allocate``). If any was admitted, the iteration
   holds those prompts only: the running decoders wait.
2. Otherwise every running request decodes one token; when blocks run out the
   newest is preempted (recompute) and goes back to the head of the queue.
   Waiting requests are not admitted in a decode iteration.

A prompt that can never be admitted (longer than the token budget, or more
blocks than the pool minus the watermark) is rejected, as v0 ignores it.
Decode-only iterations that repeat become decode runs exactly as under v1:
between two completions or arrivals nothing can change the decision (blocks
only shrink while decoding, so a refused prompt stays refused).

With ``chunked_prefill`` (v0's ``--enable-chunked-prefill``; the framework's
``chunked_prefill``, or ``enable_chunked_prefill`` in the configuration) the
iteration is formed by the token-budget rules of scheduler.py instead
(vLLM 0.5 ``Scheduler._schedule_chunked_prefill``: the running requests'
decodes and prompt chunks first, then waiting prompts, chunked, in the budget
left), and the default budget is 512 tokens (``SchedulerConfig`` in
vllm/config.py). v0's admission watermark is not applied then.
"""

from __future__ import annotations

from kavier_opendc.engine.kv_manager import blocks_for
from kavier_opendc.engine.request import PREFILL
from kavier_opendc.engine.sched_output import Iteration
from kavier_opendc.engine.scheduler import Scheduler

#: share of the KV blocks that admission keeps free (vLLM v0 ``watermark=0.01``)
WATERMARK = 0.01


class SchedulerV0(Scheduler):
    """vLLM v0's scheduling rules over a replica's state (see the module doc)."""

    chunked_prefill = False  # the framework's (FrameworkProfile.chunked_prefill), set per replica

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # Replica's, after this class in the replica's MRO
        # the scheduler's flags are set on the instance, never as class attributes here: a compiled Replica
        # (engine/compiled.py) reads its own slot, which a subclass's class attribute would not reach
        self.admits_in_decode = False

    def use_chunked_prefill(self, on: bool) -> None:
        """v0's ``--enable-chunked-prefill``: v1's token-budget rules, waiting prompts joining the decodes."""
        self.chunked_prefill = self.admits_in_decode = bool(on)

    def _schedule(self, t: float) -> float | None:
        if self.chunked_prefill:
            return super()._schedule(t)
        if self.waiting:
            end = self._prefill_iteration(t)
            if end is not None:
                return end
        return super()._schedule(t)

    def _prefill_iteration(self, t: float) -> float | None:
        """Step 1: an iteration of whole prompts from the waiting queue; None when none is admitted."""
        waiting = self.waiting
        running = self.running
        kv = self.kv
        budget = self.budget
        watermark = int(WATERMARK * kv.capacity)
        chunks: list = []
        alloc = 0
        n_tok = 0
        pairs = 0
        while waiting:
            req = waiting[0]
            need = req.prompt + req.gen  # whole prompt (and, after preemption, what it had generated)
            nb = blocks_for(need)
            if need > self.budget or nb > kv.capacity - watermark:
                waiting.popleft()  # can never run here: v0 ignores it
                self._reject(req)
                continue
            if need > budget or len(running) + 1 > self.max_num_seqs:
                break
            if kv.capacity - kv.used - alloc - nb < watermark:
                break
            waiting.popleft()
            running.append(req)
            req.state = PREFILL
            self.n_prefilling += 1
            if req.first_sched < 0:
                req.first_sched = t
            alloc += nb
            budget -= need
            n_tok += need
            pairs += need * (need + 1) // 2
            chunks.append((req, need))
        if not chunks:
            if not running and not waiting:
                self.busy = False
            return None
        self.busy = True
        kv.allocate(alloc)
        dt, flops, wbytes, kvbytes = self.cm.iteration(n_tok, pairs, 0, len(chunks))
        self.pending = Iteration(t, False, [], chunks, flops, wbytes, kvbytes, len(chunks), n_tok, 0)
        self.next_time = t + dt
        self.version += 1
        return self.next_time

    def _reject(self, req) -> None:
        """A request this replica can never serve under these limits."""
        self.res.record_reject(req.idx, self.idx, self.t)
        self.outstanding -= 1
