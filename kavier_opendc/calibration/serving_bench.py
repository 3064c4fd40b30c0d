"""Fit a serving framework to a serving benchmark's medians: ShareGPT prompts sent at a rate, each row simulated.

A row of ``sglang.bench_serving`` (or vLLM's ``benchmark_serving``, its
ancestor) is a number of ShareGPT prompts sent to an API server as a Poisson
process at a rate, with the client's median TTFT, time per output token
(TPOT: (e2e - TTFT) / (output tokens - 1) per request), inter-token gap and
e2e; a rate of ``inf`` sends them all at once and reports the throughput.
Only medians are published, of requests whose lengths are not, so the
requests are re-drawn (:func:`sharegpt_trace`):

- lengths from the shared ShareGPT length table, filtered as the benchmark
  filters ShareGPT (prompt and answer of at least 4 tokens, prompt at most
  1,024, both at most 2,048), drawn without replacement with a fixed seed;
- answers mapped to the benchmark's own output lengths where they are known,
  because the table's answers (another tokenizer, another cut of ShareGPT)
  are longer and less skewed: a power law ``c x length^b`` (monotone, so the
  shape's order is kept) gives them the benchmark's mean (the offline rows:
  output tokens/s over requests/s) and median (the online rows: (e2e -
  TTFT) / TPOT + 1, the length of the median request);
- arrivals a Poisson process at the row's rate (exponential gaps, as the
  benchmark draws them), all at t = 0 for ``inf``.

Each row is simulated whole; the framework's CPU time per engine step
(``fixed_s``, one per GPU and TP) is the one whose simulated median TPOT
matches the measured ones best (mean relative error over the rows, a 1-D
search: the TPOT grows with it monotonically), and the client latency is the
median over all rows of measured minus simulated TTFT. Two rows per GPU and
TP fit one number each: no per-sequence term.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.itl import itl_of
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs.catalog import Catalog
from kavier_opendc.specs.frameworks import FrameworkProfile, StepOverhead
from kavier_opendc.workload.trace import Trace

SEED = 1  # the benchmark's default --seed
MAX_PROMPT = 1024  # the benchmark's ShareGPT filter
MAX_TOTAL = 2048
MIN_LEN = 4


@dataclass(frozen=True)
class BenchRow:
    """One row of a serving benchmark: medians (s) online, throughput offline (rate inf)."""

    source: str
    engine: str
    model: str
    gpu: str
    tp: int
    rate_rps: float
    num_prompts: int
    ttft_s: float = math.nan
    tpot_s: float = math.nan
    itl_s: float = math.nan
    e2e_s: float = math.nan
    request_throughput_rps: float = math.nan
    output_tok_s: float = math.nan

    @property
    def online(self) -> bool:
        return math.isfinite(self.rate_rps)

    @property
    def label(self) -> str:
        return f"{self.model} {self.tp}x{self.gpu} " + (f"{self.rate_rps:g} req/s" if self.online else "offline")


@dataclass
class SimulatedRow:
    row: BenchRow
    ttft_s: float  # medians on the engine's clock (no client latency)
    tpot_s: float
    e2e_s: float
    request_throughput_rps: float
    itl_s: float = math.nan  # median gap between streamed chunks, every request's pooled (engine/itl.py)


@dataclass
class BenchFit:
    overheads: dict[tuple[str, int], StepOverhead]
    client_latency_s: float
    online: list[SimulatedRow] = field(default_factory=list)
    offline: list[SimulatedRow] = field(default_factory=list)

    def errors(self, s: SimulatedRow) -> dict[str, float]:
        """Relative errors of one online row on the client's clock: TTFT, TPOT and e2e medians."""
        c, r = self.client_latency_s, s.row
        return {
            "ttft": abs(s.ttft_s + c - r.ttft_s) / r.ttft_s,
            "tpot": abs(s.tpot_s - r.tpot_s) / r.tpot_s,
            "e2e": abs(s.e2e_s + c - r.e2e_s) / r.e2e_s,
        }


def workload_lengths(rows: list[BenchRow]) -> tuple[float, float]:
    """The benchmark's mean output length (offline rows: tokens over requests) and median (online rows:
    (e2e - TTFT) / TPOT + 1, the median over rows): facts of its prompts, the same whatever the engine."""
    off = [r.output_tok_s / r.request_throughput_rps for r in rows if not r.online]
    on = [(r.e2e_s - r.ttft_s) / r.tpot_s + 1 for r in rows if r.online]
    if not off or not on:
        raise KavierInputError(
            "the output lengths need offline (throughput) and online (median) rows",
            source=", ".join(sorted({r.source for r in rows})),
        )
    return float(np.mean(off)), float(np.median(on))


def read_rows(path: str | Path, models: dict[str, str], gpus: dict[str, str]) -> list[BenchRow]:
    """The rows of a benchmark table (the columns of sglang030_vllm060_sharegpt.csv), names mapped to the
    catalogue's by ``models`` and ``gpus``."""

    def num(r: dict, key: str) -> float:
        v = r.get(key) or ""
        return float(v) if v.strip() else math.nan

    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line, r in enumerate(csv.DictReader(fh), start=2):
            try:
                out.append(
                    BenchRow(
                        str(path),
                        r["engine"],
                        models[r["model"]],
                        gpus[r["gpu"]],
                        int(r["tp"]),
                        float(r["request_rate_rps"]),
                        int(r["num_prompts"]),
                        num(r, "median_ttft_ms") / 1e3,
                        num(r, "median_tpot_ms") / 1e3,
                        num(r, "median_itl_ms") / 1e3,
                        num(r, "median_e2e_ms") / 1e3,
                        num(r, "request_throughput_rps"),
                        num(r, "output_tok_s"),
                    )
                )
            except (KeyError, ValueError) as exc:
                raise KavierInputError(
                    f"unreadable row ({exc})",
                    source=str(path),
                    location=f"line {line}",
                    expected="the columns of a serving-benchmark table",
                ) from None
    return out


def sharegpt_lengths(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and answer lengths of the shared ShareGPT table, filtered as the benchmark filters them."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=np.int64, usecols=(0, 1))
    p, o = data["num_prefill_tokens"], data["num_decode_tokens"]
    keep = (p >= MIN_LEN) & (o >= MIN_LEN) & (p <= MAX_PROMPT) & (p + o <= MAX_TOTAL)
    return p[keep], o[keep]


def output_law(o: np.ndarray, mean: float, median: float) -> tuple[float, float]:
    """(c, b) of the power law c x o^b that gives lengths ``o`` the mean and median asked for."""
    x = o.astype(np.float64)
    med = float(np.median(x))
    target = mean / median

    def ratio(b: float) -> float:
        return float(np.mean((x / med) ** b))  # mean / median of o^b

    lo, hi = 1e-3, 8.0
    if not ratio(lo) <= target <= ratio(hi):
        raise KavierInputError(
            f"no power law gives these lengths a mean of {mean:g} and a median of {median:g}",
            expected="a mean / median ratio the length table can reach",
        )
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if ratio(mid) < target:
            lo = mid
        else:
            hi = mid
    b = 0.5 * (lo + hi)
    return median / med**b, b


def sharegpt_trace(
    lengths: tuple[np.ndarray, np.ndarray],
    num_prompts: int,
    rate_rps: float,
    law: tuple[float, float] | None = None,
    seed: int = SEED,
) -> Trace:
    """``num_prompts`` requests of ShareGPT lengths at ``rate_rps`` (Poisson; ``inf``: all at once), their
    answers mapped by the power law ``law`` (:func:`output_law`) when given."""
    p, o = lengths
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(p), size=num_prompts, replace=num_prompts > len(p))
    prompts, outs = p[idx], o[idx].astype(np.float64)
    if law is not None:
        outs = law[0] * outs ** law[1]
    outs = np.maximum(np.rint(outs), 2).astype(np.int64)
    if math.isfinite(rate_rps):
        arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, num_prompts))
        arrivals -= arrivals[0]
    else:
        arrivals = np.zeros(num_prompts)
    return Trace(
        arrivals,
        prompts.astype(np.int64),
        outs,
        source="ShareGPT lengths",
        format="kavier",
        timed=math.isfinite(rate_rps),
    )


def simulate_row(row: BenchRow, trace: Trace, catalog: Catalog, fw: FrameworkProfile) -> SimulatedRow:
    cfg = SimConfig(model=catalog.model(row.model), gpu=catalog.gpu(row.gpu), tp=row.tp, framework=fw)
    res = simulate(trace, cfg, progress=False)
    r, tr = res.results, res.trace
    done = r.status == 1
    many = done & (tr.num_output_tokens > 1)
    ttft = float(np.median((r.first_token - tr.arrival_s)[done]))
    tpot = float(np.median((r.finish - r.first_token)[many] / (tr.num_output_tokens[many] - 1)))
    e2e = float(np.median((r.finish - tr.arrival_s)[done]))
    span = float(np.nanmax(r.finish[done]) - tr.arrival_s.min())
    itl = itl_of(res).pooled["p50"]
    return SimulatedRow(
        row, ttft, tpot, e2e, int(done.sum()) / span if span > 0 else math.nan, math.nan if itl is None else itl
    )


def fit_bench(
    rows: list[BenchRow],
    catalog: Catalog,
    base: FrameworkProfile,
    lengths: tuple[np.ndarray, np.ndarray],
    law: tuple[float, float] | None = None,
    iters: int = 40,
) -> BenchFit:
    """``fixed_s`` per (GPU, TP) from the online rows' median TPOT, the client latency from their TTFT; the
    offline rows are simulated with the result, as a check."""
    online = [r for r in rows if r.online]
    offline = [r for r in rows if not r.online]
    traces = {id(r): sharegpt_trace(lengths, r.num_prompts, r.rate_rps, law) for r in rows}
    groups: dict[tuple[str, int], list[BenchRow]] = {}
    for r in online:
        groups.setdefault((r.gpu, r.tp), []).append(r)
    if not groups:
        raise KavierInputError(
            "no online rows (a finite request rate with median TPOT) to fit",
            source=", ".join(sorted({r.source for r in rows})),
        )
    over: dict[tuple[str, int], StepOverhead] = {}
    sims: list[SimulatedRow] = []
    for (gpu, tp), grp in sorted(groups.items()):

        def run(fixed: float) -> list[SimulatedRow]:
            fw = dataclasses.replace(
                base,
                step_overhead={(gpu, tp): StepOverhead(fixed_s=fixed)},  # noqa: B023
                client_latency_s=0.0,
            )
            return [simulate_row(r, traces[id(r)], catalog, fw) for r in grp]  # noqa: B023

        def bias(fixed: float) -> float:
            return float(np.mean([(s.tpot_s - s.row.tpot_s) / s.row.tpot_s for s in run(fixed)]))

        # the signed mean error grows with the overhead: bisect for its zero (0 if even none is too slow)
        lo, hi = 0.0, 0.002
        if bias(lo) >= 0:
            hi = 0.0
        else:
            while bias(hi) < 0 and hi < 1.0:
                lo, hi = hi, 2 * hi
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                if bias(mid) < 0:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-7:
                    break
        fixed = float(f"{0.5 * (lo + hi):.4g}")
        over[(gpu, tp)] = StepOverhead(fixed_s=fixed)
        sims += run(fixed)
    client = max(0.0, float(f"{float(np.median([s.row.ttft_s - s.ttft_s for s in sims])):.4g}"))
    fw = dataclasses.replace(base, step_overhead=over, client_latency_s=client)
    checks = [simulate_row(r, traces[id(r)], catalog, fw) for r in offline if (r.gpu, r.tp) in over]
    return BenchFit(over, client, sims, checks)
