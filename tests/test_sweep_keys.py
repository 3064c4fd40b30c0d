"""Sweep runs keyed by their configuration (issue 17 item 3), not their position in the sweep file.

A finished 2-configuration sweep is resumed with a value added (only the new configuration runs), its values
reordered (nothing runs), a value removed (its folder is kept and named, the comparison lacks it), a run
made incomplete (only it runs again) and a run folder replaced by another's (refused). Runs --no-opendc: the
keys and the resume logic do not depend on OpenDC (tests/test_sweep.py runs the same with it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kavier_opendc.experiments.run_folder import DONE, RUN_KEY_LENGTH, run_key
from kavier_opendc.experiments.sweep import load_sweep
from test_pipeline import tiny_experiment
from test_sweep import log_events

POLICY = "serving.prefix_cache.policy"


def write(inputs: Path, values: list[str], name: str) -> Path:
    p = inputs / name
    p.write_text(
        yaml.safe_dump({"name": "keyed", "base": "experiment.yaml", "axes": {"serving.replicas": [1], POLICY: values}})
    )
    return p


def sweep(sweep_file: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "sweep",
            str(sweep_file),
            "--out",
            str(out),
            "--jobs",
            "1",
            "--no-opendc",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def files(folder: Path) -> dict[str, int]:
    """Every file under a run folder with its mtime (ns)."""
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in sorted(folder.rglob("*")) if f.is_file()}


def ids(sweep_file: Path) -> dict[str, str]:
    """policy value -> run folder name, as the sweep file names them."""
    return {r.labels[POLICY]: r.id for r in load_sweep(sweep_file, opendc=False).runs}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """inputs/ and out/: the sweep over policy [none, block], finished."""
    tmp = tmp_path_factory.mktemp("keyed")
    inputs = tmp / "inputs"
    tiny_experiment(inputs)
    first = write(inputs, ["none", "block"], "first.yaml")
    out = tmp / "out"
    r = sweep(first, out)
    assert r.returncode == 0, r.stderr
    return inputs, out


@pytest.fixture
def resumed(finished, tmp_path):
    """A copy of the finished sweep's folder (files and mtimes), the inputs and the folder names."""
    inputs, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    names = ids(inputs / "first.yaml")
    return inputs, copy, names, {v: files(copy / "runs" / rid) for v, rid in names.items()}


def new_events(out: Path, n: int) -> tuple[list[str], list[str]]:
    ev = log_events(out)[n:]
    return sorted(e["id"] for e in ev if e["event"] == "done"), sorted(e["id"] for e in ev if e["event"] == "skip")


def test_run_key_is_the_canonical_configuration():
    a = {"name": "x", "model": "m", "serving": {"replicas": 2, "router": "rr"}, "gpu": "g"}
    b = {"gpu": "g", "serving": {"router": "rr", "replicas": 2}, "model": "m", "name": "another"}
    assert run_key(a, None) == run_key(b, None) and len(run_key(a, None)) == RUN_KEY_LENGTH
    # a fixed value, the same on every Python version and machine: the first 12 hex digits of sha256sum of
    # {"experiment":{"gpu":"g","model":"m","serving":{"replicas":2,"router":"rr"}},"opendc":null}
    assert run_key(a, None) == "a27c56345a4a"
    assert run_key(a, False) != run_key(a, None)
    assert run_key({**a, "serving": {"replicas": 3, "router": "rr"}}, None) != run_key(a, None)


def test_folder_names_do_not_depend_on_position(finished, tmp_path):
    inputs, _ = finished
    one = ids(write(inputs, ["none", "block"], "a.yaml"))
    two = ids(write(inputs, ["prefill", "block", "none"], "b.yaml"))
    assert one == {k: two[k] for k in one}
    assert all(rid.startswith(f"policy-{v}_replicas-1-") for v, rid in two.items())
    # reordered axes: the same folders
    axes = [
        {"name": POLICY, "path": POLICY, "values": ["none", "block"]},
        {"name": "serving.replicas", "path": "serving.replicas", "values": [1, 2]},
    ]
    runs = []
    for i, order in enumerate((axes, axes[::-1])):
        p = inputs / f"axes{i}.yaml"
        p.write_text(yaml.safe_dump({"name": "keyed", "base": "experiment.yaml", "axes": order}))
        runs.append({r.id for r in load_sweep(p, opendc=False).runs})
    assert runs[0] == runs[1] and len(runs[0]) == 4 and set(one.values()) <= runs[0]


def test_added_value_runs_only_the_new_configuration(resumed):
    inputs, out, names, before = resumed
    added = write(inputs, ["prefill", "none", "block"], "added.yaml")
    n = len(log_events(out))
    r = sweep(added, out)
    assert r.returncode == 0, r.stderr
    done, skipped = new_events(out, n)
    new = ids(added)
    assert done == [new["prefill"]] and skipped == sorted(names.values())
    assert "1 run(s) done now, 2 skipped" in r.stdout
    # the finished runs keep their folders, untouched
    assert {v: new[v] for v in names} == names
    assert {v: files(out / "runs" / rid) for v, rid in names.items()} == before
    t = pd.read_csv(out / "comparison.csv")
    assert list(t["run"]) == [new["prefill"], new["none"], new["block"]] and (t["status"] == "done").all()
    assert list(t[POLICY]) == ["prefill", "none", "block"]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(x["id"], x["folder"]) for x in runs] == [(i, f"runs/{i}") for i in t["run"]]
    assert json.loads((out / "runs" / new["prefill"] / DONE).read_text())["key"] == new["prefill"][-RUN_KEY_LENGTH:]


def test_reordered_values_run_nothing(resumed):
    inputs, out, names, before = resumed
    n = len(log_events(out))
    r = sweep(write(inputs, ["block", "none"], "reordered.yaml"), out)
    assert r.returncode == 0, r.stderr
    done, skipped = new_events(out, n)
    assert done == [] and skipped == sorted(names.values())
    assert {v: files(out / "runs" / rid) for v, rid in names.items()} == before
    assert list(pd.read_csv(out / "comparison.csv")["run"]) == [names["block"], names["none"]]


def test_removed_value_keeps_its_folder_and_says_so(resumed):
    inputs, out, names, before = resumed
    n = len(log_events(out))
    r = sweep(write(inputs, ["block"], "removed.yaml"), out)
    assert r.returncode == 0, r.stderr
    done, skipped = new_events(out, n)
    assert done == [] and skipped == [names["block"]]
    t = pd.read_csv(out / "comparison.csv")
    assert list(t["run"]) == [names["block"]] and "none" not in set(t[POLICY])
    # never deleted: the folder is as it was, and the note names it
    assert files(out / "runs" / names["none"]) == before["none"]
    assert f"note: 1 run folder(s) in {out / 'runs'} are not in this sweep and were kept" in r.stderr
    assert names["none"] in r.stderr and "1 run folder(s)" in r.stdout and "were kept" in r.stdout
    assert json.loads((out / "sweep.json").read_text())["stale_runs"] == [names["none"]]
    assert names["none"] in (out / "comparison.md").read_text()


def test_incomplete_run_is_rerun(resumed):
    inputs, out, names, before = resumed
    victim = out / "runs" / names["none"]
    (victim / DONE).unlink()
    (victim / "INCOMPLETE").write_text("simulated crash\n")
    n = len(log_events(out))
    r = sweep(write(inputs, ["block", "none"], "again.yaml"), out)
    assert r.returncode == 0, r.stderr
    done, skipped = new_events(out, n)
    assert done == [names["none"]] and skipped == [names["block"]]
    assert files(out / "runs" / names["block"]) == before["block"]
    assert (victim / DONE).is_file() and not (victim / "INCOMPLETE").exists()
    assert (pd.read_csv(out / "comparison.csv")["status"] == "done").all()


def test_folder_holding_another_configuration_is_refused(resumed):
    inputs, out, names, before = resumed
    # someone copied block's finished run over none's folder: its DONE names block's key
    shutil.rmtree(out / "runs" / names["none"])
    shutil.copytree(out / "runs" / names["block"], out / "runs" / names["none"])
    n = len(log_events(out))
    r = sweep(inputs / "first.yaml", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "hold another configuration than their name says" in r.stderr and names["none"] in r.stderr
    assert "move or delete these folders" in r.stderr
    assert len(log_events(out)) == n, "nothing ran"
    assert files(out / "runs" / names["block"]) == before["block"]


def test_same_configuration_twice_is_refused(finished):
    inputs, _ = finished
    p = inputs / "twice.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "base": "experiment.yaml",
                "axes": [
                    {
                        "name": "r",
                        "values": [
                            {"label": "one", "set": {"serving.replicas": 1}},
                            {"label": "uno", "set": {"serving.replicas": 1}},
                        ],
                    }
                ],
            }
        )
    )
    with pytest.raises(Exception, match="the same experiment as configuration 0"):
        load_sweep(p, opendc=False)
