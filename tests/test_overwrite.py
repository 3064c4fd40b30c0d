"""A rerun into a folder holding a complete earlier result refuses unless --overwrite (issue 17, item 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kavier_opendc.base.atomic import INCOMPLETE

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "demo_chat.csv"
SIM = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(TRACE), "--quiet"]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_simulate_keeps_a_complete_earlier_simulation_unless_told(tmp_path):
    out = tmp_path / "sim"
    assert cli(*SIM, "--out", out).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = cli(*SIM, "--out", out, "--replicas", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"kavier: error: --out: {out} already holds a complete simulation" in r.stderr
    assert "--overwrite to replace it" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    assert cli(*SIM, "--out", out, "--replicas", "2", "--overwrite").returncode == 0
    assert (out / "summary.json").stat().st_mtime_ns != before["summary.json"]


def test_an_incomplete_or_foreign_folder_is_no_complete_result(tmp_path):
    out = tmp_path / "sim"
    assert cli(*SIM, "--out", out).returncode == 0
    (out / INCOMPLETE).write_text("killed\n")  # a failed or killed run: replaced without asking
    assert cli(*SIM, "--out", out).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")  # a folder without a result: written into as before
    assert cli(*SIM, "--out", other).returncode == 0 and (other / "notes.txt").read_text() == "mine"


def test_run_keeps_a_complete_earlier_run_unless_told(tmp_path):
    from test_pipeline import tiny_experiment

    exp = tiny_experiment(tmp_path)
    out = tmp_path / "run"
    assert cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet").returncode == 0
    report = (out / "report.json").read_bytes()
    r = cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet")
    assert r.returncode == 2 and "already holds a complete run" in r.stderr
    assert (out / "report.json").read_bytes() == report
    assert cli("run", exp, "--out", out, "--no-opendc", "--no-plots", "--quiet", "--overwrite").returncode == 0
