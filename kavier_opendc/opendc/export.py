"""Simulation timeline -> OpenDC workload (tasks.parquet, fragments.parquet).

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kavier_opendc.base.atomic import write_parquet_atomic
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.outputs import REQUESTS_REQUIRED, TIMELINE_REQUIRED, SimulationOutput
from kavier_opendc.opendc.datacenter import DEFAULT_START, Datacenter, load_datacenter
from kavier_opendc.opendc.topology import OpenDCHost, TaskPlan, opendc_host_name, opendc_hosts, plan_replicas, same_gpu

MODES = ("adaptive", "interval", "segments", "per-request")
#: OpenDC prefab schedulers whose filters look at GPUs (VGpuFilter: free GPU cores).
GPU_AWARE_POLICIES = ("ProvisionedCpuGpuCores", "ProvisionedCpuGpuCoresInv")
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


def merge_short(durations_ms: np.ndarray, util: np.ndarray, min_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of consecutive pieces shorter than ``min_ms`` into pieces of at least ``min_ms``.

    Pieces already ``min_ms`` long stay as they are; short pieces between them are grouped greedily
    (a group closes once it reaches ``min_ms``, or when a long piece follows). Utilisation is the
    duration-weighted mean, so the utilisation integral (and linear-model energy) is unchanged.
    """
    d = np.asarray(durations_ms, dtype=np.int64)
    u = np.asarray(util, dtype=np.float64)
    if min_ms <= 1 or d.size < 2:
        return d, u
    starts = []
    acc = 0                                     # duration of the open group of short pieces (0: none open)
    for i, x in enumerate(d.tolist()):
        if x >= min_ms:
            starts.append(i)                    # a long piece stands alone (closing any open group)
            acc = 0
        elif acc == 0:
            starts.append(i)                    # a short piece opens a group
            acc = x
        else:
            acc += x
        if acc >= min_ms:
            acc = 0
        elif acc and i + 1 < d.size and d[i + 1] >= min_ms:
            acc = 0
    idx = np.asarray(starts, dtype=np.int64)
    dur = np.add.reduceat(d, idx)
    return dur.astype(np.int64), np.add.reduceat(u * d, idx) / dur


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
    """A simulation's output as the export needs it. Replicas are numbered
    0..replicas-1; ``replica_gpu``/``replica_tp``/``replica_model`` give each
    replica's GPU type (as the simulation spells it; None when the
    simulation does not say), tensor-parallel degree and model."""

    timeline: pd.DataFrame
    summary: dict
    makespan_s: float
    replicas: int
    tp: int | None              # the tp of every replica; None when they differ
    gpu: str | None             # the GPU type of every replica; None when several or unknown
    source: str
    replica_gpu: list = field(default_factory=list)
    replica_tp: list = field(default_factory=list)
    replica_model: list = field(default_factory=list)
    sim_dir: Path | None = None
    output: SimulationOutput | None = None   # the outputs it was read from (requests for the per-request export)

    @property
    def gpu_types(self) -> list[str]:
        """The distinct GPU types (case-insensitive), in replica order."""
        out: dict[str, str] = {}
        for g in self.replica_gpu:
            if g is not None:
                out.setdefault(g.strip().lower(), g)
        return list(out.values())

    @property
    def groups(self) -> list[dict]:
        """Consecutive replicas with the same (model, gpu, tp), as in
        summary.json's ``config.replica_groups``."""
        out: list[dict] = []
        for r in range(self.replicas):
            key = (self.replica_model[r], self.replica_gpu[r], self.replica_tp[r])
            if out and (out[-1]["model"], out[-1]["gpu"], out[-1]["tp"]) == key:
                out[-1]["replicas"] += 1
            else:
                out.append({"model": key[0], "gpu": key[1], "tp": key[2], "replicas": 1, "first_replica": r})
        return out


def _int_value(x) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return int(x)
    return None


def _summary_groups(cfg: dict, src: str) -> list[dict] | None:
    """``config.replica_groups`` of summary.json, checked; None when absent."""
    rg = cfg.get("replica_groups")
    if rg is None:
        return None
    if not isinstance(rg, list) or not rg:
        raise KavierInputError(f"{rg!r}", source=src, location="config.replica_groups",
                               expected="a non-empty list of {model, gpu, replicas, tp}")
    out = []
    for i, g in enumerate(rg):
        loc = f"config.replica_groups[{i}]"
        if not isinstance(g, dict):
            raise KavierInputError(f"{g!r}", source=src, location=loc, expected="an object {model, gpu, replicas, tp}")
        gpu = g.get("gpu")
        if not isinstance(gpu, str) or not gpu.strip():
            raise KavierInputError(f"gpu {gpu!r}", source=src, location=f"{loc}.gpu", expected="a GPU catalogue name")
        n, tp = _int_value(g.get("replicas")), _int_value(g.get("tp", 1))
        if n is None or n < 1:
            raise KavierInputError(f"replicas {g.get('replicas')!r}", source=src, location=f"{loc}.replicas",
                                   expected="an integer >= 1")
        if tp is None or tp < 1:
            raise KavierInputError(f"tp {g.get('tp')!r}", source=src, location=f"{loc}.tp",
                                   expected="an integer >= 1")
        model = g.get("model")
        out.append({"model": str(model) if model is not None else None, "gpu": gpu.strip(), "replicas": n, "tp": tp})
    return out


def _per_replica_column(tl: pd.DataFrame, col: str, src: str, conv) -> dict[int, Any]:
    """{replica: value} of a per-replica column; one value per replica."""
    if col not in tl.columns or not len(tl):
        return {}
    pairs = pd.DataFrame({"replica": tl["replica"].to_numpy(), "v": [conv(x) for x in tl[col]]}).drop_duplicates()
    dup = pairs["replica"].duplicated(keep=False)
    if dup.any():
        r = int(pairs.loc[dup, "replica"].iloc[0])
        vals = sorted(str(v) for v in pairs.loc[pairs["replica"] == r, "v"])
        raise KavierInputError(f"replica {r} has several values {vals}", source=src,
                               location=f"column {col}", expected=f"one {col} per replica")
    return {int(r): v for r, v in zip(pairs["replica"], pairs["v"], strict=True)}


def _conv_tp(x) -> int:
    v = _int_value(x)
    return v if v is not None else -1


def read_simulation(source: str | os.PathLike | SimulationOutput) -> Simulation:
    """Check a simulation's timeline and summary (a folder's ``timeline.parquet`` and ``summary.json``, or a
    :class:`SimulationOutput` in memory) and describe its replicas for the export.

    Each replica's GPU type and tp come from summary.json's
    ``config.replica_groups`` (replicas numbered group after group), checked
    against the timeline's ``gpu``/``tp`` columns; without groups, from
    those columns, and for replicas without timeline rows from
    ``config.gpu``/``config.tp`` (or the one value all other replicas share).
    """
    output = source if isinstance(source, SimulationOutput) else SimulationOutput.read(source)
    sim_dir = output.folder
    src = output.path("timeline.parquet")
    tl = output.timeline_frame()
    missing = [c for c in TIMELINE_REQUIRED if c not in tl.columns]
    if missing:
        raise KavierInputError(f"missing column(s) {missing}", source=src,
                               expected=f"columns {list(TIMELINE_REQUIRED)} (+ gpu, tp)")
    summary = output.summary
    sp = Path(output.path("summary.json"))
    cfg = summary.get("config", {}) if isinstance(summary.get("config"), dict) else {}
    for col in ("start_s", "end_s", "gpu_utilization"):
        v = tl[col].to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise KavierInputError(f"value {v[bad[0]]!r} is not finite", source=src,
                                   location=f"row {int(bad[0])}, column {col}", expected="a finite number")
    rep = tl["replica"].to_numpy()
    if len(tl):
        repf = rep.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(repf) | (repf < 0) | (repf != np.floor(repf)))
        if bad.size:
            raise KavierInputError(f"replica {rep[bad[0]]!r}", source=src,
                                   location=f"row {int(bad[0])}, column replica",
                                   expected="a replica index >= 0")
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
    if len(tl):
        tl["replica"] = tl["replica"].astype(np.int64)

    groups = _summary_groups(cfg, str(sp))
    tl_gpu = _per_replica_column(tl, "gpu", src, lambda x: None if x is None or (isinstance(x, float) and
                                                                             math.isnan(x)) else str(x))
    tl_tp = _per_replica_column(tl, "tp", src, _conv_tp)
    for r, v in tl_tp.items():
        if v < 1:
            raise KavierInputError(f"replica {r} has tp {v}", source=src, location="column tp",
                                   expected="an integer >= 1")
    tl_model = _per_replica_column(tl, "model", src, lambda x: None if x is None else str(x))
    n_tl = int(tl["replica"].max()) + 1 if len(tl) else 0
    cfg_replicas = _int_value(cfg.get("replicas")) or 0
    if groups is not None:
        replicas = sum(g["replicas"] for g in groups)
        if n_tl > replicas:
            raise KavierInputError(f"the timeline has replica {n_tl - 1} but config.replica_groups describe "
                                   f"{replicas} replica(s)", source=src, location="column replica",
                                   expected=f"replica indices 0..{replicas - 1} (as in {sp.name})")
        if cfg_replicas and cfg_replicas != replicas:
            raise KavierInputError(f"config.replicas is {cfg_replicas} but config.replica_groups add up to "
                                   f"{replicas}", source=str(sp), location="config.replicas",
                                   expected="the sum of the groups' replicas")
        r_gpu, r_tp, r_model = [], [], []
        for g in groups:
            r_gpu += [g["gpu"]] * g["replicas"]
            r_tp += [g["tp"]] * g["replicas"]
            r_model += [g["model"]] * g["replicas"]
        for r in range(replicas):
            if tl_gpu.get(r) is not None and tl_gpu[r].strip().lower() != r_gpu[r].lower():
                raise KavierInputError(
                    f"replica {r} runs on {tl_gpu[r]!r} in the timeline but on {r_gpu[r]!r} in "
                    f"{sp.name} config.replica_groups (replicas are numbered group after group)",
                    source=src, location=f"replica {r}, column gpu", expected=r_gpu[r])
            if r in tl_tp and tl_tp[r] != r_tp[r]:
                raise KavierInputError(
                    f"replica {r} has tp={tl_tp[r]} in the timeline but tp={r_tp[r]} in {sp.name} "
                    "config.replica_groups", source=src, location=f"replica {r}, column tp",
                    expected=f"tp={r_tp[r]}")
    else:
        replicas = max(cfg_replicas, n_tl)
        cg, ct = cfg.get("gpu"), _int_value(cfg.get("tp"))
        r_gpu = [tl_gpu.get(r) or (str(cg) if cg is not None else None) for r in range(replicas)]
        r_tp = [tl_tp.get(r, ct) for r in range(replicas)]
        r_model = [tl_model.get(r, cfg.get("model")) for r in range(replicas)]
        known = {g.strip().lower(): g for g in r_gpu if g is not None}
        if len(known) == 1:
            r_gpu = [g if g is not None else next(iter(known.values())) for g in r_gpu]
        elif len(known) > 1 and None in r_gpu:
            r = r_gpu.index(None)
            raise KavierInputError(f"replica {r} has no timeline rows and the replicas run on several GPU types "
                                   f"{sorted(known.values())}: its GPU type is unknown", source=str(sp),
                                   location="config.replica_groups",
                                   expected="config.replica_groups [{model, gpu, replicas, tp}, ...]")
        tps = {t for t in r_tp if t is not None}
        fill = next(iter(tps)) if len(tps) == 1 else 1
        if len(tps) > 1 and None in r_tp:
            r = r_tp.index(None)
            raise KavierInputError(f"replica {r} has no timeline rows and the replicas have several tp values "
                                   f"{sorted(tps)}: its tp is unknown", source=str(sp),
                                   location="config.replica_groups",
                                   expected="config.replica_groups [{model, gpu, replicas, tp}, ...]")
        r_tp = [int(t) if t is not None else fill for t in r_tp]
    if replicas < 1:
        raise KavierInputError("no replicas in the timeline and none in summary.json config",
                               source=src, expected="at least one replica")
    makespan = summary.get("makespan_s")
    last = float(tl["end_s"].max()) if len(tl) else 0.0
    makespan = float(makespan) if makespan is not None else last
    makespan = max(makespan, last)
    if not (makespan > 0):
        raise KavierInputError("the simulation has zero makespan: nothing to export", source=src,
                               expected="a timeline with activity")
    kinds = {g.strip().lower() for g in r_gpu if g is not None}
    gpu = r_gpu[0] if len(kinds) == 1 and None not in r_gpu else None
    tp = r_tp[0] if len(set(r_tp)) == 1 else None
    return Simulation(tl, summary, makespan, replicas, tp, gpu, src, r_gpu, r_tp, r_model, sim_dir, output)


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
        raise KavierInputError("the simulation names no GPU and the datacenter does not name exactly one",
                               source=sim.source, location="summary.json config.gpu",
                               expected="a GPU catalogue name")
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
                raise KavierInputError(f"host groups give {name!r} different num_sms/boost_clock_mhz {sorted(caps)}",
                                       source=dc.source, location="hosts[*].gpu",
                                       expected="one GPU capacity per GPU type")
            specs[name.strip().lower()] = same[0].gpu
        elif cspec is None:
            raise KavierInputError(f"GPU {name!r} of the simulation is not in the GPU catalogue and no host "
                                   "group of the datacenter describes it", source=sim.source,
                                   location="column gpu / summary.json config.gpu",
                                   expected="a catalogue GPU name, or a datacenter host 'gpu' entry with that name")
        else:
            specs[name.strip().lower()] = cspec
    others = [h for h in named if id(h) not in matched]
    if others:
        kinds = sorted({h.gpu.name for h in others})
        ran = ", ".join(repr(t) for t in types)
        raise KavierInputError(
            f"the datacenter has hosts with GPU type(s) {kinds} but the simulation ran on {ran} only; "
            "OpenDC's schedulers cannot keep replicas off hosts of another GPU type",
            source=dc.source, location=f"{others[0].path}.gpu",
            expected=f"only GPU types the replicas run on ({ran}), or leave 'gpu' out to use the simulation's GPU"
            if len(types) == 1 else f"only GPU types the replicas run on ({ran})")
    if unnamed:
        if len(types) > 1:
            raise KavierInputError(
                f"host group '{unnamed[0].name}' names no GPU type, but the simulation's replicas run on "
                f"{len(types)} GPU types ({', '.join(types)})", source=dc.source, location=f"{unnamed[0].path}.gpu",
                expected="a GPU type on every host group with GPUs, e.g. gpu: " + specs[types[0].lower()].name)
        dc = dc.with_gpu(specs[types[0].strip().lower()])
    return dc, [specs[g.strip().lower()] for g in sim.replica_gpu]


def _resolve_gpu(sim: Simulation, dc: Datacenter):
    """The GPU spec of a simulation with one GPU type (see :func:`_gpu_specs_for`)."""
    _, specs = _gpu_specs_for(sim, dc)
    kinds = {s.name for s in specs}
    if len(kinds) != 1:
        raise KavierInputError(f"several GPU types {sorted(kinds)}", source=sim.source, location="column gpu",
                               expected="one GPU type (use _gpu_specs_for for several)")
    return specs[0]


@dataclass
class _Prepared:
    """Everything both export paths need: the datacenter with GPUs filled in,
    OpenDC hosts, the replica placement and per-type host facts."""

    sim: Simulation
    dc: Datacenter
    hosts: list[OpenDCHost]
    plans: list[TaskPlan]
    specs: list                    # GPUSpec per replica
    start: str
    sub_ms: int
    cpu_count: int
    per_type: dict[str, dict]      # GPU name -> {spec, entries, cpu_mhz, mem_ratio_mib, power}


def _check_options(mode: str, tolerance: float, interval_s: float, cpu_load_cores: float,
                   min_fragment_s: float | None = None) -> None:
    if min_fragment_s is not None and not (math.isfinite(min_fragment_s) and min_fragment_s >= 0):
        raise KavierInputError(f"min_fragment_s {min_fragment_s!r}", location="min_fragment_s",
                               expected="a non-negative duration in seconds (0: no minimum)")
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


def _prepare(sim_dir, datacenter, start: str | None, cpu_load_cores: float, *, check_cpu: bool) -> _Prepared:
    dc = load_datacenter(datacenter)
    sim = read_simulation(sim_dir)
    dc, specs = _gpu_specs_for(sim, dc)
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
                    f"but has {cores} core(s)", source=dc.source, location=f"{dc.hosts[hosts[hi].group].path}.cpu",
                    expected="more CPU cores per host or a smaller cpu_load_cores")
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
        t["power"] = dc.hosts[first.group].gpu_power(t["spec"])   # one physical GPU (not aggregated)
        t["capacity_mhz"] = float(t["spec"].num_sms) * float(t["spec"].boost_clock_mhz)
        t["max_host_gpu_cores"] = max(h.gpus * h.gpu_core_count for h in hosts
                                      if h.physical_gpus > 0 and same_gpu(h.gpu_model, t["spec"].name))
    return _Prepared(sim, dc, hosts, plans, specs, start, sub_ms, cpu_count, per_type)


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
                if not gpu_aware or (h.physical_gpus > 0 and h.gpus * h.gpu_core_count >= key[1]
                                     and h.cpu_cores * h.cpu_count >= key[2] and h.memory_mib >= key[3]):
                    loose = True
                    break
            verdict[key] = loose
        if verdict[key]:
            not_pinned.append(int(tid))
    if not gpu_aware:
        note = (f"the allocation policy {prep.dc.allocation_policy} ignores GPUs: OpenDC may put a task on any "
                "host with free CPU cores and memory")
    elif not_pinned:
        note = ("OpenDC's schedulers know no GPU types: these tasks also fit a host of another GPU type, so "
                "OpenDC may place them there (tasks are written largest GPU request first to make that rarer)")
    else:
        note = "every task fits only hosts of its own GPU type"
    return {"gpu_types": sorted(prep.per_type), "allocation_policy": prep.dc.allocation_policy,
            "gpu_aware_scheduler": gpu_aware, "tasks_not_pinned": sorted(not_pinned), "note": note}


def _write_tables(out_dir, task_rows: dict[str, list], frag_cols: tuple[list, list, list, list],
                  order: list[int] | None = None) -> tuple[pa.Table, pa.Table, Path, Path]:
    """Write tasks.parquet and fragments.parquet; ``order`` is the row order
    of the tasks (their fragments follow the same order)."""
    frag_ids, frag_dur, frag_cpu, frag_gpu = frag_cols
    if order is None:
        order = list(range(len(frag_ids)))
        cols = dict(task_rows)
    else:
        cols = {k: [v[i] for i in order] for k, v in task_rows.items()}
    tasks = pa.Table.from_pydict(
        {k: pa.array(v, type=TASKS_SCHEMA.field(k).type) for k, v in cols.items()}, schema=TASKS_SCHEMA)

    def cat(parts, dt):
        return np.concatenate([parts[i] for i in order]).astype(dt) if order else np.zeros(0, dt)

    frags = pa.Table.from_arrays(
        [pa.array(cat(frag_ids, np.int32), pa.int32()),
         pa.array(cat(frag_dur, np.int64), pa.int64()),
         pa.array(cat(frag_cpu, np.float64), pa.float64()),
         pa.array(cat(frag_gpu, np.float64), pa.float64())],
        schema=FRAGMENTS_SCHEMA)
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
        "replica_groups": [{"model": g["model"], "gpu": prep.specs[g["first_replica"]].name,
                            "replicas": g["replicas"], "tp": g["tp"], "first_replica": g["first_replica"]}
                           for g in sim.groups],
    }


def export_with_hosts(sim_dir, out_dir, datacenter, *, mode: str = "adaptive", tolerance: float = DEFAULT_TOLERANCE,
            interval_s: float = DEFAULT_INTERVAL_S, start: str | None = None,
            cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES, pad_to_makespan: bool = True,
            min_fragment_s: float | None = None) -> tuple[dict, Datacenter, list[OpenDCHost]]:
    _check_options(mode, tolerance, interval_s, cpu_load_cores, min_fragment_s)
    if mode == "per-request":
        prep = _prepare(sim_dir, datacenter, start, cpu_load_cores, check_cpu=False)
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
                    dur, u, _ = merge_adaptive(seg_ms, util, tolerance)
                    dur, u = merge_short(dur, u, min_fragment_ms)
                    keep = seg_ms > 0
                    group = np.searchsorted(np.cumsum(dur), np.cumsum(seg_ms[keep]) - 1, side="right")
                    err = float(np.max(np.abs(util[keep] - u[group]))) if dur.size else 0.0
                else:
                    keep = seg_ms > 0
                    dur, u, err = seg_ms[keep], util[keep], 0.0
            cache[p.replica] = (dur, u, n_seg, err)
        dur, u, n_seg, err = cache[p.replica]
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
        frag_gpu.append(u * cap)
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
        power = t["power"]
        if power is not None and power.model != "constant":
            energy_linear += linear_gpu_energy_j(dur, u, p.gpus, power.idle_w, power.max_w)
        busy_gpu_s += float(np.sum(u * dur) / 1000.0) * p.gpus
        per_task.append({"task_id": p.task_id, "replica": p.replica, "part": p.part, "gpus": p.gpus,
                         "gpu": spec.name, "tp": tp, "model": sim.replica_model[p.replica],
                         "fragments": int(dur.size), "duration_ms": total_ms,
                         "planned_host": opendc_host_name(hosts[p.host_entry], p.host_instance)})

    # largest GPU request first: OpenDC keeps file order for equal submission times (FIFO)
    order = sorted(range(len(plans)), key=lambda i: (-task_rows["gpu_count"][i], i))
    tasks, frags, tasks_path, frags_path = _write_tables(out_dir, task_rows, (frag_ids, frag_dur, frag_cpu, frag_gpu),
                                                         order)
    n_frag = int(frags.num_rows)
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
        "placement": _placement(prep, task_rows["id"], task_rows["gpu_count"], task_rows["cpu_count"],
                                [m // 1000 for m in task_rows["mem_capacity"]], [prep.specs[p.replica].name
                                                                               for p in plans]),
        "task_map": per_task,
        "paths": {"tasks": str(tasks_path.resolve()), "fragments": str(frags_path.resolve())},
    }
    return stats, prep.dc, hosts


# --------------------------------------------------------------------------
# Per-request export (the Kavier prototype's way, for comparison)
# --------------------------------------------------------------------------



def attribute_gpu_time(bounds_s, util, start_s, end_s, weight) -> tuple[np.ndarray, np.ndarray, float]:
    """Share one replica's GPU time among its requests in proportion to their tokens.

    ``bounds_s``/``util`` are the replica's piecewise-constant utilisation
    (:func:`replica_pieces`); request ``i`` is in flight during
    [``start_s[i]``, ``end_s[i]``) with ``weight[i]`` tokens. At every
    instant the replica's utilisation is divided among the requests then in
    flight in proportion to their weights, so request ``i`` gets::

        busy[i]  = integral over its lifetime of u(t) * w_i / W(t) dt
        share[i] = integral over its lifetime of        w_i / W(t) dt

    (W(t): summed weight of the requests in flight at t; in seconds of one
    GPU of the replica). Returns (busy, share, unattributed), where
    ``unattributed`` is the integral of u(t) over times with no request in
    flight. sum(busy) + unattributed equals the integral of u(t): the
    replica's busy GPU time is conserved.
    """
    b = np.asarray(bounds_s, dtype=np.float64)
    u = np.asarray(util, dtype=np.float64)
    a = np.clip(np.asarray(start_s, dtype=np.float64), b[0], b[-1])
    z = np.clip(np.asarray(end_s, dtype=np.float64), b[0], b[-1])
    z = np.maximum(z, a)
    w = np.asarray(weight, dtype=np.float64)
    edges = np.unique(np.concatenate([b, a, z]))
    if edges.size < 2:
        return np.zeros(a.size), np.zeros(a.size), 0.0
    mid = 0.5 * (edges[:-1] + edges[1:])
    uj = u[np.clip(np.searchsorted(b, mid, side="right") - 1, 0, u.size - 1)]
    dt = np.diff(edges)
    ia = np.searchsorted(edges, a)
    iz = np.searchsorted(edges, z)
    delta = np.zeros(edges.size)
    np.add.at(delta, ia, w)
    np.add.at(delta, iz, -w)
    W = np.cumsum(delta)[:-1]
    scale = max(float(w.max()) if w.size else 1.0, 1.0)
    active = W > 1e-9 * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        g_busy = np.where(active, uj * dt / np.where(active, W, 1.0), 0.0)
        g_share = np.where(active, dt / np.where(active, W, 1.0), 0.0)
    G = np.concatenate([[0.0], np.cumsum(g_busy)])
    H = np.concatenate([[0.0], np.cumsum(g_share)])
    busy = w * (G[iz] - G[ia])
    share = w * (H[iz] - H[ia])
    unattributed = float(np.sum(uj * dt * ~active))
    return busy, share, unattributed


def peak_concurrency(start_s, end_s) -> int:
    """Most requests in flight at once (half-open lifetimes [start, end))."""
    a = np.asarray(start_s, dtype=np.float64)
    z = np.maximum(np.asarray(end_s, dtype=np.float64), a)
    if a.size == 0:
        return 0
    t = np.concatenate([a, z])
    d = np.concatenate([np.ones(a.size), -np.ones(a.size)])
    live = a < z
    d[: a.size][~live] = 0.0
    d[a.size:][~live] = 0.0
    order = np.lexsort((d, t))            # ends before starts at the same instant
    return max(int(np.max(np.cumsum(d[order]))), 1)


def read_requests(sim: Simulation) -> tuple[pd.DataFrame, int]:
    """Finished requests of ``SIM_DIR/requests.parquet`` with ``replica``,
    ``arrival_s``, ``e2e_s`` and ``tokens`` (prompt tokens + output tokens x
    samples); also the number of requests left out (not finished)."""
    output = sim.output if sim.output is not None else SimulationOutput.read(sim.sim_dir or ".")
    src = output.path("requests.parquet")
    if output.requests is None:
        raise KavierInputError("requests not found (needed by the per-request export)", source=src,
                               expected="a simulation output folder written by `kavier simulate`")
    df = output.requests_frame()
    missing = [c for c in REQUESTS_REQUIRED if c not in df.columns]
    if "e2e_s" not in df.columns and "finish_s" not in df.columns:
        missing.append("e2e_s (or finish_s)")
    if missing:
        raise KavierInputError(f"missing column(s) {missing}", source=src,
                               expected=f"columns {list(REQUESTS_REQUIRED)} + e2e_s")
    arrival = df["arrival_s"].to_numpy(np.float64)
    e2e = (df["e2e_s"].to_numpy(np.float64) if "e2e_s" in df.columns
           else df["finish_s"].to_numpy(np.float64) - arrival)
    if "status" in df.columns:
        done = (df["status"].astype(str).str.lower() == "finished").to_numpy()
    else:
        done = np.isfinite(e2e)
    rep = df["replica"].to_numpy(np.float64)
    for name, v in (("arrival_s", arrival), ("e2e_s", e2e), ("replica", rep)):
        bad = np.flatnonzero(done & ~np.isfinite(v))
        if bad.size:
            raise KavierInputError(f"value {v[bad[0]]!r} of a finished request is not finite", source=src,
                                   location=f"row {int(bad[0])}, column {name}", expected="a finite number")
    bad = np.flatnonzero(done & ((arrival < -1e-9) | (e2e < 0)))
    if bad.size:
        raise KavierInputError(f"arrival_s {arrival[bad[0]]!r}, e2e_s {e2e[bad[0]]!r}", source=src,
                               location=f"row {int(bad[0])}, columns arrival_s/e2e_s",
                               expected="arrival_s >= 0 and e2e_s >= 0")
    bad = np.flatnonzero(done & ((rep < 0) | (rep >= sim.replicas) | (rep != np.floor(rep))))
    if bad.size:
        raise KavierInputError(f"replica {rep[bad[0]]!r}", source=src, location=f"row {int(bad[0])}, column replica",
                               expected=f"a replica index 0..{sim.replicas - 1} (the timeline's replicas)")
    n = df["n"].to_numpy(np.float64) if "n" in df.columns else np.ones(len(df))
    n = np.where(np.isfinite(n) & (n >= 1), n, 1.0)
    tokens = (np.nan_to_num(df["num_input_tokens"].to_numpy(np.float64))
              + np.nan_to_num(df["num_output_tokens"].to_numpy(np.float64)) * n)
    ids = df["request_id"].to_numpy(np.int64) if "request_id" in df.columns else np.arange(len(df), dtype=np.int64)
    out = pd.DataFrame({"request_id": ids[done], "replica": rep[done].astype(np.int64),
                        "arrival_s": np.maximum(arrival[done], 0.0), "e2e_s": e2e[done],
                        "tokens": np.maximum(tokens[done], 1.0)})
    out = out.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)
    return out, int((~done).sum())


def _export_per_request(prep: _Prepared, out_dir, cpu_load_cores: float) -> dict[str, Any]:
    sim = prep.sim
    req, skipped = read_requests(sim)
    if not len(req):
        raise KavierInputError("no finished request: nothing to export per request",
                               source=sim.output.path("requests.parquet") if sim.output else "requests.parquet",
                               expected="at least one request with status 'finished'")
    n = len(req)
    sub = prep.sub_ms + to_ms(req["arrival_s"].to_numpy())
    dur = np.maximum(to_ms(req["e2e_s"].to_numpy()), 1)
    busy = np.zeros(n)         # GPU-seconds of ONE replica GPU attributed to the request
    share = np.zeros(n)
    unattributed = 0.0         # GPU-seconds (all GPUs of the replicas)
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
    r_cap = np.array([prep.per_type[g]["capacity_mhz"] for g in names]) * r_tp       # replica capacity, MHz
    r_cpu_mhz = np.array([prep.per_type[g]["cpu_mhz"] for g in names])
    r_peak = np.array([max(peak[r], 1) for r in range(sim.replicas)], dtype=np.int64)
    # the replica's GPU cores shared by its most simultaneous requests, at most one OpenDC host's
    r_cores = np.array([min(max(1, (int(prep.specs[r].num_sms) * sim.replica_tp[r]) // int(r_peak[r])),
                            prep.per_type[names[r]]["max_host_gpu_cores"]) for r in range(sim.replicas)], np.int64)
    r_mem = np.array([max(1, int(math.floor(prep.per_type[names[r]]["mem_ratio_mib"] * sim.replica_tp[r]
                                            / int(r_peak[r])))) for r in range(sim.replicas)], np.int64)
    r_dyn_w = np.array([(p.max_w - p.idle_w) if p is not None and p.model != "constant" else 0.0
                        for p in (prep.per_type[g]["power"] for g in names)])
    d_s = dur.astype(np.float64) / 1000.0
    usage = busy * r_cap[reps] / d_s                     # MHz: usage x duration = attributed GPU time
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
        "placement": _placement(prep, ids, task_rows["gpu_count"], task_rows["cpu_count"], r_mem[reps],
                                [names[r] for r in reps]),
        "task_map": None,
        "paths": {"tasks": str(tasks_path.resolve()), "fragments": str(frags_path.resolve())},
    }
    return stats


def export_workload(sim_dir: str | os.PathLike, out_dir: str | os.PathLike, datacenter, *,
                    mode: str = "adaptive", tolerance: float = DEFAULT_TOLERANCE,
                    interval_s: float = DEFAULT_INTERVAL_S, start: str | None = None,
                    cpu_load_cores: float = DEFAULT_CPU_LOAD_CORES,
                    pad_to_makespan: bool = True, min_fragment_s: float | None = None) -> dict[str, Any]:
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
    stats, _, _ = export_with_hosts(sim_dir, out_dir, datacenter, mode=mode, tolerance=tolerance,
                          interval_s=interval_s, start=start, cpu_load_cores=cpu_load_cores,
                          pad_to_makespan=pad_to_makespan, min_fragment_s=min_fragment_s)
    return stats


def read_workload(workload_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an exported workload back (tasks, fragments) as DataFrames."""
    d = Path(workload_dir)
    return pq.read_table(d / "tasks.parquet").to_pandas(), pq.read_table(d / "fragments.parquet").to_pandas()
