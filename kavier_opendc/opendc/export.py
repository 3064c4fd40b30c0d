"""Simulation timeline -> OpenDC workload (tasks.parquet, fragments.parquet).

One OpenDC task per GPU serving replica (or per part of a replica whose
tensor-parallel group does not fit one OpenDC host). A task runs from the
start of the run to the end; its fragments carry the replica's GPU
utilisation over time as piecewise-constant pieces (OpenDC plays a task's
fragments back to back, in file order, from the moment the task is placed).

Modes
-----
``adaptive`` (default)
    Adjacent timeline segments are merged while the spread (max - min) of
    their utilisations stays within ``tolerance`` (absolute). A merged
    fragment carries the duration-weighted mean utilisation, so under a
    linear power model the GPU energy is the same as without merging, and no
    segment deviates from its fragment's value by more than ``tolerance``.
``interval``
    Fixed bins of ``interval_s`` seconds (the Kavier prototype's way), each
    with the time-weighted mean utilisation over the bin.
``segments``
    Every timeline segment is one fragment (no merging; for comparison).

Durations are INT64 milliseconds computed by rounding the *cumulative*
boundaries (never each duration), so rounding errors do not drift and every
task lasts exactly round(makespan x 1000) ms. In the adaptive and segments
modes the utilisation means are weighted by those millisecond durations,
which makes the exported GPU energy identical (to float precision) between
the merged and unmerged exports.

The Parquet schemas match OpenDC's read schema exactly (OpenDC v2.4u
``TaskSchemas.kt`` V3 / ``FragmentSchemas.kt`` V2): required columns are
non-nullable, optional ones (``name``, ``gpu_count``, ``gpu_capacity``,
``gpu_usage``) nullable, and ``submission_time`` is INT64
TIMESTAMP(MILLIS, UTC) in epoch milliseconds.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kavier_opendc.outputs import write_parquet_atomic
from kavier_opendc.errors import KavierInputError
from kavier_opendc.opendc.topology import (
    DEFAULT_START,
    Datacenter,
    OpenDCHost,
    load_datacenter,
    opendc_hosts,
    plan_tasks,
)

MODES = ("adaptive", "interval", "segments")
DEFAULT_TOLERANCE = 0.02
DEFAULT_INTERVAL_S = 0.1
#: Host-side CPU load of one serving replica, in cores (scheduler, tokeniser,
#: HTTP server): a constant half core by default.
DEFAULT_CPU_LOAD_CORES = 0.5

TASKS_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("name", pa.string(), nullable=True),
    pa.field("submission_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("duration", pa.int64(), nullable=False),
    pa.field("cpu_count", pa.int32(), nullable=False),
    pa.field("cpu_capacity", pa.float64(), nullable=False),
    pa.field("mem_capacity", pa.int64(), nullable=False),
    pa.field("gpu_count", pa.int32(), nullable=True),
    pa.field("gpu_capacity", pa.float64(), nullable=True),
])

FRAGMENTS_SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("duration", pa.int64(), nullable=False),
    pa.field("cpu_usage", pa.float64(), nullable=False),
    pa.field("gpu_usage", pa.float64(), nullable=True),
])

TIMELINE_REQUIRED = ("replica", "start_s", "end_s", "gpu_utilization")
_UTIL_SLACK = 1e-6


# --------------------------------------------------------------------------
# Pure functions on one replica's timeline
# --------------------------------------------------------------------------

def to_ms(seconds) -> np.ndarray:
    """Seconds -> integer milliseconds, rounding half up (deterministic)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) * 1000.0 + 0.5).astype(np.int64)


def merge_adaptive(durations_ms: np.ndarray, util: np.ndarray, tolerance: float
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Greedy merge of adjacent pieces while max - min utilisation <= tolerance.

    ``durations_ms`` (int64) and ``util`` describe consecutive pieces; pieces
    of zero duration are dropped. Returns (durations_ms, duration-weighted
    mean utilisation, largest |piece utilisation - its fragment's|).
    """
    d = np.asarray(durations_ms, dtype=np.int64)
    u = np.asarray(util, dtype=np.float64)
    keep = d > 0
    d, u = d[keep], u[keep]
    if d.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), 0.0
    tol = float(tolerance) + 1e-12
    starts = [0]
    lo = hi = u[0]
    for i in range(1, u.size):
        x = u[i]
        nlo, nhi = (x if x < lo else lo), (x if x > hi else hi)
        if nhi - nlo <= tol:
            lo, hi = nlo, nhi
        else:
            starts.append(i)
            lo = hi = x
    idx = np.asarray(starts, dtype=np.int64)
    dur = np.add.reduceat(d, idx)
    energy = np.add.reduceat(u * d, idx)
    mean = energy / dur
    group = np.repeat(np.arange(idx.size), np.diff(np.append(idx, u.size)))
    err = float(np.max(np.abs(u - mean[group]))) if u.size else 0.0
    return dur.astype(np.int64), mean, err


def interval_bins(bounds_s: np.ndarray, util: np.ndarray, interval_s: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed bins of ``interval_s`` over [bounds_s[0], bounds_s[-1]] with the
    time-weighted mean utilisation of each bin (the last bin may be shorter).
    Returns (durations_ms, mean utilisation); zero-millisecond bins dropped."""
    b = np.asarray(bounds_s, dtype=np.float64)
    u = np.asarray(util, dtype=np.float64)
    t0, t1 = float(b[0]), float(b[-1])
    if t1 <= t0:
        return np.zeros(0, np.int64), np.zeros(0)
    n = max(1, int(math.ceil((t1 - t0) / interval_s - 1e-9)))
    edges = t0 + np.arange(n + 1, dtype=np.float64) * interval_s
    edges[-1] = t1
    edges = edges[edges <= t1]
    if edges[-1] < t1:
        edges = np.append(edges, t1)
    cum = np.concatenate([[0.0], np.cumsum(u * np.diff(b))])
    at = np.interp(edges, b, cum)
    width = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(width > 0, np.diff(at) / width, 0.0)
    ms = to_ms(edges)
    dur = np.diff(ms)
    keep = dur > 0
    return dur[keep].astype(np.int64), np.clip(mean[keep], 0.0, 1.0)


def replica_pieces(seg: pd.DataFrame, end_s: float, *, source: str = "timeline.parquet",
                   replica: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A replica's segments as (bounds_s [n+1], util [n]) covering [0, end_s]:
    gaps (and time after the last segment) are idle (utilisation 0)."""
    s = seg["start_s"].to_numpy(np.float64)
    e = seg["end_s"].to_numpy(np.float64)
    u = seg["gpu_utilization"].to_numpy(np.float64)
    order = np.argsort(s, kind="stable")
    s, e, u = s[order], e[order], u[order]
    bounds: list[float] = [0.0]
    utils: list[float] = []
    t = 0.0
    eps = 1e-9
    for k in range(s.size):
        a, z = s[k], min(e[k], end_s)
        if a < t - eps:
            raise KavierInputError(
                f"segment [{a}, {e[k]}] overlaps the previous one (which ends at {t})",
                source=source, location=f"replica {replica}, columns start_s/end_s",
                expected="non-overlapping segments sorted by start_s")
        if a >= end_s:
            break
        if a > t + eps:
            bounds.append(a)
            utils.append(0.0)
        if z > max(a, t):
            bounds.append(z)
            utils.append(u[k])
            t = z
    if t < end_s:
        bounds.append(end_s)
        utils.append(0.0)
    return np.asarray(bounds), np.asarray(utils)


def linear_gpu_energy_j(durations_ms, util, gpus: int, idle_w: float, max_w: float) -> float:
    """GPU energy (J) of fragments under a linear power model."""
    d = np.asarray(durations_ms, dtype=np.float64) / 1000.0
    u = np.asarray(util, dtype=np.float64)
    return float(np.sum((idle_w + (max_w - idle_w) * u) * d) * gpus)


# --------------------------------------------------------------------------
# Reading the simulation output
# --------------------------------------------------------------------------

@dataclass
class Simulation:
    timeline: pd.DataFrame
    summary: dict
    makespan_s: float
    replicas: int
    tp: int
    gpu: str | None
    source: str


def read_simulation(sim_dir: str | os.PathLike) -> Simulation:
    """Read and check ``SIM_DIR/timeline.parquet`` and ``SIM_DIR/summary.json``."""
    sim_dir = Path(sim_dir)
    tl_path = sim_dir / "timeline.parquet"
    src = str(tl_path)
    if not tl_path.is_file():
        raise KavierInputError("timeline not found", source=src,
                               expected="a simulation output folder written by `kavier simulate`")
    try:
        tl = pq.read_table(tl_path).to_pandas()
    except Exception as exc:
        raise KavierInputError(f"cannot read Parquet ({exc})", source=src) from None
    missing = [c for c in TIMELINE_REQUIRED if c not in tl.columns]
    if missing:
        raise KavierInputError(f"missing column(s) {missing}", source=src,
                               expected=f"columns {list(TIMELINE_REQUIRED)} (+ gpu, tp)")
    summary: dict = {}
    sp = sim_dir / "summary.json"
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KavierInputError(f"invalid JSON ({exc})", source=str(sp)) from None
    cfg = summary.get("config", {}) if isinstance(summary.get("config"), dict) else {}
    for col in ("start_s", "end_s", "gpu_utilization"):
        v = tl[col].to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise KavierInputError(f"value {v[bad[0]]!r} is not finite", source=src,
                                   location=f"row {int(bad[0])}, column {col}", expected="a finite number")
    st, en, ut = (tl[c].to_numpy(np.float64) for c in ("start_s", "end_s", "gpu_utilization"))
    bad = np.flatnonzero((st < -1e-9) | (en < st))
    if bad.size:
        raise KavierInputError(f"segment [{st[bad[0]]}, {en[bad[0]]}]", source=src,
                               location=f"row {int(bad[0])}, columns start_s/end_s",
                               expected="0 <= start_s <= end_s")
    bad = np.flatnonzero((ut < -_UTIL_SLACK) | (ut > 1 + _UTIL_SLACK))
    if bad.size:
        raise KavierInputError(f"utilisation {ut[bad[0]]!r}", source=src,
                               location=f"row {int(bad[0])}, column gpu_utilization", expected="0..1")
    tl = tl.copy()
    tl["gpu_utilization"] = np.clip(ut, 0.0, 1.0)
    tl["start_s"] = np.maximum(st, 0.0)
    replicas = int(cfg.get("replicas", 0) or 0)
    if len(tl):
        replicas = max(replicas, int(tl["replica"].max()) + 1)
    if replicas < 1:
        raise KavierInputError("no replicas in the timeline and none in summary.json config",
                               source=src, expected="at least one replica")
    tp = cfg.get("tp")
    if tp is None and "tp" in tl.columns and len(tl):
        tps = sorted(set(int(x) for x in tl["tp"]))
        if len(tps) > 1:
            raise KavierInputError(f"several tp values {tps}", source=src, location="column tp",
                                   expected="one tensor-parallel degree for all replicas")
        tp = tps[0]
    tp = int(tp or 1)
    gpu = cfg.get("gpu")
    if gpu is None and "gpu" in tl.columns and len(tl):
        gpus = sorted(set(str(x) for x in tl["gpu"]))
        if len(gpus) > 1:
            raise KavierInputError(f"several GPU types {gpus}", source=src, location="column gpu",
                                   expected="one GPU type for all replicas")
        gpu = gpus[0]
    makespan = summary.get("makespan_s")
    last = float(tl["end_s"].max()) if len(tl) else 0.0
    makespan = float(makespan) if makespan is not None else last
    makespan = max(makespan, last)
    if not (makespan > 0):
        raise KavierInputError("the simulation has zero makespan: nothing to export", source=src,
                               expected="a timeline with activity")
    return Simulation(tl, summary, makespan, replicas, tp, gpu, src)


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------

def _epoch_ms(start: str) -> int:
    txt = start.strip()
    if txt.endswith("Z"):
        txt = txt[:-1] + "+00:00"
    dt = datetime.fromisoformat(txt)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def _normalise_start(start: str) -> str:
    txt = start.strip()
    try:
        dt = datetime.fromisoformat(txt[:-1] + "+00:00" if txt.endswith("Z") else txt)
    except ValueError:
        raise KavierInputError(f"start {start!r} is not an ISO date-time", location="start",
                               expected="e.g. 2022-01-01T00:00:00 (UTC)") from None
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def _resolve_gpu(sim: Simulation, dc: Datacenter):
    """The GPU spec the replicas run on: the simulation's GPU, with the
    datacenter's overrides when a host group names the same GPU."""
    named = [h.gpu for h in dc.gpu_hosts() if h.gpu is not None]
    if sim.gpu is None:
        kinds = sorted({g.name for g in named})
        if len(kinds) == 1:
            return named[0]
        raise KavierInputError("the simulation names no GPU and the datacenter does not name exactly one",
                               source=sim.source, location="summary.json config.gpu",
                               expected="a GPU catalogue name")
    from kavier_opendc.specs import default_catalog
    try:
        spec = default_catalog().gpu(sim.gpu)
    except KavierInputError:
        spec = None
    same = [g for g in named if (spec is not None and g.name == spec.name) or g.name.lower() == sim.gpu.lower()]
    others = sorted({g.name for g in named if g not in same})
    if others:
        raise KavierInputError(
            f"the datacenter has hosts with GPU type(s) {others} but the simulation ran on {sim.gpu!r}; "
            "OpenDC cannot be told which hosts a replica must use",
            source=dc.source, location="hosts[*].gpu",
            expected=f"only {sim.gpu!r} GPUs (or leave 'gpu' out to use the simulation's GPU)")
    if same:
        caps = {(g.num_sms, g.boost_clock_mhz) for g in same}
        if len(caps) > 1:
            raise KavierInputError(f"host groups give {sim.gpu!r} different num_sms/boost_clock_mhz {sorted(caps)}",
                                   source=dc.source, location="hosts[*].gpu",
                                   expected="one GPU capacity per GPU type")
        return same[0]
    if spec is None:
        raise KavierInputError(f"GPU {sim.gpu!r} of the simulation is not in the GPU catalogue and no host "
                               "group of the datacenter describes it", source=sim.source,
                               location="column gpu / summary.json config.gpu",
                               expected="a catalogue GPU name, or a datacenter host 'gpu' entry with that name")
    return spec


def _export(sim_dir, out_dir, datacenter, *, mode: str = "adaptive", tolerance: float = DEFAULT_TOLERANCE,
            interval_s: float = DEFAULT_INTERVAL_S, start: str | None = None,
            cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES, pad_to_makespan: bool = True
            ) -> tuple[dict, Datacenter, list[OpenDCHost]]:
    if mode not in MODES:
        raise KavierInputError(f"unknown export mode {mode!r}", location="mode", expected=" or ".join(MODES))
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise KavierInputError(f"tolerance {tolerance!r}", location="tolerance",
                               expected="a non-negative utilisation difference, e.g. 0.02")
    if not (math.isfinite(interval_s) and interval_s >= 0.001):
        raise KavierInputError(f"interval_s {interval_s!r}", location="interval_s",
                               expected="at least 0.001 s (one millisecond)")
    if not (math.isfinite(cpu_load_cores) and cpu_load_cores >= 0):
        raise KavierInputError(f"cpu_load_cores {cpu_load_cores!r}", location="cpu_load_cores",
                               expected="a non-negative number of cores")
    dc = load_datacenter(datacenter)
    sim = read_simulation(sim_dir)
    gpu = _resolve_gpu(sim, dc)
    dc = dc.with_gpu(gpu)
    hosts = opendc_hosts(dc)
    plans = plan_tasks(hosts, sim.replicas, sim.tp, gpu.name, source=dc.source)
    start = _normalise_start(start if start is not None else (dc.start or DEFAULT_START))
    sub_ms = _epoch_ms(start)

    per_gpu_capacity = float(gpu.num_sms) * float(gpu.boost_clock_mhz)   # MHz of one physical GPU
    eligible = sorted({p.host_entry for p in plans})
    cpu_mhz = hosts[eligible[0]].cpu_mhz
    cpu_count = max(1, int(math.ceil(cpu_load_cores - 1e-12)))
    # CPU cores needed per host for the planned tasks
    per_instance: dict[tuple[int, int], int] = {}
    for p in plans:
        per_instance[(p.host_entry, p.host_instance)] = per_instance.get((p.host_entry, p.host_instance), 0) + 1
    for (hi, _), ntasks in per_instance.items():
        cores = hosts[hi].cpu_cores * hosts[hi].cpu_count
        if ntasks * cpu_count > cores:
            raise KavierInputError(
                f"OpenDC host '{hosts[hi].name}' would hold {ntasks} replica task(s) of {cpu_count} core(s) "
                f"but has {cores} core(s)", source=dc.source, location=f"hosts[{hosts[hi].group}].cpu",
                expected="more CPU cores per host or a smaller cpu_load_cores")
    # host memory reserved per task: its GPU share of the smallest eligible host memory ratio
    mem_ratio = min(hosts[i].memory_mib / hosts[i].physical_gpus for i in eligible)

    makespan_ms = int(to_ms(sim.makespan_s))
    groups = {int(r): g for r, g in sim.timeline.groupby("replica", sort=True)}
    empty = sim.timeline.iloc[0:0]
    gpu_power = hosts[eligible[0]].gpu_power
    task_rows: dict[str, list] = {k: [] for k in TASKS_SCHEMA.names}
    frag_ids, frag_dur, frag_cpu, frag_gpu = [], [], [], []
    per_task: list[dict] = []
    n_segments_total = 0
    max_err = 0.0
    energy_linear = 0.0
    busy_gpu_s = 0.0
    cache: dict[int, tuple[np.ndarray, np.ndarray, int, float]] = {}
    for p in plans:
        if p.replica not in cache:
            seg = groups.get(p.replica, empty)
            rep_end = sim.makespan_s if pad_to_makespan else (float(seg["end_s"].max()) if len(seg) else 0.0)
            bounds, util = replica_pieces(seg, rep_end, source=sim.source, replica=p.replica)
            n_seg = int(len(seg))
            if mode == "interval":
                dur, u = interval_bins(bounds, util, interval_s)
                err = float("nan")
            else:
                seg_ms = np.diff(to_ms(bounds))
                if mode == "adaptive":
                    dur, u, err = merge_adaptive(seg_ms, util, tolerance)
                else:
                    keep = seg_ms > 0
                    dur, u, err = seg_ms[keep], util[keep], 0.0
            cache[p.replica] = (dur, u, n_seg, err)
        dur, u, n_seg, err = cache[p.replica]
        if p.part == 0:
            n_segments_total += n_seg
            if not math.isnan(err):
                max_err = max(max_err, err)
        total_ms = int(dur.sum())
        cap = per_gpu_capacity * p.gpus
        frag_ids.append(np.full(dur.size, p.task_id, np.int32))
        frag_dur.append(dur)
        frag_cpu.append(np.full(dur.size, cpu_load_cores * cpu_mhz, np.float64))
        frag_gpu.append(u * cap)
        task_rows["id"].append(p.task_id)
        task_rows["name"].append(f"replica-{p.replica}" + (f"-part-{p.part}" if p.part or p.gpus != sim.tp else ""))
        task_rows["submission_time"].append(sub_ms)
        task_rows["duration"].append(total_ms)
        task_rows["cpu_count"].append(cpu_count)
        task_rows["cpu_capacity"].append(cpu_count * cpu_mhz)
        task_rows["mem_capacity"].append(int(math.floor(mem_ratio * p.gpus)) * 1000)
        task_rows["gpu_count"].append(int(gpu.num_sms) * p.gpus)
        task_rows["gpu_capacity"].append(cap)
        if gpu_power is not None and gpu_power.model != "constant":
            energy_linear += linear_gpu_energy_j(dur, u, p.gpus, gpu_power.idle_w, gpu_power.max_w)
        busy_gpu_s += float(np.sum(u * dur) / 1000.0) * p.gpus
        per_task.append({"task_id": p.task_id, "replica": p.replica, "part": p.part, "gpus": p.gpus,
                         "fragments": int(dur.size), "duration_ms": total_ms,
                         "planned_host": f"{hosts[p.host_entry].name}#{p.host_instance}"})

    tasks = pa.Table.from_pydict(
        {k: pa.array(v, type=TASKS_SCHEMA.field(k).type) for k, v in task_rows.items()},
        schema=TASKS_SCHEMA)
    frags = pa.Table.from_arrays(
        [pa.array(np.concatenate(frag_ids), pa.int32()),
         pa.array(np.concatenate(frag_dur).astype(np.int64), pa.int64()),
         pa.array(np.concatenate(frag_cpu), pa.float64()),
         pa.array(np.concatenate(frag_gpu), pa.float64())],
        schema=FRAGMENTS_SCHEMA)
    out_dir = Path(out_dir)
    tasks_path, frags_path = out_dir / "tasks.parquet", out_dir / "fragments.parquet"
    write_parquet_atomic(frags_path, frags)
    write_parquet_atomic(tasks_path, tasks)

    n_frag = int(frags.num_rows)
    stats: dict[str, Any] = {
        "mode": mode,
        "tolerance": float(tolerance) if mode == "adaptive" else None,
        "interval_s": float(interval_s) if mode == "interval" else None,
        "start": start,
        "submission_time_ms": sub_ms,
        "makespan_s": sim.makespan_s,
        "makespan_ms": makespan_ms,
        "pad_to_makespan": bool(pad_to_makespan),
        "gpu": gpu.name,
        "replicas": sim.replicas,
        "tp": sim.tp,
        "tasks": int(tasks.num_rows),
        "timeline_segments": n_segments_total,
        "fragments": n_frag,
        "fragments_per_task": [t["fragments"] for t in per_task],
        "compression_ratio": (n_segments_total / n_frag) if n_frag else None,
        "max_abs_utilization_error": max_err if mode != "interval" else None,
        "gpu_capacity_mhz_per_gpu": per_gpu_capacity,
        "cpu_load_cores": float(cpu_load_cores),
        "cpu_usage_mhz": float(cpu_load_cores * cpu_mhz),
        "gpu_busy_seconds": busy_gpu_s,
        "gpu_energy_linear_wh": energy_linear / 3600.0 if energy_linear else None,
        "task_map": per_task,
        "paths": {"tasks": str(tasks_path.resolve()), "fragments": str(frags_path.resolve())},
    }
    return stats, dc, hosts


def export_workload(sim_dir: str | os.PathLike, out_dir: str | os.PathLike, datacenter, *,
                    mode: str = "adaptive", tolerance: float = DEFAULT_TOLERANCE,
                    interval_s: float = DEFAULT_INTERVAL_S, start: str | None = None,
                    cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES,
                    pad_to_makespan: bool = True) -> dict[str, Any]:
    """Write ``out_dir/tasks.parquet`` and ``out_dir/fragments.parquet`` for
    the simulation in ``sim_dir`` on ``datacenter`` (a :class:`Datacenter`,
    a description file or a mapping).

    ``mode``: ``adaptive`` (merge within ``tolerance``), ``interval`` (bins of
    ``interval_s``) or ``segments`` (one fragment per timeline segment).
    ``start``: the calendar start (UTC, default the datacenter's
    ``start``, else 2022-01-01T00:00:00) stamped as every task's
    submission_time. ``cpu_load_cores``: constant host-CPU load of one
    replica in cores. ``pad_to_makespan``: every replica's task lasts until
    the makespan (idle at the end) rather than its own last activity.

    Returns statistics: mode, tolerance, fragment and segment counts,
    largest utilisation error of a merged fragment, GPU energy under the
    GPU's linear power model, the task -> replica map and the paths.
    """
    stats, _, _ = _export(sim_dir, out_dir, datacenter, mode=mode, tolerance=tolerance,
                          interval_s=interval_s, start=start, cpu_load_cores=cpu_load_cores,
                          pad_to_makespan=pad_to_makespan)
    return stats


def read_workload(workload_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an exported workload back (tasks, fragments) as DataFrames."""
    d = Path(workload_dir)
    return pq.read_table(d / "tasks.parquet").to_pandas(), pq.read_table(d / "fragments.parquet").to_pandas()
