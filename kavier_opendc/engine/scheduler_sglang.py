"""Batch formation by SGLang v0.3's rules (the ``ModelTpServer`` event loop and its ``PrefillAdder``).

Written from SGLang's source of the v0.3 series: python/sglang/srt/managers/
policy_scheduler.py (``PrefillAdder``, ``PolicyScheduler``; read at commit
05bea6883c4b), tp_worker.py (``forward_step``, ``get_new_prefill_batch``,
``forward_decode_batch``), schedule_batch.py (``retract_decode``),
global_config.py and server_args.py (the constants below). At every step:

1. *Extend batch first*: if requests wait, an extend (prefill) batch is
   formed and runs on its own: decoders wait (mixed batches are
   ``--enable-mixed-chunk``, off by default). The request being prefilled in
   chunks continues first; then waiting requests in queue order, each with
   its whole prompt (a retracted one: prompt plus what it generated), while:
   the KV tokens left after *reserving* every running request's remaining
   output, ``min(max_new_tokens - generated, 4096) x new_token_ratio``, and
   the prompts and full outputs (``min(max_new_tokens, 4096)``) admitted so
   far, stay above the newcomer's prompt plus full output; the batch's
   prompt tokens stay within ``max_prefill_tokens`` (16,384; the first is
   always let in); and fewer than ``max_running_requests`` run. A prompt
   longer than what is left of ``chunked_prefill_size`` (8,192, this
   replica's token budget) is cut there and continues in the next batch.
2. Otherwise every running request decodes one token. With too few free KV
   slots for that step the batch *retracts*: requests with the fewest
   generated tokens (the longest prompt first among equals) go back to the
   end of the queue, their KV freed (recomputed later), until the rest have
   room for 20 more steps; ``new_token_ratio`` becomes (tokens generated +
   20 per request) / output lengths of the rest, at most 1.
3. ``new_token_ratio`` starts at 0.7, falls by 0.001 per decode step that
   did not retract, never below 0.1 (``schedule_conservativeness`` 1), and
   goes back to 0.7 whenever the server has nothing to run.

The queue order is FCFS: SGLang's default ``lpm`` (longest prefix match)
sorts the queue by cached prefix length, stably, so without shared prefixes
(the simulator's SGLang profile has prefix caching off) it keeps arrival
order. The loop's up-to-10 continuous decode steps break after any step
that streams output (``stream_interval`` 1), so under a streaming client the
scheduler runs every step, as here. Not modelled: the request being chunked
is held back while the running batch is full (here it continues), token
slots rather than 16-token KV blocks.

Decode-only steps become decode runs (fast mode) only while no request
waits: each step shrinks the reservation and the ratio, so a refused prompt
may fit one step later.
"""

from __future__ import annotations

from kavier_opendc.engine.kv_manager import BLOCK_SIZE, blocks_for
from kavier_opendc.engine.request import DECODE, PREFILL, WAITING, Req
from kavier_opendc.engine.sched_output import Iteration
from kavier_opendc.engine.scheduler import Scheduler

#: SGLang v0.3 global_config / server_args defaults
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1  # base_min_new_token_ratio x schedule_conservativeness (1.0)
NEW_TOKEN_RATIO_DECAY = 0.001
RETRACT_DECODE_STEPS = 20
CLIP_MAX_NEW_TOKENS = 4096  # SGLANG_CLIP_MAX_NEW_TOKENS
MAX_PREFILL_TOKENS = 16384


class SchedulerSGLang(Scheduler):
    """SGLang v0.3's scheduling rules over a replica's state (see the module doc)."""

    # new_token_ratio = max(ratio_base - DECAY x decode steps since it was set, MIN), counted in steps so that
    # a decode run of n steps and n single steps give the same number
    ratio_base = INIT_NEW_TOKEN_RATIO
    ratio_steps = 0
    no_decay = False  # the step being run retracted: it does not lower the ratio
    inflight: Req | None = None  # the request being prefilled in chunks

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # Replica's, after this class in the replica's MRO
        self.admits_in_decode = False  # on the instance: see SchedulerV0.__init__
        self.caps_runs = True

    @property
    def new_token_ratio(self) -> float:
        r = self.ratio_base - NEW_TOKEN_RATIO_DECAY * self.ratio_steps
        return r if r > MIN_NEW_TOKEN_RATIO else MIN_NEW_TOKEN_RATIO

    def _set_ratio(self, value: float) -> None:
        self.ratio_base = value
        self.ratio_steps = 0

    def _advance(self, t: float) -> None:
        p = self.pending
        if p is not None:
            steps = p.n if p.is_decode_run else (1 if p.decode_tokens else 0)
            if steps and self.no_decay:
                steps -= 1
                self.no_decay = False
            self.ratio_steps += steps
        super()._advance(t)  # type: ignore[misc]   # Replica's, after this class in the replica's MRO

    def _cap_run(self, n: int) -> int:
        """A decode run only while no request waits for admission (each step can change the answer)."""
        return 1 if self.waiting and self.dec.D < self.max_num_seqs else n

    def _schedule(self, t: float) -> float | None:
        running = self.running
        while True:
            if not running and not self.waiting:
                self.busy = False
                self._set_ratio(INIT_NEW_TOKEN_RATIO)
                return None
            if self.waiting or self.n_prefilling:
                end = self._extend_batch(t)
                if end is not None:
                    return end
            if self.dec.D:
                break
            if not self.waiting:
                self.busy = False
                return None
            # nothing runs and the queue's head was refused: it can never be admitted here
            self._set_ratio(INIT_NEW_TOKEN_RATIO)
            self._reject(self.waiting.popleft())
        kv = self.kv
        if self.dec.blocks_needed(1) > kv.capacity - kv.used:
            self._retract()
        budget = self.budget
        if self.dec.D > budget:  # decoders are not limited by the prompt chunk size
            self.budget = self.dec.D
            try:
                return super()._schedule(t)
            finally:
                self.budget = budget
        return super()._schedule(t)

    def _extend_batch(self, t: float) -> float | None:
        """Step 1: an extend batch (the chunked request, then waiting ones); None when nothing is admitted."""
        running = self.running
        waiting = self.waiting
        kv = self.kv
        dec = self.dec
        g = dec.G
        ratio = self.new_token_ratio
        free = kv.capacity - kv.used
        rem_total = float(free * BLOCK_SIZE)
        for r in running:
            if r.state == DECODE:
                left = r.out - r.g_off - g
                rem_total -= (left if left < CLIP_MAX_NEW_TOKENS else CLIP_MAX_NEW_TOKENS) * ratio
        rem_input = MAX_PREFILL_TOKENS
        rem_chunk = self.budget
        chunks: list = []
        alloc = 0
        inflight = self.inflight
        if inflight is not None and inflight.state != PREFILL:
            inflight = self.inflight = None
        if inflight is not None:
            comp = inflight.computed
            rest = inflight.prompt + inflight.gen - comp
            need = rest if rest < rem_chunk else rem_chunk
            nb = blocks_for(comp + need) - blocks_for(comp)
            if nb > free:  # cannot happen after the reservation; recompute it later
                running.remove(inflight)
                self.inflight = None
                self._preempt(inflight)
            else:
                truncated = need < rest
                alloc += nb
                rem_total -= need + (0 if truncated else min(inflight.out - inflight.gen, CLIP_MAX_NEW_TOKENS))
                rem_input -= need
                rem_chunk -= need
                chunks.append((inflight, need))
                if not truncated:
                    self.inflight = None
        while waiting and not self.inflight:
            if rem_total <= 0 or rem_input <= 0 or rem_chunk <= 0:
                break
            if dec.D + len(chunks) >= self.max_num_seqs:
                break
            req = waiting[0]
            ext = req.prompt + req.gen
            # what is left of its output (a retracted request has generated some: SGLang's PrefillAdder
            # reserves max_new_tokens - len(output_ids))
            full = min(req.out - req.gen, CLIP_MAX_NEW_TOKENS)
            if ext + full >= rem_total:
                break
            if ext > rem_input and chunks:
                break
            need = ext if ext <= rem_chunk else rem_chunk
            truncated = need < ext
            nb = blocks_for(need)
            if nb > free - alloc:
                break
            waiting.popleft()
            running.append(req)
            req.state = PREFILL
            self.n_prefilling += 1
            if req.first_sched < 0:
                req.first_sched = t
            alloc += nb
            rem_total -= need + (0 if truncated else full)
            rem_input -= need
            rem_chunk -= need
            chunks.append((req, need))
            if truncated:
                self.inflight = req
        if not chunks:
            return None
        self.busy = True
        kv.allocate(alloc)
        n_tok = pairs = kv_read = 0
        for req, need in chunks:
            comp = req.computed
            n_tok += need
            pairs += need * comp + need * (need + 1) // 2
            kv_read += comp
        dt, flops, wbytes, kvbytes = self.cm.iteration(n_tok, pairs, kv_read, len(chunks))
        self.pending = Iteration(t, False, [], chunks, flops, wbytes, kvbytes, len(chunks), n_tok, 0)
        self.next_time = t + dt
        self.version += 1
        return self.next_time

    def _retract(self) -> None:
        """Step 2's retraction: the fewest-generated decoders go back to the end of the queue."""
        dec = self.dec
        kv = self.kv
        g = dec.G
        decoders = [r for r in self.running if r.state == DECODE]
        decoders.sort(key=lambda r: (r.g_off + g, -r.prompt), reverse=True)
        while len(decoders) > 1 and dec.blocks_needed(RETRACT_DECODE_STEPS) > kv.capacity - kv.used:
            r = decoders.pop()
            self.running.remove(r)
            dec.remove(r)
            kv.release(r, r.computed)
            r.computed = 0
            r.state = WAITING
            r.preempt += 1
            self.preemptions += 1
            self.waiting.add(r)
        gen = sum(r.g_off + g for r in decoders)
        total = sum(r.out for r in decoders)
        self._set_ratio(min(1.0, (gen + RETRACT_DECODE_STEPS * len(decoders)) / total))
        self.no_decay = True

    def _reject(self, req: Req) -> None:
        """A request this replica can never serve under these limits."""
        self.res.record_reject(req.idx, self.idx, self.t)
        self.outstanding -= 1
