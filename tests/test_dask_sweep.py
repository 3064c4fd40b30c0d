"""Sweeps on Dask: a real scheduler and two workers started from the command line, one killed mid-sweep.

The 6-configuration sweep runs through the real OpenDC when the bridge jar is built (each worker keeps
one JVM), else with --no-opendc. Its results must equal those of the same sweep on the default local
cluster. A second, in-process test runs one task as a worker without the driver's files would: inputs
mirrored from the bytes sent with it, the output folder shipped back as an archive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import HAVE_OPENDC
from kavier_opendc.experiments.executor import RunTask, execute, file_sha256, input_files, unpack_run
from kavier_opendc.experiments.sweep import load_sweep
from test_pipeline import tiny_experiment
from test_sweep import log_events, sweep_cli

REPO = Path(__file__).resolve().parents[1]
FLAGS = [] if HAVE_OPENDC else ["--no-opendc"]
AXES = {"serving.replicas": [1, 2], "serving.prefix_cache.policy": ["none", "block", "prefill"]}
# columns that are the runs' results (wall times and paths differ between any two runs)
RESULTS = [
    "num_finished",
    "makespan_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p99_s",
    "e2e_p99_s",
    "prefix_cache_hit_ratio",
    "slo_attainment",
    "goodput_rps",
    "energy_wh",
    "carbon_g",
    "wh_per_mtoken",
    "gco2_per_mtoken",
    "cost_per_mtoken",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sweep(tmp: Path) -> Path:
    tiny_experiment(tmp)
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump({"name": "dask-sweep", "base": "experiment.yaml", "axes": AXES}))
    return p


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and two `dask worker`s (w1, w2) on 127.0.0.1, each in its own process group."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    }
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["scheduler"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(logs / "scheduler.log", "w"),
        )
        for name in ("w1", "w2"):
            wdir = tmp_path / f"worker-{name}"
            wdir.mkdir()
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "worker",
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--local-directory",
                    str(wdir),
                ],
                env=env,
                cwd=wdir,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=open(logs / f"{name}.log", "w"),
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address, procs
    finally:
        for proc in procs.values():
            _stop(proc)


def test_sweep_on_a_dask_cluster_survives_a_killed_worker(tmp_path, dask_cluster):
    address, procs = dask_cluster
    sweep = write_sweep(tmp_path / "inputs")
    out = tmp_path / "remote"
    cmd = [
        sys.executable,
        "-m",
        "kavier_opendc.cli",
        "sweep",
        str(sweep),
        "--out",
        str(out),
        "--scheduler",
        address,
        *FLAGS,
    ]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            events = log_events(out) if (out / "sweep_log.jsonl").is_file() else []
            finished = {e["id"] for e in events if e["event"] in ("done", "failed")}
            # w1 is running a run (announced, not back yet)
            running = [
                e["id"] for e in events if e["event"] == "start" and e.get("worker") == "w1" and e["id"] not in finished
            ]
            if running:
                victim = running[-1]
                os.killpg(procs["w1"].pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert victim is not None, f"w1 never ran a run: {stdout}\n{stderr}"
    assert driver.returncode == 0, stderr
    assert "6 run(s) done now, 0 skipped (already done), 0 failed" in stdout
    events = log_events(out)
    # the killed worker lost only its current run, which ran again on w2
    assert [e["worker"] for e in events if e["event"] == "done" and e["id"] == victim] == ["w2"]
    assert not any(e["event"] == "failed" for e in events)
    assert sum(e["event"] == "done" for e in events) == 6
    remote = pd.read_csv(out / "comparison.csv")
    assert len(remote) == 6 and (remote["status"] == "done").all()
    # the same run folders, keyed by configuration, as the sweep file names them (issue 17 item 3)
    spec = load_sweep(sweep, opendc=False if FLAGS else None)
    assert list(remote["run"]) == [r.id for r in spec.runs]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(r.id for r in spec.runs)
    assert all(
        json.loads((out / "runs" / r.id / "DONE").read_text())["key"] == r.key and r.id.endswith(r.key)
        for r in spec.runs
    )

    local_out = tmp_path / "local"
    r = sweep_cli(sweep, local_out)
    assert r.returncode == 0, r.stderr
    local = pd.read_csv(local_out / "comparison.csv")
    cols = [c for c in RESULTS if c in local and local[c].notna().any()]
    if HAVE_OPENDC:
        assert "energy_wh" in cols and "carbon_g" in cols
    pd.testing.assert_frame_equal(remote[["run"] + cols], local[["run"] + cols], check_exact=False, rtol=1e-12)
    # every run folder is complete: report, experiment as run, DONE marker naming its worker
    for rid in remote["run"]:
        rd = out / "runs" / rid
        assert (rd / "report.json").is_file() and not (rd / "INCOMPLETE").exists()
        assert json.loads((rd / "DONE").read_text())["worker"] in ("w1", "w2")


def test_a_worker_without_the_drivers_files_mirrors_inputs_and_ships_the_output(tmp_path):
    """execute() as a remote worker runs it: the inputs' paths do not exist there, only their bytes."""
    exp = tiny_experiment(tmp_path / "driver")
    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.run_folder import absolutized

    doc = absolutized(load_experiment(exp, opendc=False))
    task = RunTask("r0", doc, str(tmp_path / "driver"), str(exp), tmp_path / "runs" / "r0", False)
    paths = input_files(task)
    assert {p.name for p in paths} == {"workload.yaml"}
    inputs = [(str(p), file_sha256(p)) for p in paths]
    files = {sha: Path(p).read_bytes() for p, sha in inputs}
    # the worker's side: the driver's folder is gone
    gone = tmp_path / "driver-moved"
    (tmp_path / "driver").rename(gone)
    payload = {
        "id": "r0",
        "document": doc,
        "base_dir": str(tmp_path / "driver"),
        "source": str(exp),
        "run_dir": str(task.run_dir),
        "opendc": False,
        "plots": False,
        "command": "test",
        "inputs": inputs,
    }
    rec = execute(payload, files)
    assert rec["status"] == "done", rec.get("error")
    assert not task.run_dir.exists(), "a remote worker does not write into the driver's folder"
    unpack_run(rec["archive"], task.run_dir)
    report = json.loads((task.run_dir / "report.json").read_text())
    assert report["performance"]["num_finished"] == 60
    ran = json.loads((task.run_dir / "experiment.json").read_text())
    # what the run records names the driver's files and run folder, not the worker's mirror or temporary
    # folder, which are gone once the run is back (issue 17 item 8)
    assert ran["trace"] == doc["trace"]
    for f in task.run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md", ".yaml", ""):
            text = f.read_text()
            assert "kavier-inputs-" not in text and "kavier-run-r0-" not in text, f


def test_workers_that_cannot_start_give_one_paragraph_and_no_dask_traceback(tmp_path):
    """Issue 17 item 11: a local cluster whose workers fail to start (here a Dask preload that cannot be
    imported) ends in kavier's own error naming the cause, exit 3, no log record or traceback of Dask's,
    and a sweep folder marked INCOMPLETE."""
    sweep = Path(__file__).resolve().parents[1] / "kavier_opendc" / "data" / "demo_sweep.yaml"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": '["no_such_module_for_kavier"]'}
    # port 8787 taken (another sweep's cluster, as on a busy machine): the scheduler's HTTP server used to
    # fall back from it with a "Port 8787 is already in use" warning printed before kavier's error
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a dashboard's server binds it
    try:
        holder.bind(("", 8787))
        holder.listen()
    except OSError:  # already taken: the same situation
        pass
    try:
        r = _sweep_with_failing_workers(sweep, tmp_path, env)
    finally:
        holder.close()
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("kavier: error: could not start the local Dask cluster of 2 worker process(es)")
    assert "No module named 'no_such_module_for_kavier'" in r.stderr
    assert "Traceback" not in r.stderr and "distributed." not in r.stderr and r.stderr.count("\n") == 1
    assert (tmp_path / "s" / "INCOMPLETE").exists() and not (tmp_path / "s" / "comparison.csv").exists()


def _sweep_with_failing_workers(sweep: Path, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "sweep",
            str(sweep),
            "--out",
            str(tmp_path / "s"),
            "--no-opendc",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
