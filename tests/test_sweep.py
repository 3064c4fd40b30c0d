"""`kavier sweep`: 4 configurations in 2 parallel workers, resumed after interruptions.

Runs through the real OpenDC when the bridge jar is built, else with
--no-opendc (the sweep machinery is the same).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import HAVE_OPENDC
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.run_folder import DONE
from kavier_opendc.experiments.sweep import LOG, load_sweep
from test_pipeline import tiny_experiment

FLAGS = [] if HAVE_OPENDC else ["--no-opendc"]


def write_sweep(tmp: Path, axes=None, name="sweep.yaml") -> Path:
    tiny_experiment(tmp)
    doc = {
        "name": "tiny-sweep",
        "base": "experiment.yaml",
        "axes": axes or {"serving.replicas": [1, 2], "serving.prefix_cache.policy": ["none", "block"]},
    }
    p = tmp / name
    p.write_text(yaml.safe_dump(doc))
    return p


def sweep_cli(sweep: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "sweep",
            str(sweep),
            "--out",
            str(out),
            "--jobs",
            "2",
            *FLAGS,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def log_events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(tmp)
    out = tmp / "out"
    r = sweep_cli(sweep, out)
    assert r.returncode == 0, r.stderr
    return sweep, out, r


def test_sweep_runs_all_configurations_in_parallel(swept):
    sweep, out, r = swept
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 4
    assert all((out / "runs" / rid / DONE).is_file() and (out / "runs" / rid / "report.json").is_file() for rid in runs)
    done = [e for e in log_events(out) if e["event"] == "done"]
    assert len(done) == 4
    assert len({e["pid"] for e in done}) == 2, "two worker processes shared the runs"
    assert all(e["pid"] != os.getpid() for e in done)
    # runs of different workers overlapped in time
    spans = sorted((e["start"], e["end"], e["pid"]) for e in done)
    assert any(a[1] > b[0] and a[2] != b[2] for i, a in enumerate(spans) for b in spans[i + 1 :])
    assert "4 run(s) done now, 0 skipped" in r.stdout


def test_comparison_table_and_plots(swept):
    _, out, _ = swept
    t = pd.read_csv(out / "comparison.csv")
    assert len(t) == 4 and (t["status"] == "done").all()
    assert set(t["serving.replicas"]) == {1, 2} and set(t["serving.prefix_cache.policy"]) == {"none", "block"}
    none = t[t["serving.prefix_cache.policy"] == "none"]
    block = t[t["serving.prefix_cache.policy"] == "block"]
    assert (none["prefix_cache_hit_ratio"] == 0).all() and (block["prefix_cache_hit_ratio"] > 0).all()
    # twice the GPUs for the same makespan-ish window: cost per token grows with replicas
    c1 = t[(t["serving.replicas"] == 1)]["cost_per_mtoken"].mean()
    c2 = t[(t["serving.replicas"] == 2)]["cost_per_mtoken"].mean()
    assert c2 > c1
    if HAVE_OPENDC:
        assert (t["energy_wh"] > 0).all() and (t["wh_per_mtoken"] > 0).all()
    md = (out / "comparison.md").read_text()
    assert sum(f"| {rid} |" in md for rid in t["run"]) == 4 and "TTFT p99 (s)" in md
    for png in ("tradeoff.png", "metrics.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000


def test_resume_redoes_only_unfinished_runs(swept):
    sweep, out, _ = swept
    runs = sorted((out / "runs").iterdir())
    victim = runs[2]
    (victim / DONE).unlink()
    (victim / "INCOMPLETE").write_text("simulated crash\n")
    before = {p.name: (p / DONE).stat().st_mtime_ns for p in runs if p != victim}
    reports = {p.name: (p / "report.json").stat().st_mtime_ns for p in runs if p != victim}
    n_events = len(log_events(out))
    r = sweep_cli(sweep, out)
    assert r.returncode == 0, r.stderr
    new = log_events(out)[n_events:]
    assert [e["id"] for e in new if e["event"] == "done"] == [victim.name]
    assert sorted(e["id"] for e in new if e["event"] == "skip") == sorted(before)
    assert {p: (out / "runs" / p / DONE).stat().st_mtime_ns for p in before} == before
    assert {p: (out / "runs" / p / "report.json").stat().st_mtime_ns for p in reports} == reports
    assert (victim / DONE).is_file() and not (victim / "INCOMPLETE").exists()
    assert "1 run(s) done now, 3 skipped" in r.stdout


def test_changed_configuration_is_rerun(swept, tmp_path):
    sweep, out, _ = swept
    doc = yaml.safe_load(sweep.read_text())
    doc["axes"]["serving.replicas"] = [1, 2]
    doc["axes"]["serving.prefix_cache.policy"] = ["none", "block", "prefill"]
    changed = sweep.with_name("sweep3.yaml")
    changed.write_text(yaml.safe_dump(doc))
    n_events = len(log_events(out))
    r = sweep_cli(changed, out)
    assert r.returncode == 0, r.stderr
    new = log_events(out)[n_events:]
    ran = sorted(e["id"] for e in new if e["event"] == "done")
    # runs are keyed by their configuration: the 4 finished ones are kept, only the 2 new ones run
    assert sorted(e["id"] for e in new if e["event"] == "skip") == sorted(
        p.name for p in (out / "runs").iterdir() if "prefill" not in p.name
    )
    assert len(ran) == 2 and all("prefill" in rid for rid in ran)


def test_killed_sweep_resumes(tmp_path):
    sweep = write_sweep(
        tmp_path,
        axes={"serving.replicas": [1, 2], "serving.prefix_cache.policy": ["none", "block"], "slo.ttft_s": [0.1, 0.3]},
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kavier_opendc.cli", "sweep", str(sweep), "--out", str(out), "--jobs", "2", *FLAGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            # a run counts as finished once its DONE marker is there (written just after its log event)
            runs = out / "runs"
            if runs.is_dir() and any((p / DONE).is_file() for p in runs.iterdir()):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep dies at once, workers included
    finally:
        proc.wait(timeout=60)
    finished = {p.name for p in (out / "runs").iterdir() if (p / DONE).is_file()}
    assert 1 <= len(finished) < 8, finished
    mtimes = {rid: (out / "runs" / rid / DONE).stat().st_mtime_ns for rid in finished}
    n_events = len(log_events(out))
    r = sweep_cli(sweep, out)
    assert r.returncode == 0, r.stderr
    new = log_events(out)[n_events:]
    assert {e["id"] for e in new if e["event"] == "skip"} == finished
    assert len([e for e in new if e["event"] == "done"]) == 8 - len(finished)
    assert {rid: (out / "runs" / rid / DONE).stat().st_mtime_ns for rid in finished} == mtimes
    t = pd.read_csv(out / "comparison.csv")
    assert len(t) == 8 and (t["status"] == "done").all()


def test_invalid_configuration_is_reported_before_running(tmp_path):
    sweep = write_sweep(tmp_path, axes={"gpu": ["A100-80GB", "NoSuchGPU"], "serving.replicas": [1, 5]})
    with pytest.raises(KavierInputError) as ei:
        load_sweep(sweep, opendc=True)
    text = str(ei.value)
    assert "configuration 2 (gpu=NoSuchGPU, serving.replicas=1): gpu: unknown GPU 'NoSuchGPU'" in text
    assert "serving.replicas=5): datacenter.hosts: the datacenter has too few GPU slots" in text
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "sweep", str(sweep), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_axes_as_labelled_variants(tmp_path):
    sweep = write_sweep(
        tmp_path,
        axes=[
            {
                "name": "site",
                "values": [
                    {"label": "sunny", "set": {"carbon.synthetic": {"mean": 100, "amplitude": 50}}},
                    {"label": "coal", "set": {"carbon.synthetic": {"mean": 800, "amplitude": 0}}},
                ],
            },
            {"name": "replicas", "path": "serving.replicas", "values": [1, 2]},
        ],
    )
    s = load_sweep(sweep)
    assert [r.labels for r in s.runs] == [
        {"site": "sunny", "replicas": "1"},
        {"site": "sunny", "replicas": "2"},
        {"site": "coal", "replicas": "1"},
        {"site": "coal", "replicas": "2"},
    ]
    assert s.runs[2].document["carbon"] == {"synthetic": {"mean": 800, "amplitude": 0}}
    assert len({r.config_hash for r in s.runs}) == 4
    bad = write_sweep(tmp_path, axes=[{"name": "x", "values": [1, 2]}], name="bad.yaml")
    with pytest.raises(KavierInputError, match=r"axes\[0\]\.values\[0\]: a plain value needs the axis' 'path'"):
        load_sweep(bad)
