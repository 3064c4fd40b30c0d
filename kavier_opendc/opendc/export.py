"""Simulation timeline -> OpenDC workload (tasks.parquet, fragments.parquet): the writer.

The fragment algorithms are pure functions in ``opendc/fragments.py``; the
simulation's outputs are checked and described per replica in
``opendc/simulation_view.py``; this module plans the tasks on the hosts and
writes OpenDC's workload files.

One OpenDC task per GPU serving replica (or per part of a replica whose
tensor-parallel group does not fit one OpenDC host). A task runs from the
start of the run to the end; its fragments carry the replica's GPU
utilisation over time as piecewise-constant pieces (OpenDC plays a task's
fragments back to back, in file order, from the moment the task is placed).

Replicas may differ in GPU type and tp (summary.json ``config.replica_groups``,
replicas numbered group after group, and the timeline's ``gpu``/``tp``
columns). Each replica's task uses its own GPU type: ``gpu_usage`` =
utilisation x GPUs held x SMs x boost MHz of that GPU, ``gpu_count`` = GPUs
held x its SMs, and it is planned on a host group with that GPU type (see
:mod:`kavier_opendc.opendc.topology` for the datacenter side and for what
OpenDC's schedulers can and cannot enforce).

Modes
-----
``adaptive`` (default)
    Adjacent timeline segments are merged while the spread (max - min) of
    their utilisations stays within ``tolerance`` (absolute). A merged
    fragment carries the duration-weighted mean utilisation, so under a
    linear power model the GPU energy is the same as without merging, and no
    segment deviates from its fragment's value by more than ``tolerance``.
    Then runs of fragments shorter than ``min_fragment_s`` (default: the
    datacenter's ``export_interval_s``, the resolution at which OpenDC reports
    power anyway) are merged into fragments of at least that length, again by
    their duration-weighted mean: a lightly loaded replica whose timeline
    flips between idle and busy every few milliseconds no longer costs a
    fragment per flip. ``min_fragment_s: 0`` keeps the tolerance merge only.
``interval``
    Fixed bins of ``interval_s`` seconds (the Kavier prototype's way), each
    with the time-weighted mean utilisation over the bin.
``segments``
    Every timeline segment is one fragment (no merging; for comparison).
``per-request``
    The Kavier prototype's way, for comparison: one task per finished
    request of ``requests.parquet`` with one fragment (see
    :func:`export_workload`). OpenDC's FIFO scheduler (no backfill, 1-second
    slots, OPENDC.md) makes many short tasks wait, so OpenDC's timing and
    energy of this export drift from the simulation; the replica tasks of
    the other modes do not have that problem.

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

from kavier_opendc.base.atomic import write_parquet_atomic
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.opendc.datacenter import DEFAULT_START, Datacenter, load_datacenter
from kavier_opendc.opendc.fragments import (
    PLAIN_CURVES,
    attribute_gpu_time,
    curve_gpu_energy_j,
    interval_bins,
    linear_gpu_energy_j,
    merge_adaptive,
    merge_short,
    peak_concurrency,
    replica_pieces,
    to_ms,
)
from kavier_opendc.opendc.simulation_view import Simulation, read_requests, read_simulation
from kavier_opendc.opendc.topology import OpenDCHost, TaskPlan, opendc_host_name, opendc_hosts, plan_replicas, same_gpu

MODES = ("adaptive", "interval", "segments", "per-request")
#: OpenDC prefab schedulers whose filters look at GPUs (VGpuFilter: free GPU cores).
GPU_AWARE_POLICIES = ("ProvisionedCpuGpuCores", "ProvisionedCpuGpuCoresInv")
DEFAULT_TOLERANCE = 0.02
DEFAULT_INTERVAL_S = 0.1
#: Host-side CPU load of one serving replica, in cores (scheduler, tokeniser,
#: HTTP server): a constant half core by default.
DEFAULT_CPU_LOAD_CORES = 0.5

TASKS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=True),
        pa.field("submission_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),
        pa.field("cpu_count", pa.int32(), nullable=False),
        pa.field("cpu_capacity", pa.float64(), nullable=False),
        pa.field("mem_capacity", pa.int64(), nullable=False),
        pa.field("gpu_count", pa.int32(), nullable=True),
        pa.field("gpu_capacity", pa.float64(), nullable=True),
    ]
)

FRAGMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),
        pa.field("cpu_usage", pa.float64(), nullable=False),
        pa.field("gpu_usage", pa.float64(), nullable=True),
    ]
)


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
        raise KavierInputError(
            f"start {start!r} is not an ISO date-time", location="start", expected="e.g. 2022-01-01T00:00:00 (UTC)"
        ) from None
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def _gpu_specs_for(sim: Simulation, dc: Datacenter) -> tuple[Datacenter, list]:
    """Each replica's GPU spec, and the datacenter with the simulation's GPU
    filled in for host groups that name none.

    A GPU type's capacity (SMs x boost MHz) and power come from the host
    groups that name it (with their overrides), else from the catalogue.
    Host groups without a GPU type take the simulation's GPU when it uses
    one type; with several types every GPU host group must name its type.
    """
    named = [h for h in dc.gpu_hosts() if h.gpu is not None]
    unnamed = [h for h in dc.gpu_hosts() if h.gpu is None]
    types = sim.gpu_types
    if not types:
        kinds = dc.gpu_types()
        if len(kinds) == 1:
            spec = named[0].gpu
            return dc.with_gpu(spec), [spec] * sim.replicas
        raise KavierInputError(
            "the simulation names no GPU and the datacenter does not name exactly one",
            source=sim.source,
            location="summary.json config.gpu",
            expected="a GPU catalogue name",
        )
    from kavier_opendc.specs import default_catalog

    cat = default_catalog()
    specs: dict[str, Any] = {}
    matched: set[int] = set()
    for name in types:
        try:
            cspec = cat.gpu(name)
        except KavierInputError:
            cspec = None
        keys = {name.strip().lower()} | ({cspec.name.lower()} if cspec is not None else set())
        same = [h for h in named if h.gpu.name.lower() in keys]
        matched |= {id(h) for h in same}
        if same:
            caps = {(h.gpu.num_sms, h.gpu.boost_clock_mhz) for h in same}
            if len(caps) > 1:
                raise KavierInputError(
                    f"host groups give {name!r} different num_sms/boost_clock_mhz {sorted(caps)}",
                    source=dc.source,
                    location="hosts[*].gpu",
                    expected="one GPU capacity per GPU type",
                )
            specs[name.strip().lower()] = same[0].gpu
        elif cspec is None:
            raise KavierInputError(
                f"GPU {name!r} of the simulation is not in the GPU catalogue and no host "
                "group of the datacenter describes it",
                source=sim.source,
                location="column gpu / summary.json config.gpu",
                expected="a catalogue GPU name, or a datacenter host 'gpu' entry with that name",
            )
        else:
            specs[name.strip().lower()] = cspec
    others = [h for h in named if id(h) not in matched]
    if others:
        kinds = sorted({h.gpu.name for h in others})
        ran = ", ".join(repr(t) for t in types)
        raise KavierInputError(
            f"the datacenter has hosts with GPU type(s) {kinds} but the simulation ran on {ran} only; "
            "OpenDC's schedulers cannot keep replicas off hosts of another GPU type",
            source=dc.source,
            location=f"{others[0].path}.gpu",
            expected=f"only GPU types the replicas run on ({ran}), or leave 'gpu' out to use the simulation's GPU"
            if len(types) == 1
            else f"only GPU types the replicas run on ({ran})",
        )
    if unnamed:
        if len(types) > 1:
            raise KavierInputError(
                f"host group '{unnamed[0].name}' names no GPU type, but the simulation's replicas run on "
                f"{len(types)} GPU types ({', '.join(types)})",
                source=dc.source,
                location=f"{unnamed[0].path}.gpu",
                expected="a GPU type on every host group with GPUs, e.g. gpu: " + specs[types[0].lower()].name,
            )
        dc = dc.with_gpu(specs[types[0].strip().lower()])
    return dc, [specs[g.strip().lower()] for g in sim.replica_gpu]


def _resolve_gpu(sim: Simulation, dc: Datacenter):
    """The GPU spec of a simulation with one GPU type (see :func:`_gpu_specs_for`)."""
    _, specs = _gpu_specs_for(sim, dc)
    kinds = {s.name for s in specs}
    if len(kinds) != 1:
        raise KavierInputError(
            f"several GPU types {sorted(kinds)}",
            source=sim.source,
            location="column gpu",
            expected="one GPU type (use _gpu_specs_for for several)",
        )
    return specs[0]


@dataclass
class _Prepared:
    """Everything both export paths need: the datacenter with GPUs filled in,
    OpenDC hosts, the replica placement and per-type host facts."""

    sim: Simulation
    dc: Datacenter
    hosts: list[OpenDCHost]
    plans: list[TaskPlan]
    specs: list  # GPUSpec per replica
    start: str
    sub_ms: int
    cpu_count: int
    per_type: dict[str, dict]  # GPU name -> {spec, entries, cpu_mhz, mem_ratio_mib, power}


def _check_options(
    mode: str, tolerance: float, interval_s: float, cpu_load_cores: float, min_fragment_s: float | None = None
) -> None:
    if min_fragment_s is not None and not (math.isfinite(min_fragment_s) and min_fragment_s >= 0):
        raise KavierInputError(
            f"min_fragment_s {min_fragment_s!r}",
            location="min_fragment_s",
            expected="a non-negative duration in seconds (0: no minimum)",
        )
    if mode not in MODES:
        raise KavierInputError(f"unknown export mode {mode!r}", location="mode", expected=" or ".join(MODES))
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise KavierInputError(
            f"tolerance {tolerance!r}",
            location="tolerance",
            expected="a non-negative utilisation difference, e.g. 0.02",
        )
    if not (math.isfinite(interval_s) and interval_s >= 0.001):
        raise KavierInputError(
            f"interval_s {interval_s!r}", location="interval_s", expected="at least 0.001 s (one millisecond)"
        )
    if not (math.isfinite(cpu_load_cores) and cpu_load_cores >= 0):
        raise KavierInputError(
            f"cpu_load_cores {cpu_load_cores!r}", location="cpu_load_cores", expected="a non-negative number of cores"
        )


def _prepare(sim_dir, datacenter, start: str | None, cpu_load_cores: float, *, check_cpu: bool) -> _Prepared:
    dc = load_datacenter(datacenter)
    sim = read_simulation(sim_dir)
    dc, specs = _gpu_specs_for(sim, dc)
    dc = dc.with_power_caps(_power_caps(sim, specs, dc))
    hosts = opendc_hosts(dc)
    plans = plan_replicas(hosts, [(g.name, tp) for g, tp in zip(specs, sim.replica_tp, strict=True)], source=dc.source)
    start = _normalise_start(start if start is not None else (dc.start or DEFAULT_START))
    sub_ms = _epoch_ms(start)
    cpu_count = max(1, int(math.ceil(cpu_load_cores - 1e-12)))
    if check_cpu:
        per_instance: dict[tuple[int, int], int] = {}
        for p in plans:
            key = (p.host_entry, p.host_instance)
            per_instance[key] = per_instance.get(key, 0) + 1
        for (hi, _), ntasks in per_instance.items():
            cores = hosts[hi].cpu_cores * hosts[hi].cpu_count
            if ntasks * cpu_count > cores:
                raise KavierInputError(
                    f"OpenDC host '{hosts[hi].name}' would hold {ntasks} replica task(s) of {cpu_count} core(s) "
                    f"but has {cores} core(s)",
                    source=dc.source,
                    location=f"{dc.hosts[hosts[hi].group].path}.cpu",
                    expected="more CPU cores per host or a smaller cpu_load_cores",
                )
    per_type: dict[str, dict] = {}
    for p in plans:
        g = specs[p.replica]
        t = per_type.setdefault(g.name, {"spec": g, "entries": [], "replicas": set()})
        if p.host_entry not in t["entries"]:
            t["entries"].append(p.host_entry)
        t["replicas"].add(p.replica)
    for t in per_type.values():
        t["entries"].sort()
        first = hosts[t["entries"][0]]
        t["cpu_mhz"] = first.cpu_mhz
        # host memory reserved per GPU: the smallest memory-per-GPU of the planned hosts of that type
        t["mem_ratio_mib"] = min(hosts[i].memory_mib / hosts[i].physical_gpus for i in t["entries"])
        t["power"] = dc.hosts[first.group].gpu_power(t["spec"])  # one physical GPU (not aggregated)
        t["cap_w"] = dc.hosts[first.group].power_cap_w
        t["capacity_mhz"] = float(t["spec"].num_sms) * float(t["spec"].boost_clock_mhz)
        t["max_host_gpu_cores"] = max(
            h.gpus * h.gpu_core_count for h in hosts if h.physical_gpus > 0 and same_gpu(h.gpu_model, t["spec"].name)
        )
    return _Prepared(sim, dc, hosts, plans, specs, start, sub_ms, cpu_count, per_type)


def _power_caps(sim: Simulation, specs: list, dc: Datacenter) -> dict[str, float]:
    """The power cap of each GPU type's replicas (summary.json ``replicas[i].power_cap_w``; lower-case name ->
    W), for the topology's curved power models (datacenter.PowerModel.under_cap). Replicas of one type
    capped differently (disaggregated pools) cannot share one curve: refused for a curved model only."""
    reps = sim.summary.get("replicas") if isinstance(sim.summary.get("replicas"), list) else []
    caps: dict[str, set] = {}
    for i, g in enumerate(specs):
        r = reps[i] if i < len(reps) and isinstance(reps[i], dict) else {}
        caps.setdefault(g.name.lower(), set()).add(r.get("power_cap_w"))
    out: dict[str, float] = {}
    for name, vals in caps.items():
        if vals == {None}:
            continue
        curved = [
            h
            for h in dc.gpu_hosts()
            if h.gpu is not None and h.gpu.name.lower() == name and h.gpu_power().model != "linear"
        ]
        if len(vals) > 1 and curved:
            shown = ", ".join("none" if v is None else f"{v:g} W" for v in sorted(vals, key=lambda v: v or 0.0))
            raise KavierInputError(
                f"replicas of {curved[0].gpu.name} run under different power caps ({shown}) and its power model "
                f"'{curved[0].gpu_power().model}' is curved: one OpenDC curve cannot top out at each cap",
                source=dc.source,
                location=f"{curved[0].path}.gpu_power_model.model",
                expected="the linear model (it carries each cap in the utilisation), or one cap for that GPU type",
            )
        if None not in vals:
            out[name] = float(next(iter(vals)))
    return out


def _placement(prep: _Prepared, task_ids, gpu_count, cpu_count, mem_mib, task_type) -> dict[str, Any]:
    """Which tasks OpenDC could place on a host of another GPU type.

    OpenDC v2.4u's GPU-aware prefab schedulers (ProvisionedCpuGpuCores[Inv])
    only check that a host has enough free GPU cores, CPU cores and memory;
    they know nothing of GPU types. A task is *pinned* when no host entry of
    another type could take it even when empty. With another scheduler
    (e.g. Mem, which ignores GPUs) a task is pinned only when every host has
    its GPU type."""
    gpu_aware = prep.dc.allocation_policy in GPU_AWARE_POLICIES
    verdict: dict[tuple, bool] = {}
    not_pinned: list[int] = []
    for tid, g, c, m, gtype in zip(task_ids, gpu_count, cpu_count, mem_mib, task_type, strict=True):
        key = (gtype, int(g), int(c), int(m))
        if key not in verdict:
            loose = False
            for h in prep.hosts:
                if h.physical_gpus > 0 and same_gpu(h.gpu_model, gtype):
                    continue
                if not gpu_aware or (
                    h.physical_gpus > 0
                    and h.gpus * h.gpu_core_count >= key[1]
                    and h.cpu_cores * h.cpu_count >= key[2]
                    and h.memory_mib >= key[3]
                ):
                    loose = True
                    break
            verdict[key] = loose
        if verdict[key]:
            not_pinned.append(int(tid))
    if not gpu_aware:
        note = (
            f"the allocation policy {prep.dc.allocation_policy} ignores GPUs: OpenDC may put a task on any "
            "host with free CPU cores and memory"
        )
    elif not_pinned:
        note = (
            "OpenDC's schedulers know no GPU types: these tasks also fit a host of another GPU type, so "
            "OpenDC may place them there (tasks are written largest GPU request first to make that rarer)"
        )
    else:
        note = "every task fits only hosts of its own GPU type"
    return {
        "gpu_types": sorted(prep.per_type),
        "allocation_policy": prep.dc.allocation_policy,
        "gpu_aware_scheduler": gpu_aware,
        "tasks_not_pinned": sorted(not_pinned),
        "note": note,
    }


def _write_tables(
    out_dir, task_rows: dict[str, list], frag_cols: tuple[list, list, list, list], order: list[int] | None = None
) -> tuple[pa.Table, pa.Table, Path, Path]:
    """Write tasks.parquet and fragments.parquet; ``order`` is the row order
    of the tasks (their fragments follow the same order)."""
    frag_ids, frag_dur, frag_cpu, frag_gpu = frag_cols
    if order is None:
        order = list(range(len(frag_ids)))
        cols = dict(task_rows)
    else:
        cols = {k: [v[i] for i in order] for k, v in task_rows.items()}
    tasks = pa.Table.from_pydict(
        {k: pa.array(v, type=TASKS_SCHEMA.field(k).type) for k, v in cols.items()}, schema=TASKS_SCHEMA
    )

    def cat(parts, dt):
        return np.concatenate([parts[i] for i in order]).astype(dt) if order else np.zeros(0, dt)

    frags = pa.Table.from_arrays(
        [
            pa.array(cat(frag_ids, np.int32), pa.int32()),
            pa.array(cat(frag_dur, np.int64), pa.int64()),
            pa.array(cat(frag_cpu, np.float64), pa.float64()),
            pa.array(cat(frag_gpu, np.float64), pa.float64()),
        ],
        schema=FRAGMENTS_SCHEMA,
    )
    out_dir = Path(out_dir)
    tasks_path, frags_path = out_dir / "tasks.parquet", out_dir / "fragments.parquet"
    write_parquet_atomic(frags_path, frags)
    write_parquet_atomic(tasks_path, tasks)
    return tasks, frags, tasks_path, frags_path


def _type_stats(prep: _Prepared) -> dict[str, Any]:
    """Scalars for one GPU type (as before heterogeneous replicas), lists/dicts for several."""
    sim = prep.sim
    names = list(prep.per_type)
    caps = {n: t["capacity_mhz"] for n, t in prep.per_type.items()}
    return {
        "gpu": names[0] if len(names) == 1 else names,
        "tp": sim.tp if sim.tp is not None else sorted(set(sim.replica_tp)),
        "gpu_capacity_mhz_per_gpu": caps[names[0]] if len(names) == 1 else caps,
        "replica_groups": [
            {
                "model": g["model"],
                "gpu": prep.specs[g["first_replica"]].name,
                "replicas": g["replicas"],
                "tp": g["tp"],
                "first_replica": g["first_replica"],
            }
            for g in sim.groups
        ],
    }


class CurveCheck:
    """What merging fragments does to the GPU energy and peak under a non-linear power curve.

    A merged fragment carries its pieces' mean utilisation, which keeps the energy of a linear curve;
    under a curved one (sqrt, square, cubic: Jensen's inequality) the energy and the peaks change. The
    exact value is the curve over the timeline's own pieces (``--mode segments`` gives OpenDC those)."""

    def __init__(self) -> None:
        self.models: set[str] = set()
        self.unchecked: set[str] = set()  # curves computed inside OpenDC only (mse, asymptotic)
        self.exported_j = self.exact_j = 0.0
        self.exported_peak_w = self.exact_peak_w = 0.0

    def add(
        self, power, gpus: int, exported: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray]
    ) -> None:
        if power.model not in PLAIN_CURVES:
            self.unchecked.add(power.model)
            return
        self.models.add(power.model)
        self.exported_j += curve_gpu_energy_j(*exported, gpus, power.model, power.idle_w, power.max_w)
        self.exact_j += curve_gpu_energy_j(*exact, gpus, power.model, power.idle_w, power.max_w)
        for (dur, u), attr in ((exported, "exported_peak_w"), (exact, "exact_peak_w")):
            if dur.size:
                peak = gpus * power.power(float(np.max(u)))
                setattr(self, attr, max(getattr(self, attr), peak))

    def summary(self, mode: str) -> dict[str, Any] | None:
        if not self.models and not self.unchecked:
            return None
        out: dict[str, Any] = {"models": sorted(self.models | self.unchecked), "mode": mode}
        if self.models and self.exact_j > 0:
            e = self.exported_j / self.exact_j - 1.0
            pk = self.exported_peak_w / self.exact_peak_w - 1.0 if self.exact_peak_w > 0 else 0.0
            out.update(
                gpu_energy_exact_wh=self.exact_j / 3600.0,
                gpu_energy_exported_wh=self.exported_j / 3600.0,
                energy_change=e,
                replica_peak_exact_w=self.exact_peak_w,
                replica_peak_exported_w=self.exported_peak_w,
                peak_change=pk,
            )
            if abs(e) >= 0.0005 or abs(pk) >= 0.005:  # below these the approximation changes no printed digit
                out["note"] = (
                    f"the GPU power model is not linear ({', '.join(sorted(self.models))}): the {mode} "
                    f"export's merged fragments change the GPU energy by {e:+.1%} and the highest GPU "
                    f"power of a replica by {pk:+.1%} against the timeline's own pieces; export mode "
                    "'segments' gives OpenDC those (exact, more fragments)"
                )
        else:
            out["note"] = (
                f"the GPU power model is not linear ({', '.join(sorted(self.unchecked))}): merged "
                "fragments change its energy and peaks by an amount only OpenDC computes; export mode "
                "'segments' is exact"
            )
        return out


def export_with_hosts(
    sim_dir,
    out_dir,
    datacenter,
    *,
    mode: str = "adaptive",
    tolerance: float = DEFAULT_TOLERANCE,
    interval_s: float = DEFAULT_INTERVAL_S,
    start: str | None = None,
    cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES,
    pad_to_makespan: bool = True,
    min_fragment_s: float | None = None,
) -> tuple[dict, Datacenter, list[OpenDCHost]]:
    _check_options(mode, tolerance, interval_s, cpu_load_cores, min_fragment_s)
    if mode == "per-request":
        prep = _prepare(sim_dir, datacenter, start, cpu_load_cores, check_cpu=False)
        capped = [t for t in prep.per_type.values() if t["cap_w"] is not None and t["power"].model not in ("linear",)]
        if capped:  # its tasks carry each request's mean share, not the timeline the curve needs
            raise KavierInputError(
                f"the per-request export does not model a power cap under the curved power model "
                f"'{capped[0]['power'].model}' of {capped[0]['spec'].name}",
                source=prep.dc.source,
                location="mode",
                expected="mode adaptive, segments or interval, or the linear GPU power model",
            )
        return _export_per_request(prep, out_dir, cpu_load_cores), prep.dc, prep.hosts
    prep = _prepare(sim_dir, datacenter, start, cpu_load_cores, check_cpu=True)
    sim, hosts, plans, cpu_count = prep.sim, prep.hosts, prep.plans, prep.cpu_count
    if min_fragment_s is None:
        min_fragment_s = float(prep.dc.export_interval_s)
    min_fragment_ms = int(to_ms(min_fragment_s))

    makespan_ms = int(to_ms(sim.makespan_s))
    groups = {int(r): g for r, g in sim.timeline.groupby("replica", sort=True)}
    empty = sim.timeline.iloc[0:0]
    task_rows: dict[str, list] = {k: [] for k in TASKS_SCHEMA.names}
    frag_ids, frag_dur, frag_cpu, frag_gpu = [], [], [], []
    per_task: list[dict] = []
    n_segments_total = 0
    max_err = 0.0
    energy_linear = 0.0
    busy_gpu_s = 0.0
    cache: dict[int, tuple[np.ndarray, np.ndarray, int, float, np.ndarray, np.ndarray]] = {}
    curve = CurveCheck()
    for p in plans:
        if p.replica not in cache:
            seg = groups.get(p.replica, empty)
            rep_end = sim.makespan_s if pad_to_makespan else (float(seg["end_s"].max()) if len(seg) else 0.0)
            bounds, util = replica_pieces(seg, rep_end, source=sim.source, replica=p.replica)
            n_seg = int(len(seg))
            seg_ms = np.diff(to_ms(bounds))
            keep = seg_ms > 0
            if mode == "interval":
                dur, u = interval_bins(bounds, util, interval_s)
                err = float("nan")
            else:
                if mode == "adaptive":
                    dur, u, _ = merge_adaptive(seg_ms, util, tolerance)
                    dur, u = merge_short(dur, u, min_fragment_ms)
                    group = np.searchsorted(np.cumsum(dur), np.cumsum(seg_ms[keep]) - 1, side="right")
                    err = float(np.max(np.abs(util[keep] - u[group]))) if dur.size else 0.0
                else:
                    dur, u, err = seg_ms[keep], util[keep], 0.0
            cache[p.replica] = (dur, u, n_seg, err, seg_ms[keep], util[keep])
        dur, u, n_seg, err, seg_dur, seg_u = cache[p.replica]
        if p.part == 0:
            n_segments_total += n_seg
            if not math.isnan(err):
                max_err = max(max_err, err)
        spec = prep.specs[p.replica]
        t = prep.per_type[spec.name]
        tp = sim.replica_tp[p.replica]
        total_ms = int(dur.sum())
        cap = t["capacity_mhz"] * p.gpus
        frag_ids.append(np.full(dur.size, p.task_id, np.int32))
        frag_dur.append(dur)
        frag_cpu.append(np.full(dur.size, cpu_load_cores * t["cpu_mhz"], np.float64))
        power, cap_w = t["power"], t["cap_w"]
        u_odc, seg_odc = u, seg_u  # what OpenDC's curve is given
        if power is not None and cap_w is not None:  # a curved model tops out at the cap: u of idle-to-cap
            u_odc, seg_odc = power.capped_utilisation(u, cap_w), power.capped_utilisation(seg_u, cap_w)
            power = power.under_cap(cap_w)
        frag_gpu.append(u_odc * cap)
        task_rows["id"].append(p.task_id)
        task_rows["name"].append(f"replica-{p.replica}" + (f"-part-{p.part}" if p.part or p.gpus != tp else ""))
        task_rows["submission_time"].append(prep.sub_ms)
        task_rows["duration"].append(total_ms)
        task_rows["cpu_count"].append(cpu_count)
        task_rows["cpu_capacity"].append(cpu_count * t["cpu_mhz"])
        mem_mib = int(math.floor(t["mem_ratio_mib"] * p.gpus))
        task_rows["mem_capacity"].append(mem_mib * 1000)
        task_rows["gpu_count"].append(int(spec.num_sms) * p.gpus)
        task_rows["gpu_capacity"].append(cap)
        if power is not None and power.model != "constant":
            energy_linear += linear_gpu_energy_j(dur, u_odc, p.gpus, power.idle_w, power.max_w)
        if power is not None and power.model not in ("constant", "linear") and mode != "segments":
            curve.add(power, p.gpus, (dur, u_odc), (seg_dur, seg_odc))
        busy_gpu_s += float(np.sum(u * dur) / 1000.0) * p.gpus
        per_task.append(
            {
                "task_id": p.task_id,
                "replica": p.replica,
                "part": p.part,
                "gpus": p.gpus,
                "gpu": spec.name,
                "tp": tp,
                "model": sim.replica_model[p.replica],
                "fragments": int(dur.size),
                "duration_ms": total_ms,
                "planned_host": opendc_host_name(hosts[p.host_entry], p.host_instance),
            }
        )

    # largest GPU request first: OpenDC keeps file order for equal submission times (FIFO)
    order = sorted(range(len(plans)), key=lambda i: (-task_rows["gpu_count"][i], i))
    tasks, frags, tasks_path, frags_path = _write_tables(
        out_dir, task_rows, (frag_ids, frag_dur, frag_cpu, frag_gpu), order
    )
    n_frag = int(frags.num_rows)
    curve_summary = curve.summary(mode)
    stats: dict[str, Any] = {
        "mode": mode,
        "tolerance": float(tolerance) if mode == "adaptive" else None,
        "min_fragment_s": float(min_fragment_s) if mode == "adaptive" else None,
        "interval_s": float(interval_s) if mode == "interval" else None,
        "start": prep.start,
        "submission_time_ms": prep.sub_ms,
        "makespan_s": sim.makespan_s,
        "makespan_ms": makespan_ms,
        "pad_to_makespan": bool(pad_to_makespan),
        "replicas": sim.replicas,
        **_type_stats(prep),
        "tasks": int(tasks.num_rows),
        "timeline_segments": n_segments_total,
        "fragments": n_frag,
        "fragments_per_task": [t["fragments"] for t in per_task],
        "compression_ratio": (n_segments_total / n_frag) if n_frag else None,
        "max_abs_utilization_error": max_err if mode != "interval" else None,
        "cpu_load_cores": float(cpu_load_cores),
        "cpu_usage_mhz": float(cpu_load_cores * prep.per_type[prep.specs[0].name]["cpu_mhz"]),
        "gpu_busy_seconds": busy_gpu_s,
        "gpu_energy_linear_wh": energy_linear / 3600.0 if energy_linear else None,
        **({"power_curve": curve_summary} if curve_summary else {}),  # only for curved models
        "placement": _placement(
            prep,
            task_rows["id"],
            task_rows["gpu_count"],
            task_rows["cpu_count"],
            [m // 1000 for m in task_rows["mem_capacity"]],
            [prep.specs[p.replica].name for p in plans],
        ),
        "task_map": per_task,
        "paths": {"tasks": str(tasks_path.resolve()), "fragments": str(frags_path.resolve())},
    }
    return stats, prep.dc, hosts


# --------------------------------------------------------------------------
# Per-request export (the Kavier prototype's way, for comparison)
# --------------------------------------------------------------------------


def _export_per_request(prep: _Prepared, out_dir, cpu_load_cores: float) -> dict[str, Any]:
    sim = prep.sim
    req, skipped = read_requests(sim)
    if not len(req):
        raise KavierInputError(
            "no finished request: nothing to export per request",
            source=sim.output.path("requests.parquet") if sim.output else "requests.parquet",
            expected="at least one request with status 'finished'",
        )
    n = len(req)
    sub = prep.sub_ms + to_ms(req["arrival_s"].to_numpy())
    dur = np.maximum(to_ms(req["e2e_s"].to_numpy()), 1)
    busy = np.zeros(n)  # GPU-seconds of ONE replica GPU attributed to the request
    share = np.zeros(n)
    unattributed = 0.0  # GPU-seconds (all GPUs of the replicas)
    peak: dict[int, int] = {}
    groups = {int(r): g for r, g in sim.timeline.groupby("replica", sort=True)}
    empty = sim.timeline.iloc[0:0]
    busy_total = 0.0
    for r in range(sim.replicas):
        tp = sim.replica_tp[r]
        bounds, util = replica_pieces(groups.get(r, empty), sim.makespan_s, source=sim.source, replica=r)
        busy_total += float(np.sum(util * np.diff(bounds))) * tp
        idx = np.flatnonzero(req["replica"].to_numpy() == r)
        if not idx.size:
            unattributed += float(np.sum(util * np.diff(bounds))) * tp
            peak[r] = 0
            continue
        a = req["arrival_s"].to_numpy()[idx]
        z = a + req["e2e_s"].to_numpy()[idx]
        b_, s_, un = attribute_gpu_time(bounds, util, a, z, req["tokens"].to_numpy()[idx])
        busy[idx], share[idx] = b_, s_
        unattributed += un * tp
        peak[r] = peak_concurrency(a, z)

    reps = req["replica"].to_numpy().astype(np.int64)
    rids = req["request_id"].to_numpy()
    names = [g.name for g in prep.specs]
    r_tp = np.asarray(sim.replica_tp, dtype=np.float64)
    r_cap = np.array([prep.per_type[g]["capacity_mhz"] for g in names]) * r_tp  # replica capacity, MHz
    r_cpu_mhz = np.array([prep.per_type[g]["cpu_mhz"] for g in names])
    r_peak = np.array([max(peak[r], 1) for r in range(sim.replicas)], dtype=np.int64)
    # the replica's GPU cores shared by its most simultaneous requests, at most one OpenDC host's
    r_cores = np.array(
        [
            min(
                max(1, (int(prep.specs[r].num_sms) * sim.replica_tp[r]) // int(r_peak[r])),
                prep.per_type[names[r]]["max_host_gpu_cores"],
            )
            for r in range(sim.replicas)
        ],
        np.int64,
    )
    r_mem = np.array(
        [
            max(1, int(math.floor(prep.per_type[names[r]]["mem_ratio_mib"] * sim.replica_tp[r] / int(r_peak[r]))))
            for r in range(sim.replicas)
        ],
        np.int64,
    )
    r_dyn_w = np.array(
        [
            (p.max_w - p.idle_w) if p is not None and p.model != "constant" else 0.0
            for p in (prep.per_type[g]["power"] for g in names)
        ]
    )
    d_s = dur.astype(np.float64) / 1000.0
    usage = busy * r_cap[reps] / d_s  # MHz: usage x duration = attributed GPU time
    cpu_usage = cpu_load_cores * r_cpu_mhz[reps] * share / d_s
    ids = np.arange(n, dtype=np.int32)
    task_rows = {
        "id": ids,
        "name": [f"request-{int(x)}" for x in rids],
        "submission_time": sub.astype(np.int64),
        "duration": dur.astype(np.int64),
        "cpu_count": np.full(n, prep.cpu_count, np.int32),
        "cpu_capacity": prep.cpu_count * r_cpu_mhz[reps],
        "mem_capacity": r_mem[reps] * 1000,
        "gpu_count": r_cores[reps].astype(np.int32),
        "gpu_capacity": r_cap[reps],
    }
    energy_dyn_j = float(np.sum(r_dyn_w[reps] * busy * r_tp[reps]))
    tasks, frags, tasks_path, frags_path = _write_tables(out_dir, task_rows, ([ids], [dur], [cpu_usage], [usage]))
    first_ms = int(sub.min())
    span_ms = int((sub + dur).max()) - first_ms
    idle_w = 0.0
    for r in range(sim.replicas):
        power = prep.per_type[prep.specs[r].name]["power"]
        if power is not None and power.model != "constant":
            idle_w += power.idle_w * sim.replica_tp[r]
    energy_j = energy_dyn_j + idle_w * span_ms / 1000.0
    attributed = float(np.sum(busy * r_tp[reps]))
    stats: dict[str, Any] = {
        "mode": "per-request",
        "tolerance": None,
        "interval_s": None,
        "start": prep.start,
        "submission_time_ms": prep.sub_ms,
        "makespan_s": sim.makespan_s,
        "makespan_ms": int(to_ms(sim.makespan_s)),
        "span_ms": span_ms,
        "replicas": sim.replicas,
        **_type_stats(prep),
        "tasks": int(tasks.num_rows),
        "requests": n,
        "requests_left_out": skipped,
        "timeline_segments": int(len(sim.timeline)),
        "fragments": int(frags.num_rows),
        "fragments_per_task": None,
        "compression_ratio": None,
        "max_abs_utilization_error": None,
        "attribution": "tokens",
        "peak_concurrency": [peak[r] for r in range(sim.replicas)],
        "cpu_load_cores": float(cpu_load_cores),
        "gpu_busy_seconds": attributed,
        "gpu_busy_seconds_timeline": busy_total,
        "gpu_busy_seconds_unattributed": unattributed,
        "gpu_energy_linear_wh": energy_j / 3600.0 if energy_j else None,
        "placement": _placement(
            prep, ids, task_rows["gpu_count"], task_rows["cpu_count"], r_mem[reps], [names[r] for r in reps]
        ),
        "task_map": None,
        "paths": {"tasks": str(tasks_path.resolve()), "fragments": str(frags_path.resolve())},
    }
    return stats


def export_workload(
    sim_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    datacenter,
    *,
    mode: str = "adaptive",
    tolerance: float = DEFAULT_TOLERANCE,
    interval_s: float = DEFAULT_INTERVAL_S,
    start: str | None = None,
    cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES,
    pad_to_makespan: bool = True,
    min_fragment_s: float | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/tasks.parquet`` and ``out_dir/fragments.parquet`` for
    the simulation in ``sim_dir`` on ``datacenter`` (a :class:`Datacenter`,
    a description file or a mapping).

    ``mode``: ``adaptive`` (merge within ``tolerance``, then no fragment shorter than
    ``min_fragment_s``, default the datacenter's export interval), ``interval`` (bins of
    ``interval_s``), ``segments`` (one fragment per timeline segment) or
    ``per-request`` (below). ``start``: the calendar start (UTC, default the
    datacenter's ``start``, else 2022-01-01T00:00:00) stamped as every replica
    task's submission_time. ``cpu_load_cores``: constant host-CPU load of one
    replica in cores. ``pad_to_makespan``: every replica's task lasts until
    the makespan (idle at the end) rather than its own last activity.

    Replicas of several GPU types / tp values are supported: each task uses
    its replica's GPU (capacity SMs x boost MHz, ``gpu_count`` in SMs) and is
    planned on a host group of that type; too few GPU slots of a type raise
    :class:`KavierInputError` naming the type and the counts. Tasks are
    written largest GPU request first (OpenDC schedules equal submission
    times in file order).

    ``per-request`` mode (the Kavier prototype's way, for comparison): one
    task per finished request of ``requests.parquet``:

    * submission_time = start + arrival_s (epoch ms); duration = e2e_s in ms
      (at least 1 ms); one fragment of that duration.
    * GPU attribution (token-proportional): at every instant the replica's
      utilisation is divided among the requests then in flight on it in
      proportion to their tokens (prompt + output x samples); the fragment's
      ``gpu_usage`` is the request's attributed GPU time divided by its
      duration, times the replica's capacity (tp x SMs x MHz). So
      ``gpu_usage x duration`` summed over requests equals the replica's busy
      GPU time except where no request is in flight
      (``gpu_busy_seconds_unattributed``); under a linear power model the
      dynamic GPU energy is that of the replica tasks. ``cpu_usage`` shares
      the replica's ``cpu_load_cores`` the same way.
    * Resource requests: ``gpu_capacity`` = the replica's capacity;
      ``gpu_count`` = the replica's GPU cores (tp x SMs) divided by its peak
      number of requests in flight (capped at one OpenDC host), so the
      GPU-core filter admits a replica's concurrent requests together;
      ``cpu_count`` as for replica tasks and ``mem_capacity`` the replica's
      host-memory share divided by that peak.
    * Caveat: OpenDC's scheduler is FIFO without backfill and runs on
      1-second slots (OPENDC.md): many short tasks wait for a slot (and for
      CPU cores: each request reserves ``cpu_count`` cores), so OpenDC starts
      requests late, stretches the run and shifts energy and carbon. Per
      request the placement is not pinned to the replica's host either. Use
      it to compare with the replica export, not as the default.
    * ``gpu_energy_linear_wh`` of this mode: idle power of the replicas'
      GPUs over [first arrival, last finish] plus the attributed dynamic
      energy, i.e. what OpenDC would give if it started every request on
      arrival.

    Returns statistics: mode, tolerance, fragment and segment counts,
    largest utilisation error of a merged fragment, GPU energy under the
    GPUs' linear power models, the placement check (``placement``), the
    task -> replica map and the paths.
    """
    stats, _, _ = export_with_hosts(
        sim_dir,
        out_dir,
        datacenter,
        mode=mode,
        tolerance=tolerance,
        interval_s=interval_s,
        start=start,
        cpu_load_cores=cpu_load_cores,
        pad_to_makespan=pad_to_makespan,
        min_fragment_s=min_fragment_s,
    )
    return stats


def read_workload(workload_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an exported workload back (tasks, fragments) as DataFrames."""
    d = Path(workload_dir)
    return pq.read_table(d / "tasks.parquet").to_pandas(), pq.read_table(d / "fragments.parquet").to_pandas()
