"""Real OpenDC (through the Py4J bridge), no mocks: hand-computed energy and
carbon, and the exported workload loading and running in OpenDC.

Skipped only when the bridge jar (opendc-bridge/target/kavier-opendc-bridge.jar)
has not been built.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, needs_opendc
from kavier_opendc.opendc import carbon as C
from kavier_opendc.opendc.inputs import write_opendc_inputs
from kavier_opendc.opendc.results import run_opendc_dir

NL = SHARED_DATA / "carbon" / "NL_2022.parquet"

pytestmark = needs_opendc

I_GPU, M_GPU = 60.0, 400.0  # A100-80GB catalogue idle/max W
I_CPU, M_CPU = 100.0, 300.0  # CPU power model of the test host
CORES, MHZ = 16, 2000.0


@pytest.fixture(scope="module")
def bridge():
    from kavier_opendc.opendc.bridge import OpenDCBridge

    with OpenDCBridge() as b:
        yield b


def write_sim(
    sim_dir: Path, segments: dict[int, list[tuple[float, float, float]]], *, tp=1, makespan=None, gpu="A100-80GB"
) -> Path:
    sim_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "replica": r,
            "start_s": s,
            "end_s": e,
            "gpu_utilization": u,
            "batch_size": 1.0,
            "kv_utilization": 0.0,
            "prefill_tokens": 0,
            "decode_tokens": 0,
            "gpu": gpu,
            "tp": tp,
        }
        for r, segs in segments.items()
        for s, e, u in segs
    ]
    df = pd.DataFrame(rows).astype({"replica": "int32", "tp": "int32"})
    df.to_parquet(sim_dir / "timeline.parquet", index=False)
    ms = makespan if makespan is not None else float(df["end_s"].max())
    (sim_dir / "summary.json").write_text(
        json.dumps(
            {"makespan_s": ms, "config": {"model": "Llama-3-8B", "gpu": gpu, "replicas": len(segments), "tp": tp}}
        )
    )
    return sim_dir


def datacenter(gpus_per_host=1, count=1, **extra) -> dict:
    d = {
        "name": "dc",
        "export_interval_s": 1,
        "hosts": [
            {
                "name": "node",
                "count": count,
                "gpus_per_host": gpus_per_host,
                "gpu": "A100-80GB",
                "cpu": {"cores": CORES, "mhz": MHZ},
                "cpu_power_model": {"model": "linear", "idle_w": I_CPU, "max_w": M_CPU},
                "memory_gib": 512,
            }
        ],
    }
    d.update(extra)
    return d


def gpu_power(u):
    return I_GPU + (M_GPU - I_GPU) * u


def test_constant_utilisation_energy_by_hand(tmp_path, bridge):
    u, T = 0.6, 600.0
    sim = write_sim(tmp_path / "sim", {0: [(0.0, T, u)]})
    write_opendc_inputs(sim, datacenter(), tmp_path / "odc", cpu_load_cores=0.0)
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    gpu_j = gpu_power(u) * T
    cpu_j = I_CPU * T  # host CPU idle all the time
    assert r["duration_s"] == pytest.approx(T, rel=1e-3)
    assert r["energy_wh"] * 3600 == pytest.approx(gpu_j + cpu_j, rel=0.01)
    assert r["per_gpu"][0]["energy_wh"] * 3600 == pytest.approx(gpu_j, rel=0.01)
    assert r["per_host"][0]["cpu_energy_wh"] * 3600 == pytest.approx(cpu_j, rel=0.01)
    assert r["avg_power_w"] == pytest.approx(gpu_power(u) + I_CPU, rel=0.01)
    assert r["peak_power_w"] == pytest.approx(gpu_power(u) + I_CPU, rel=0.01)
    assert r["idle_energy_wh"] * 3600 == pytest.approx((I_GPU + I_CPU) * T, rel=0.01)
    sus = json.loads((tmp_path / "odc" / "sustainability.json").read_text())
    for key in ("energy_wh", "avg_power_w", "peak_power_w", "carbon_g", "duration_s", "per_host", "per_gpu", "export"):
        assert key in sus
    assert sus["energy_wh"] == pytest.approx(r["energy_wh"])
    assert sus["export"]["fragments"] == 1
    assert not (tmp_path / "odc" / "output" / "INCOMPLETE").exists()
    assert list((tmp_path / "odc" / "output").rglob("host.parquet"))


def test_two_level_timeline_with_cpu_load(tmp_path, bridge):
    hi, lo, T1, T2 = 0.9, 0.2, 300.0, 300.0
    sim = write_sim(tmp_path / "sim", {0: [(0.0, T1, hi), (T1, T1 + T2, lo)]})
    write_opendc_inputs(sim, datacenter(), tmp_path / "odc", cpu_load_cores=1.0)
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    cpu_w = I_CPU + (M_CPU - I_CPU) * (1.0 * MHZ) / (CORES * MHZ)
    gpu_j = gpu_power(hi) * T1 + gpu_power(lo) * T2
    assert r["energy_wh"] * 3600 == pytest.approx(gpu_j + cpu_w * (T1 + T2), rel=0.01)
    assert r["per_gpu"][0]["energy_wh"] * 3600 == pytest.approx(gpu_j, rel=0.01)
    assert r["per_host"][0]["cpu_energy_wh"] * 3600 == pytest.approx(cpu_w * (T1 + T2), rel=0.01)
    p = r["power"]
    first = p[(p["timestamp_s"] > 5) & (p["timestamp_s"] < T1 - 5)]["avg_power_w"]
    second = p[(p["timestamp_s"] > T1 + 5) & (p["timestamp_s"] < T1 + T2 - 5)]["avg_power_w"]
    assert first.to_numpy() == pytest.approx(gpu_power(hi) + cpu_w, rel=0.005)
    assert second.to_numpy() == pytest.approx(gpu_power(lo) + cpu_w, rel=0.005)
    assert r["peak_power_w"] == pytest.approx(gpu_power(hi) + cpu_w, rel=0.01)


@pytest.mark.skipif(not NL.is_file(), reason="real NL 2022 carbon trace not present")
def test_carbon_with_real_nl_trace(tmp_path, bridge):
    u, T = 0.5, 3000.0  # 50 min from 11:50 crosses 4 trace rows
    start = "2022-03-01T11:50:00"
    sim = write_sim(tmp_path / "sim", {0: [(0.0, T, u)]})
    write_opendc_inputs(
        sim, datacenter(power_source={"carbon_trace": str(NL)}, start=start), tmp_path / "odc", cpu_load_cores=0.0
    )
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    P = gpu_power(u) + I_CPU
    # by hand: the trace's 15-min values over [start, start + T]
    trace = C.read_carbon_trace(NL)
    t0 = pd.Timestamp(start)
    edges = (
        [t0] + [t for t in trace["timestamp"] if t0 < t < t0 + pd.Timedelta(seconds=T)] + [t0 + pd.Timedelta(seconds=T)]
    )
    expected = 0.0
    for a, b in zip(edges[:-1], edges[1:], strict=False):
        ci = C.intensity_at(trace, np.array([a.value // 1_000_000]))[0]
        expected += P * (b - a).total_seconds() * ci / 3.6e6
    assert len(edges) >= 5
    assert r["carbon_g"] == pytest.approx(expected, rel=0.01)
    # and from OpenDC's own per-interval energy x the trace's intensity
    p = r["power"]
    start_ms = int(t0.value // 1_000_000)
    ci = C.intensity_at(trace, start_ms + ((p["timestamp_s"] - p["interval_s"]) * 1000).astype(np.int64))
    assert r["carbon_g"] == pytest.approx(float(np.sum(p["energy_j"] * ci / 3.6e6)), rel=0.01)
    assert r["start_epoch_ms"] == start_ms


def test_exported_workload_runs_and_places_replicas(tmp_path, bridge):
    """4 replicas with tp=2 on one 8-GPU node: two 4-GPU OpenDC hosts with two
    replicas each; all tasks finish; energy by hand."""
    us = [0.8, 0.3, 0.5, 0.1]
    T = 120.0
    sim = write_sim(tmp_path / "sim", {r: [(0.0, T, u)] for r, u in enumerate(us)}, tp=2)
    d = datacenter(gpus_per_host=8)
    d["hosts"][0]["cpu"] = {"cores": 16, "mhz": MHZ, "count": 2}
    stats = write_opendc_inputs(sim, d, tmp_path / "odc", cpu_load_cores=0.0)
    assert stats["tasks"] == 4
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    hosts = r["tasks"]["hosts"]
    assert len(hosts) == 4 and all(h is not None for h in hosts.values())
    per_host = pd.Series(list(hosts.values())).value_counts()
    assert sorted(per_host.tolist()) == [2, 2]  # two tp=2 replicas per 4-GPU host
    # hosts are reported under the names of the topology file (the export's plan uses the same names)
    topo_names = [
        h["name"] for h in json.loads((tmp_path / "odc" / "topology.json").read_text())["clusters"][0]["hosts"]
    ]
    assert sorted(set(hosts.values())) == sorted(topo_names) == ["node-0", "node-1"]
    assert sorted(h["host_name"] for h in r["per_host"]) == ["node-0", "node-1"]
    assert {t["planned_host"] for t in stats["task_map"]} == set(topo_names)
    # one time base for task times: simulation ms since the start, submissions at 0
    tasks = r["tasks"]
    assert tasks["submission_time_ms"] == [0, 0, 0, 0]
    assert all(
        0 <= s <= f <= T * 1000 + 1 for s, f in zip(tasks["schedule_time_ms"], tasks["finish_time_ms"], strict=True)
    )
    assert set(r["tasks"]["states"]) <= {"COMPLETED", "TERMINATED"}
    # GPU energy: 8 idle GPUs + dynamic part of 2 GPUs per replica; CPU idle (both halves)
    gpu_j = 8 * I_GPU * T + (M_GPU - I_GPU) * 2 * sum(us) * T
    cpu_j = I_CPU * T  # split: 2 x (I_CPU / 2)
    assert len(r["per_host"]) == 2 and len(r["per_gpu"]) == 8
    assert r["gpu_energy_wh"] * 3600 == pytest.approx(gpu_j, rel=0.01)
    assert r["energy_wh"] * 3600 == pytest.approx(gpu_j + cpu_j, rel=0.01)


def test_adaptive_vs_fixed_interval_in_opendc(tmp_path, bridge):
    """A synthetic serving timeline: fragment counts and OpenDC energy of the
    adaptive export vs the prototype's 0.1 s bins."""
    rng = np.random.default_rng(42)
    segs = {}
    T = 600.0
    for r in range(2):
        t, out = 0.0, []
        level = 0.5
        while t < T:
            d = float(rng.exponential(0.05))
            if rng.random() < 0.01:
                level = float(rng.choice([0.0, 0.2, 0.5, 0.8, 0.95]))
            u = float(np.clip(level + rng.normal(0, 0.005), 0, 1)) if level > 0 else 0.0
            out.append((t, min(T, t + d), u))
            t += d
        segs[r] = out
    sim = write_sim(tmp_path / "sim", segs, makespan=T)
    dcd = datacenter(gpus_per_host=2)
    sa = write_opendc_inputs(sim, dcd, tmp_path / "adaptive", mode="adaptive", tolerance=0.02)
    si = write_opendc_inputs(sim, dcd, tmp_path / "interval", mode="interval", interval_s=0.1)
    ra = run_opendc_dir(tmp_path / "adaptive", bridge=bridge)
    ri = run_opendc_dir(tmp_path / "interval", bridge=bridge)
    seg_count = sum(len(v) for v in segs.values())
    diff = abs(ra["energy_wh"] - ri["energy_wh"]) / ri["energy_wh"]
    report = {
        "timeline_segments": seg_count,
        "adaptive_fragments": sa["fragments"],
        "interval_fragments": si["fragments"],
        "adaptive_energy_wh": ra["energy_wh"],
        "interval_energy_wh": ri["energy_wh"],
        "relative_difference": diff,
        "linear_model_energy_wh_adaptive": sa["gpu_energy_linear_wh"],
        "linear_model_energy_wh_interval": si["gpu_energy_linear_wh"],
    }
    print("\nadaptive vs 0.1 s interval:", json.dumps(report, indent=1))
    (tmp_path / "fragment_report.json").write_text(json.dumps(report))
    assert sa["fragments"] < si["fragments"] / 10  # the target: >= 10x fewer, < 1 % apart
    assert diff < 0.001
    # the tolerance merge alone bounds every segment's deviation from its fragment
    st = write_opendc_inputs(sim, dcd, tmp_path / "tolerance", mode="adaptive", tolerance=0.02, min_fragment_s=0)
    assert st["max_abs_utilization_error"] <= 0.02 + 1e-9 and sa["fragments"] < st["fragments"]
    assert sa["gpu_energy_linear_wh"] == pytest.approx(si["gpu_energy_linear_wh"], rel=1e-3)


def test_hand_written_experiment_directory(tmp_path, bridge):
    """An OpenDC experiment folder written by hand, with relative paths."""
    d = tmp_path / "hand"
    (d / "workload").mkdir(parents=True)
    src = write_sim(tmp_path / "sim", {0: [(0.0, 60.0, 1.0)]})
    gen = tmp_path / "gen"
    write_opendc_inputs(src, datacenter(), gen, cpu_load_cores=0.0)
    for f in ("tasks.parquet", "fragments.parquet"):
        (d / "workload" / f).write_bytes((gen / "workload" / f).read_bytes())
    C.write_synthetic_carbon_trace(d / "carbon.parquet", mean=200, amplitude=0, days=2)
    topo = json.loads((gen / "topology.json").read_text())
    topo["clusters"][0]["powerSource"] = {"name": "grid", "carbonTracePath": "carbon.parquet"}
    (d / "topology.json").write_text(json.dumps(topo))
    (d / "experiment.json").write_text(
        json.dumps(
            {
                "name": "hand",
                "outputFolder": "elsewhere",
                "topologies": [{"pathToFile": "topology.json"}],
                "workloads": [
                    {"pathToFile": "workload", "type": "ComputeWorkload", "submissionTime": "2022-01-01T00:00:00"}
                ],
                "exportModels": [{"exportInterval": 1}],
            }
        )
    )
    r = run_opendc_dir(d, bridge=bridge)
    e = (M_GPU + I_CPU) * 60.0
    assert r["energy_wh"] * 3600 == pytest.approx(e, rel=0.01)
    assert r["carbon_g"] == pytest.approx(e / 3.6e6 * 200, rel=0.01)
    assert (d / "sustainability.json").is_file()
    assert find_under(d / "output", "host.parquet")
    assert not (d / "elsewhere").exists()


def find_under(root: Path, name: str) -> list[Path]:
    return list(root.rglob(name))


def test_battery_charges_when_carbon_is_low(tmp_path, bridge):
    """A cluster battery (single-threshold policy) charges from the grid while
    the intensity is below the threshold: the grid supplies the hosts plus
    the charging power, and the battery ends charged."""
    T = 120.0
    sim = write_sim(tmp_path / "sim", {0: [(0.0, T, 0.7)]})
    C.write_synthetic_carbon_trace(tmp_path / "c.parquet", mean=300, amplitude=200, trough_hour=13, days=1)
    d = datacenter(
        power_source={"carbon_trace": str(tmp_path / "c.parquet")},
        start="2022-01-01T13:00:00",
        battery={"capacity_kwh": 0.05, "charging_speed_w": 200, "policy": {"type": "single", "carbon_threshold": 250}},
    )
    write_opendc_inputs(sim, d, tmp_path / "odc", cpu_load_cores=0.0)
    topo = json.loads((tmp_path / "odc" / "topology.json").read_text())
    assert topo["clusters"][0]["battery"]["batteryPolicy"] == {"type": "single", "carbonThreshold": 250.0}
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    host_j = (gpu_power(0.7) + I_CPU) * T
    assert r["energy_wh"] * 3600 == pytest.approx(host_j, rel=0.01)
    assert r["battery"] is not None and r["battery"]["capacity_wh"] == pytest.approx(50.0)
    assert r["battery"]["final_charge_wh"] > 0
    assert r["grid_energy_wh"] > r["energy_wh"]
    # near the trough the intensity is ~100 gCO2/kWh
    assert r["carbon_g"] == pytest.approx(r["grid_energy_wh"] / 1000 * 100, rel=0.01)


def test_two_gpu_types_placed_by_type_energy_by_hand(tmp_path, bridge):
    """2 x A100-80GB tp=1 + 1 x H100-SXM tp=2 on one 2-GPU A100 host and one
    2-GPU H100 host. The H100 task (264 GPU cores) is written first and fits
    only the H100 host (the A100 host has 216 cores); the A100 tasks then
    find the H100 host full. Energy by hand with each type's power model."""
    T = 120.0
    us = {0: 0.8, 1: 0.3, 2: 0.5}
    groups = [("Llama-3-8B", "A100-80GB", 2, 1), ("Llama-3-70B", "H100-SXM", 1, 2)]
    per_rep = [(g, tp) for _, g, n, tp in groups for _ in range(n)]
    sim = tmp_path / "sim"
    sim.mkdir()
    rows = [
        {
            "replica": r,
            "start_s": 0.0,
            "end_s": T,
            "gpu_utilization": u,
            "batch_size": 1.0,
            "kv_utilization": 0.0,
            "prefill_tokens": 0,
            "decode_tokens": 0,
            "gpu": per_rep[r][0],
            "tp": per_rep[r][1],
            "model": groups[0 if r < 2 else 1][0],
        }
        for r, u in us.items()
    ]
    pd.DataFrame(rows).astype({"replica": "int32", "tp": "int32"}).to_parquet(sim / "timeline.parquet", index=False)
    (sim / "summary.json").write_text(
        json.dumps(
            {
                "makespan_s": T,
                "config": {
                    "model": "Llama-3-8B",
                    "gpu": "A100-80GB",
                    "replicas": 3,
                    "tp": 1,
                    "replica_groups": [{"model": m, "gpu": g, "replicas": n, "tp": tp} for m, g, n, tp in groups],
                },
            }
        )
    )
    h100_idle, h100_max = 70.0, 700.0  # H100-SXM catalogue watts
    d = datacenter(gpus_per_host=2)
    d["hosts"].append(
        {
            "name": "h100",
            "count": 1,
            "gpus_per_host": 2,
            "gpu": "H100-SXM",
            "cpu": {"cores": CORES, "mhz": MHZ},
            "cpu_power_model": {"model": "linear", "idle_w": I_CPU, "max_w": M_CPU},
            "memory_gib": 512,
        }
    )
    stats = write_opendc_inputs(sim, d, tmp_path / "odc", cpu_load_cores=0.0)
    assert stats["tasks"] == 3 and stats["placement"]["tasks_not_pinned"] == [0, 1]
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    hosts = r["tasks"]["hosts"]
    assert hosts["2"].startswith("h100")
    assert hosts["0"].startswith("node") and hosts["1"].startswith("node")
    a100_j = 2 * I_GPU * T + (M_GPU - I_GPU) * (us[0] + us[1]) * T
    h100_j = 2 * h100_idle * T + (h100_max - h100_idle) * 2 * us[2] * T
    assert r["gpu_energy_wh"] * 3600 == pytest.approx(a100_j + h100_j, rel=0.01)
    assert r["energy_wh"] * 3600 == pytest.approx(a100_j + h100_j + 2 * I_CPU * T, rel=0.01)
    assert stats["gpu_energy_linear_wh"] * 3600 == pytest.approx(a100_j + h100_j, rel=1e-9)


def test_per_request_export_loads_and_runs(tmp_path, bridge):
    """The per-request export loads in OpenDC and every request task runs;
    OpenDC's FIFO 1-second scheduling delays them, so only the file format
    and completion are checked, and the energy is reported for comparison."""
    T = 60.0
    sim = write_sim(tmp_path / "sim", {0: [(0.0, T, 0.5)]})
    n = 20
    arrival = np.linspace(0.0, T - 5.0, n)
    pd.DataFrame(
        {
            "request_id": np.arange(n),
            "replica": np.zeros(n, np.int32),
            "arrival_s": arrival,
            "num_input_tokens": np.full(n, 100),
            "num_output_tokens": np.full(n, 20),
            "e2e_s": np.full(n, 5.0),
            "finish_s": arrival + 5.0,
            "status": ["finished"] * n,
        }
    ).to_parquet(sim / "requests.parquet", index=False)
    stats = write_opendc_inputs(sim, datacenter(), tmp_path / "odc", mode="per-request", cpu_load_cores=0.0)
    assert stats["tasks"] == n
    r = run_opendc_dir(tmp_path / "odc", bridge=bridge)
    assert r["tasks"]["tasks"] == n
    assert set(r["tasks"]["states"]) <= {"COMPLETED", "TERMINATED"}
    print(
        "\nper-request: OpenDC energy", r["energy_wh"], "Wh; export estimate (GPU)", stats["gpu_energy_linear_wh"], "Wh"
    )
