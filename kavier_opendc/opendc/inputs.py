"""Every OpenDC input for one simulation: the workload (export.py), the topology and the experiment (topology.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import write_json_atomic
from kavier_opendc.opendc.datacenter import load_datacenter
from kavier_opendc.opendc.export import export_with_hosts
from kavier_opendc.opendc.topology import experiment_dict, topology_dict


def write_opendc_inputs(sim_dir: str | os.PathLike, datacenter, out_dir: str | os.PathLike,
                        **export_opts) -> dict[str, Any]:
    """Write OpenDC's inputs for a simulation: ``out_dir/workload/tasks.parquet``,
    ``out_dir/workload/fragments.parquet``, ``out_dir/topology.json`` and
    ``out_dir/experiment.json`` (absolute paths), plus ``out_dir/export.json``
    with the export statistics.

    ``datacenter`` is a :class:`Datacenter`, a path or a mapping
    (:func:`load_datacenter`). ``export_opts`` go to
    :func:`kavier_opendc.opendc.export.export_workload` (mode, tolerance,
    interval_s, start, cpu_load_cores, ...). Returns the export statistics with
    the paths written.
    """
    dc = load_datacenter(datacenter)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats, dc_used, hosts = export_with_hosts(sim_dir, out / "workload", dc, **export_opts)
    start = stats["start"]
    topo = topology_dict(dc_used, hosts=hosts)
    exp = experiment_dict(out, dc_used, start=start)
    write_json_atomic(out / "topology.json", topo)
    write_json_atomic(out / "experiment.json", exp)
    stats["topology"] = str((out / "topology.json").resolve())
    stats["experiment"] = str((out / "experiment.json").resolve())
    stats["datacenter"] = dc_used.to_dict()
    stats["opendc_hosts"] = [{"name": h.name, "count": h.count, "gpus": h.gpus,
                              "physical_gpus": h.physical_gpus, "gpu_capacity_mhz": h.gpu_capacity_mhz,
                              "cpu_cores": h.cpu_cores * h.cpu_count, "memory_mib": h.memory_mib}
                             for h in hosts]
    write_json_atomic(out / "export.json", stats)
    return stats
