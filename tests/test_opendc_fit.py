"""`kavier opendc` on a workload no host can run fails at once with a clear error instead of hanging in
OpenDC (issue 17, item 10): a GPU workload on a topology without GPUs waited for ever before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import needs_opendc
from test_pipeline import tiny_experiment


def _exported(tmp_path):
    exp = tiny_experiment(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "run", str(exp), "--out", str(out), "--no-plots", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return out / "opendc"


@needs_opendc
def test_a_gpu_workload_on_hosts_without_gpus_is_refused_before_opendc_starts(tmp_path):
    d = _exported(tmp_path)
    copy = tmp_path / "nogpu"
    shutil.copytree(d, copy)
    topo_path = copy / "topology.json"
    topo = json.loads(topo_path.read_text())
    for cl in topo["clusters"]:
        for h in cl["hosts"]:
            h.pop("gpu", None)
            h.pop("gpuPowerModel", None)
    topo_path.write_text(json.dumps(topo))  # the copy's paths are relative: it runs on its own files
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "opendc", str(copy), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # hung for ever before
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs 108 GPU cores but the topology has no GPU at all, so OpenDC would wait for ever" in r.stderr
    assert not (copy / "output").exists() and not (copy / "sustainability.json").exists()


@needs_opendc
def test_a_task_larger_than_every_host_is_refused(tmp_path):
    d = _exported(tmp_path)
    topo_path = d / "topology.json"
    topo = json.loads(topo_path.read_text())
    for cl in topo["clusters"]:
        for h in cl["hosts"]:
            h["gpu"]["count"] = 0 if h["gpu"]["count"] > 1 else h["gpu"]["count"]
            h["cpu"]["coreCount"] = 0
    topo_path.write_text(json.dumps(topo))
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "opendc", str(d), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "needs 1 CPU cores but the largest host has 0" in r.stderr
