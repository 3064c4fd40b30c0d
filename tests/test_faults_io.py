"""More faults at run time (issue 17): every output locked, --overwrite for sweep and plan, a full, read-only
or vanished output, a missing/old Java or a broken bridge jar, a signal while the JVM starts.

Real `kavier` processes as in test_faults.py. A command is held at a known moment by the test hook
``KAVIER_TEST_STOP_AT`` (kavier_opendc/base/faults.py: the process stops itself with SIGSTOP there); the
test waits until /proc shows it stopped, acts, and resumes it with SIGCONT: no sleep guesses a moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from conftest import shared
from kavier_opendc.base import faults
from kavier_opendc.base.atomic import INCOMPLETE
from kavier_opendc.base.output_folder import lock_path
from test_faults import WAIT, Cmd, assert_one_paragraph_error, cli, demo_copy, wait_for

A10 = "measurements/kavier_a10_llama3_8b_vllm.csv"


def is_stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[0] == "T"


def stopped_at(moment: str, *args) -> Cmd:
    """A command started with the test hook: it stops itself at ``moment``; returned once it has."""
    cmd = Cmd(*args, env={faults.STOP_ENV: moment})
    wait_for(lambda: cmd.proc.poll() is not None or is_stopped(cmd.proc.pid), WAIT, f"{args} to stop at {moment}")
    assert cmd.proc.poll() is None, f"{args} ended before {moment}: {cmd.stderr}"
    return cmd


def resume(cmd: Cmd) -> None:
    os.kill(cmd.proc.pid, signal.SIGCONT)


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    """A small simulation (kavier simulate's three files)."""
    tmp = tmp_path_factory.mktemp("sim")
    trace = demo_copy(tmp / "in", requests=200).parent / "demo_workload.yaml"
    out = tmp / "sim"
    r = cli("simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", trace, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def _datacenter(tmp: Path) -> Path:
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT

    doc = yaml.safe_load(DEMO_EXPERIMENT.read_text())
    dc = doc["datacenter"]
    if isinstance(dc, str):
        return (DEMO_EXPERIMENT.parent / dc).resolve()
    p = tmp / "dc.yaml"
    p.write_text(yaml.safe_dump(dc))
    return p


@pytest.fixture(scope="module")
def export_dir(sim_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "opendc"
    r = cli("export-opendc", sim_dir, "--datacenter", _datacenter(tmp), "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


# ------------------------------------------------------------------------------ 1. every output locked


def _second_is_refused(first: Cmd, second_args: list, out: Path, what: str = "output folder") -> None:
    try:
        second = cli(*second_args, timeout=WAIT)
        assert first.proc.poll() is None  # still held (stopped) while the second tried
    finally:
        resume(first)
    assert second.returncode == 2, second.stderr
    assert_one_paragraph_error(second.stderr)
    assert (
        f"{what} {out.resolve()} is in use by another kavier command (pid {first.proc.pid}: kavier " in second.stderr
    ), second.stderr
    assert f"which holds its lock {lock_path(out)}; nothing was changed" in second.stderr
    assert first.wait() == 0, first.stderr
    assert not lock_path(out).exists()


def test_export_opendc_locks_its_out_folder(tmp_path, sim_dir):
    out = tmp_path / "opendc"
    args = ["export-opendc", sim_dir, "--datacenter", _datacenter(tmp_path), "--out", out, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    assert lock_path(out).is_file() and not out.exists()
    _second_is_refused(first, args, out)
    assert (out / "topology.json").is_file() and not (out / INCOMPLETE).exists()


def test_opendc_locks_its_experiment_folder(tmp_path, export_dir):
    from conftest import skip_without_opendc

    skip_without_opendc()
    d = tmp_path / "opendc"
    shutil.copytree(export_dir, d)
    args = ["opendc", d, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    _second_is_refused(first, args, d)
    assert json.loads((d / "sustainability.json").read_text())["energy_wh"] > 0


def test_trace_locks_its_out_folder(tmp_path):
    from test_tracer import Server, write_trace

    srv = Server()
    try:
        srv.configure()
        trace = write_trace(tmp_path / "t.csv", [8, 16], [4, 4])
        out = tmp_path / "meas"
        args = ["trace", srv.url, "--model", "fake-model", "--out", out, "--quiet", "--trace", trace]
        first = stopped_at(faults.LOCKED, *args)
        _second_is_refused(first, args, out)
    finally:
        srv.stop()
    assert json.loads((out / "summary.json").read_text())["num_finished"] == 2


def test_calibrate_locks_its_out_file(tmp_path):
    out = tmp_path / "profiles.yaml"
    args = ["calibrate", shared(A10), "--model", "Llama-3-8B", "--gpu", "A10", "--out", out]
    first = stopped_at(faults.LOCKED, *args)
    assert lock_path(out) == tmp_path / ".profiles.yaml.kavier-lock" and lock_path(out).is_file()
    _second_is_refused(first, args, out, what="output file")
    assert "profiles:" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles.yaml"]  # no temporary file left


def test_compare_locks_its_out_folder(tmp_path):
    table = shared(A10)
    out = tmp_path / "cmp"
    args = ["compare", table, table, "--out", out, "--quiet"]
    first = stopped_at(faults.LOCKED, *args)
    _second_is_refused(first, args, out)
    assert json.loads((out / "compare.json").read_text())["matched"] == 9
