"""The OpenDC watchdog (issue 17, item 10): an OpenDC run whose progress stops advancing is stopped with a
clear error, its JVM killed and its output folder marked INCOMPLETE, instead of hanging for ever.

The stall is real: ``check_tasks_fit`` (which refuses such a run up front) is bypassed and the real OpenDC
gets a GPU workload on hosts without GPUs, on which it spins for ever (simulated time moves on, the tasks
stay pending). Before the watchdog these runs never returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, needs_opendc
from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.opendc import results
from kavier_opendc.opendc.bridge import OpenDCBridgeError, OpenDCStallError, _Watch
from test_pipeline import tiny_experiment

# long enough that OpenDC prints its first task counts before the watchdog fires on a loaded machine
# (at a load of 13 on 2 cores its first block came later than 3 s)
STALL_S = 8


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        import psutil
    except ImportError:  # /proc instead
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An exported OpenDC folder (``good``) and a copy of it whose hosts have no GPU (``nogpu``)."""
    tmp = tmp_path_factory.mktemp("watchdog")
    exp = tiny_experiment(tmp)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "run",
            str(exp),
            "--out",
            str(tmp / "run"),
            "--no-plots",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    good = tmp / "run" / "opendc"
    nogpu = tmp / "nogpu"
    shutil.copytree(good, nogpu)
    shutil.rmtree(nogpu / "output", ignore_errors=True)
    (nogpu / "sustainability.json").unlink(missing_ok=True)
    topo = json.loads((nogpu / "topology.json").read_text())
    for cl in topo["clusters"]:
        for h in cl["hosts"]:
            h.pop("gpu", None)
            h.pop("gpuPowerModel", None)
    (nogpu / "topology.json").write_text(json.dumps(topo))
    return good, nogpu


# A `kavier opendc` whose up-front check is bypassed, so that OpenDC itself meets the GPU-less hosts; it
# writes the JVM's pid to argv[2].
_CLI_WITHOUT_FIT_CHECK = textwrap.dedent("""
    import sys
    from kavier_opendc.opendc import bridge, results
    results.check_tasks_fit = lambda exp: None
    start = bridge.OpenDCBridge.start
    def recording_start(self):
        out = start(self)
        open(sys.argv[2], "w").write(str(self.pid))
        return out
    bridge.OpenDCBridge.start = recording_start
    from kavier_opendc.cli import main
    sys.exit(main(["opendc", sys.argv[1], *sys.argv[3:]]))
""")


def _stalled_cli(folder: Path, pid_file: Path, *args: str, env: dict | None = None):
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_FIT_CHECK, str(folder), str(pid_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return r, time.monotonic() - t0


def _check_stopped(r, elapsed: float, folder: Path, pid_file: Path, limit: float) -> None:
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert elapsed < 60, elapsed
    err = r.stderr
    assert "Traceback" not in err and "ERROR:py4j" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kavier: error: "), err  # one paragraph
    assert f"OpenDC stopped advancing on {folder.resolve()}: no progress for" in err
    assert f"(the stall limit is {limit:g} s), so the watchdog killed its JVM" in err
    assert "the last progress reached: 0% of the (scenario, seed) runs finished" in err
    assert "0 active, 2 pending, 0 completed" in err  # OpenDC's own task counts: nothing could start
    assert "keeps its INCOMPLETE marker" in err
    assert "a GPU task needs hosts with a gpu section" in err
    assert f"--stall-timeout S' or {limits.OPENDC_STALL_ENV}=S" in err
    assert (folder / "output" / "INCOMPLETE").is_file()
    assert not (folder / "sustainability.json").exists()
    pid = int(pid_file.read_text())
    assert not _pid_alive(pid), f"the OpenDC JVM {pid} is still running"


@needs_opendc
def test_a_stalled_opendc_run_is_stopped_with_a_clear_error(folders, tmp_path):
    _, nogpu = folders
    pid_file = tmp_path / "pid"
    r, elapsed = _stalled_cli(nogpu, pid_file, "--quiet", "--stall-timeout", str(STALL_S))
    _check_stopped(r, elapsed, nogpu, pid_file, STALL_S)


@needs_opendc
def test_the_stall_limit_comes_from_the_environment(folders, tmp_path):
    _, nogpu = folders
    pid_file = tmp_path / "pid"
    r, elapsed = _stalled_cli(nogpu, pid_file, env={limits.OPENDC_STALL_ENV: "7.5"})
    _check_stopped(r, elapsed, nogpu, pid_file, 7.5)


@needs_opendc
def test_a_reused_bridge_is_closed_and_the_next_worker_run_gets_a_fresh_one(folders, tmp_path, monkeypatch):
    """What a sweep worker does: one JVM for its runs (executor.worker_bridge); a stall kills it, and the
    worker's next run gets a new JVM and succeeds. A normal run under a short limit is not stopped."""
    from kavier_opendc.experiments import executor

    good, nogpu = folders
    good_copy = tmp_path / "good"
    shutil.copytree(good, good_copy)
    monkeypatch.setattr(results, "check_tasks_fit", lambda exp: None)
    assert issubclass(OpenDCStallError, OpenDCBridgeError)  # the worker closes its bridge on these
    monkeypatch.setattr(executor, "_BRIDGE", None)
    try:
        first, _ = executor.worker_bridge()
        pid = first.pid
        t0 = time.monotonic()
        with pytest.raises(OpenDCStallError) as info:
            results.run_opendc_dir(nogpu, bridge=first, stall_timeout=2)
        assert time.monotonic() - t0 < 30
        assert info.value.kind == "STALLED" and info.value.limit_s == 2 and info.value.stalled_s >= 2
        assert str(nogpu.resolve()) in str(info.value)
        assert (nogpu / "output" / "INCOMPLETE").is_file()
        assert not first.alive and not _pid_alive(pid)
        second, _ = executor.worker_bridge()
        assert second is not first and second.alive and second.pid != pid
        # a normal run: its progress pauses for a second or two, far below the limit
        res = results.run_opendc_dir(good_copy, bridge=second, stall_timeout=20)
        assert res["energy_wh"] > 0 and not (good_copy / "output" / "INCOMPLETE").exists()
        assert second.alive  # the same JVM serves the worker's next run
    finally:
        executor.close_worker_bridge()


# ------------------------------------------------------------------------------------------ no JVM


def _metrics(hours: int, total: int, active: int, pending: int, completed: int) -> list[str]:
    """The lines of one ComputeMetricReader block as OpenDC 2.4u logs them."""
    return [
        "09:08:36.385 [WARN ] org.opendc.compute.simulator.telemetry.ComputeMetricReader - ",
        f"\t\t\t\t\tMetrics after {hours} hours:",
        f"\t\t\t\t\t\tTasks Total: {total}",
        f"\t\t\t\t\t\tTasks Active: {active}",
        f"\t\t\t\t\t\tTasks Pending: {pending}",
        f"\t\t\t\t\t\tTasks Completed: {completed}",
        "\t\t\t\t\t\tTasks Terminated: 0",
        "",
    ]


def _feed(watch: _Watch, lines: list[str]) -> bool:
    """Whether feeding ``lines`` counted as progress."""
    before = watch.last_advance
    time.sleep(0.002)
    for line in lines:
        watch.feed(line)
    return watch.last_advance != before


def test_what_counts_as_progress():
    w = _Watch()
    assert _feed(w, _metrics(0, 2, 0, 2, 0))  # the first metrics
    assert _feed(w, _metrics(1, 2, 2, 0, 0))  # simulated time moves on with tasks running
    assert _feed(w, _metrics(2, 2, 2, 0, 0))
    assert not _feed(w, _metrics(2, 2, 2, 0, 0))  # nothing moved
    assert _feed(w, _metrics(3, 2, 1, 0, 1))  # a task finished
    assert _feed(w, _metrics(4, 3, 1, 0, 1))  # a task submitted
    assert not _feed(w, _metrics(5, 3, 0, 2, 1))  # time moves, tasks wait, none runs: OpenDC spinning
    assert not _feed(w, _metrics(6, 3, 0, 2, 1))
    assert "no task has run or finished since simulated hour 4" in w.describe()
    assert not _feed(w, ["Tasks Total: 9", "some other line"])  # outside a block
    before = w.last_advance
    time.sleep(0.002)
    w.note(0.0, "simulating scenario 1/1 (id 0), seed 0 of 1")  # the bridge's phase changed
    assert w.last_advance != before
    before = w.last_advance
    w.note(0.0, "simulating scenario 1/1 (id 0), seed 0 of 1")
    assert w.last_advance == before
    w.note(0.5, "simulating scenario 1/1 (id 0), seed 0 of 1")  # a (scenario, seed) run finished
    assert w.last_advance != before and "50% of the (scenario, seed) runs finished" in w.describe()


def test_the_stall_limit(monkeypatch):
    monkeypatch.delenv(limits.OPENDC_STALL_ENV, raising=False)
    assert limits.opendc_stall_s() == limits.OPENDC_STALL_DEFAULT_S == 300
    assert limits.opendc_stall_s(5) == 5
    monkeypatch.setenv(limits.OPENDC_STALL_ENV, "0")
    assert limits.opendc_stall_s() == 0
    assert limits.opendc_stall_s(7) == 7  # an explicit value wins
    for bad in ("soon", "-1", "nan", "1e9"):
        monkeypatch.setenv(limits.OPENDC_STALL_ENV, bad)
        with pytest.raises(KavierInputError, match=limits.OPENDC_STALL_ENV):
            limits.opendc_stall_s()


def test_the_stall_timeout_flag_is_checked(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "opendc", str(tmp_path), "--stall-timeout", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert r.returncode == 2 and "--stall-timeout must be >= 0" in r.stderr and "Traceback" not in r.stderr
