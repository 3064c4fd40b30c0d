"""Fit a serving framework to load points: a server measured at constant request rates.

A load point is one stage of a rate sweep (inference-perf, ``kavier trace``
replays, a benchmark's serving runs): requests of known mean lengths sent at
a rate, with the mean TTFT and e2e a client measured. Unlike single steps, a
load point's latencies come out of the whole serving dynamics (batching,
queueing), so each point is simulated. The framework's CPU time per step
(fixed + per running sequence) minimises the relative error of the
simulated time per output token. With each point's batch held fixed, a
request's time per token is the simulated one plus fixed + per_seq x B,
where B is the batch its decode steps ran in (steps weighted by their
sequences): one linear solve. The batch answers the overheads only through
queueing, so a few such solves, each at the batches of the previous
overheads, converge below the knee; a Nelder-Mead search on the simulated
error itself then polishes (near the knee the batch grows fast). The client latency (request handling and
streaming outside the engine) is then the median of measured minus
simulated TTFT.

Only points the server kept up with (achieved rate within 3 % of the
requested one) and at most 90 % of the highest rate achieved in their sweep
are fitted: past saturation, and close to it, the latencies measure the
length of the benchmark's queue, not the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.calibration.fit import bounded_lstsq, nelder_mead
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs.catalog import Catalog
from kavier_opendc.specs.frameworks import FrameworkProfile, StepOverhead
from kavier_opendc.workload.trace import Trace

KEPT_UP = 0.97  # achieved / requested rate above which a point counts as not saturated
BELOW_KNEE = 0.9  # and its rate at most this share of its sweep's highest achieved rate (queueing grows there)


@dataclass(frozen=True)
class LoadPoint:
    """One constant-rate stage measured at a client."""

    source: str
    label: str
    sweep: str  # the rate sweep the point belongs to (one server configuration)
    model: str
    gpu: str
    tp: int
    rate_rps: float
    achieved_rps: float
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    e2e_s: float
    duration_s: float = 60.0
    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    max_model_len: int | None = None
    requests: Trace | None = None  # the requests as sent (a replay), instead of a constant rate
    mean_per_token_s: float | None = None  # a replay's mean over requests of their time per token

    @property
    def per_token_s(self) -> float:
        """Time per output token after the first, as the client saw it."""
        if self.mean_per_token_s is not None:
            return self.mean_per_token_s
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def trace(self) -> Trace:
        """The stage's requests: as sent, or evenly spaced at the rate (a constant-rate load generator)."""
        if self.requests is not None:
            return self.requests
        n = max(1, int(round(self.rate_rps * self.duration_s)))
        return Trace(
            np.arange(n) / self.rate_rps,
            np.full(n, self.prompt_tokens, dtype=np.int64),
            np.full(n, self.output_tokens, dtype=np.int64),
            source=self.source,
            format="kavier",
        )


@dataclass
class SimulatedPoint:
    point: LoadPoint
    ttft_s: float
    per_token_s: float
    batch: float  # sequences per decode step, as the requests saw them


@dataclass
class LoadSweepFit:
    overhead: StepOverhead
    client_latency_s: float
    points: list[SimulatedPoint] = field(default_factory=list)
    left_out: list[LoadPoint] = field(default_factory=list)

    def errors(self) -> dict[str, list[float]]:
        """Relative errors of the fitted framework: per-token time and TTFT (client clock)."""
        out: dict[str, list[float]] = {"per_token": [], "ttft": []}
        for s in self.points:
            out["per_token"].append(abs(s.per_token_s - s.point.per_token_s) / s.point.per_token_s)
            out["ttft"].append(abs(s.ttft_s + self.client_latency_s - s.point.ttft_s) / s.point.ttft_s)
        return out


def simulate_point(point: LoadPoint, catalog: Catalog, fw: FrameworkProfile) -> SimulatedPoint:
    cfg = SimConfig(
        model=catalog.model(point.model),
        gpu=catalog.gpu(point.gpu),
        tp=point.tp,
        framework=fw,
        usage="server" if fw.serving_path == "auto" else "auto",
        max_num_seqs=point.max_num_seqs,
        max_batched_tokens=point.max_batched_tokens,
        max_model_len=point.max_model_len,
    )
    res = simulate(point.trace(), cfg, progress=False)
    r, tr = res.results, res.trace
    done = r.status == 1
    ttft = float(np.mean((r.first_token - tr.arrival_s)[done]))
    many = done & (tr.num_output_tokens > 1)
    per_token = float(np.mean(((r.finish - r.first_token)[many] / (tr.num_output_tokens[many] - 1))))
    num = den = 0.0
    for rep in res.replicas:
        tl = rep.timeline
        dec = np.asarray(tl.decode, dtype=np.float64)
        num += float(np.dot(dec, np.asarray(tl.batch, dtype=np.float64)))
        den += float(dec.sum())
    return SimulatedPoint(point, ttft, per_token, num / den if den else 1.0)


def fit_load_sweep(
    points: list[LoadPoint], catalog: Catalog, base: FrameworkProfile, evaluations: int = 40
) -> LoadSweepFit:
    """Step overhead (fixed + per sequence) and client latency of ``base``'s engine from ``points``."""
    top: dict[str, float] = {}
    for p in points:
        top[p.sweep] = max(top.get(p.sweep, 0.0), p.achieved_rps)
    # a replay (sweep "") stands alone: the user chose rates the server kept up with
    kept = [
        p
        for p in points
        if not p.sweep or (p.achieved_rps >= KEPT_UP * p.rate_rps and p.rate_rps <= BELOW_KNEE * top[p.sweep])
    ]
    left = [p for p in points if p not in kept]
    if len(kept) < 2:
        raise KavierInputError(
            f"{len(kept)} load point(s) below the saturation knee: the overhead per step and per sequence "
            "need at least two rates the server kept up with, under 90 % of its highest achieved rate",
            source=", ".join(sorted({p.source for p in points})),
            location="requested_rate_rps",
            expected="a rate sweep with two or more unsaturated stages",
        )
    gpus = {(p.gpu, p.tp) for p in kept}
    if len(gpus) != 1:
        raise KavierInputError(
            "a load sweep is fitted per GPU and TP; these points mix "
            + ", ".join(f"{g} TP{t}" for g, t in sorted(gpus)),
            source=kept[0].source,
        )
    ((gpu, tp),) = gpus

    def run(over: StepOverhead) -> list[SimulatedPoint]:
        fw = dataclasses.replace(base, step_overhead={(gpu, tp): over}, client_latency_s=0.0)
        return [simulate_point(p, catalog, fw) for p in kept]

    def linear(over: StepOverhead, sims: list[SimulatedPoint]) -> StepOverhead:
        """The overheads that give every point its measured time per token at its simulated batch."""
        rows, rhs = [], []
        for s in sims:
            w = 1.0 / s.point.per_token_s
            kernel = s.per_token_s - over.fixed_s - over.per_seq_s * s.batch
            rows.append([w, s.batch * w])
            rhs.append((s.point.per_token_s - kernel) * w)
        x = bounded_lstsq(np.array(rows), np.array(rhs), np.zeros(2), np.ones(2, dtype=bool))
        return StepOverhead(fixed_s=float(x[0]), per_seq_s=float(x[1]))

    # the batch answers the overheads only through queueing: a few linear solves at the simulated batches
    # converge below the knee; a Nelder-Mead search on the simulated error itself then polishes
    over = StepOverhead(fixed_s=0.001, per_seq_s=0.0)
    for _ in range(6):
        new = linear(over, run(over))
        done = abs(new.fixed_s - over.fixed_s) <= 1e-3 * max(new.fixed_s, 1e-6) and abs(
            new.per_seq_s - over.per_seq_s
        ) <= 1e-3 * max(new.per_seq_s, 1e-9)
        over = new
        if done:
            break
    x0 = np.array([max(over.fixed_s, 1e-4), max(over.per_seq_s, 1e-6)])

    def loss(v: np.ndarray) -> float:
        if (v < 0).any():
            return 1e3 + float(-v[v < 0].sum())
        sim = run(StepOverhead(fixed_s=float(v[0] * x0[0]), per_seq_s=float(v[1] * x0[1])))
        return float(np.mean([abs(s.per_token_s - s.point.per_token_s) / s.point.per_token_s for s in sim]))

    v = np.maximum(nelder_mead(loss, np.ones(2), step=0.3, iters=evaluations), 0.0)
    polished = StepOverhead(fixed_s=float(v[0] * x0[0]), per_seq_s=float(v[1] * x0[1]))
    if loss(v) < loss(np.ones(2)):
        over = polished
    sims = run(over)
    # queueing near the knee inflates some points' TTFT: the median gap is the server's own time
    client = max(0.0, float(np.median([s.point.ttft_s - s.ttft_s for s in sims])))
    return LoadSweepFit(over, client, sims, left)


def replay_point(run_dir: Path, model: str, gpu: str, tp: int = 1) -> LoadPoint:
    """A ``kavier trace`` replay folder as a load point: its requests as sent and their measured means."""
    import pandas as pd

    path = Path(run_dir) / "requests.parquet"
    if not path.is_file():
        raise KavierInputError(
            "not a 'kavier trace' replay folder: no requests.parquet",
            source=str(run_dir),
            expected="the --out folder of 'kavier trace --mode replay'",
        )
    try:
        df = pd.read_parquet(
            path, columns=["arrival_s", "num_input_tokens", "num_output_tokens", "ttft_s", "e2e_s", "status"]
        )
    except (OSError, ValueError, KeyError) as exc:
        raise KavierInputError(f"unreadable or without the tracer's columns ({exc})", source=str(path)) from None
    ok = (df["status"] == "finished") & (df["num_output_tokens"] > 1)
    if ok.sum() < 2:
        raise KavierInputError(
            f"{int(ok.sum())} finished request(s) with more than one output token",
            source=str(path),
            location="status",
            expected="a replay with at least 2",
        )
    if (df["status"] != "finished").any():
        raise KavierInputError(
            f"{int((df['status'] != 'finished').sum())} request(s) did not finish: a replay "
            "with failures does not say what the server did",
            source=str(path),
            location="status",
            expected="a replay whose requests all finished",
        )
    arr = df["arrival_s"].to_numpy(dtype=float)
    arr = arr - arr.min()
    order = np.argsort(arr, kind="stable")
    prompts = df["num_input_tokens"].to_numpy(dtype=np.int64)[order]
    outs = df["num_output_tokens"].to_numpy(dtype=np.int64)[order]
    trace = Trace(arr[order], prompts, outs, source=str(path), format="kavier")
    m = df[ok]
    per_token = float(((m["e2e_s"] - m["ttft_s"]) / (m["num_output_tokens"] - 1)).mean())
    duration = float(arr.max()) if len(arr) > 1 else 1.0
    rate = len(arr) / duration if duration > 0 else float(len(arr))
    return LoadPoint(
        str(run_dir),
        Path(run_dir).name,
        "",
        model,
        gpu,
        tp,
        rate,
        rate,
        int(round(float(m["num_input_tokens"].mean()))),
        int(round(float(m["num_output_tokens"].mean()))),
        float(m["ttft_s"].mean()),
        float(m["e2e_s"].mean()),
        duration,
        requests=trace,
        mean_per_token_s=per_token,
    )
