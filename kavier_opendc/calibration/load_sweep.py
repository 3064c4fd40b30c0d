"""Fit a serving framework to load points: a server measured at constant request rates.

A load point is one stage of a rate sweep (inference-perf, ``kavier trace``
replays, a benchmark's serving runs): requests of known mean lengths sent at
a rate, with the mean TTFT and e2e a client measured. Unlike single steps, a
load point's latencies come out of the whole serving dynamics (batching,
queueing), so each point is simulated. The framework's CPU time per step
(fixed + per running sequence) minimises the mean relative error of the
simulated time per output token. A first guess holds each point's batch
fixed: a request's time per token is then the simulated one plus fixed +
per_seq x B, where B is the batch its decode steps ran in (steps weighted by
their sequences), one linear solve; from there a Nelder-Mead search over the
simulated error itself takes the queueing feedback into account (more CPU
time per step, larger batches). The client latency (request handling and
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

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.calibration.fit import bounded_lstsq, nelder_mead
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs.catalog import Catalog
from kavier_opendc.specs.frameworks import FrameworkProfile, StepOverhead
from kavier_opendc.workload.trace import Trace

KEPT_UP = 0.97   # achieved / requested rate above which a point counts as not saturated
BELOW_KNEE = 0.9  # and its rate at most this share of its sweep's highest achieved rate (queueing grows there)


@dataclass(frozen=True)
class LoadPoint:
    """One constant-rate stage measured at a client."""

    source: str
    label: str
    sweep: str            # the rate sweep the point belongs to (one server configuration)
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

    @property
    def per_token_s(self) -> float:
        """Time per output token after the first, as the client saw it."""
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def trace(self) -> Trace:
        """The stage's requests: evenly spaced at the rate (a constant-rate load generator)."""
        n = max(1, int(round(self.rate_rps * self.duration_s)))
        return Trace(np.arange(n) / self.rate_rps, np.full(n, self.prompt_tokens, dtype=np.int64),
                     np.full(n, self.output_tokens, dtype=np.int64), source=self.source, format="kavier")


@dataclass
class SimulatedPoint:
    point: LoadPoint
    ttft_s: float
    per_token_s: float
    batch: float          # sequences per decode step, as the requests saw them


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
    cfg = SimConfig(model=catalog.model(point.model), gpu=catalog.gpu(point.gpu), tp=point.tp, framework=fw,
                    usage="server" if fw.serving_path == "auto" else "auto", max_num_seqs=point.max_num_seqs,
                    max_batched_tokens=point.max_batched_tokens, max_model_len=point.max_model_len)
    res = simulate(point.trace(), cfg, progress=False)
    r, tr = res.results, res.trace
    done = r.status == 1
    ttft = float(np.mean((r.first_token - tr.arrival_s)[done]))
    per_token = float(np.mean(((r.finish - r.first_token) / (tr.num_output_tokens - 1))[done]))
    num = den = 0.0
    for rep in res.replicas:
        tl = rep.timeline
        dec = np.asarray(tl.decode, dtype=np.float64)
        num += float(np.dot(dec, np.asarray(tl.batch, dtype=np.float64)))
        den += float(dec.sum())
    return SimulatedPoint(point, ttft, per_token, num / den if den else 1.0)


def fit_load_sweep(points: list[LoadPoint], catalog: Catalog, base: FrameworkProfile,
                   evaluations: int = 40) -> LoadSweepFit:
    """Step overhead (fixed + per sequence) and client latency of ``base``'s engine from ``points``."""
    top: dict[str, float] = {}
    for p in points:
        top[p.sweep] = max(top.get(p.sweep, 0.0), p.achieved_rps)
    kept = [p for p in points if p.achieved_rps >= KEPT_UP * p.rate_rps and p.rate_rps <= BELOW_KNEE * top[p.sweep]]
    left = [p for p in points if p not in kept]
    if len(kept) < 2:
        raise KavierInputError(
            f"{len(kept)} load point(s) below the saturation knee: the overhead per step and per sequence "
            "need at least two rates the server kept up with, under 90 % of its highest achieved rate",
            source=", ".join(sorted({p.source for p in points})),
            location="requested_rate_rps", expected="a rate sweep with two or more unsaturated stages")
    gpus = {(p.gpu, p.tp) for p in kept}
    if len(gpus) != 1:
        raise KavierInputError("a load sweep is fitted per GPU and TP; these points mix " +
                               ", ".join(f"{g} TP{t}" for g, t in sorted(gpus)), source=kept[0].source)
    (gpu, tp), = gpus

    def run(over: StepOverhead) -> list[SimulatedPoint]:
        fw = dataclasses.replace(base, step_overhead={(gpu, tp): over}, client_latency_s=0.0)
        return [simulate_point(p, catalog, fw) for p in kept]

    # a first guess with each point's batch held fixed (one linear solve), then the simulated error itself
    over = StepOverhead(fixed_s=0.001, per_seq_s=0.0)
    sims = run(over)
    rows, rhs = [], []
    for s in sims:
        w = 1.0 / s.point.per_token_s
        kernel = s.per_token_s - over.fixed_s - over.per_seq_s * s.batch
        rows.append([w, s.batch * w])
        rhs.append((s.point.per_token_s - kernel) * w)
    x0 = bounded_lstsq(np.array(rows), np.array(rhs), np.zeros(2), np.ones(2, dtype=bool))
    scale = np.array([1e-3, 1e-5])          # search in ms per step and 10 us per sequence

    def loss(v: np.ndarray) -> float:
        if (v < 0).any():
            return 1e3 + float(-v[v < 0].sum())
        sim = run(StepOverhead(fixed_s=float(v[0] * scale[0]), per_seq_s=float(v[1] * scale[1])))
        return float(np.mean([abs(s.per_token_s - s.point.per_token_s) / s.point.per_token_s for s in sim]))

    v = nelder_mead(loss, np.maximum(x0 / scale, 0.05), step=0.5, iters=evaluations)
    v = np.maximum(v, 0.0)
    over = StepOverhead(fixed_s=float(v[0] * scale[0]), per_seq_s=float(v[1] * scale[1]))
    sims = run(over)
    # queueing near the knee inflates some points' TTFT: the median gap is the server's own time
    client = max(0.0, float(np.median([s.point.ttft_s - s.ttft_s for s in sims])))
    return LoadSweepFit(over, client, sims, left)
