"""Carbon-aware deferral of batch work: when a deferrable request is released to the router.

A request is deferrable when its trace row carries a deadline (``deadline_s``,
on the trace's clock). A deferral policy may hold it, before it reaches the
router, until a time of its choosing:

* ``none``: released on arrival (the default; a run without deferral).
* ``lowest-carbon``: released at the start of the window of the request's
  estimated service time with the lowest mean carbon intensity among the
  windows that start at or after its arrival and end by its deadline. The
  intensity is a step function (each value holds until the next, as in
  OpenDC's carbon traces), so the window's mean is piecewise linear in its
  start and its minimum lies where the window's start or end meets a step:
  those starts (and the earliest and latest) are the only candidates, and the
  minimum over them is exact. Ties go to the earliest start. A request whose
  estimate does not fit between arrival and deadline is released on arrival.
* ``battery-aware``: released at the earliest start, from its arrival on, whose
  whole window (start to start + estimated service time, ending by the
  deadline) is *clean*: at every instant either the grid's intensity is below
  the datacenter battery's threshold (OpenDC's single-threshold policy charges
  the battery then: the work runs on the cleaner grid) or the battery is
  predicted to hold charge (it supplies the whole datacenter then, OpenDC's
  BatteryAggregator). When no clean window fits before the deadline the
  request falls back to ``lowest-carbon``. The prediction (:func:`battery_plan`)
  replays OpenDC's rule on the carbon trace from the battery's initial charge:
  below the threshold it charges at its charging speed until full, at or above
  it discharges at the datacenter's estimated draw until empty; that draw is
  the datacenter's power at zero utilisation (every host's CPU and GPU idle
  power) plus the mean GPU power above idle of the run without deferral.

Spreading (``spread``, off by default; any policy but ``none``): the held
requests that a policy releases at one instant t0 (it gives equal windows one
start) are released one after another instead, evenly over the carbon step in
force at t0: the k-th of m (by submission, then row) at t0 + k x W / m, W the
time from t0 to that step's end (for the trace's last step, to the latest of
their latest starts), and never after its own latest start (deadline minus
its estimate): the cleaner interval is shared rather than queued at its
first instant.

The estimate is the request's own end-to-end time in the same run without
deferral (:func:`simulate_deferred` runs that first): what it took on the same
replicas under the same load. Requests moved into one low-carbon window
contend with each other there, so the estimate can be short; a deadline that
is missed is counted and reported, never hidden.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from kavier_opendc.base.errors import KavierInputError

POLICIES = ("none", "lowest-carbon", "battery-aware")
#: the battery-aware rule, said in its summary
BATTERY_RULE = (
    "release at the earliest start whose whole window runs on the grid below the battery's threshold or on the "
    "predicted battery; none before the deadline: lowest-carbon"
)
#: how the service time of a deferred request is estimated (said in every summary)
ESTIMATE_RULE = "the request's end-to-end time (arrival to last token) in the same run without deferral"


def check_policy(policy: str, location: str = "deferral") -> str:
    """``policy`` in its canonical spelling; an unknown name is an error naming ``location``."""
    name = str(policy).strip().lower()
    if name not in POLICIES:
        raise KavierInputError(
            f"unknown deferral policy '{policy}'", location=location, expected="one of " + ", ".join(POLICIES)
        )
    return name


@dataclass(frozen=True)
class CarbonSteps:
    """Carbon intensity as a step function of the run's clock.

    ``times_s[k]`` (s from the run's start, increasing) is when value ``values[k]`` (gCO2/kWh) starts to
    hold; it holds until the next time, the first value also before it and the last one after it (OpenDC's
    rule). ``label``: where it came from, for the summary."""

    times_s: np.ndarray
    values: np.ndarray
    label: str = ""

    def __post_init__(self) -> None:
        t = np.asarray(self.times_s, dtype=np.float64)
        v = np.asarray(self.values, dtype=np.float64)
        if t.ndim != 1 or t.size == 0 or t.size != v.size or (np.diff(t) <= 0).any():
            raise ValueError("carbon steps need increasing times and one value per time")
        object.__setattr__(self, "times_s", t)
        object.__setattr__(self, "values", v)
        # integral of the intensity from times_s[0] to each times_s[k]: the window means in O(log n)
        object.__setattr__(self, "_cum", np.concatenate([[0.0], np.cumsum(np.diff(t) * v[:-1])]))

    def integral(self, t: np.ndarray) -> np.ndarray:
        """The intensity integrated from ``times_s[0]`` to ``t`` (s x gCO2/kWh; negative before it)."""
        t = np.asarray(t, dtype=np.float64)
        k = np.clip(np.searchsorted(self.times_s, t, side="right") - 1, 0, self.times_s.size - 1)
        cum: np.ndarray = self._cum  # type: ignore[attr-defined]
        return cum[k] + self.values[k] * (t - self.times_s[k])

    def mean(self, start: np.ndarray, length_s: float) -> np.ndarray:
        """The mean intensity over [start, start + length_s] (the intensity at ``start`` for length 0)."""
        start = np.asarray(start, dtype=np.float64)
        if length_s <= 0:
            k = np.clip(np.searchsorted(self.times_s, start, side="right") - 1, 0, self.times_s.size - 1)
            return self.values[k]
        return (self.integral(start + length_s) - self.integral(start)) / length_s


def lowest_carbon_start(arrival_s: float, deadline_s: float, service_s: float, steps: CarbonSteps) -> float:
    """The release time of one request under ``lowest-carbon`` (see the module docstring)."""
    latest = deadline_s - service_s
    if not (math.isfinite(latest) and latest > arrival_s):
        return float(arrival_s)
    t = steps.times_s
    inside = t[(t > arrival_s) & (t < latest)]
    ends = t - service_s
    ends = ends[(ends > arrival_s) & (ends < latest)]
    cand = np.unique(np.concatenate([[arrival_s, latest], inside, ends]))
    means = steps.mean(cand, service_s)
    # float noise of the integrals must not pick a later start over an equal earlier one
    best = float(means.min())
    tol = 1e-9 * max(abs(best), 1.0)
    return float(cand[np.flatnonzero(means <= best + tol)[0]])


@dataclass(frozen=True)
class Battery:
    """The datacenter's battery as the ``battery-aware`` policy predicts it (OpenDC's single-threshold policy:
    SingleThresholdBatteryPolicy charges while the intensity is below ``threshold`` and supplies the whole
    datacenter while it is at or above it). ``static_w``: the datacenter's draw at zero utilisation."""

    capacity_j: float
    charging_w: float
    threshold: float  # gCO2/kWh
    initial_j: float = 0.0
    static_w: float = 0.0
    label: str = "datacenter.battery"


@dataclass(frozen=True)
class BatteryPlan:
    """The predicted battery over [0, horizon]: ``dirty`` are the intervals (start, end) when the grid is at or
    above the threshold and the battery is empty; ``effective`` is the intensity the datacenter's marginal
    energy sees (0 while the battery supplies it: its carbon was paid while charging, ``charging_g``)."""

    load_w: float
    dirty: tuple[tuple[float, float], ...]
    effective: CarbonSteps
    charging_g: float
    supplied_s: float  # seconds the battery supplies the datacenter

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ends", np.array([e for _, e in self.dirty], dtype=np.float64))

    def first_dirty_after(self, t: float) -> int | None:
        """The first dirty interval that ends after ``t`` (they are disjoint and sorted), None if none does."""
        ends: np.ndarray = self._ends  # type: ignore[attr-defined]
        k = int(np.searchsorted(ends, t, side="right"))
        return k if k < ends.size else None

    def clean(self, start: float, length: float) -> bool:
        """Whether [start, start + length] meets no dirty interval."""
        k = self.first_dirty_after(start)
        return k is None or self.dirty[k][0] >= start + length


def battery_plan(steps: CarbonSteps, battery: Battery, load_w: float, horizon_s: float) -> BatteryPlan:
    """Replay OpenDC's single-threshold rule on ``steps`` from 0 to ``horizon_s`` at a constant draw ``load_w``."""
    t = steps.times_s
    cuts = np.unique(np.concatenate([[0.0, horizon_s], t[(t > 0.0) & (t < horizon_s)]]))
    q = min(battery.initial_j, battery.capacity_j)
    dirty: list[tuple[float, float]] = []
    eff_t: list[float] = []
    eff_v: list[float] = []
    charging_g = supplied = 0.0

    def piece(a: float, v: float) -> None:
        if eff_t and eff_t[-1] == a:
            eff_v[-1] = v
        elif not eff_v or eff_v[-1] != v:
            eff_t.append(a)
            eff_v.append(v)

    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        v = float(steps.mean(np.array([a]), 0.0)[0])
        if v < battery.threshold:
            added = min(battery.capacity_j - q, battery.charging_w * (b - a))
            charging_g += added * v / 3.6e6
            q += added
            piece(a, v)
            continue
        last = b if load_w <= 0 else min(b, a + q / load_w)
        if last > a:  # the battery supplies [a, last]
            q = max(q - load_w * (last - a), 0.0) if load_w > 0 else q
            supplied += last - a
            piece(a, 0.0)
        if last < b:
            q = 0.0
            dirty.append((float(last), float(b)))
            piece(last, v)
    merged: list[tuple[float, float]] = []
    for s, e in dirty:
        if merged and merged[-1][1] >= s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    eff = CarbonSteps(np.array(eff_t), np.array(eff_v), label=f"{steps.label or 'given'} with {battery.label}")
    return BatteryPlan(load_w, tuple(merged), eff, charging_g, supplied)


def battery_aware_start(
    arrival_s: float, deadline_s: float, service_s: float, steps: CarbonSteps, plan: BatteryPlan
) -> float:
    """The release time of one request under ``battery-aware`` (see the module docstring)."""
    latest = deadline_s - service_s
    if not (math.isfinite(latest) and latest > arrival_s):
        return float(arrival_s)
    t = float(arrival_s)
    while t <= latest:
        k = plan.first_dirty_after(t)
        if plan.clean(t, service_s):
            return t
        assert k is not None
        t = plan.dirty[k][1]  # the window meets an empty battery above the threshold: try from its end
    return lowest_carbon_start(arrival_s, deadline_s, service_s, steps)


def release_times(
    policy: str,
    arrival_s: np.ndarray,
    deadline_s: np.ndarray,
    service_s: np.ndarray,
    steps: CarbonSteps | None,
    plan: BatteryPlan | None = None,
) -> np.ndarray:
    """Per request, when it is released to the router (arrival for requests without a deadline, NaN)."""
    release = np.array(arrival_s, dtype=np.float64, copy=True)
    if policy == "none":
        return release
    if steps is None:
        raise KavierInputError(
            f"deferral policy '{policy}' needs a carbon-intensity trace",
            location="deferral",
            expected="a carbon trace (kavier simulate: --carbon-trace and --start; kavier run: the experiment's "
            "carbon and datacenter.start)",
        )
    for i in np.flatnonzero(np.isfinite(deadline_s) & np.isfinite(service_s)):
        a, d, s = float(arrival_s[i]), float(deadline_s[i]), float(service_s[i])
        if policy == "battery-aware":
            assert plan is not None  # simulate_deferred builds it
            release[i] = battery_aware_start(a, d, s, steps, plan)
        else:
            release[i] = lowest_carbon_start(a, d, s, steps)
    return release


#: the spread rule, said in the summary
SPREAD_RULE = (
    "the m held requests released at one instant t0 go one after another over the carbon step in force at t0: "
    "the k-th (by submission) at t0 + k x W / m, W from t0 to the step's end, never after its latest start"
)


def spread_releases(
    release_s: np.ndarray,
    held: np.ndarray,
    arrival_s: np.ndarray,
    deadline_s: np.ndarray,
    service_s: np.ndarray,
    steps: CarbonSteps,
) -> tuple[np.ndarray, int]:
    """``release_s`` with each group of ``held`` requests sharing a release instant spread (module docstring);
    also the number of groups spread."""
    out = np.array(release_s, dtype=np.float64, copy=True)
    idx = np.flatnonzero(held)
    if idx.size == 0:
        return out, 0
    latest = deadline_s - service_s
    groups = 0
    t = steps.times_s
    # by release instant, then submission, then row: each instant's members in the order they are spread
    idx = idx[np.lexsort((idx, arrival_s[idx], release_s[idx]))]
    cuts = np.flatnonzero(np.diff(release_s[idx]) != 0) + 1
    for members in np.split(idx, cuts):
        if members.size < 2:
            continue
        t0 = release_s[members[0]]
        k = int(np.searchsorted(t, t0, side="right"))  # the first step start after t0: the step's end
        end = float(t[k]) if k < t.size else float(np.max(latest[members]))
        width = max(end - float(t0), 0.0)
        slots = float(t0) + np.arange(members.size) * (width / members.size)
        out[members] = np.maximum(np.minimum(slots, latest[members]), float(t0))
        groups += 1
    return out, groups


def check_deadlines(arrival_s: np.ndarray, deadline_s: np.ndarray, source: str = "") -> None:
    """A deadline before its request's arrival is an error naming the row (1-based, as the trace reader)."""
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.isfinite(deadline_s) & (deadline_s < arrival_s))
    if bad.size:
        i = int(bad[0])
        raise KavierInputError(
            f"deadline_s is {deadline_s[i]:g} s, before the request's arrival at {arrival_s[i]:g} s "
            "(both on the trace's clock, re-based so the first request arrives at 0)",
            source=source or None,
            location=f"row {i + 1}",
            expected="a deadline at or after the arrival, or an empty cell for a request that is not deferrable",
        )


@dataclass
class DeferralOutcome:
    """What the deferral did to each request and what it changed, for the outputs (engine/outputs.py)."""

    policy: str
    submitted_s: np.ndarray  # the trace's arrival of each request
    held_s: np.ndarray  # release - submitted (0: released on arrival)
    deadline_s: np.ndarray  # NaN: not deferrable
    finish_s: np.ndarray  # the run's finish times (NaN: not finished)
    summary: dict = dataclasses.field(default_factory=dict)

    @property
    def deferrable(self) -> np.ndarray:
        return np.isfinite(self.deadline_s)

    @property
    def missed(self) -> np.ndarray:
        """Deadlines missed: finished after the deadline, or never finished (False for other requests)."""
        with np.errstate(invalid="ignore"):
            late = ~(self.finish_s <= self.deadline_s)
        return self.deferrable & late


def _dynamic_watts(result) -> np.ndarray:
    """Per request, max_w - idle_w of one GPU of its replica (0 for a request no replica took)."""
    reps = result.replicas
    dyn1 = np.array([rep.cm.gpu.max_power_w - rep.cm.gpu.idle_power_w for rep in reps], dtype=np.float64)
    idx = result.results.replica.astype(np.int64)
    return np.where(idx >= 0, dyn1[np.clip(idx, 0, max(len(reps) - 1, 0))], 0.0) if reps else np.zeros(idx.size)


def engine_carbon(result, release_s: np.ndarray, steps: CarbonSteps, horizon_s: float) -> dict:
    """The engine's carbon of a run over [0, horizon_s]: GPU energy at the catalogue's linear power model (as
    requests.parquet's energy_j of `kavier simulate`), the dynamic part of each request (gpu_busy_s x (max_w -
    idle_w)) at the mean intensity over its residence (release to finish), the idle draw of every GPU over
    the whole horizon at the intensity of each instant. Per request: ``dynamic_g``."""
    r = result.results
    dyn_j = np.nan_to_num(r.busy) * _dynamic_watts(result)
    finish = np.where(np.isfinite(r.finish), r.finish, release_s)
    res = np.maximum(finish - release_s, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ci = np.where(
            res > 0,
            (steps.integral(finish) - steps.integral(release_s)) / np.where(res > 0, res, 1.0),
            steps.mean(release_s, 0.0),
        )
    dyn_g = dyn_j * ci / 3.6e6
    idle_w = float(sum(rep.cm.gpu.idle_power_w * rep.cm.tp for rep in result.replicas))
    ci_int = float(steps.integral(np.array([horizon_s]))[0] - steps.integral(np.array([0.0]))[0])
    static_g = idle_w * ci_int / 3.6e6
    return {
        "dynamic_j": float(dyn_j.sum()),
        "dynamic_g": float(dyn_g.sum()),
        "static_j": idle_w * horizon_s,
        "static_g": static_g,
        "carbon_g": float(dyn_g.sum()) + static_g,
        "per_request_dynamic_g": dyn_g,
    }


def _stats(values: np.ndarray) -> dict:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "p50": None, "max": None}
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "max": float(v.max())}


def simulate_deferred(
    trace,
    cfg,
    policy: str,
    steps: CarbonSteps | None,
    progress: bool | None = None,
    battery: Battery | None = None,
    spread: bool = False,
):
    """The simulation of ``trace`` under ``cfg`` with deferral ``policy`` (see the module docstring).

    A trace without deadlines runs exactly as :func:`simulate` runs it. With deadlines, policy ``none``
    runs once and counts missed deadlines; another policy runs first without deferral (the estimate of
    each request's service time, and the baseline of the comparison), then with each deferrable request
    released when the policy says; ``result.extra["deferral"]`` holds a :class:`DeferralOutcome` whose
    summary compares the two runs' carbon (the engine's: :func:`engine_carbon`) and latency."""
    from kavier_opendc.engine.simulator import simulate

    policy = check_policy(policy)
    if trace.deadline_s is None or not np.isfinite(trace.deadline_s).any():
        result = simulate(trace, cfg, progress)
        if policy != "none":
            result.extra["deferral"] = DeferralOutcome(
                policy,
                trace.arrival_s,
                np.zeros(len(trace)),
                np.full(len(trace), np.nan),
                result.results.finish,
                {"policy": policy, "deferrable_requests": 0, "note": "the trace has no deadline_s: nothing deferred"},
            )
        return result
    if cfg.closed_loop(trace) is not None:
        raise KavierInputError(
            "deferral holds requests of an open-loop trace; closed-loop clients send each request when the last ends",
            location="deferral",
            expected="no --concurrency (and no closed-loop workload) with deadlines, or no deadline_s column",
        )
    if cfg.topology() is not None:
        raise KavierInputError(
            "deferral is not simulated for disaggregated prefill/decode yet",
            location="deferral",
            expected="co-located serving with deadlines, or no deadline_s column",
        )
    arrival = np.asarray(trace.arrival_s, dtype=np.float64)
    deadline = np.asarray(trace.deadline_s, dtype=np.float64)
    check_deadlines(arrival, deadline, str(trace.source))
    deferrable = np.isfinite(deadline)
    if policy == "battery-aware" and battery is None:
        raise KavierInputError(
            "deferral policy 'battery-aware' follows the datacenter's battery, and there is none",
            location="deferral.policy",
            expected="kavier run with datacenter.battery (policy type single), or deferral policy lowest-carbon",
        )
    base = simulate(trace, cfg, progress)
    summary: dict = {
        "policy": policy,
        "deferrable_requests": int(deferrable.sum()),
        "service_time_estimate": ESTIMATE_RULE,
    }
    if policy == "none":
        out = DeferralOutcome(policy, arrival, np.zeros(arrival.size), deadline, base.results.finish, summary)
        summary.update(_deadline_summary(out))
        base.extra["deferral"] = out
        return base
    service = np.where(deferrable, base.results.finish - arrival, np.nan)
    plan = None
    if policy == "battery-aware" and steps is not None:
        assert battery is not None  # checked before the first run
        dyn = engine_carbon(base, arrival, steps, base.makespan_s)["dynamic_j"]
        load = battery.static_w + (dyn / base.makespan_s if base.makespan_s > 0 else 0.0)
        plan = battery_plan(steps, battery, load, max(float(np.nanmax(deadline)), base.makespan_s))
    release = release_times(policy, arrival, deadline, service, steps, plan)
    spread_groups = None
    if spread and steps is not None:
        release, spread_groups = spread_releases(release, release > arrival, arrival, deadline, service, steps)
    held = release - arrival
    moved = dataclasses.replace(trace, arrival_s=release, held_s=held)
    # the same server either way: requests released at one instant must not turn it into an offline batch
    # (usage auto decides by the arrivals)
    moved_cfg = dataclasses.replace(cfg, usage=cfg.resolved_usage(trace)) if cfg.usage == "auto" else cfg
    result = simulate(moved, moved_cfg, progress)
    result.trace = moved
    out = DeferralOutcome(policy, arrival, held, deadline, result.results.finish, summary)
    summary.update(_deadline_summary(out))
    assert steps is not None  # release_times refused a policy without one
    horizon = max(base.makespan_s, result.makespan_s)
    csteps = steps if plan is None else plan.effective
    c0 = engine_carbon(base, arrival, csteps, horizon)
    c1 = engine_carbon(result, release, csteps, horizon)
    if plan is not None:  # the battery's charging is the same in both runs (the prediction's draw is)
        for c in (c0, c1):
            c["battery_charging_g"] = plan.charging_g
            c["carbon_g"] += plan.charging_g
    d0, d1 = c0.pop("per_request_dynamic_g"), c1.pop("per_request_dynamic_g")
    finish0 = base.results.finish
    with np.errstate(invalid="ignore"):
        added = result.results.finish - finish0
        base_missed = int((deferrable & ~(finish0 <= deadline)).sum())
    other = ~deferrable
    summary.update(
        {
            "held_requests": int((held > 0).sum()),
            "held_s": _stats(held[deferrable]),
            # held requests released at one instant (the policy gives equal windows one start): they queue there
            "largest_release_burst": int(np.unique(release[held > 0], return_counts=True)[1].max())
            if (held > 0).any()
            else 0,
            "baseline_deadlines_missed": base_missed,
            "carbon_basis": "engine: GPU energy at the catalogue's linear power model x the carbon trace "
            f"({csteps.label or 'given'}); idle GPUs over the same horizon in both runs"
            + (
                "; 0 gCO2/kWh while the predicted battery supplies the datacenter, its charging added to both"
                if plan is not None
                else ""
            ),
            "horizon_s": horizon,
            "without_deferral": c0,
            "with_deferral": c1,
            "carbon_saved_g": c0["carbon_g"] - c1["carbon_g"],
            "carbon_saved_pct": 100.0 * (c0["carbon_g"] - c1["carbon_g"]) / c0["carbon_g"] if c0["carbon_g"] else 0.0,
            "deferrable_dynamic_g": {
                "without_deferral": float(d0[deferrable].sum()),
                "with_deferral": float(d1[deferrable].sum()),
            },
            # finish with deferral - finish without: what each request waits longer for its answer
            "latency_added_s": {
                "deferrable": _stats(added[deferrable]),
                "other": _stats(added[other]) if other.any() else None,
            },
        }
    )
    if spread_groups is not None:
        summary["spread"] = {"rule": SPREAD_RULE, "groups_spread": spread_groups}
    if plan is not None and battery is not None:
        summary["battery"] = {
            "rule": BATTERY_RULE,
            "threshold_gco2_per_kwh": battery.threshold,
            "capacity_kwh": battery.capacity_j / 3.6e6,
            "charging_w": battery.charging_w,
            "initial_kwh": battery.initial_j / 3.6e6,
            "estimated_draw_w": plan.load_w,
            "supplied_s": plan.supplied_s,
            "empty_above_threshold_s": float(sum(e - s for s, e in plan.dirty)),
            "charging_g": plan.charging_g,
            "fell_back_to_lowest_carbon": int(
                sum(1 for i in np.flatnonzero(held > 0) if not plan.clean(float(release[i]), float(service[i])))
            ),
        }
    result.extra["deferral"] = out
    return result


def _deadline_summary(out: DeferralOutcome) -> dict:
    missed = out.missed
    return {
        "deadlines_missed": int(missed.sum()),
        "missed_request_ids": np.flatnonzero(missed)[:20].tolist(),  # the first 20 rows
    }


def describe(summary: dict) -> list[str]:
    """The deferral summary as lines for people (kavier simulate's output, report.md)."""
    lines = [
        f"policy {summary['policy']}: {summary['deferrable_requests']} "
        f"request{'' if summary['deferrable_requests'] == 1 else 's'} with a deadline"
        + (f", {summary['held_requests']} held" if "held_requests" in summary else "")
    ]
    if "note" in summary:
        return lines + [summary["note"]]
    missed = summary.get("deadlines_missed", 0)
    ids = summary.get("missed_request_ids") or []
    lines.append(
        f"deadlines missed: {missed}"
        + (f" (request_id {', '.join(map(str, ids))}{', ...' if missed > len(ids) else ''})" if missed else "")
        + (
            f"; without deferral: {summary['baseline_deadlines_missed']}"
            if "baseline_deadlines_missed" in summary
            else ""
        )
    )
    if "with_deferral" not in summary:
        return lines
    c0, c1 = summary["without_deferral"], summary["with_deferral"]
    held = summary["held_s"]
    lat = summary["latency_added_s"]
    lines += [
        f"carbon (engine) without {c0['carbon_g']:.3f} g, with {c1['carbon_g']:.3f} g: saved "
        f"{summary['carbon_saved_g']:.3f} g ({summary['carbon_saved_pct']:.2f} %); above idle "
        f"{c0['dynamic_g']:.3f} -> {c1['dynamic_g']:.3f} g, idle {c1['static_g']:.3f} g in both over "
        f"{summary['horizon_s']:.0f} s",
        f"held: mean {held['mean'] or 0:.0f} s, max {held['max'] or 0:.0f} s, at most "
        f"{summary.get('largest_release_burst', 0)} released at one instant; latency added (finish with - "
        f"without): deferrable mean {lat['deferrable']['mean'] or 0:.1f} s"
        + (f", others mean {lat['other']['mean'] or 0:.3f} s" if lat.get("other") else ""),
        f"estimate: {summary['service_time_estimate']}",
    ]
    if summary.get("spread"):
        lines.append(f"spread: {summary['spread']['groups_spread']} release instant(s) spread over their carbon step")
    b = summary.get("battery")
    if b:
        lines.append(
            f"battery (predicted): threshold {b['threshold_gco2_per_kwh']:g} gCO2/kWh, {b['capacity_kwh']:g} kWh, "
            f"draw {b['estimated_draw_w']:.0f} W; supplies {b['supplied_s']:.0f} s, empty above the threshold "
            f"{b['empty_above_threshold_s']:.0f} s, charging {b['charging_g']:.3f} g (in both runs' carbon); "
            f"{b['fell_back_to_lowest_carbon']} held request(s) fell back to lowest-carbon"
        )
    return lines


def missed_warning(summary: dict) -> str | None:
    """A warning for stderr when deadlines were missed (None: none were): printed even with --quiet."""
    d = summary.get("deferral") or {}
    missed = int(d.get("deadlines_missed") or 0)
    if not missed:
        return None
    ids = ", ".join(map(str, d.get("missed_request_ids") or []))
    return (
        f"{missed} of {d['deferrable_requests']} deferrable requests missed their deadline_s under deferral policy "
        f"{d['policy']} (request_id {ids}{', ...' if missed > len(d.get('missed_request_ids') or []) else ''}); "
        "requests.parquet's deadline_missed marks them"
    )
