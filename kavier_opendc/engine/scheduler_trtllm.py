"""Batch formation by TensorRT-LLM's in-flight batching rules (its capacity and micro-batch schedulers).

Written from TensorRT-LLM's source (NVIDIA/TensorRT-LLM, rules, not code):
cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp (read at commit
02a10fed0dbf: ``GuaranteedNoEvictScheduler``, ``MaxUtilizationScheduler``),
its blocks managers (``NoEvictScheduledBlocksManager``,
``MaxUtilizationScheduledBlocksManager``) and microBatchScheduler.cpp (read
at commit 0a949d3128bf: ``MicroBatchScheduler::operator()``,
``setCtxRequestsChunkSize`` with the default ``FIRST_COME_FIRST_SERVED``
chunking policy). Every iteration the capacity scheduler picks the requests
that may hold KV blocks, then the micro-batch scheduler cuts the iteration:

1. *Capacity*, ``guaranteed_no_evict`` (the default): every request already
   generating stays; each one reserves the blocks it still needs to
   *complete* (prompt plus its whole output, less what it holds). Waiting
   requests are admitted in arrival order while their prompt-plus-output
   blocks fit in the free blocks minus those reservations; the first that
   does not fit stops admission. Nothing is ever evicted. Because a
   decoder's held blocks grow exactly as its reservation shrinks, what is
   left for newcomers changes only when a request completes.
   ``max_utilization``: requests in order each take only the blocks of their
   next step; when a started request's step does not fit, the last started
   request is paused (its KV freed, recomputed later) and no newcomer joins
   in that iteration: vLLM v1's rule (scheduler.py's walk), so this engine
   takes it from there.
2. *Micro-batch*: at most ``max_batch_size`` requests and ``max_num_tokens``
   tokens (8,192). Generating requests take one token each; context
   (prefill) requests join the same iteration. Without context chunking
   (``enable_chunked_context`` off, the default of the LLM API and
   trtllm-bench) a prompt runs whole or not at all: the first that does not
   fit in the tokens left ends the iteration's admissions. With chunking the
   contexts share what the generating requests leave, first come first
   served, a newly admitted context's cut chunk rounded down to whole KV
   blocks (the chunk unit is the engine's tokens per block; a context that
   continues takes what is left, not rounded, here).

The loop runs these every step; decode-only iterations repeat unchanged
between completions and arrivals under both policies (the admission test
does not change while only decoders run), so they are advanced as decode
runs, as under vLLM (checked against exact stepping in
tests/test_frameworks_trtllm.py). A request whose prompt plus output can
never fit the pool (or, without chunking, whose prompt exceeds the token
budget) is rejected when nothing else runs. Not modelled: the simulator's
16-token KV blocks stand for TensorRT-LLM's 32 or 64 (reservations are
counted in 16-token blocks); a request's output length stands for its
``max_tokens`` (trtllm-bench sets ``max_tokens`` to the dataset's output
length); KV block reuse, beams and draft tokens.
"""

from __future__ import annotations

from kavier_opendc.engine.kv_manager import BLOCK_SIZE, blocks_for
from kavier_opendc.engine.request import PREFILL, Req
from kavier_opendc.engine.results import REJECTED
from kavier_opendc.engine.scheduler import Scheduler

CAPACITY_POLICIES = ("guaranteed_no_evict", "max_utilization")


class SchedulerTRTLLM(Scheduler):
    """TensorRT-LLM's capacity and micro-batch rules over a replica's state (see the module doc)."""

    capacity_policy = "guaranteed_no_evict"
    chunked_context = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # Replica's, after this class in the replica's MRO
        # guaranteed_no_evict: blocks to completion, ceil((prompt + output) / 16), of every admitted request
        self.reserved_blocks = 0
        self.reservations: dict[int, int] = {}  # id(request) -> its reserved blocks

    def _schedule(self, t: float) -> float | None:
        while True:
            end = super()._schedule(t)  # type: ignore[misc]
            if end is not None or not self.waiting or self.running:
                return end
            # nothing runs and the queue's head was refused: it can never be admitted here
            self._reject(self.waiting.popleft())

    def _admit_waiting(self, t: float, budget: int, alloc: int, chunks: list) -> tuple[int, int]:
        """Admit waiting requests in arrival order under the capacity policy; returns budget, alloc."""
        running = self.running
        waiting = self.waiting
        kv = self.kv
        cap = kv.capacity
        no_evict = self.capacity_policy == "guaranteed_no_evict"
        chunked = self.chunked_context
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            req = waiting[0]
            total = req.prompt + req.gen  # a paused request recomputes what it had generated too
            need = total
            if need > budget:
                if not chunked:
                    break  # a whole context only
                need = budget - budget % BLOCK_SIZE
                if need <= 0:
                    break
            nb = blocks_for(need)
            whole = blocks_for(req.prompt + req.out)
            if no_evict:
                # free blocks less every admitted request's blocks to completion = capacity less their totals
                if whole > cap - self.reserved_blocks:
                    break
            elif nb > cap - kv.used - alloc:
                break
            waiting.popleft()
            running.append(req)
            req.state = PREFILL
            self.n_prefilling += 1
            if no_evict:
                self.reserved_blocks += whole
                self.reservations[id(req)] = whole
            if req.first_sched < 0:
                req.first_sched = t
            alloc += nb
            budget -= need
            chunks.append((req, need))
        return budget, alloc

    def _release_reservation(self, req: Req) -> None:
        # the samples of a branching prompt (n > 1) share its reservation: only the admitted one holds it
        self.reserved_blocks -= self.reservations.pop(id(req), 0)

    def _finish(self, req: Req, t: float) -> None:
        self._release_reservation(req)
        super()._finish(req, t)  # type: ignore[misc]   # Replica's, after this class in the replica's MRO

    def _preempt(self, victim: Req) -> None:
        self._release_reservation(victim)
        super()._preempt(victim)

    def _reject(self, req: Req) -> None:
        """A request this replica can never serve under these limits."""
        res = self.res
        res.status[req.idx] = REJECTED
        res.replica[req.idx] = self.idx
        self.outstanding -= 1
