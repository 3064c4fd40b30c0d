"""`kavier run` / `kavier demo` end to end.

The tests marked ``opendc`` run the real OpenDC through the bridge and are
skipped only when the bridge jar (with OpenDC inside, not the lite build) is
absent. The others use :class:`FakeOpenDC`, a stand-in for the bridge that
writes OpenDC-shaped output, to test the pipeline's own plumbing (staging,
markers, reports, plots) on machines without a JVM.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import needs_opendc
from kavier_opendc.base.errors import KavierRuntimeError
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.experiments.run_folder import INCOMPLETE, sha256_file

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "kavier_opendc" / "data"


class FakeOpenDC:
    """Stands in for OpenDCBridge in plumbing tests: plays the exported
    workload back on the topology with the linear power models in 1-second
    intervals and writes host.parquet / powerSource.parquet with OpenDC's
    column names. Not a model of OpenDC; the real one is tested below."""

    alive = True

    def info(self):
        return {"opendc_version": "fake", "bridge_version": "fake", "java_version": None}

    def close(self):
        pass

    def run(self, experiment_json, progress=None, **kw):
        exp = json.loads(Path(experiment_json).read_text())
        base = Path(experiment_json).resolve().parent  # relative paths: against the experiment's folder

        def at(p, folder=base):
            return Path(p) if Path(p).is_absolute() else folder / p

        topo_path = at(exp["topologies"][0]["pathToFile"])
        topo = json.loads(topo_path.read_text())
        wdir = at(exp["workloads"][0]["pathToFile"])
        tasks = pd.read_parquet(wdir / "tasks.parquet")
        frags = pd.read_parquet(wdir / "fragments.parquet")
        start_ms = int(pd.Timestamp(exp["workloads"][0]["submissionTime"]).value // 10**6)
        cl = topo["clusters"][0]
        hosts = [(f"{h['name']}-{c}", h) for h in cl["hosts"] for c in range(h["count"])]
        dur_ms = int(tasks["duration"].max())
        n = math.ceil(dur_ms / 1000)
        ts = np.minimum(np.arange(1, n + 1) * 1000, dur_ms)
        edges = np.concatenate([[0], ts])
        free = {name: h.get("gpu", {}).get("count", 0) for name, h in hosts}
        util = {name: np.zeros((free[name], n)) for name, _ in hosts}
        for _, t in tasks.iterrows():
            g0 = hosts[0][1]["gpu"]
            g = int(round(t["gpu_capacity"] / (g0["coreCount"] * float(g0["coreSpeed"].split()[0]))))
            for name, h in hosts:
                if free[name] >= g:
                    slot = h["gpu"]["count"] - free[name]
                    free[name] -= g
                    break
            f = frags[frags["id"] == t["id"]]
            d = f["duration"].to_numpy()
            cum = np.concatenate([[0.0], np.cumsum(f["gpu_usage"].to_numpy() / t["gpu_capacity"] * d)])
            per = np.diff(np.interp(edges, np.concatenate([[0], np.cumsum(d)]), cum)) / np.diff(edges)
            for k in range(g):
                util[name][slot + k] = per
        dt = np.diff(edges) / 1000.0
        rows, tot = [], np.zeros(n)
        for name, h in hosts:
            gp, cp = h.get("gpuPowerModel"), h["cpuPowerModel"]
            w = lambda x: float(str(x).split()[0])  # noqa: E731
            gpu_p = w(gp["idlePower"]) + (w(gp["maxPower"]) - w(gp["idlePower"])) * util[name]
            p = w(cp["idlePower"]) + gpu_p.sum(0)
            tot += p
            d = {
                "timestamp": ts,
                "timestamp_absolute": ts + start_ms,
                "host_name": name,
                "cluster_name": cl["name"],
                "power_draw": p,
                "energy_usage": p * dt,
                "cpu_utilization": np.zeros(n),
            }
            for i in range(gpu_p.shape[0]):
                d[f"gpu_power_draw_{i}"] = gpu_p[i]
                d[f"gpu_utilization_{i}"] = util[name][i]
            rows.append(pd.DataFrame(d))
        e = tot * dt
        ci = np.full(n, 300.0)
        ctp = cl.get("powerSource", {}).get("carbonTracePath")
        if ctp:
            from kavier_opendc.opendc.carbon import intensity_at, read_carbon_trace

            ci = intensity_at(read_carbon_trace(at(ctp, topo_path.parent)), ts - 1000 + start_ms)
        out = at(exp["outputFolder"]) / exp["name"]
        raw = out / "raw-output" / "0" / "seed=0"
        raw.mkdir(parents=True, exist_ok=True)
        pd.concat(rows).to_parquet(raw / "host.parquet", index=False)
        pd.DataFrame(
            {
                "timestamp": ts,
                "timestamp_absolute": ts + start_ms,
                "power_draw": tot,
                "energy_usage": e,
                "carbon_intensity": ci,
                "carbon_emission": ci * e / 3.6e6,
            }
        ).to_parquet(raw / "powerSource.parquet", index=False)
        if progress:
            progress(1.0)
        return out


def tiny_experiment(tmp: Path, **over) -> Path:
    """A small experiment file (60 chat requests, 2 replicas on one 2-GPU host)."""
    doc = {
        "name": "tiny",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "seed": 7,
        "trace": "workload.yaml",
        "serving": {"replicas": 2, "router": "least-kv", "prefix_cache": "block"},
        "datacenter": {
            "start": "2022-01-01T12:00:00",
            "export_interval_s": 1,
            "hosts": [
                {
                    "name": "node",
                    "gpus_per_host": 2,
                    "cpu": {"cores": 16, "mhz": 2000},
                    "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
                    "memory_gib": 256,
                }
            ],
        },
        "carbon": {"synthetic": {"mean": 250, "amplitude": 100, "trough_hour": 12}},
        "prices": {"gpu_hour": {"A100-80GB": 2.0}, "electricity_per_kwh": 0.3, "currency": "EUR"},
        "slo": {"ttft_s": 0.15, "tpot_s": 0.025},
    }
    doc.update(over)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "workload.yaml").write_text(
        yaml.safe_dump(
            {
                "num_requests": 60,
                "rate": 3.0,
                "arrival": "poisson",
                "seed": 1,
                "shared_prefix_tokens": 64,
                "input": {"dist": "lognormal", "median": 200, "sigma": 0.6, "min": 16, "max": 2000},
                "output": {"dist": "lognormal", "median": 60, "sigma": 0.6, "min": 1, "max": 400},
                "sessions": {
                    "turns": {"dist": "uniform", "low": 1, "high": 3},
                    "think_time_s": 5.0,
                    "accumulate_context": True,
                },
            }
        )
    )
    p = tmp / "experiment.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake")
    exp = load_experiment(tiny_experiment(tmp))
    res = run_experiment(exp, tmp / "out", bridge=FakeOpenDC(), quiet=True, command="test")
    return tmp / "out", res


def check_complete_run(out: Path, opendc: bool) -> dict:
    assert not (out / INCOMPLETE).exists()
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"performance", "sustainability", "efficiency", "provenance"}
    for f in ("requests.parquet", "summary.json", "timeline.parquet"):
        assert (out / "simulation" / f).is_file()
    assert rep["performance"] == json.loads((out / "simulation" / "summary.json").read_text())
    md = (out / "report.md").read_text()
    for section in ("## Performance", "## Sustainability", "## Efficiency", "## Definitions", "## Provenance"):
        assert section in md
    for p in rep["plots"]:
        data = (out / p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, p
    prov = rep["provenance"]
    for f in prov["inputs"]:
        assert sha256_file(Path(f["path"])) == f["sha256"]
    assert prov["kavier_opendc_version"] and prov["python"] and prov["seed"] is not None
    if opendc:
        for f in (
            "workload/tasks.parquet",
            "workload/fragments.parquet",
            "topology.json",
            "experiment.json",
            "sustainability.json",
        ):
            assert (out / "opendc" / f).is_file(), f
        s = rep["sustainability"]
        assert s["energy_wh"] > 0 and s["avg_power_w"] > 0 and s["peak_power_w"] >= s["avg_power_w"]
        assert s["carbon_g"] > 0 and s["per_host"] and s["per_gpu"]
        assert rep["efficiency"]["wh_per_mtoken"] > 0
        assert {Path(p).name for p in rep["plots"]} == {
            "latency_cdf.png",
            "gpu_utilization.png",
            "power.png",
            "carbon.png",
            "energy_breakdown.png",
            "cache_hit_ratio.png",
        }
    else:
        assert rep["sustainability"] is None and not (out / "opendc").exists()
        assert rep["efficiency"]["wh_per_mtoken"] is None and rep["efficiency"]["cost_per_mtoken"] > 0
    return rep


def test_pipeline_with_stand_in_bridge(fake_run):
    out, res = fake_run
    rep = check_complete_run(out, opendc=True)
    assert rep["provenance"]["opendc_version"] == "fake"
    roles = {f["role"] for f in rep["provenance"]["inputs"]}
    assert {"experiment", "trace", "carbon (generated)"} <= roles
    assert (out / "opendc" / "carbon" / "synthetic_carbon.parquet").is_file()
    topo = json.loads((out / "opendc" / "topology.json").read_text())
    assert topo["clusters"][0]["powerSource"]["carbonTracePath"] == "carbon/synthetic_carbon.parquet"
    # the experiment copy in the output runs from anywhere (absolute paths)
    copy = json.loads((out / "experiment.json").read_text())
    assert Path(copy["trace"]).is_absolute()
    assert load_experiment(out / "experiment.json").name == "tiny"


def test_failed_run_is_marked_incomplete_and_rerun_replaces_it(tmp_path):
    class Broken(FakeOpenDC):
        def run(self, *a, **k):
            raise KavierRuntimeError("OpenDC exploded")

    exp = load_experiment(tiny_experiment(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(KavierRuntimeError):
        run_experiment(exp, out, bridge=Broken(), quiet=True)
    marker = (out / INCOMPLETE).read_text()
    assert "FAILED during stage 'opendc'" in marker and "OpenDC exploded" in marker
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    run_experiment(exp, out, bridge=FakeOpenDC(), quiet=True)
    check_complete_run(out, opendc=True)


def test_foreign_non_empty_folder_is_refused(tmp_path):
    exp = load_experiment(tiny_experiment(tmp_path))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    from kavier_opendc.base.errors import KavierInputError

    with pytest.raises(KavierInputError, match="not empty"):
        run_experiment(exp, out, opendc=False, quiet=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_cli_run_no_opendc(tmp_path):
    p = tiny_experiment(tmp_path)
    r = cli("run", p, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 0, r.stderr
    assert "[1/3] trace" in r.stderr and "[2/3] simulate" in r.stderr and "[3/3] report" in r.stderr
    assert "no OpenDC" in r.stdout
    rep = check_complete_run(tmp_path / "out", opendc=False)
    assert rep["provenance"]["command"].startswith("kavier run")


def test_cli_run_without_opendc_jar_fails_before_any_work(tmp_path, monkeypatch):
    p = tiny_experiment(tmp_path)
    env_jar = tmp_path / "no.jar"
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "run", str(p), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "KAVIER_BRIDGE_JAR": str(env_jar)},
    )
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "--no-opendc" in r.stderr
    assert not (tmp_path / "o").exists()


def test_demo_no_opendc_and_init(tmp_path):
    r = cli("demo", "--out", tmp_path / "demo", "--no-opendc", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = check_complete_run(tmp_path / "demo", opendc=False)
    assert rep["experiment"]["name"] == "demo-chat-llama3-8b-a100"
    assert rep["performance"]["num_requests"] == 3000
    # the demo leaves the batch limits to vLLM v1: a server on A100s, and report.md says which were used
    assert (
        "max_num_seqs 256, max_batched_tokens 2048 (vLLM v1 server defaults)"
        in (tmp_path / "demo" / "report.md").read_text()
    )
    r = cli("demo", "--init", tmp_path / "exp")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "exp").iterdir()} >= {"experiment.yaml", "demo_workload.yaml"}
    r = cli("validate", tmp_path / "exp" / "experiment.yaml")
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------- real OpenDC


@needs_opendc
def test_cli_run_with_real_opendc(tmp_path):
    p = tiny_experiment(tmp_path)
    r = cli("run", p, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rep = check_complete_run(tmp_path / "out", opendc=True)
    assert rep["provenance"]["opendc_version"]
    raw = list((tmp_path / "out" / "opendc" / "output").rglob("host.parquet"))
    assert raw, "OpenDC's raw output is kept under opendc/output/"
    s = rep["sustainability"]
    # GPU energy can be no less than the idle power of the 2 GPUs over the run
    assert s["gpu_energy_wh"] * 3600 >= 2 * 60.0 * s["duration_s"] * 0.99
    assert s["duration_s"] == pytest.approx(rep["performance"]["makespan_s"], abs=1.01)


@needs_opendc
def test_demo_end_to_end_with_real_opendc(tmp_path):
    t0 = time.perf_counter()
    r = cli("demo", "--out", tmp_path / "demo")
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    rep = check_complete_run(tmp_path / "demo", opendc=True)
    assert wall < 120, f"demo took {wall:.1f} s"
    assert rep["performance"]["num_finished"] == 3000
    assert len(rep["sustainability"]["per_host"]) == 2


@needs_opendc
def test_jvm_killed_mid_run_keeps_the_performance_results(tmp_path):
    """The JVM dies (SIGKILL) while OpenDC runs: a clear error, the run marked INCOMPLETE, and the
    simulation's performance results kept complete."""
    import os
    import signal

    from kavier_opendc.opendc.bridge import OpenDCBridge, OpenDCBridgeError

    class KilledMidRun(OpenDCBridge):
        def run(self, experiment_json, progress=None, **kw):
            def kill_when_started(fraction: float) -> None:
                if fraction == 0.0:
                    os.kill(self.pid, signal.SIGKILL)
                if progress is not None:
                    progress(fraction)

            return super().run(experiment_json, progress=kill_when_started, **kw)

    exp = load_experiment(tiny_experiment(tmp_path))
    out = tmp_path / "out"
    with KilledMidRun() as bridge:
        with pytest.raises(OpenDCBridgeError) as info:
            run_experiment(exp, out, bridge=bridge, quiet=True)
    message = str(info.value)
    assert info.value.kind == "JVM_DIED" and "SIGKILL" in message
    assert "performance results" in message and str(out / "simulation") in message
    marker = (out / INCOMPLETE).read_text()
    assert "FAILED during stage 'opendc'" in marker and "performance results" in marker
    assert not (out / "report.json").exists()
    requests = pd.read_parquet(out / "simulation" / "requests.parquet")
    summary = json.loads((out / "simulation" / "summary.json").read_text())
    assert len(requests) == summary["num_requests"] == 60
    assert pd.read_parquet(out / "simulation" / "timeline.parquet")["end_s"].max() > 0


def test_a_curved_gpu_power_model_warns_and_the_report_says_so(tmp_path, capsys):
    """An approximation that changes a number says so (issue 17 item 9): the default (adaptive) export
    under a sqrt GPU curve prints the change and report.md names it."""
    p = tiny_experiment(tmp_path)
    doc = yaml.safe_load(p.read_text())
    doc["datacenter"]["hosts"][0]["gpu_power_model"] = {"model": "sqrt", "idle_w": 90, "max_w": 400}
    p.write_text(yaml.safe_dump(doc))
    run_experiment(load_experiment(p), tmp_path / "out", bridge=FakeOpenDC(), quiet=True, plots=False)
    err = capsys.readouterr().err
    assert "kavier: warning: the GPU power model is not linear (sqrt)" in err and "segments" in err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    curve = rep["sustainability"]["export"]["power_curve"]
    assert curve["models"] == ["sqrt"] and curve["energy_change"] != 0.0
    assert "Approximation: the GPU power model is not linear" in (tmp_path / "out" / "report.md").read_text()
