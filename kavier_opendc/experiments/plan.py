"""`kavier plan`: the configuration to run for a traffic under latency SLOs, at the lowest cost, energy or carbon.

The search (the plan file is described in ``plan_file.py``):

1. **Feasibility, without OpenDC.** For each candidate shape (GPU type or mix,
   TP, batching limits, prefix-cache policy, router) the smallest replica
   count meeting the SLOs is bisected: more replicas never make latency worse
   here (same traffic, spread wider), so attainment is monotone in replicas.
   The largest count is tried first; a shape that misses the SLOs there, or
   cannot run at all (the model does not fit), is pruned. The next count is
   guessed from the GPUs' busy share at the largest count (a shape busy 30 %
   of the time on 8 replicas needs about 3), then bisection closes in. All
   shapes advance at once on the Dask cluster, one run per shape in flight.
2. **Screening.** Each feasible shape at its smallest count gets estimates:
   cost from GPU-hours, energy from the catalogue's linear GPU power in the
   simulated utilisation. Shapes on the estimated Pareto front of cost, energy
   and p99 TTFT, or within ``near_front`` (default 10 %) of the best estimated
   cost or energy, go on; the others are reported as screened out.
3. **OpenDC** runs those shapes (the real datacenter power, energy and grid
   carbon). The best configuration per objective and the Pareto front of
   cost, energy, carbon and p99 TTFT come from these runs.

Every run is a complete `kavier run` output under ``DIR/runs/<id>/`` with the
sweep's ``DONE`` marker, so a re-run (for example with another
``--objective``) reuses every finished run and starts no cluster when nothing
is left to do. Outputs: ``plan.json``, ``plan.md``, ``plan.html``, ``candidates.csv`` and
``candidates.md`` (one row per shape), ``evaluations.csv`` (one row per run),
``front.csv`` and plots under ``plots/``.

**Max sustainable rate** (``--max-rate``): for one shape at a fixed replica
count, the highest arrival rate at which the SLOs still hold, bisected on a
log scale until the bracket is within ``max_rate.tolerance`` (default 5 %).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import (
    INCOMPLETE,
    atomic_write_text,
    check_writable_dir,
    make_dirs,
    output_root,
    write_json_atomic,
)
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.executor import RunExecutor, RunTask
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.plan_file import (
    OBJECTIVES,
    SLO,
    Plan,
    Shape,
    check_embodied_known,
    shape_problems,
    traffic_at,
)
from kavier_opendc.experiments.run_folder import absolutized, clear_done, config_hash, mark_done, run_is_done
from kavier_opendc.experiments.sweep import report_row
from kavier_opendc.opendc.jvm import check_opendc_available
from kavier_opendc.reports.efficiency import slo_mask
from kavier_opendc.reports.html import PLAN_HTML, write_comparison_html

LOG = "plan_log.jsonl"
#: What makes a plan folder complete (a plan; a --max-rate search), and every entry either writes
PLAN_FILES = ("plan.json", "plan.md")
MAX_RATE_FILES = ("max_rate.json", "max_rate.md")
PLAN_ENTRIES = (
    *PLAN_FILES,
    *MAX_RATE_FILES,
    "candidates.csv",
    "candidates.md",
    "evaluations.csv",
    "front.csv",
    PLAN_HTML,
    "plots",
    "runs",
    "traffic",
    LOG,
    INCOMPLETE,
)
METRICS = {
    "cost": "cost_per_mtoken",
    "energy": "wh_per_mtoken",
    "carbon": "gco2_per_mtoken",
    "total-carbon": "total_gco2_per_mtoken",
}
UNITS = {"cost": "cost/Mtoken", "energy": "Wh/Mtoken", "carbon": "gCO2/Mtoken", "total-carbon": "total gCO2/Mtoken"}
FRONT_AXES = ("cost_per_mtoken", "wh_per_mtoken", "gco2_per_mtoken", "ttft_p99_s")


# --------------------------------------------------------------------------
# One run, and whether it meets the SLOs
# --------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One finished run of a shape at a replica count (and rate), judged against the SLOs."""

    shape: Shape
    units: int
    opendc: bool
    run_id: str
    status: str  # done | failed
    meets: bool = False
    why: str = ""  # which SLO it misses, or the failure
    row: dict = field(default_factory=dict)  # report_row() plus the SLO percentiles
    rate: float | None = None


def slo_check(run_dir: Path, slo: SLO) -> tuple[bool, str, dict]:
    """Whether the run in ``run_dir`` meets ``slo``: every request finished, TTFT and TPOT at the percentile
    within their limits, attainment at least the minimum. Returns (meets, why not, the measured values)."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    path = run_dir / "simulation" / "requests.parquet"
    cols = ["ttft_s", "tpot_s", "status"]
    deadlines = "deadline_s" in pq.read_schema(path).names  # a trace with deferrable requests
    req = pd.read_parquet(path, columns=cols + (["deadline_s", "deadline_missed"] if deadlines else []))
    rep = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    q = slo.percentile
    missed = 0
    if deadlines:
        # requests with a deadline are judged by it (a held one's latency is counted from its release); the
        # TTFT/TPOT SLOs are the interactive requests'
        due = req["deadline_s"].notna()
        missed = int(req.loc[due, "deadline_missed"].fillna(True).astype(bool).sum())
        n_due = int(due.sum())
        req = req[~due]
    done = req[req["status"] == "finished"]
    ttft = done["ttft_s"].to_numpy(np.float64)
    tpot = done["tpot_s"].to_numpy(np.float64)
    tpot = tpot[np.isfinite(tpot)]
    vals = {
        "ttft_q_s": float(np.percentile(ttft, q)) if len(ttft) else math.inf,
        "tpot_q_s": float(np.percentile(tpot, q)) if len(tpot) else 0.0,
        "attainment": rep["efficiency"].get("slo_attainment"),
    }
    why = []
    if deadlines:
        vals["deadlines_missed"] = missed
        if len(req):  # the report's attainment, over the interactive requests (rejected ones count as misses)
            ok = slo_mask(
                req["ttft_s"].to_numpy(np.float64),
                req["tpot_s"].to_numpy(np.float64),
                (req["status"] == "finished").to_numpy(),
                slo.ttft_s,
                slo.tpot_s,
            )
            vals["attainment"] = float(ok.mean())
        if missed:
            why.append(f"{missed} of {n_due} deadlines missed")
    if len(done) < len(req):
        why.append(f"{len(req) - len(done)} of {len(req)} requests not finished")
    if slo.ttft_s is not None and vals["ttft_q_s"] > slo.ttft_s:
        why.append(f"p{q:g} TTFT {vals['ttft_q_s']:.3g} s > {slo.ttft_s:g} s")
    if slo.tpot_s is not None and vals["tpot_q_s"] > slo.tpot_s:
        why.append(f"p{q:g} TPOT {vals['tpot_q_s']:.3g} s > {slo.tpot_s:g} s")
    if slo.min_attainment is not None and (vals["attainment"] or 0.0) < slo.min_attainment:
        why.append(f"attainment {vals['attainment'] or 0:.1%} < {slo.min_attainment:.0%}")
    return not why, "; ".join(why), vals


def energy_estimate_wh(report: dict, exp) -> float:
    """The serving GPUs' energy from the catalogue's linear power model in the mean simulated utilisation
    (screening only: OpenDC gives the real figure, with hosts, CPUs and the power model it is given)."""
    p = report["performance"]
    util = float(p.get("gpu_utilization_mean") or 0.0)
    watts = sum(g.gpus * (g.gpu.idle_power_w + (g.gpu.max_power_w - g.gpu.idle_power_w) * util) for g in exp.groups)
    return watts * float(p.get("makespan_s") or 0.0) / 3600.0


# --------------------------------------------------------------------------
# Running: resume from disk, else on the cluster
# --------------------------------------------------------------------------


class PlanRuns:
    """Asks for runs by (shape, replicas, OpenDC, rate) and hands back :class:`Evaluation`s: a run already
    finished on disk (same configuration hash) is read back, any other goes to the Dask cluster, which is
    started on the first such run."""

    def __init__(
        self,
        plan: Plan,
        out: Path,
        *,
        jobs: int,
        scheduler: str | None,
        run_plots: bool,
        command: str,
        say: Callable[[str], None],
    ):
        self.plan, self.out = plan, out
        self.jobs, self.scheduler, self.run_plots, self.command, self.say = jobs, scheduler, run_plots, command, say
        self.executor = None
        self._ready: list[tuple[Any, Evaluation]] = []  # finished on disk, not yet handed back
        self._waiting: dict[str, tuple[Any, tuple, str]] = {}  # run id -> (token, key, config hash)
        self.simulated = {"no_opendc": 0, "opendc": 0}  # runs this invocation computed
        self.reused = 0
        self.evaluations: list[Evaluation] = []
        self._traffic: dict[float | None, Path] = {}  # rate -> the workload file at that rate

    def log(self, **rec) -> None:
        rec.setdefault("time", time.time())
        with open(self.out / LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def traffic(self, rate: float | None = None) -> Path:
        """The workload at ``rate`` (default the plan's), written once per rate and invocation."""
        rate = rate if rate is not None else self.plan.rate
        if rate not in self._traffic:
            self._traffic[rate] = traffic_at(self.plan, rate, self.out / "traffic")
        return self._traffic[rate]

    def run_id(self, shape: Shape, units: int, opendc: bool, rate: float | None) -> str:
        rid = f"{shape.slug}_n{units}"
        if rate is not None:
            rid += f"_rate{rate:.6g}".replace(".", "p")
        return rid + ("_opendc" if opendc else "")

    def ask(self, token: Any, shape: Shape, units: int, opendc: bool, rate: float | None = None) -> None:
        """Request a run; its evaluation comes back from :meth:`next` with ``token``."""

        traffic = self.traffic(rate)
        doc = self.plan.experiment(shape, units, traffic, opendc=opendc)
        rid = self.run_id(shape, units, opendc, rate)
        exp = load_experiment(doc, base_dir=self.plan.base_dir, source=f"{self.plan.source} [{rid}]", opendc=opendc)
        adoc = absolutized(exp)
        h = config_hash(adoc, exp, opendc)
        rd = self.out / "runs" / rid
        key = (shape, units, opendc, rate)
        if run_is_done(rd, h):
            self.reused += 1
            self.log(event="reuse", id=rid)
            self._ready.append((token, self._evaluate(key, rid, "done", "")))
            return
        if self.executor is None:
            self.executor = RunExecutor(
                jobs=self.jobs, scheduler=self.scheduler, log=self.log, say=self.say, prestart_opendc=opendc
            )
            self.executor.__enter__()
        clear_done(rd)
        self._waiting[rid] = (token, key, h)
        self.log(event="submit", id=rid)
        self.executor.submit(
            RunTask(
                rid,
                adoc,
                str(self.plan.base_dir),
                f"{self.plan.source} [{rid}]",
                rd,
                opendc,
                self.run_plots,
                self.command,
            )
        )

    def pending(self) -> bool:
        return bool(self._ready or self._waiting)

    def next(self) -> tuple[Any, Evaluation]:
        """The next finished run (those read back from disk first)."""
        if self._ready:
            return self._ready.pop(0)
        rec = self.executor.next_completed()
        token, key, h = self._waiting.pop(rec.task.id)
        self.simulated["opendc" if key[2] else "no_opendc"] += 1
        if rec.status == "done":
            mark_done(
                rec.task.run_dir, h, id=rec.task.id, finished=rec.end, wall_s=rec.wall_s, pid=rec.pid, worker=rec.worker
            )
        ev = self._evaluate(key, rec.task.id, rec.status, rec.error)
        self.say(
            f"  {rec.task.id}: "
            + ("meets the SLOs" if ev.meets else f"misses ({ev.why})")
            + f" [{self.executor.done} done, {self.executor.running} running, {self.executor.failed} failed]"
        )
        return token, ev

    def _evaluate(self, key: tuple, rid: str, status: str, error: str) -> Evaluation:

        shape, units, opendc, rate = key
        ev = Evaluation(shape, units, opendc, rid, status, rate=rate)
        rd = self.out / "runs" / rid
        if status != "done":
            ev.why = f"run failed: {error}"
        else:
            rep = json.loads((rd / "report.json").read_text(encoding="utf-8"))
            ev.meets, ev.why, vals = slo_check(rd, self.plan.slo)
            ev.row = {**report_row(rep), **vals}
            exp = load_experiment(
                json.loads((rd / "experiment.json").read_text(encoding="utf-8")),
                base_dir=self.plan.base_dir,
                source=str(rd / "experiment.json"),
                opendc=False,
            )
            tokens = (rep["efficiency"].get("tokens") or 0) or 1
            est = energy_estimate_wh(rep, exp)
            ev.row.update(
                energy_estimate_wh=est,
                wh_per_mtoken_estimate=est / tokens * 1e6,
                gpus=sum(g.gpus for g in exp.groups),
                replicas=sum(g.replicas for g in exp.groups),
            )
        self.evaluations.append(ev)
        return ev

    def close(self) -> None:
        if self.executor is not None:
            self.executor.__exit__(None, None, None)
            self.executor = None


# --------------------------------------------------------------------------
# The search for the smallest replica count of each shape
# --------------------------------------------------------------------------


@dataclass
class ShapeSearch:
    """Bisection of one shape's smallest replica count meeting the SLOs, among ``counts`` (default lo..hi; a
    P/D shape: the counts it has a split at).

    Invariant: every count <= ``bad`` misses the SLOs (``bad`` = lo - 1 before any miss); ``good`` (once
    known) meets them, and so does every larger count.
    """

    shape: Shape
    lo: int
    hi: int
    counts: list[int] = field(default_factory=list)
    bad: int = 0
    good: int | None = None
    state: str = "searching"  # searching | feasible | infeasible | invalid
    why: str = ""
    busy_share: float | None = None  # mean GPU utilisation at the largest count
    runs: int = 0

    def __post_init__(self) -> None:
        self.counts = sorted(self.counts) or list(range(self.lo, self.hi + 1))
        self.lo, self.hi = self.counts[0], self.counts[-1]
        self.bad = self.lo - 1

    def _index(self, units: int) -> int:
        """The position of ``units`` among the counts (-1: below them all)."""
        return self.counts.index(units) if units in self.counts else -1

    def next_units(self) -> int | None:
        """The next count to try, or None when the search is over."""
        if self.state != "searching":
            return None
        if self.good is None:
            return self.hi
        bi, gi = self._index(self.bad), self._index(self.good)
        if gi - bi <= 1:
            self.state = "feasible"
            return None
        if self.runs == 1 and self.busy_share is not None:
            # a work-conserving guess: the GPU time the traffic needs, at full use
            want = math.ceil(self.busy_share * self.good)
            between = self.counts[bi + 1 : gi]
            return next((c for c in between if c >= want), between[-1])
        return self.counts[(bi + gi) // 2]

    def record(self, ev: Evaluation) -> None:
        self.runs += 1
        if ev.status != "done":
            self.state, self.why = "infeasible", ev.why
            return
        if ev.units == self.hi and self.good is None:
            self.busy_share = ev.row.get("gpu_utilization_mean")
            if not ev.meets:
                self.state, self.why = "infeasible", f"misses the SLOs even at {self.hi} replicas: {ev.why}"
                return
        if ev.meets:
            self.good = ev.units if self.good is None else min(self.good, ev.units)
        else:
            self.bad = max(self.bad, ev.units)
        if self.good is not None and self._index(self.good) - self._index(self.bad) <= 1:
            self.state = "feasible"


# --------------------------------------------------------------------------
# Pareto front and objectives
# --------------------------------------------------------------------------


def pareto_front(rows: list[dict], axes: tuple[str, ...]) -> list[int]:
    """Indices of the rows no other row dominates (all axes lower is better; missing values count as worst)."""

    def v(r, a):
        x = r.get(a)
        return math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    out = []
    for i, r in enumerate(rows):
        dominated = False
        for j, o in enumerate(rows):
            if i == j:
                continue
            if all(v(o, a) <= v(r, a) for a in axes) and any(v(o, a) < v(r, a) for a in axes):
                dominated = True
                break
        if not dominated:
            out.append(i)
    return out


def objective_scores(rows: list[dict], objective: str | dict) -> list[float]:
    """Lower is better: the objective's metric, or the weighted sum of each metric over its best value."""
    if isinstance(objective, str):
        return [float(r.get(METRICS[objective]) if r.get(METRICS[objective]) is not None else math.inf) for r in rows]
    weights = objective["weights"]
    best = {k: min((r[METRICS[k]] for r in rows if r.get(METRICS[k]) is not None), default=None) for k in weights}
    scores = []
    for r in rows:
        s = 0.0
        for k, w in weights.items():
            x, b = r.get(METRICS[k]), best[k]
            s += math.inf if x is None or not b else w * float(x) / float(b)
        scores.append(s)
    return scores


def objective_name(objective: str | dict) -> str:
    if isinstance(objective, str):
        return objective
    return "weighted " + " + ".join(f"{w:g} x {k}" for k, w in objective["weights"].items())


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------


@dataclass
class PlanResult:
    out: Path
    summary: dict
    text: str


def run_plan(
    plan: Plan,
    out: Path,
    *,
    jobs: int = 2,
    scheduler: str | None = None,
    opendc: bool = True,
    objective: str | dict | None = None,
    quiet: bool = False,
    run_plots: bool = False,
    command: str = "kavier plan",
) -> PlanResult:
    """Search the plan's candidates (see the module docstring); write the outputs into ``out``."""

    t0 = time.perf_counter()
    objective = objective or plan.objective
    check_embodied_known(plan, objective)
    out = Path(out).resolve()  # the experiments name their traffic file by its absolute path
    check_writable_dir(out)
    if opendc and scheduler is None:  # a remote cluster's workers have their own OpenDC
        check_opendc_available()
    # the plan's own folder: once it is removed no writer (driver or worker) makes it again
    with output_root(out):
        make_dirs(out / "runs")

        def say(text: str) -> None:
            if not quiet:
                print(text, file=sys.stderr, flush=True)

        lo, hi = plan.units
        say(f"plan {plan.name}: {len(plan.shapes)} candidate shapes x replicas {lo}..{hi}; SLOs {plan.slo.describe()}")
        runs = PlanRuns(plan, out, jobs=jobs, scheduler=scheduler, run_plots=run_plots, command=command, say=say)
        searches = [ShapeSearch(s, lo, hi, s.counts(lo, hi)) for s in plan.shapes]
        try:
            say("[1/3] feasibility: the smallest replica count meeting the SLOs, per shape (no OpenDC)")
            for s in searches:
                probs = shape_problems(plan, s.shape, s.hi, runs.traffic(), opendc)
                if probs:
                    s.state, s.why = "invalid", "cannot run: " + "; ".join(probs)
                    say(f"  pruned {s.shape.label}: {s.why}")
                    continue
                runs.ask(s, s.shape, s.next_units(), False)
            while runs.pending():
                s, ev = runs.next()
                s.record(ev)
                nxt = s.next_units()
                if nxt is not None:
                    runs.ask(s, s.shape, nxt, False)
                elif s.state == "feasible":
                    say(f"  {s.shape.label}: {s.good} replica(s) needed")
                else:
                    say(f"  pruned {s.shape.label}: {s.why}")

            feasible = [s for s in searches if s.state == "feasible"]
            by_key = {(e.shape, e.units, e.opendc, e.rate): e for e in runs.evaluations}
            screening = [by_key[(s.shape, s.good, False, None)] for s in feasible]
            est_rows = [
                {
                    "cost_per_mtoken": e.row.get("cost_per_mtoken"),
                    "wh_per_mtoken": e.row["wh_per_mtoken_estimate"],
                    "ttft_p99_s": e.row.get("ttft_p99_s"),
                }
                for e in screening
            ]
            on_est_front = set(pareto_front(est_rows, ("cost_per_mtoken", "wh_per_mtoken", "ttft_p99_s")))
            chosen_for_opendc = []
            for i in range(len(screening)):
                near = any(
                    r is not None and est_rows[i][m] is not None and est_rows[i][m] <= (1 + plan.near_front) * r
                    for m, r in (
                        (m, min((x[m] for x in est_rows if x[m] is not None), default=None))
                        for m in ("cost_per_mtoken", "wh_per_mtoken")
                    )
                )
                if i in on_est_front or near:
                    chosen_for_opendc.append(i)
            final: dict[Shape, Evaluation] = {}
            if opendc and screening:
                say(
                    f"[2/3] screening: {len(chosen_for_opendc)} of {len(screening)} feasible shapes on or near the "
                    f"estimated front go to OpenDC"
                )
                say("[3/3] OpenDC: energy and carbon of the shapes near the front")
                for i in chosen_for_opendc:
                    runs.ask(i, screening[i].shape, screening[i].units, True)
                while runs.pending():
                    _, ev = runs.next()
                    final[ev.shape] = ev
            else:
                say("[2/3] screening: OpenDC off, energy is the estimate and carbon is unknown")
                for i in range(len(screening)):
                    if screening[i].row.get("wh_per_mtoken") is None:
                        screening[i].row["wh_per_mtoken"] = screening[i].row["wh_per_mtoken_estimate"]
                    final[screening[i].shape] = screening[i]
        finally:
            runs.close()
        summary = _summarise(plan, searches, final, objective, runs, opendc, time.perf_counter() - t0)
        text = write_plan_outputs(plan, out, summary, runs)
        return PlanResult(out, summary, text)


def _shape_record(s: ShapeSearch, ev: Evaluation | None, screened: Evaluation | None) -> dict:
    rec = {
        "shape": s.shape.label,
        "layout": s.shape.layout,
        "gpu": s.shape.gpu_label,
        "decode_gpu": s.shape.decode_label,
        "tp": s.shape.tp,
        "prefix_cache": s.shape.prefix_cache,
        "router": s.shape.router,
        "max_num_seqs": s.shape.max_num_seqs,
        "max_batched_tokens": s.shape.max_batched_tokens,
        "power_cap_w": s.shape.power_cap_w,
        "expert_parallel": s.shape.expert_parallel,
        "data_parallel_size": s.shape.data_parallel_size,
        "deferral": s.shape.deferral,
        "status": s.state,
        "replicas": None,
        "why": s.why,
        "search_runs": s.runs,
        "opendc": False,
        "run": None,
    }
    if s.state == "feasible":
        src = ev or screened
        rec.update(
            replicas=s.shape.replicas_of(s.good),
            units=s.good,
            gpus=src.row.get("gpus"),
            opendc=ev is not None and ev.opendc,
            run=src.run_id,
            **s.shape.pool_sizes(s.good),
        )
        if ev is None:
            rec["status"] = "screened out"
        for k in (
            "cost_per_mtoken",
            "wh_per_mtoken",
            "gco2_per_mtoken",
            "total_gco2_per_mtoken",
            "energy_wh",
            "carbon_g",
            "ttft_p50_s",
            "ttft_p99_s",
            "tpot_p99_s",
            "slo_attainment",
            "prefix_cache_hit_ratio",
            "gpu_utilization_mean",
            "wh_per_mtoken_estimate",
            "ttft_q_s",
            "tpot_q_s",
        ):
            rec[k] = src.row.get(k)
    return rec


def _summarise(
    plan: Plan, searches: list[ShapeSearch], final: dict, objective, runs: PlanRuns, opendc: bool, wall_s: float
) -> dict:
    by_key = {(e.shape, e.units, e.opendc, e.rate): e for e in runs.evaluations}
    shapes = [_shape_record(s, final.get(s.shape), by_key.get((s.shape, s.good, False, None))) for s in searches]
    evaluated = [r for r in shapes if r["status"] == "feasible"]
    front_idx = pareto_front(evaluated, FRONT_AXES if opendc else ("cost_per_mtoken", "wh_per_mtoken", "ttft_p99_s"))
    for i, r in enumerate(evaluated):
        r["on_front"] = i in front_idx
    best = {}
    for name in OBJECTIVES:
        if not opendc and name in ("carbon", "total-carbon"):
            continue
        scores = objective_scores(evaluated, name)
        if scores and min(scores) < math.inf:
            best[name] = evaluated[scores.index(min(scores))]["shape"]
    chosen = None
    scores = objective_scores(evaluated, objective) if evaluated else []
    if scores and min(scores) < math.inf:
        chosen = evaluated[scores.index(min(scores))]
    out = {
        "plan": plan.name,
        "source": plan.source,
        "slo": plan.slo.describe(),
        "rate": plan.rate,
        "objective": objective_name(objective),
        "opendc": opendc,
        "chosen": chosen,
        "best": best,
        "front": [r["shape"] for r in evaluated if r.get("on_front")],
        "shapes": shapes,
        "simulations": {
            "run_now": dict(runs.simulated),
            "reused": runs.reused,
            "total": len(runs.evaluations),
            "no_opendc": sum(1 for e in runs.evaluations if not e.opendc),
            "opendc": sum(1 for e in runs.evaluations if e.opendc),
            "full_grid": sum(len(s.shape.counts(*plan.units)) for s in searches),
        },
        "wall_s": wall_s,
    }
    if any(s.ratio for s in plan.shapes):
        out["layouts"] = layout_contest(evaluated, objective, chosen)
    return out


def layout_contest(evaluated: list[dict], objective: str | dict, chosen: dict | None) -> dict:
    """Co-located against disaggregated for the objective: the best shape of each side (None: none feasible
    or scored) and which side the chosen configuration is on."""
    sides: dict[str, Any] = {}
    for side, rows in (
        ("colocated", [r for r in evaluated if r["layout"] == "colocated"]),
        ("disaggregated", [r for r in evaluated if r["layout"] != "colocated"]),
    ):
        scores = objective_scores(rows, objective) if rows else []
        ok = [(sc, r) for sc, r in zip(scores, rows, strict=True) if sc < math.inf]
        best = min(ok, key=lambda x: x[0])[1] if ok else None
        value = best.get(METRICS[objective]) if best is not None and isinstance(objective, str) else None
        sides[side] = None if best is None else {"shape": best["shape"], "gpus": best["gpus"], "value": value}
    sides["winner"] = None if chosen is None else ("colocated" if chosen["layout"] == "colocated" else "disaggregated")
    return sides


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def summary_text(summary: dict) -> str:
    """What `kavier plan` prints: the chosen configuration, the best per objective and the front."""
    c = summary["chosen"]
    sims = summary["simulations"]
    lines = [
        f"plan {summary['plan']}: SLOs {summary['slo']}" + (f" at {summary['rate']:g} req/s" if summary["rate"] else "")
    ]
    if c is None and summary["best"]:
        lines.append(f"no choice for {summary['objective']}: carbon needs OpenDC (the figures below are without it)")
    elif c is None:
        lines.append("no candidate meets the SLOs within the replica range (see candidates.md for why)")
    else:
        split = (
            f" ({c['prefill_replicas']} prefill + {c['decode_replicas']} decode)" if c.get("prefill_replicas") else ""
        )
        lines.append(
            f"chosen ({summary['objective']}): {c['shape']}, {c['replicas']} replica(s){split} = "
            f"{c['gpus']} GPU(s)"
            f": {_f(c['cost_per_mtoken'])} cost/Mtoken, {_f(c['wh_per_mtoken'])} Wh/Mtoken, "
            f"{_f(c.get('gco2_per_mtoken'))} gCO2/Mtoken, p99 TTFT {_f(c['ttft_p99_s'])} s"
        )
    for k, v in summary["best"].items():
        lines.append(f"best {k:<7} {v}")
    lay = summary.get("layouts")
    if lay and lay.get("winner"):
        other = "colocated" if lay["winner"] == "disaggregated" else "disaggregated"

        def side(r: dict) -> str:
            value = f" at {_f(r['value'])} {UNITS[summary['objective']]}" if r.get("value") is not None else ""
            return f"{r['shape']} ({r['gpus']} GPUs){value}"

        lines.append(
            f"{lay['winner']} wins for {summary['objective']}: {side(lay[lay['winner']])}, against "
            + (f"the best {other}, {side(lay[other])}" if lay[other] else f"no {other} shape meeting the SLOs")
        )
    lines.append("Pareto front (cost, energy, carbon, p99 TTFT):")
    w = max([44] + [len(r["shape"]) for r in summary["shapes"] if r.get("on_front")])
    lines.append(
        f"  {'shape':<{w}} {'layout':<9} {'replicas':>8} {'cost/Mtok':>10} {'Wh/Mtok':>9} {'gCO2/Mtok':>10} "
        f"{'TTFT p99':>9}"
    )
    for r in summary["shapes"]:
        if r.get("on_front"):
            reps = (
                f"{r['prefill_replicas']}P+{r['decode_replicas']}D" if r.get("prefill_replicas") else str(r["replicas"])
            )
            lines.append(
                f"  {r['shape']:<{w}} {r.get('layout', 'colocated'):<9} {reps:>8} "
                f"{_f(r['cost_per_mtoken']):>10} "
                f"{_f(r['wh_per_mtoken']):>9} {_f(r.get('gco2_per_mtoken')):>10} {_f(r['ttft_p99_s']):>9}"
            )
    lines.append(
        f"simulations: {sims['total']} ({sims['no_opendc']} without OpenDC, {sims['opendc']} with; "
        f"{sims['reused']} reused from earlier runs) vs a full grid of {sims['full_grid']} OpenDC runs; "
        f"{summary['wall_s']:.1f} s"
    )
    return "\n".join(lines)


def write_plan_outputs(plan: Plan, out: Path, summary: dict, runs: PlanRuns) -> str:
    """plan.json, plan.md, candidates.csv/.md, evaluations.csv, front.csv, plots and plan.html (the candidates,
    sortable, with the Pareto plots embedded); returns the summary text."""
    import pandas as pd

    from kavier_opendc.reports import plots as P

    shapes = pd.DataFrame(summary["shapes"])
    evals = pd.DataFrame(
        [
            {
                "run": e.run_id,
                "shape": e.shape.label,
                "layout": e.shape.layout,
                "replicas": e.shape.replicas_of(e.units),
                **e.shape.pool_sizes(e.units),
                "opendc": e.opendc,
                "status": e.status,
                "meets_slo": e.meets,
                "why": e.why,
                **e.row,
            }
            for e in runs.evaluations
        ]
    )
    for df in (shapes, evals):
        for col in ("prefill_replicas", "decode_replicas"):
            if col in df:
                df[col] = df[col].astype("Int64")  # whole numbers, empty for co-located shapes
    for name, df in (
        ("candidates.csv", shapes),
        ("evaluations.csv", evals),
        ("front.csv", shapes[shapes.get("on_front", pd.Series(False, index=shapes.index)).eq(True)]),
    ):
        tmp = out / f".{name}.tmp"
        df.to_csv(tmp, index=False)
        tmp.replace(out / name)
    write_json_atomic(out / "plan.json", summary)
    text = summary_text(summary)
    cols = [
        ("shape", "shape"),
        ("layout", "layout"),
        ("status", "status"),
        ("replicas", "replicas"),
        ("prefill_replicas", "prefill"),
        ("decode_replicas", "decode"),
        ("gpus", "GPUs"),
        ("cost_per_mtoken", "cost/Mtoken"),
        ("wh_per_mtoken", "Wh/Mtoken"),
        ("wh_per_mtoken_estimate", "GPU Wh/Mtoken (estimate)"),
        ("gco2_per_mtoken", "gCO2/Mtoken"),
        ("ttft_p99_s", "TTFT p99 (s)"),
        ("tpot_p99_s", "TPOT p99 (s)"),
        ("on_front", "front"),
        ("search_runs", "runs"),
        ("why", "why not"),
    ]
    table = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in summary["shapes"]:
        table.append("| " + " | ".join(_f(r.get(k)).replace("|", "/") for k, _ in cols) + " |")
    atomic_write_text(out / "candidates.md", "\n".join(table) + "\n")
    plots = []
    if not shapes.empty and "cost_per_mtoken" in shapes:
        t = shapes[shapes["status"] == "feasible"].assign(
            label=lambda d: d["shape"] + ", n=" + d["replicas"].astype("Int64").astype(str), status="done"
        )
        pairs = [
            ("cost_per_mtoken", "wh_per_mtoken", "cost per million tokens", "energy per million tokens (Wh)"),
            ("ttft_p99_s", "cost_per_mtoken", "p99 TTFT (s)", "cost per million tokens"),
        ]
        if summary["opendc"]:
            pairs.insert(
                1, ("cost_per_mtoken", "gco2_per_mtoken", "cost per million tokens", "carbon per million tokens (gCO2)")
            )
        for x, y, xl, yl in pairs:
            f = out / "plots" / f"front_{y}_vs_{x}.png"
            P.sweep_tradeoff(t, f, x=x, y=y, xlabel=xl, ylabel=yl, title=f"{plan.name}: {yl} vs {xl}")
            plots.append(f.relative_to(out))
    source = f"Source: {plan.source}. SLOs: {summary['slo']}" + (
        f"; traffic at {summary['rate']:g} requests/s." if summary["rate"] else "."
    )
    screened = (
        "Feasible shapes at their smallest replica count meeting the SLOs; 'screened out' shapes were neither on "
        "the estimated front nor near its best cost or energy, so OpenDC did not run them (their figures are "
        "estimates without OpenDC)."
    )
    runs_note = "Every run is a complete `kavier run` output under `runs/`; `evaluations.csv` lists them all."
    md = [
        f"# Capacity plan {plan.name}",
        "",
        source,
        "",
        "```",
        text,
        "```",
        "",
        "## Candidates",
        "",
        screened,
        "",
        *table,
        "",
        runs_note,
        "",
    ]
    md += [f"![{p.stem}]({p})" for p in plots]
    atomic_write_text(out / "plan.md", "\n".join(md) + "\n")
    write_comparison_html(
        out / PLAN_HTML,
        f"Capacity plan {plan.name}",
        [source, screened],
        cols,
        summary["shapes"],
        [(out / p, f"Pareto front: {p.stem.removeprefix('front_').replace('_vs_', ' against ')}") for p in plots],
        _f,
        preformatted=text,
        notes=[runs_note],
    )
    return text


# --------------------------------------------------------------------------
# Max sustainable rate
# --------------------------------------------------------------------------


def run_max_rate(
    plan: Plan,
    out: Path,
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    quiet: bool = False,
    run_plots: bool = False,
    command: str = "kavier plan --max-rate",
) -> PlanResult:
    """The highest arrival rate at which one shape at a fixed replica count meets the SLOs (no OpenDC: latency
    does not depend on it)."""

    t0 = time.perf_counter()
    if len(plan.shapes) != 1:
        raise KavierInputError(
            f"max-rate mode needs exactly one candidate shape, the plan has {len(plan.shapes)}",
            source=plan.source,
            location="candidates",
            expected="one value per candidates list (and candidates.replicas: N)",
        )
    shape, units = plan.shapes[0], plan.units[1]
    base_rate = plan.rate
    mr = plan.max_rate
    low = float(mr.get("low") or (base_rate / 8 if base_rate else 0.25))
    high = float(mr.get("high") or (base_rate * 8 if base_rate else 64.0))
    tol = float(mr.get("tolerance") or 0.05)
    if low >= high:
        raise KavierInputError(
            f"max_rate.low {low:g} is not below max_rate.high {high:g}", source=plan.source, location="max_rate"
        )
    out = Path(out).resolve()  # the experiments name their traffic file by its absolute path
    check_writable_dir(out)
    # the plan's own folder: once it is removed no writer (driver or worker) makes it again
    with output_root(out):
        make_dirs(out / "runs")

        def say(text: str) -> None:
            if not quiet:
                print(text, file=sys.stderr, flush=True)

        say(
            f"max sustainable rate of {shape.label} x {shape.replicas_of(units)} replica(s); SLOs {plan.slo.describe()}"
        )
        runs = PlanRuns(plan, out, jobs=jobs, scheduler=scheduler, run_plots=run_plots, command=command, say=say)
        probes: list[dict] = []

        def probe(rate: float) -> bool:
            runs.ask(None, shape, units, False, rate)
            _, ev = runs.next()
            probes.append(
                {
                    "rate": rate,
                    "meets": ev.meets,
                    "why": ev.why,
                    "run": ev.run_id,
                    "ttft_q_s": ev.row.get("ttft_q_s"),
                    "tpot_q_s": ev.row.get("tpot_q_s"),
                }
            )
            say(f"  {rate:.4g} req/s: " + ("meets the SLOs" if ev.meets else f"misses ({ev.why})"))
            return ev.meets

        try:
            if not probe(low):
                result, note = None, f"the SLOs are missed already at {low:g} req/s (lower max_rate.low)"
            elif probe(high):
                result, note = high, f"the SLOs hold up to max_rate.high = {high:g} req/s at least (raise it)"
            else:
                while high / low > 1 + tol:
                    mid = math.sqrt(low * high)
                    if probe(mid):
                        low = mid
                    else:
                        high = mid
                result, note = low, f"between {low:.4g} (meets) and {high:.4g} req/s (misses)"
        finally:
            runs.close()
        summary = {
            "plan": plan.name,
            "shape": shape.label,
            "replicas": shape.replicas_of(units),
            "slo": plan.slo.describe(),
            "max_rate_rps": result,
            "note": note,
            "tolerance": tol,
            "probes": probes,
            "wall_s": time.perf_counter() - t0,
        }
        write_json_atomic(out / "max_rate.json", summary)
        text = (
            f"max sustainable rate of {shape.label} x {shape.replicas_of(units)} replica(s) "
            f"under {plan.slo.describe()}: "
            + (f"{result:.4g} req/s" if result is not None else "none")
            + f" ({note}); {len(probes)} simulations, "
            f"{summary['wall_s']:.1f} s"
        )
        atomic_write_text(
            out / "max_rate.md",
            "# " + text + "\n\n| rate (req/s) | meets | why not | run |\n"
            "|---:|---|---|---|\n"
            + "\n".join(
                f"| {p['rate']:.4g} | {'yes' if p['meets'] else 'no'} | {p['why']} | {p['run']} |" for p in probes
            )
            + "\n",
        )
        return PlanResult(out, summary, text)


__all__ = [
    "Evaluation",
    "PlanResult",
    "PlanRuns",
    "ShapeSearch",
    "objective_scores",
    "pareto_front",
    "run_max_rate",
    "run_plan",
    "slo_check",
    "summary_text",
]
