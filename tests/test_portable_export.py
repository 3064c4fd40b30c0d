"""An exported OpenDC folder is portable (issue 17, item 6): every path in its files is relative to it and
its carbon trace lies inside it, so a copy runs with `kavier opendc` (or OpenDC's own ExperimentCli started in
the folder) on its own files, with the original's energy, after the original is gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import needs_opendc
from kavier_opendc.opendc import carbon as C
from kavier_opendc.opendc import jvm
from kavier_opendc.opendc.inputs import write_opendc_inputs
from kavier_opendc.opendc.results import prepare_experiment, read_opendc_output, run_opendc_dir
from test_opendc_export import dc, write_sim
from test_pipeline import FakeOpenDC, tiny_experiment


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def _names(folder: Path, text: str) -> list[str]:
    """The files under ``folder`` whose bytes hold ``text``."""
    needle = text.encode()
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def _export(tmp_path: Path) -> Path:
    """An exported folder whose datacenter's carbon trace lies outside it."""
    C.write_synthetic_carbon_trace(tmp_path / "traces" / "grid.parquet", days=2)
    d = dc(gpus_per_host=2, start="2022-01-01T12:00:00", export_interval_s=1)
    d["power_source"] = {"name": "grid", "carbon_trace": str(tmp_path / "traces" / "grid.parquet")}
    sim = write_sim(tmp_path / "sim", {0: [(0, 20, 0.6)], 1: [(0, 5, 0.2), (5, 30, 0.9)]})
    write_opendc_inputs(sim, d, tmp_path / "odc")
    return tmp_path / "odc"


def test_exported_json_holds_no_absolute_path(tmp_path):
    odc = _export(tmp_path)
    exp = json.loads((odc / "experiment.json").read_text())
    assert (exp["outputFolder"], exp["topologies"][0]["pathToFile"], exp["workloads"][0]["pathToFile"]) == (
        "output",
        "topology.json",
        "workload",
    )
    ctp = json.loads((odc / "topology.json").read_text())["clusters"][0]["powerSource"]["carbonTracePath"]
    assert ctp == "carbon/grid.parquet" and (odc / ctp).is_file()  # copied into the folder, named relatively
    for name in ("experiment.json", "topology.json", "export.json"):
        doc = json.loads((odc / name).read_text())
        assert not [s for s in _strings(doc) if s.startswith("/")], name
    assert not _names(odc, str(tmp_path))  # no file names where the folder (or the trace) was written


def test_copied_folder_runs_on_its_own_files(tmp_path):
    odc = _export(tmp_path)
    first = run_opendc_dir(odc, bridge=FakeOpenDC())
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(odc, copy)
    odc.rename(tmp_path / "gone")
    (tmp_path / "traces").rename(tmp_path / "traces-gone")
    run_path, exp, topo = prepare_experiment(copy)
    assert run_path.parent == copy.resolve() / "output" / "inputs"
    assert exp["workloads"][0]["pathToFile"] == str(copy.resolve() / "workload")
    # the resolved copies OpenDC runs (under output/inputs/) name the copy's own files
    assert topo.parent == run_path.parent
    ctp = json.loads(topo.read_text())["clusters"][0]["powerSource"]["carbonTracePath"]
    assert ctp == str(copy.resolve() / "carbon" / "grid.parquet")
    again = run_opendc_dir(copy, bridge=FakeOpenDC())
    assert again["energy_wh"] == first["energy_wh"] and again["carbon_g"] == first["carbon_g"]
    assert json.loads((copy / "sustainability.json").read_text())["raw_output"].startswith("output/")
    assert not _names(copy, str(odc.resolve())) and not _names(copy, str(tmp_path / "traces"))


@needs_opendc
def test_copied_run_folder_reproduces_energy_in_real_opendc(tmp_path):
    exp_dir = tmp_path / "exp"
    C.write_synthetic_carbon_trace(exp_dir / "traces" / "grid.parquet", days=2)
    exp = tiny_experiment(exp_dir, carbon={"trace": "traces/grid.parquet"})
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "run", str(exp), "--out", str(run), "--no-plots", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    odc = (run / "opendc").resolve()
    assert (odc / "carbon" / "grid.parquet").is_file()
    first = json.loads((odc / "sustainability.json").read_text())
    copy = tmp_path / "moved" / "odc"
    shutil.copytree(odc, copy)
    run.rename(tmp_path / "run-gone")  # neither the original folder nor the trace is there
    (exp_dir / "traces").rename(exp_dir / "traces-gone")
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "opendc", str(copy), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    again = json.loads((copy / "sustainability.json").read_text())
    assert again["energy_wh"] == first["energy_wh"] and again["carbon_g"] == first["carbon_g"]
    assert again["energy_wh"] > 0 and again["carbon_g"] > 0
    assert not _names(copy, str(odc)), "a file of the copy names the original folder"
    assert not _names(copy, str(exp_dir / "traces"))


# ------------------------------------------------ OpenDC's own ExperimentCli --

EXPERIMENT_CLI = "org.opendc.experiments.base.runner.ExperimentCli"
BRIDGE_DIR = Path(__file__).resolve().parent.parent / "opendc-bridge"
CLASSPATH_FILE = BRIDGE_DIR / "target" / "opendc-classpath.txt"


def _cached_classpath() -> str | None:
    if not CLASSPATH_FILE.is_file() or CLASSPATH_FILE.stat().st_mtime < (BRIDGE_DIR / "pom.xml").stat().st_mtime:
        return None
    cp = CLASSPATH_FILE.read_text().strip()
    entries = cp.split(os.pathsep)
    ok = cp and all(Path(e).is_file() for e in entries) and any("opendc-experiments-base" in e for e in entries)
    return cp if ok else None


def opendc_classpath() -> str:
    """OpenDC's runtime classpath as the bridge's Maven project resolves it (its dependencies, not the bridge's
    own classes): ``mvn dependency:build-classpath``, offline first, then online as the bridge build (and CI)
    does, with ``$KAVIER_OPENDC_REPO`` as the extra repository. Cached in ``opendc-bridge/target/``."""
    cp = _cached_classpath()
    if cp:
        return cp
    mvn = shutil.which("mvn")
    assert mvn, "Maven ('mvn') is needed to build OpenDC's classpath from the bridge's dependencies"
    java_home = Path(os.path.realpath(jvm.find_java(require_jdk=True))).parent.parent
    env = dict(os.environ, JAVA_HOME=str(java_home))
    CLASSPATH_FILE.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "dependency:build-classpath",
        "-Dmdep.includeScope=runtime",
        f"-Dmdep.outputFile={CLASSPATH_FILE}",
    ]
    repo = os.environ.get(jvm.OPENDC_REPO_ENV)
    if repo:
        cmd.append(f"-Dopendc.repo={jvm.opendc_repo_url(repo)}")
    for extra in (["-o"], []):
        r = subprocess.run(cmd + extra, cwd=BRIDGE_DIR, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode == 0 and _cached_classpath():
            return CLASSPATH_FILE.read_text().strip()
    raise AssertionError(f"{' '.join(cmd)} failed in {BRIDGE_DIR}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def _power_source_wh(output: Path) -> float:
    """OpenDC's own powerSource.parquet energy (J per interval, summed) in Wh."""
    files = list(output.rglob("powerSource.parquet"))
    assert len(files) == 1, files
    return (
        float(pq.read_table(files[0], columns=["energy_usage"]).column(0).to_numpy().astype("float64").sum()) / 3600.0
    )


@needs_opendc
def test_copied_export_gives_the_same_energy_in_kavier_and_in_opendcs_experiment_cli(tmp_path):
    cp = opendc_classpath()
    C.write_synthetic_carbon_trace(tmp_path / "traces" / "grid.parquet", days=2)
    d = dc(gpus_per_host=2, start="2022-01-01T12:00:00", export_interval_s=1)
    d["power_source"] = {"name": "grid", "carbon_trace": str(tmp_path / "traces" / "grid.parquet")}
    (tmp_path / "dc.json").write_text(json.dumps(d))
    sim = write_sim(tmp_path / "sim", {0: [(0, 20, 0.6)], 1: [(0, 5, 0.2), (5, 30, 0.9)]})
    odc = tmp_path / "odc"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "export-opendc",
            str(sim),
            "--datacenter",
            str(tmp_path / "dc.json"),
            "--out",
            str(odc),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    ours, theirs = tmp_path / "moved" / "ours", tmp_path / "moved" / "theirs"
    shutil.copytree(odc, ours)
    shutil.copytree(odc, theirs)
    odc.rename(tmp_path / "odc-gone")  # neither the original folder nor the trace is there
    (tmp_path / "traces").rename(tmp_path / "traces-gone")
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "opendc", str(ours), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    # OpenDC's own runner, started in the copy: the folder's relative paths resolve against the working directory
    java = jvm.find_java()
    r = subprocess.run(
        [java, "-cp", cp, EXPERIMENT_CLI, "--experiment-path", "experiment.json"],
        cwd=theirs,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sus = json.loads((ours / "sustainability.json").read_text())
    kavier_wh, cli_wh = _power_source_wh(ours / "output"), _power_source_wh(theirs / "output")
    assert kavier_wh > 0
    assert abs(kavier_wh - cli_wh) <= 1e-9 * cli_wh, (kavier_wh, cli_wh)
    assert sus["grid_energy_wh"] == pytest.approx(cli_wh, rel=1e-9)
    cli = read_opendc_output(theirs / "output", topology=theirs / "topology.json")
    assert sus["energy_wh"] == pytest.approx(cli["energy_wh"], rel=1e-9)
    assert sus["carbon_g"] == pytest.approx(cli["carbon_g"], rel=1e-9) and cli["carbon_g"] > 0
    print(f"energy: kavier opendc {kavier_wh!r} Wh, ExperimentCli {cli_wh!r} Wh")
