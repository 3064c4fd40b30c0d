"""Every OpenDC input for one simulation: the workload (export.py), the topology and the experiment (topology.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import make_dirs, write_json_atomic
from kavier_opendc.opendc.datacenter import load_datacenter
from kavier_opendc.opendc.export import export_with_hosts
from kavier_opendc.opendc.topology import experiment_dict, topology_dict


def write_opendc_inputs(
    sim_dir: str | os.PathLike, datacenter, out_dir: str | os.PathLike, **export_opts
) -> dict[str, Any]:
    """Write OpenDC's inputs for a simulation: ``out_dir/workload/tasks.parquet``,
    ``out_dir/workload/fragments.parquet``, ``out_dir/topology.json`` and
    ``out_dir/experiment.json``, plus ``out_dir/export.json`` with the export
    statistics. The folder is self-contained and portable: every path in its
    files is relative to it, and a carbon trace from outside it is copied into
    ``out_dir/carbon/``.

    ``datacenter`` is a :class:`Datacenter`, a path or a mapping
    (:func:`load_datacenter`). ``export_opts`` go to
    :func:`kavier_opendc.opendc.export.export_workload` (mode, tolerance,
    interval_s, start, cpu_load_cores, ...). Returns the export statistics with
    the paths written.
    """
    dc = load_datacenter(datacenter)
    out = Path(out_dir)
    make_dirs(out)
    stats, dc_used, hosts = export_with_hosts(sim_dir, out / "workload", dc, **export_opts)
    start = stats["start"]
    carbon_rel = folder_carbon_trace(dc_used.power_source.carbon_trace, out)
    topo = topology_dict(dc_used, hosts=hosts, carbon_trace_path=carbon_rel)
    exp = experiment_dict(dc_used, start=start)
    write_json_atomic(out / "topology.json", topo)
    write_json_atomic(out / "experiment.json", exp)
    stats["topology"] = "topology.json"
    stats["experiment"] = "experiment.json"
    stats["datacenter"] = dc_used.to_dict()
    if carbon_rel is not None:
        stats["datacenter"]["power_source"]["carbon_trace"] = carbon_rel
    stats["opendc_hosts"] = [
        {
            "name": h.name,
            "count": h.count,
            "gpus": h.gpus,
            "physical_gpus": h.physical_gpus,
            "gpu_capacity_mhz": h.gpu_capacity_mhz,
            "cpu_cores": h.cpu_cores * h.cpu_count,
            "memory_mib": h.memory_mib,
        }
        for h in hosts
    ]
    absolute = {
        "topology": str((out / "topology.json").resolve()),
        "experiment": str((out / "experiment.json").resolve()),
        "paths": stats.get("paths"),
    }
    if isinstance(stats.get("paths"), dict):  # export.json names the folder's files relative to it
        root = out.resolve()
        stats["paths"] = {
            k: Path(v).resolve().relative_to(root).as_posix() if Path(v).resolve().is_relative_to(root) else v
            for k, v in stats["paths"].items()
        }
    write_json_atomic(out / "export.json", stats)
    return {**stats, **absolute}  # the caller gets absolute paths


def folder_carbon_trace(trace: str | os.PathLike | None, out: Path) -> str | None:
    """The carbon trace as the exported folder ``out`` names it: its path relative to
    ``out`` (POSIX form), after copying it into ``out/carbon/`` when it lies outside."""
    if trace is None:
        return None
    src = Path(trace).resolve()
    root = out.resolve()
    if not src.is_relative_to(root):
        dest = root / "carbon" / src.name
        make_dirs(dest.parent)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        src = dest
    return src.relative_to(root).as_posix()
