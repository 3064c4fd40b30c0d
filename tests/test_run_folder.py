"""The run folder: markers written atomically, the done check, configuration hashes and the experiment copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments import run_folder as rf
from kavier_opendc.experiments.experiment import load_experiment
from test_pipeline import tiny_experiment


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings an atomic write would leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def test_marker_names_are_the_ones_on_disk():
    assert rf.INCOMPLETE == "INCOMPLETE" and rf.DONE == "DONE"
    assert rf.RUN_ENTRIES == (
        "simulation",
        "opendc",
        "plots",
        "report.json",
        "report.md",
        "report.html",
        "sessions.parquet",
        "experiment.json",
        "INCOMPLETE",
    )


def test_incomplete_marker_is_written_whole_and_cleared(tmp_path):
    text = "kavier run in progress\n" + "x" * 100_000 + "\n"
    rf.mark_incomplete(tmp_path, text)
    assert (tmp_path / "INCOMPLETE").read_text(encoding="utf-8") == text
    assert rf.is_incomplete(tmp_path)
    assert leftovers(tmp_path) == []
    rf.mark_incomplete(tmp_path, "replaced\n")
    assert (tmp_path / "INCOMPLETE").read_text(encoding="utf-8") == "replaced\n"
    assert leftovers(tmp_path) == []
    rf.clear_incomplete(tmp_path)
    assert not rf.is_incomplete(tmp_path)
    rf.clear_incomplete(tmp_path)  # already gone: fine by default
    with pytest.raises(FileNotFoundError):
        rf.clear_incomplete(tmp_path, missing_ok=False)


def test_a_failed_marker_write_leaves_the_old_marker_and_no_partial_file(tmp_path, monkeypatch):
    import kavier_opendc.base.atomic as atomic

    rf.mark_incomplete(tmp_path, "in progress\n")

    def no_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError):
        rf.mark_incomplete(tmp_path, "FAILED\n" * 10_000)
    assert (tmp_path / "INCOMPLETE").read_text(encoding="utf-8") == "in progress\n"
    assert leftovers(tmp_path) == []


def test_failed_before_start_marker_keeps_an_earlier_one(tmp_path):
    rd = tmp_path / "runs" / "r000"
    rf.mark_failed_run(rd, "ValueError: boom")
    assert (rd / "INCOMPLETE").read_text(
        encoding="utf-8"
    ) == "kavier sweep: this run FAILED before it started:\nValueError: boom\n"
    assert leftovers(rd) == []
    rf.mark_incomplete(rd, "kavier run FAILED during stage 'simulate'\n")
    rf.mark_failed_run(rd, "again")
    assert (rd / "INCOMPLETE").read_text(encoding="utf-8") == "kavier run FAILED during stage 'simulate'\n"


def test_done_marker_holds_the_hash_then_the_details(tmp_path):
    rf.mark_done(tmp_path, "abc", id="r000", finished=1.5, wall_s=0.5, pid=42, worker="w0")
    raw = (tmp_path / "DONE").read_text(encoding="utf-8")
    assert list(json.loads(raw)) == ["config_hash", "id", "finished", "wall_s", "pid", "worker"]
    assert (
        raw
        == json.dumps(
            {"config_hash": "abc", "id": "r000", "finished": 1.5, "wall_s": 0.5, "pid": 42, "worker": "w0"}, indent=2
        )
        + "\n"
    )
    assert leftovers(tmp_path) == []
    rf.clear_done(tmp_path)
    rf.clear_done(tmp_path)
    assert not (tmp_path / "DONE").exists()


def test_run_is_done_needs_done_with_the_same_hash_a_report_and_no_incomplete(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    assert not rf.run_is_done(rd, "h1")
    rf.mark_done(rd, "h1", id="run")
    assert not rf.run_is_done(rd, "h1")  # no report.json
    (rd / "report.json").write_text("{}")
    assert not rf.run_is_done(rd, "h1")  # not a report, and no simulation files
    (rd / "report.json").write_text('{"performance": {}, "efficiency": {}, "provenance": {}}')
    (rd / "simulation").mkdir()
    for name in ("requests.parquet", "timeline.parquet"):
        (rd / "simulation" / name).write_bytes(b"PAR1" + bytes(8) + b"PAR1")
    (rd / "simulation" / "summary.json").write_text("{}")
    assert rf.run_is_done(rd, "h1")
    assert not rf.run_is_done(rd, "h2")  # another configuration
    rf.mark_incomplete(rd, "FAILED\n")
    assert not rf.run_is_done(rd, "h1")  # INCOMPLETE wins
    rf.clear_incomplete(rd)
    assert rf.run_is_done(rd, "h1")
    (rd / "DONE").write_text("{not json")
    assert not rf.run_is_done(rd, "h1")
    rf.clear_done(rd)
    assert not rf.run_is_done(rd, "h1")
    assert not rf.run_is_done(tmp_path / "missing", "h1")


class _Inputs:
    def __init__(self, files):
        self.input_files = files


def test_config_hash_is_the_one_resumed_sweeps_expect(tmp_path):
    """The hash value did not change when it moved here (a changed value would rerun every finished run)."""
    (tmp_path / "trace.csv").write_bytes(b"abc")
    (tmp_path / "dc.yaml").write_bytes(b"xyz\n")
    exp = _Inputs(
        [("trace", tmp_path / "trace.csv"), ("datacenter", tmp_path / "dc.yaml"), ("catalog", tmp_path / "nope.yaml")]
    )
    doc = {"name": "golden", "serving": {"replicas": 2, "router": "least-kv"}, "seed": 7, "when": Path("/x")}
    assert rf.config_hash(doc, exp, None) == "59c9cce9fdf0e8338e1b3cfe9f61e32bb0a13f4c417f005f2845cdd07d1610eb"
    assert rf.config_hash(doc, exp, False) == "7ae9ebc41799ff187d856fc8727e013dc45a22603627b82c3b8b2dcfa7a0904e"


def test_config_hash_is_stable_for_equal_configurations_and_differs_otherwise(tmp_path):
    def hashed(path, opendc=None):
        exp = load_experiment(path, opendc=opendc)
        return rf.config_hash(rf.absolutized(exp), exp, opendc)

    path = tiny_experiment(tmp_path / "a")
    a = hashed(path)
    assert hashed(path) == a  # the same files, loaded again
    assert hashed(tiny_experiment(tmp_path / "b")) != a  # another folder: other paths
    assert hashed(tiny_experiment(tmp_path / "a", seed=8)) != a  # another document
    assert hashed(tiny_experiment(tmp_path / "a")) == a  # back to the first
    assert hashed(path, opendc=False) != a  # another OpenDC switch
    workload = tmp_path / "a" / "workload.yaml"
    workload.write_text(workload.read_text().replace("num_requests: 60", "num_requests: 61"))
    assert hashed(path) != a  # another input file's bytes


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert rf.sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_experiment_copy_has_absolute_paths_and_runs_from_anywhere(tmp_path):
    exp = load_experiment(tiny_experiment(tmp_path / "exp"), opendc=False)
    out = tmp_path / "out"
    out.mkdir()
    rf.write_experiment_copy(out, exp)
    copy = json.loads((out / "experiment.json").read_text(encoding="utf-8"))
    assert copy["trace"] == str((tmp_path / "exp" / "workload.yaml").resolve())
    assert copy == rf.absolutized(exp) and exp.data["trace"] == "workload.yaml"  # the experiment is unchanged
    assert leftovers(out) == []
    again = load_experiment(out / "experiment.json", opendc=False)
    assert again.trace.path == (tmp_path / "exp" / "workload.yaml").resolve()


def test_prepare_out_dir_clears_an_earlier_run_and_refuses_other_folders(tmp_path):
    run = tmp_path / "run"
    (run / "simulation").mkdir(parents=True)
    (run / "report.json").write_text("{}")
    rf.mark_incomplete(run, "old\n")
    (run / "notes.txt").write_text("mine")
    rf.prepare_out_dir(run)
    # cleared, and marked INCOMPLETE first (a kill while clearing leaves no complete-looking folder)
    assert sorted(p.name for p in run.iterdir()) == ["INCOMPLETE", "notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(KavierInputError, match="holds no earlier kavier run"):
        rf.prepare_out_dir(other)
