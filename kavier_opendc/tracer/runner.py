"""The two measurement modes and the loop that sends requests on time.

* sweep: single requests, one at a time, over a grid of prompt lengths x output
  lengths, repeated; after ``warmup`` unrecorded requests.
* replay: a trace's requests at their arrival times (or Poisson at ``rate``, or
  all at once), at most ``concurrency`` in flight; a request that finds every
  slot taken waits on the client and its wait is recorded (``client_wait_s``).

Times are seconds on one clock (``time.perf_counter``) from the start of the
run (the moment the first request may be sent).  SIGINT (Ctrl-C) stops the
run: requests in flight are cancelled, the rest are not sent, and the
measurement returns with ``interrupted`` set so the caller writes what was
measured, marked incomplete.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aiohttp
import numpy as np

from kavier_opendc.base.errors import KavierRuntimeError
from kavier_opendc.tracer.client import Endpoint, RequestFailed, RequestRecord
from kavier_opendc.tracer.prompts import PromptBuilder


class Interrupted(Exception):
    """SIGINT before anything was measured: nothing to write."""


def _lost(endpoint: Endpoint, what: str, exc: BaseException) -> KavierRuntimeError:
    """The endpoint failed while the run was being prepared (after its check): one error, nothing written."""
    if isinstance(exc, TimeoutError):
        why = "no answer within the timeouts"
    else:
        why = endpoint.quote(str(exc) or type(exc).__name__)
    return KavierRuntimeError(
        f"{endpoint.public} stopped answering while {what} ({why}); nothing was measured and nothing written"
    )


_PREP_ERRORS = (RequestFailed, aiohttp.ClientError, TimeoutError, OSError)


@dataclass
class Plan:
    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass
class Measurement:
    mode: str
    records: list[RequestRecord]
    interrupted: bool = False
    prompt_method: str = ""
    chars_per_token: float | None = None
    endpoint_info: dict = field(default_factory=dict)
    started_at_utc: str = ""
    wall_s: float = 0.0
    settings: dict = field(default_factory=dict)


# ------------------------------------------------------------------ plans
def replay_plans(
    trace, *, rate: float | None = None, all_at_once: bool = False, seed: int = 0, limit: int | None = None
) -> list[Plan]:
    """One plan per trace request: the trace's arrival times, Poisson arrivals at ``rate``, or all at 0."""
    n = len(trace) if limit is None else min(limit, len(trace))
    if all_at_once:
        arrivals = np.zeros(n)
    elif rate is not None:
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])]) if n else np.zeros(0)
    else:
        arrivals = np.asarray(trace.arrival_s[:n], dtype=np.float64)
    return [
        Plan(i, float(arrivals[i]), int(trace.num_input_tokens[i]), int(trace.num_output_tokens[i])) for i in range(n)
    ]


def sweep_plans(prompt_lengths: list[int], output_lengths: list[int], repetitions: int) -> list[Plan]:
    """Repetition-major order, so a slow drift of the server spreads over every grid point."""
    plans = []
    for _ in range(repetitions):
        for p in prompt_lengths:
            for o in output_lengths:
                plans.append(Plan(len(plans), 0.0, int(p), int(o)))
    return plans


# ------------------------------------------------------------------ the loop
async def _until(aw, stop: asyncio.Event) -> bool:
    """Await ``aw`` unless ``stop`` is set first; True when ``aw`` completed (its error propagates)."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task in done:
        task.result()  # its exception, if any, is the caller's
        return True
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the stop wins
        pass
    return False


def _progress(total: int, desc: str, enabled: bool | None):
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit="req", disable=not show, file=sys.stderr, dynamic_ncols=True)


async def measure(
    endpoint: Endpoint,
    plans: list[Plan],
    *,
    mode: str,
    concurrency: int = 1,
    seed: int = 0,
    warmup: int = 0,
    progress: bool | None = None,
    stop: asyncio.Event | None = None,
) -> Measurement:
    stop = stop or asyncio.Event()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_wall = time.perf_counter()
    async with endpoint:
        checked = asyncio.ensure_future(endpoint.check())
        if not await _until(checked, stop):
            raise Interrupted
        info = checked.result()
        builder = PromptBuilder(endpoint, seed)
        if not await _until(builder.calibrate(time.perf_counter()), stop):
            raise Interrupted
        sem_build = asyncio.Semaphore(16)

        async def build(plan: Plan):
            async with sem_build:
                return await builder.build(plan.request_id, plan.input_tokens)

        built = asyncio.gather(*(build(p) for p in plans))
        try:
            if not await _until(built, stop):
                raise Interrupted
        except _PREP_ERRORS as exc:
            raise _lost(endpoint, "the prompts were prepared (POST /tokenize)", exc) from None
        prompts = built.result()
        for i in range(warmup):  # warm the server (CUDA graphs, caches); not recorded
            w = plans[i % len(plans)] if plans else Plan(0, 0.0, 16, 4)
            try:
                text, _ = await builder.build(-10 - i, w.input_tokens)
            except _PREP_ERRORS as exc:
                raise _lost(endpoint, "the warm-up prompts were prepared (POST /tokenize)", exc) from None
            if not await _until(
                endpoint.stream(RequestRecord(-1, 0.0, 0, 0), text, w.output_tokens, time.perf_counter()), stop
            ):
                raise Interrupted
        records = [
            RequestRecord(
                p.request_id, p.arrival_s, p.input_tokens, p.output_tokens, expected_input_tokens=prompts[i][1]
            )
            for i, p in enumerate(plans)
        ]
        bar = _progress(len(plans), mode, progress)
        sem = asyncio.Semaphore(max(1, concurrency))
        tasks: set[asyncio.Task] = set()

        async def one(rec: RequestRecord, text: str, max_tokens: int) -> None:
            try:
                await endpoint.stream(rec, text, max_tokens, t0)
            except asyncio.CancelledError:
                rec.status = "cancelled"
                rec.error_kind, rec.error = "cancelled", "interrupted before the answer was complete"
                raise
            except Exception as exc:  # noqa: BLE001 - a fault the client did not foresee: still one failed request
                rec.status, rec.error_kind = "error", "client"
                rec.error = endpoint.quote(f"{type(exc).__name__}: {exc}")
            finally:
                sem.release()
                bar.update(1)

        gc.collect()
        gc.freeze()  # the collector then skips every object made so far: no long pauses mid-run
        try:
            t0 = time.perf_counter()
            for rec, plan, (text, _) in zip(records, plans, prompts, strict=True):
                if stop.is_set():
                    break
                delay = t0 + plan.arrival_s - time.perf_counter()
                if delay > 0 and not await _until(asyncio.sleep(delay), stop):
                    break
                if not await _until(sem.acquire(), stop):
                    break
                tasks.add(asyncio.create_task(one(rec, text, plan.output_tokens)))
            pending = {t for t in tasks if not t.done()}
            while pending and not stop.is_set():
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                pending = {t for t in tasks if not t.done()}
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            bar.close()
            gc.unfreeze()
    return Measurement(
        mode=mode,
        records=records,
        interrupted=stop.is_set(),
        prompt_method=builder.method,
        chars_per_token=builder.chars_per_token,
        endpoint_info=info,
        started_at_utc=started,
        wall_s=time.perf_counter() - t_wall,
    )


def run_measurement(endpoint: Endpoint, plans: list[Plan], **kw) -> Measurement:
    """Run :func:`measure` in a fresh event loop; SIGINT stops the run gracefully (see the module doc)."""

    async def main() -> Measurement:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = False
        try:
            loop.add_signal_handler(signal.SIGINT, stop.set)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        try:
            return await measure(endpoint, plans, stop=stop, **kw)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except Interrupted:
        raise KeyboardInterrupt from None
