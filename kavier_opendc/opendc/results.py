"""Read OpenDC's output and summarise energy, power and carbon.

OpenDC writes, per scenario and seed,
``<outputFolder>/<name>/raw-output/<scenario>/seed=<n>/`` with
``host.parquet``, ``powerSource.parquet``, ``task.parquet``,
``service.parquet`` and ``battery.parquet`` (a row per entity per export
interval, plus a final row when the last task finishes). Units, read from
OpenDC v2.4u's exporters and checked against real runs:

* ``power_draw``: W, the instantaneous draw at the row's time;
* ``energy_usage``: J consumed during the interval that ends at the row;
* ``carbon_intensity``: gCO2/kWh; ``carbon_emission``: g in the interval
  (OpenDC adds intensity x J / 3.6e6);
* ``gpu_power_draw_<i>``, ``gpu_utilization_<i>``, ``gpu_time_active_<i>``
  per GPU of a host (no per-GPU energy column);
* ``timestamp``: ms since the start of the run; ``timestamp_absolute``:
  epoch ms.

Energy is converted J -> Wh by dividing by 3600. Per-GPU energy: OpenDC
reports no per-GPU energy, so for a GPU with a linear (or constant) power
model it is computed exactly from the GPU's active time
(idle x interval + (max - idle) x active time); for other curves it is the
power draw integrated over the intervals. The host's CPU energy is the
host's energy minus its GPUs'.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kavier_opendc.base.atomic import INCOMPLETE, atomic_write_text, make_dirs
from kavier_opendc.base.documents import load_json
from kavier_opendc.base.errors import KavierError, KavierInputError, KavierRuntimeError, OutputWriteError
from kavier_opendc.base.faults import OPENDC_RUNNING, checkpoint

OUTPUT_FILES = ("host", "powerSource", "task", "service", "battery")
#: OpenDC's default power model when a topology gives none (TopologySpecs.kt).
OPENDC_DEFAULT_POWER = {"modelType": "linear", "idlePower": 200.0, "maxPower": 400.0, "power": 350.0}
#: Fragment statistics copied from DIR/export.json into sustainability.json.
EXPORT_STAT_KEYS = (
    "mode",
    "tolerance",
    "interval_s",
    "start",
    "makespan_s",
    "gpu",
    "replicas",
    "tp",
    "tasks",
    "timeline_segments",
    "fragments",
    "compression_ratio",
    "max_abs_utilization_error",
    "gpu_capacity_mhz_per_gpu",
    "cpu_load_cores",
    "gpu_busy_seconds",
    "gpu_energy_linear_wh",
    "power_curve",
)


# --------------------------------------------------------------------------
# Locating and reading output
# --------------------------------------------------------------------------


def _seed_key(p: Path) -> tuple:
    def num(s: str) -> tuple:
        m = re.search(r"(\d+)$", s)
        return (0, int(m.group(1))) if m else (1, s)

    return tuple(num(part) for part in p.parts)


def find_raw_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """All ``.../raw-output/<scenario>/seed=<n>/`` folders (or any folder
    holding host.parquet / powerSource.parquet) under ``output_dir``, in
    scenario/seed order."""
    root = Path(output_dir)
    if not root.exists():
        return []
    found = set()
    for name in ("host.parquet", "powerSource.parquet"):
        if (root / name).exists():
            found.add(root)
        for f in root.rglob(name):
            found.add(f.parent)
    return sorted(found, key=_seed_key)


def _read(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:
        raise KavierRuntimeError(f"{path}: cannot read OpenDC output Parquet ({exc})") from None


def _watts(value: Any, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([-\d.eE]+)\s*(k|K|kilo|Kilo)?\s*(w|W|watts|Watts)?\s*", str(value))
    if not m:
        raise KavierInputError(
            f"cannot parse power {value!r}",
            location="topology power model",
            expected="a number of watts or a string like '400 W'",
        )
    x = float(m.group(1))
    return x * 1000.0 if m.group(2) else x


def _power_model(spec: dict | None) -> dict:
    s = dict(OPENDC_DEFAULT_POWER)
    if spec:
        s.update(spec)
    return {
        "model": str(s.get("modelType", "linear")),
        "idle_w": _watts(s.get("idlePower"), 200.0),
        "max_w": _watts(s.get("maxPower"), 400.0),
        "power_w": _watts(s.get("power"), 350.0),
    }


def _static_w(pm: dict) -> float:
    return pm["power_w"] if pm["model"] == "constant" else pm["idle_w"]


def read_topology_models(topology: str | os.PathLike | dict | None) -> dict[str, dict]:
    """Map OpenDC host entry name -> {cpu, gpu power models, gpus} from a
    topology JSON (file or dict)."""
    if topology is None:
        return {}
    if not isinstance(topology, dict):
        p = Path(topology)
        if not p.is_file():
            return {}
        topology = json.loads(p.read_text(encoding="utf-8"))
    out: dict[str, dict] = {}
    for cl in topology.get("clusters", []):
        for h in cl.get("hosts", []):
            gpu = h.get("gpu")
            out[str(h.get("name", "Host"))] = {
                "cpu": _power_model(h.get("cpuPowerModel")),
                "gpu": _power_model(h.get("gpuPowerModel")) if gpu else None,
                "gpus": int(gpu.get("count", 1)) if gpu else 0,
            }
    return out


def _entry_for(host_name: str, models: dict[str, dict]) -> dict | None:
    if host_name in models:
        return models[host_name]
    base = re.sub(r"-\d+$", "", host_name)
    return models.get(base)


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def _intervals(ts_ms: np.ndarray) -> np.ndarray:
    """Interval length (s) ending at each row's timestamp, per entity."""
    prev = np.concatenate([[0], ts_ms[:-1]])
    return (ts_ms - prev) / 1000.0


def _host_summary(hdf: pd.DataFrame, models: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    per_host, per_gpu = [], []
    gpu_idx = sorted({int(m.group(1)) for c in hdf.columns if (m := re.fullmatch(r"gpu_power_draw_(\d+)", c))})
    for name, g in hdf.groupby("host_name", sort=False):
        g = g.sort_values("timestamp", kind="stable")
        ts = g["timestamp"].to_numpy(np.int64)
        dt = _intervals(ts)
        energy_j = float(g["energy_usage"].astype(np.float64).sum())
        duration_s = float(ts[-1] / 1000.0) if len(ts) else 0.0
        entry = _entry_for(str(name), models)
        gpu_energy = 0.0
        gpu_static = 0.0
        host_gpus = []
        for i in gpu_idx:
            col = f"gpu_power_draw_{i}"
            if g[col].isna().all():
                continue
            p = g[col].astype(np.float64).fillna(0.0).to_numpy()
            util = g.get(f"gpu_utilization_{i}")
            active = g.get(f"gpu_time_active_{i}")
            pm = entry["gpu"] if entry else None
            if (
                pm is not None
                and pm["model"] in ("linear", "constant")
                and active is not None
                and not active.isna().all()
            ):
                act_s = active.astype(np.float64).fillna(0.0).to_numpy() / 1000.0
                if pm["model"] == "linear":
                    e = float(np.sum(pm["idle_w"] * dt + (pm["max_w"] - pm["idle_w"]) * act_s))
                else:
                    e = float(pm["power_w"] * dt.sum())
                method = "active-time"
            else:
                # power draw is sampled at the end of each interval; use the
                # draw at the start of the interval (the previous sample) as
                # the interval's power, and the first sample for the first.
                p_start = np.concatenate([[p[0]], p[:-1]]) if p.size else p
                e = float(np.sum(p_start * dt))
                method = "power-integration"
            static = (_static_w(pm) if pm else 0.0) * duration_s
            gpu_energy += e
            gpu_static += static
            rec = {
                "host_name": str(name),
                "gpu_index": i,
                "energy_wh": e / 3600.0,
                "avg_power_w": e / duration_s if duration_s > 0 else 0.0,
                "peak_power_w": float(np.max(p)) if p.size else 0.0,
                "idle_energy_wh": static / 3600.0,
                "method": method,
            }
            if util is not None and not util.isna().all() and duration_s > 0:
                rec["avg_utilization"] = float(np.sum(util.astype(np.float64).fillna(0).to_numpy() * dt) / duration_s)
            host_gpus.append(rec)
        per_gpu += host_gpus
        cpu_static = (_static_w(entry["cpu"]) if entry else 0.0) * duration_s
        cpu_energy = energy_j - gpu_energy
        rec = {
            "host_name": str(name),
            "cluster_name": str(g["cluster_name"].iloc[0]) if "cluster_name" in g else None,
            "energy_wh": energy_j / 3600.0,
            "cpu_energy_wh": cpu_energy / 3600.0,
            "gpu_energy_wh": gpu_energy / 3600.0,
            "idle_energy_wh": (cpu_static + gpu_static) / 3600.0 if entry else None,
            "avg_power_w": energy_j / duration_s if duration_s > 0 else 0.0,
            "peak_power_w": float(g["power_draw"].max()),
            "gpus": len(host_gpus),
            "duration_s": duration_s,
        }
        if "cpu_utilization" in g and duration_s > 0:
            rec["avg_cpu_utilization"] = float(
                np.sum(g["cpu_utilization"].astype(np.float64).to_numpy() * dt) / duration_s
            )
        per_host.append(rec)
    return per_host, per_gpu


def power_over_time(host: pd.DataFrame | None, power_source: pd.DataFrame | None) -> pd.DataFrame:
    """Datacenter power and carbon per export interval: ``timestamp_s`` (end
    of the interval, s since start), ``interval_s``, ``power_w`` (draw at that
    instant, all hosts), ``energy_j`` and ``avg_power_w`` over the interval,
    ``carbon_intensity`` (gCO2/kWh) and ``carbon_g``."""
    # OpenDC writes a second row at the final timestamp (the state after the
    # last task finished, with zero energy): per entity and timestamp keep the
    # first row's power (the draw during the interval) and sum the energy.
    if host is not None and len(host):
        per = (
            host.groupby(["host_name", "timestamp"], sort=False)
            .agg(power_draw=("power_draw", "first"), energy_usage=("energy_usage", "sum"))
            .reset_index()
        )
        g = per.groupby("timestamp", sort=True).agg(power_w=("power_draw", "sum"), energy_j=("energy_usage", "sum"))
    elif power_source is not None and len(power_source):
        per = (
            power_source.groupby(["source_name", "timestamp"], sort=False)
            .agg(power_draw=("power_draw", "first"), energy_usage=("energy_usage", "sum"))
            .reset_index()
        )
        g = per.groupby("timestamp", sort=True).agg(power_w=("power_draw", "sum"), energy_j=("energy_usage", "sum"))
    else:
        return pd.DataFrame(
            columns=["timestamp_s", "interval_s", "power_w", "energy_j", "avg_power_w", "carbon_intensity", "carbon_g"]
        )
    if power_source is not None and len(power_source):
        ps = power_source.groupby("timestamp", sort=True).agg(
            carbon_intensity=("carbon_intensity", "first"),
            carbon_g=("carbon_emission", "sum"),
            grid_energy_j=("energy_usage", "sum"),
        )
        g = g.join(ps, how="outer").fillna({"power_w": 0.0, "energy_j": 0.0})
    g = g.reset_index()
    ts = g["timestamp"].to_numpy(np.int64)
    g.insert(0, "timestamp_s", ts / 1000.0)
    g.insert(1, "interval_s", _intervals(ts))
    with np.errstate(invalid="ignore", divide="ignore"):
        g["avg_power_w"] = np.where(g["interval_s"] > 0, g["energy_j"] / g["interval_s"], np.nan)
    return g.drop(columns=["timestamp"])


def read_opendc_output(
    output_dir: str | os.PathLike,
    *,
    topology: str | os.PathLike | dict | None = None,
    export_stats: dict | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """Summarise one OpenDC run found under ``output_dir``.

    ``output_dir`` may be the experiment's output folder, ``<name>``, a
    ``raw-output`` folder or a ``seed=<n>`` folder; ``run`` picks among
    several scenario/seed folders (in order). ``topology`` (the topology JSON
    given to OpenDC) enables the idle/dynamic breakdown and exact per-GPU
    energy. Returns ``energy_wh``, ``avg_power_w``, ``peak_power_w``,
    ``carbon_g``, ``duration_s``, breakdowns, ``per_host``, ``per_gpu``,
    ``power`` (a DataFrame, see :func:`power_over_time`) and more.
    """
    runs = find_raw_outputs(output_dir)
    if not runs:
        raise KavierRuntimeError(
            f"{output_dir}: no OpenDC output found (expected raw-output/<scenario>/seed=<n>/host.parquet)"
        )
    if run >= len(runs):
        raise KavierInputError(f"run {run} requested but only {len(runs)} found", source=str(output_dir))
    raw = runs[run]
    host = _read(raw / "host.parquet")
    ps = _read(raw / "powerSource.parquet")
    task = _read(raw / "task.parquet")
    battery = _read(raw / "battery.parquet")
    models = read_topology_models(topology)

    per_host, per_gpu = _host_summary(host, models) if host is not None and len(host) else ([], [])
    power = power_over_time(host, ps)
    host_energy_j = float(host["energy_usage"].astype(np.float64).sum()) if host is not None else 0.0
    grid_energy_j = float(ps["energy_usage"].astype(np.float64).sum()) if ps is not None else host_energy_j
    carbon_g = float(ps["carbon_emission"].astype(np.float64).sum()) if ps is not None else 0.0
    ts_max = 0
    for df in (host, ps):
        if df is not None and len(df):
            ts_max = max(ts_max, int(df["timestamp"].max()))
    duration_s = ts_max / 1000.0
    energy_j = host_energy_j if host is not None else grid_energy_j
    peak = float(power["power_w"].max()) if len(power) else 0.0
    gpu_wh = sum(g["energy_wh"] for g in per_gpu)
    cpu_wh = sum(h["cpu_energy_wh"] for h in per_host)
    idle = [h["idle_energy_wh"] for h in per_host]
    idle_wh = sum(idle) if idle and all(x is not None for x in idle) else None
    start_abs = None
    for df in (host, ps):
        if df is not None and len(df) and "timestamp_absolute" in df:
            r = df.sort_values("timestamp").iloc[0]
            start_abs = int(r["timestamp_absolute"] - r["timestamp"])
            break
    result: dict[str, Any] = {
        "energy_wh": energy_j / 3600.0,
        "avg_power_w": energy_j / duration_s if duration_s > 0 else 0.0,
        "peak_power_w": peak,
        "peak_interval_avg_power_w": float(power["avg_power_w"].max())
        if len(power) and power["avg_power_w"].notna().any()
        else 0.0,
        "carbon_g": carbon_g,
        "duration_s": duration_s,
        "grid_energy_wh": grid_energy_j / 3600.0,
        "gpu_energy_wh": gpu_wh,
        "cpu_energy_wh": cpu_wh,
        "idle_energy_wh": idle_wh,
        "dynamic_energy_wh": (energy_j / 3600.0 - idle_wh) if idle_wh is not None else None,
        "carbon_intensity_avg_g_per_kwh": (carbon_g / (grid_energy_j / 3.6e6)) if grid_energy_j > 0 else None,
        "start_epoch_ms": start_abs,
        "per_host": per_host,
        "per_gpu": per_gpu,
        "tasks": _task_summary(task, start_abs),
        "battery": _battery_summary(battery),
        "export": export_stats,
        "raw_output": str(raw),
        "runs_found": len(runs),
        "power": power,
    }
    return result


def _task_summary(task: pd.DataFrame | None, start_epoch_ms: int | None) -> dict | None:
    """Per-task times, all in milliseconds of simulation time since the run's start.

    OpenDC's task.parquet mixes time bases: ``submission_time`` is epoch ms (as the workload gave it),
    ``schedule_time`` and ``finish_time`` are simulation ms from 0. Submission times are shifted by the
    run's start (``timestamp_absolute - timestamp`` of the host rows; else the earliest submission, which is
    where OpenDC starts its clock), so every ``*_ms`` here shares one base.
    """
    if task is None or not len(task):
        return None
    last = task.sort_values("timestamp").groupby("task_id").tail(1)
    out: dict[str, Any] = {"tasks": int(last["task_id"].nunique()), "time_base": "simulation ms since start"}
    if "submission_time" in last and last["submission_time"].notna().any():
        if start_epoch_ms is None:
            start_epoch_ms = int(task["submission_time"].min())
    for col in ("submission_time", "schedule_time", "finish_time"):
        if col in last:
            shift = start_epoch_ms if col == "submission_time" and start_epoch_ms is not None else 0
            out[col + "_ms"] = [None if pd.isna(x) else int(x) - shift for x in last[col]]
    if "task_state" in last:
        out["states"] = {str(k): int(v) for k, v in last["task_state"].value_counts().items()}
    if "host_name" in last:
        out["hosts"] = {
            str(t): (None if pd.isna(h) else str(h)) for t, h in zip(last["task_id"], last["host_name"], strict=True)
        }
    return out


def _battery_summary(bat: pd.DataFrame | None) -> dict | None:
    if bat is None or not len(bat):
        return None
    bat = bat.sort_values("timestamp")
    return {
        "energy_wh": float(bat["energy_usage"].astype(np.float64).sum()) / 3600.0,
        "final_charge_wh": float(bat["charge"].iloc[-1]) / 3600.0 if "charge" in bat else None,
        "capacity_wh": float(bat["capacity"].iloc[-1]) / 3600.0 if "capacity" in bat else None,
    }


def sustainability_record(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of :func:`read_opendc_output`'s result."""
    rec = {k: v for k, v in result.items() if k != "power"}
    return json.loads(json.dumps(rec, default=_json_default))


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_sustainability(path: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``sustainability.json`` atomically."""
    from kavier_opendc.base.atomic import write_json_atomic

    path = Path(path)
    write_json_atomic(path, sustainability_record(result))
    return path


# --------------------------------------------------------------------------
# Running an experiment directory
# --------------------------------------------------------------------------


def _resolve(p: str, base: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def prepare_experiment(dir: str | os.PathLike) -> tuple[Path, dict, Path | None]:
    """Read ``dir/experiment.json``; return (experiment file to run, the
    experiment dict, first topology file). Relative paths are resolved against
    the folder of the file naming them (the experiment's against ``dir``, a
    topology's carbon trace against that topology's folder), never the process's
    working directory, and the output folder is forced to ``dir/output``; when
    that changes anything (always for the relative paths that
    :func:`~kavier_opendc.opendc.inputs.write_opendc_inputs` writes), resolved
    copies are written under ``dir/output/inputs/``."""
    d = Path(dir).resolve()
    exp_path = d / "experiment.json"
    src = str(exp_path)
    if not exp_path.is_file():
        raise KavierInputError(
            "experiment file not found", source=src, expected="DIR/experiment.json (written by `kavier export-opendc`)"
        )
    try:
        exp = load_json(exp_path.read_text(encoding="utf-8"), src)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"invalid JSON ({exc})", source=src) from None
    if not isinstance(exp, dict):
        raise KavierInputError("not a JSON object", source=src, expected="an OpenDC experiment object")
    for key in ("topologies", "workloads"):
        if not isinstance(exp.get(key), list) or not exp[key]:
            raise KavierInputError(
                f"'{key}' is missing or empty",
                source=src,
                location=key,
                expected="a non-empty list of {pathToFile: ...}",
            )
    new = json.loads(json.dumps(exp))
    changed = False
    want_out = str(d / "output")
    if new.get("outputFolder") != want_out:
        new["outputFolder"] = want_out
        changed = True
    if not new.get("name"):
        new["name"] = "kavier"
        changed = True
    topo_files: list[Path] = []
    inputs = d / "output" / "inputs"
    for i, t in enumerate(new["topologies"]):
        if not isinstance(t, dict) or "pathToFile" not in t:
            raise KavierInputError("entry has no pathToFile", source=src, location=f"topologies[{i}]")
        tp = Path(_resolve(t["pathToFile"], d))
        if not tp.is_file():
            raise KavierInputError(
                f"topology file {tp} not found",
                source=src,
                location=f"topologies[{i}].pathToFile",
                expected="an existing file",
            )
        if str(tp) != t["pathToFile"]:
            t["pathToFile"] = str(tp)
            changed = True
        try:
            topo = load_json(tp.read_text(encoding="utf-8"), str(tp))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KavierInputError(f"invalid JSON ({exc})", source=str(tp)) from None
        tchanged = False
        for c, cl in enumerate(topo.get("clusters", [])):
            psrc = cl.get("powerSource") or {}
            ctp = psrc.get("carbonTracePath")
            if ctp:
                r = _resolve(ctp, tp.parent)
                if not Path(r).is_file():
                    raise KavierInputError(
                        f"carbon trace {r} not found",
                        source=str(tp),
                        location=f"clusters[{c}].powerSource.carbonTracePath",
                        expected="an existing Parquet file",
                    )
                if r != ctp:
                    psrc["carbonTracePath"] = r
                    tchanged = True
        if tchanged:
            make_dirs(inputs)
            tcopy = inputs / f"topology-{i}.json"
            tcopy.write_text(json.dumps(topo, indent=2), encoding="utf-8")
            t["pathToFile"] = str(tcopy)
            changed = True
        topo_files.append(Path(t["pathToFile"]))
    for i, w in enumerate(new["workloads"]):
        if not isinstance(w, dict) or "pathToFile" not in w:
            raise KavierInputError("entry has no pathToFile", source=src, location=f"workloads[{i}]")
        wp = _resolve(w["pathToFile"], d)
        if not Path(wp).exists():
            raise KavierInputError(
                f"workload {wp} not found",
                source=src,
                location=f"workloads[{i}].pathToFile",
                expected="a folder with tasks.parquet and fragments.parquet",
            )
        if wp != w["pathToFile"]:
            w["pathToFile"] = wp
            changed = True
    run_path = exp_path
    if changed:
        make_dirs(inputs)
        run_path = inputs / "experiment.json"
        run_path.write_text(json.dumps(new, indent=2), encoding="utf-8")
    return run_path, new, (topo_files[0] if topo_files else None)


def check_tasks_fit(exp: dict) -> None:
    """Refuse, before the JVM starts, a workload that no host of the topology can run: OpenDC keeps such
    a task waiting for ever (a GPU task on GPU-less hosts hangs OpenDC's own runner too)."""
    hosts: list[tuple[int, int]] = []  # CPU cores, GPU cores of one host
    for t in exp.get("topologies", []):
        try:
            topo = json.loads(Path(t["pathToFile"]).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return  # read and reported by OpenDC itself
        for cl in topo.get("clusters", []) or []:
            for h in cl.get("hosts", []) or []:
                cpu, gpu = h.get("cpu") or {}, h.get("gpu") or {}
                hosts.append(
                    (
                        int(cpu.get("coreCount", 0)) * int(cpu.get("count", 1)),
                        int(gpu.get("coreCount", 0)) * int(gpu.get("count", 1)) if gpu else 0,
                    )
                )
    if not hosts:
        return
    most_cpu = max(h[0] for h in hosts)
    most_gpu = max(h[1] for h in hosts)
    for i, w in enumerate(exp.get("workloads", [])):
        tasks = Path(w.get("pathToFile", "")) / "tasks.parquet"
        try:
            cols = {"id", "cpu_count", "gpu_count"} & set(pq.read_schema(tasks).names)
            if not {"id", "cpu_count"} <= cols:
                return
            table = pq.read_table(tasks, columns=sorted(cols)).to_pandas()
        except (OSError, pa.ArrowException):
            return
        gpus = table["gpu_count"].fillna(0) if "gpu_count" in table else None
        for what, need, have in (("CPU cores", table["cpu_count"], most_cpu), ("GPU cores", gpus, most_gpu)):
            if need is None or not (need > have).any():
                continue
            row = int((need > have).to_numpy().argmax())
            hint = (
                "the topology has no GPU at all"
                if what == "GPU cores" and most_gpu == 0
                else f"the largest host has {have}"
            )
            raise KavierInputError(
                f"task {int(table['id'].iloc[row])} needs {int(need.iloc[row])} {what} but "
                f"{hint}, so OpenDC would wait for ever",
                source=str(tasks),
                location=f"workloads[{i}] / {what}",
                expected="a topology with hosts that fit every task (for GPU tasks: hosts with a gpu section)",
            )


#: A full, over-quota or read-only disk as the JVM words it (Java's IOException carries the C library's text)
_JAVA_WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _java_write_fault(exc: BaseException, out: Path) -> int | None:
    """The errno of a write fault OpenDC's JVM met in ``out`` (in its message or last stderr lines, or seen on
    the folder itself: Java words a file it could not create in a read-only or removed folder as "No such
    file"); None: another failure (which OpenDC may word as an unreadable input: the first file it wrote)."""
    text = f"{exc} {getattr(exc, 'stderr_tail', '')}"
    found = next((num for num in _JAVA_WRITE_FAULTS if os.strerror(num) in text), None)
    if found is not None:
        return found
    try:
        return errno.EROFS if os.statvfs(out).f_flag & os.ST_RDONLY else None
    except FileNotFoundError:
        return errno.ENOENT
    except OSError:
        return None


def run_opendc_dir(
    dir: str | os.PathLike, progress: Callable | None = None, *, bridge: Any = None, stall_timeout: float | None = None
) -> dict[str, Any]:
    """Run ``dir/experiment.json`` in OpenDC (through the bridge), put the
    output under ``dir/output/``, and write ``dir/sustainability.json``.

    Works on directories written by :func:`write_opendc_inputs` and on
    hand-written OpenDC experiment directories of the same shape (relative
    paths are resolved against ``dir``). While running, ``dir/output`` holds
    an ``INCOMPLETE`` marker that is removed on success. Returns the
    summary (:func:`read_opendc_output`, with the power DataFrame).
    ``bridge``: an open :class:`~kavier_opendc.opendc.bridge.OpenDCBridge`
    to reuse (one JVM for several runs); default: start one for this run.
    ``stall_timeout``: the watchdog's limit in seconds without progress (None:
    ``$KAVIER_OPENDC_STALL_S`` or 300 s; 0: none); a stalled run's JVM is
    killed and :class:`~kavier_opendc.opendc.bridge.OpenDCStallError` raised,
    ``dir/output`` keeping its marker (a reused ``bridge`` is then closed).
    """
    d = Path(dir).resolve()
    out = d / "output"
    sus = d / "sustainability.json"
    if not (d / "experiment.json").is_file():
        raise KavierInputError(
            "experiment file not found",
            source=str(d / "experiment.json"),
            expected="DIR/experiment.json (written by `kavier export-opendc`)",
        )
    if out.exists():
        shutil.rmtree(out)
    if sus.exists():
        sus.unlink()
    make_dirs(out)
    marker = out / INCOMPLETE
    atomic_write_text(marker, "OpenDC run in progress or failed; rerun `kavier opendc` on this folder.\n")
    try:
        run_path, exp, topo = prepare_experiment(d)
        check_tasks_fit(exp)
    except KavierInputError:
        shutil.rmtree(out, ignore_errors=True)  # nothing ran: leave no output/ behind
        raise
    checkpoint(OPENDC_RUNNING)
    try:
        if bridge is not None:
            result_dir = bridge.run(run_path, progress=progress, stall_timeout=stall_timeout, folder=d)
        else:
            from kavier_opendc.opendc.bridge import run_opendc_experiment

            result_dir = run_opendc_experiment(run_path, progress=progress, stall_timeout=stall_timeout, folder=d)
    except KavierError as exc:
        fault = _java_write_fault(exc, out)
        if fault is None:
            raise
        err = OutputWriteError.from_os(OSError(fault, os.strerror(fault)), out)
        raise OutputWriteError(f"{err}; what OpenDC wrote there stays marked {marker}") from None
    export_stats = None
    ep = d / "export.json"
    if ep.is_file():
        try:
            full = json.loads(ep.read_text(encoding="utf-8"))
            export_stats = {k: full[k] for k in EXPORT_STAT_KEYS if k in full}
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            export_stats = None
    search = out / str(exp.get("name", ""))
    if not find_raw_outputs(search):
        search = Path(result_dir) if result_dir is not None and find_raw_outputs(result_dir) else out
    result = read_opendc_output(search, topology=topo, export_stats=export_stats)
    raw = result.get("raw_output")
    # the file names OpenDC's output relative to the folder, which stays portable
    rel = Path(raw).resolve().relative_to(d).as_posix() if raw and Path(raw).resolve().is_relative_to(d) else raw
    write_sustainability(sus, {**result, "raw_output": rel} if raw else result)
    marker.unlink()
    return result
