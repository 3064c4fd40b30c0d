"""OpenDC co-simulation inputs: workload export, topology, carbon traces,
output reading (no JVM needed; the real-OpenDC checks are in
test_opendc_integration.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kavier_opendc.errors import KavierInputError
from kavier_opendc.opendc import carbon as C
from kavier_opendc.opendc.export import (
    FRAGMENTS_SCHEMA,
    TASKS_SCHEMA,
    export_workload,
    interval_bins,
    merge_adaptive,
)
from kavier_opendc.opendc.results import read_opendc_output, run_opendc_dir
from kavier_opendc.opendc.topology import (
    load_datacenter,
    opendc_hosts,
    plan_tasks,
    write_opendc_inputs,
)

REPO = Path(__file__).resolve().parents[1]
A100_CAP = 108 * 1410.0          # SMs x boost MHz of one A100-80GB (catalogue)
SHARED_CARBON = Path("/work/shared/data/carbon")


# ----------------------------------------------------------------- helpers --

def write_sim(sim_dir: Path, segments: dict[int, list[tuple[float, float, float]]], *,
              gpu="A100-80GB", tp=1, makespan=None, replicas=None) -> Path:
    """Hand-made simulation output: segments[replica] = [(start, end, util)]."""
    sim_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r, segs in segments.items():
        for s, e, u in segs:
            rows.append({"replica": r, "start_s": s, "end_s": e, "gpu_utilization": u,
                         "batch_size": 1.0, "kv_utilization": 0.1, "prefill_tokens": 10,
                         "decode_tokens": 5, "gpu": gpu, "tp": tp})
    df = pd.DataFrame(rows)
    table = pa.Table.from_pandas(df, preserve_index=False).cast(pa.schema([
        ("replica", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
        ("gpu_utilization", pa.float64()), ("batch_size", pa.float64()),
        ("kv_utilization", pa.float64()), ("prefill_tokens", pa.int64()),
        ("decode_tokens", pa.int64()), ("gpu", pa.string()), ("tp", pa.int32())]))
    pq.write_table(table, sim_dir / "timeline.parquet")
    ms = makespan if makespan is not None else float(df["end_s"].max())
    summary = {"makespan_s": ms, "config": {"model": "Llama-3-8B", "gpu": gpu,
                                            "replicas": replicas or len(segments), "tp": tp}}
    (sim_dir / "summary.json").write_text(json.dumps(summary))
    return sim_dir


def dc(gpus_per_host=1, count=1, **extra) -> dict:
    d = {"name": "dc", "hosts": [{"name": "node", "count": count, "gpus_per_host": gpus_per_host,
                                  "gpu": "A100-80GB",
                                  "cpu": {"cores": 16, "mhz": 2000, "count": 1},
                                  "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
                                  "memory_gib": 256}]}
    d.update(extra)
    return d


def frags(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "fragments.parquet").to_pandas()


def tasks(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "tasks.parquet").to_pandas()


# ---------------------------------------------------------- Parquet schema --

def test_parquet_schemas_are_exactly_opendcs(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.5), (1, 2, 0.7)]})
    out = tmp_path / "wl"
    export_workload(sim, out, dc())
    t = pq.read_table(out / "tasks.parquet")
    f = pq.read_table(out / "fragments.parquet")
    assert t.schema.equals(TASKS_SCHEMA, check_metadata=False)
    assert f.schema.equals(FRAGMENTS_SCHEMA, check_metadata=False)
    # Arrow-level: types and nullability as OpenDC's read schema requires
    tf = {fld.name: (fld.type, fld.nullable) for fld in t.schema}
    assert tf["id"] == (pa.int32(), False)
    assert tf["submission_time"] == (pa.timestamp("ms", tz="UTC"), False)
    assert tf["duration"] == (pa.int64(), False)
    assert tf["cpu_count"] == (pa.int32(), False)
    assert tf["cpu_capacity"] == (pa.float64(), False)
    assert tf["mem_capacity"] == (pa.int64(), False)
    assert tf["gpu_count"] == (pa.int32(), True)
    assert tf["gpu_capacity"] == (pa.float64(), True)
    ff = {fld.name: (fld.type, fld.nullable) for fld in f.schema}
    assert ff == {"id": (pa.int32(), False), "duration": (pa.int64(), False),
                  "cpu_usage": (pa.float64(), False), "gpu_usage": (pa.float64(), True)}
    # Parquet physical level
    ps = pq.ParquetFile(out / "tasks.parquet").schema
    phys = {ps.column(i).name: (ps.column(i).physical_type, ps.column(i).max_definition_level)
            for i in range(len(ps.names))}
    assert phys["id"] == ("INT32", 0)
    assert phys["submission_time"] == ("INT64", 0)
    assert phys["duration"] == ("INT64", 0)
    assert phys["cpu_count"] == ("INT32", 0)
    assert phys["cpu_capacity"] == ("DOUBLE", 0)
    assert phys["mem_capacity"] == ("INT64", 0)
    lt = ps.column(ps.names.index("submission_time")).logical_type
    assert lt.type == "TIMESTAMP" and json.loads(lt.to_json())["timeUnit"] == "milliseconds"
    fs = pq.ParquetFile(out / "fragments.parquet").schema
    fphys = {fs.column(i).name: fs.column(i).physical_type for i in range(len(fs.names))}
    assert fphys == {"id": "INT32", "duration": "INT64", "cpu_usage": "DOUBLE", "gpu_usage": "DOUBLE"}
    # no nulls anywhere
    assert all(t.column(c).null_count == 0 for c in t.column_names)
    assert all(f.column(c).null_count == 0 for c in f.column_names)
    # submission time = 2022-01-01T00:00:00Z in epoch ms
    assert t.column("submission_time").cast(pa.int64()).to_pylist() == [1640995200000]


def test_submission_time_follows_start(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.5)]})
    export_workload(sim, tmp_path / "wl", dc(), start="2022-06-15T12:30:00")
    ts = pq.read_table(tmp_path / "wl" / "tasks.parquet").column("submission_time").cast(pa.int64())
    assert ts.to_pylist() == [1655296200000]


# ------------------------------------------------------------ merging ------

def test_adaptive_merge_by_hand(tmp_path):
    segs = [(0, 1, 0.50), (1, 2, 0.51), (2, 4, 0.52), (4, 5, 0.80), (5, 5.5, 0.81), (5.5, 6, 0.0)]
    sim = write_sim(tmp_path / "sim", {0: segs})
    out = tmp_path / "wl"
    stats = export_workload(sim, out, dc(), tolerance=0.02)
    f = frags(out)
    assert stats["tolerance"] == 0.02 and stats["fragments"] == 3 and stats["timeline_segments"] == 6
    assert f["duration"].tolist() == [4000, 1500, 500]
    u = f["gpu_usage"].to_numpy() / A100_CAP
    assert u == pytest.approx([(0.50 + 0.51 + 2 * 0.52) / 4, (0.80 + 0.5 * 0.81) / 1.5, 0.0], rel=1e-12)
    assert stats["max_abs_utilization_error"] == pytest.approx(0.5125 - 0.50, abs=1e-12)
    # a tighter tolerance merges nothing here
    stats2 = export_workload(sim, tmp_path / "wl2", dc(), tolerance=0.005)
    assert stats2["fragments"] == 6
    assert frags(tmp_path / "wl2")["duration"].tolist() == [1000, 1000, 2000, 1000, 500, 500]


def test_merge_adaptive_function_and_zero_tolerance():
    d, u, err = merge_adaptive(np.array([10, 20, 0, 30]), np.array([0.2, 0.2, 0.9, 0.2]), 0.0)
    assert d.tolist() == [60] and u.tolist() == [0.2] and err == 0.0  # zero-length piece dropped
    d, u, _ = merge_adaptive(np.array([10, 20]), np.array([0.2, 0.3]), 0.0)
    assert d.tolist() == [10, 20]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.floats(0, 1)), min_size=1, max_size=60),
       st.floats(0, 0.5))
def test_merge_preserves_energy_and_bounds_error(pieces, tol):
    d = np.array([p[0] for p in pieces], dtype=np.int64)
    u = np.array([p[1] for p in pieces])
    dm, um, err = merge_adaptive(d, u, tol)
    assert dm.sum() == d.sum()
    assert float(np.sum(dm * um)) == pytest.approx(float(np.sum(d * u)), rel=1e-9, abs=1e-9)
    assert err <= tol + 1e-9
    assert len(dm) <= max(1, int((d > 0).sum()))


def test_total_ms_equals_makespan_without_drift(tmp_path):
    # 3000 segments of 1/3 ms-ish durations: rounding each would drift by ~1000 ms
    n = 3000
    bounds = np.cumsum(np.full(n, 0.0014999)) .tolist()
    bounds = [0.0] + bounds
    rng = np.random.default_rng(1)
    utils = rng.uniform(0, 1, n)
    segs = [(bounds[i], bounds[i + 1], float(utils[i])) for i in range(n)]
    makespan = bounds[-1] + 0.0123
    sim = write_sim(tmp_path / "sim", {0: segs, 1: segs[: n // 2]}, makespan=makespan)
    for mode in ("segments", "adaptive", "interval"):
        out = tmp_path / mode
        stats = export_workload(sim, out, dc(count=2), mode=mode, tolerance=0.05)
        f, t = frags(out), tasks(out)
        expected = int(math.floor(makespan * 1000 + 0.5))
        assert stats["makespan_ms"] == expected
        for tid, g in f.groupby("id"):
            assert int(g["duration"].sum()) == expected, mode
        assert t["duration"].tolist() == [expected, expected]
        assert (f["duration"] > 0).all()
    naive = int(np.sum(np.floor(np.diff(bounds) * 1000 + 0.5)))
    assert naive != int(math.floor(bounds[-1] * 1000 + 0.5))  # the drift we avoid is real


def _linear_energy(out: Path, idle=60.0, mx=400.0, cap=A100_CAP) -> float:
    f = frags(out)
    u = f["gpu_usage"].to_numpy() / cap
    return float(np.sum((idle + (mx - idle) * u) * f["duration"].to_numpy() / 1000.0))


def test_linear_energy_identical_merged_vs_unmerged(tmp_path):
    rng = np.random.default_rng(7)
    n = 2000
    dur = rng.exponential(0.02, n)
    base = np.repeat(rng.uniform(0, 1, n // 50), 50)
    utils = np.clip(base + rng.normal(0, 0.01, n), 0, 1)
    b = np.concatenate([[0], np.cumsum(dur)])
    segs = [(b[i], b[i + 1], float(utils[i])) for i in range(n)]
    sim = write_sim(tmp_path / "sim", {0: segs})
    s_seg = export_workload(sim, tmp_path / "seg", dc(), mode="segments")
    s_ad = export_workload(sim, tmp_path / "ad", dc(), mode="adaptive", tolerance=0.05)
    assert s_ad["fragments"] < s_seg["fragments"] / 5
    e_seg, e_ad = _linear_energy(tmp_path / "seg"), _linear_energy(tmp_path / "ad")
    assert e_ad == pytest.approx(e_seg, rel=1e-12)
    assert s_ad["gpu_energy_linear_wh"] == pytest.approx(e_ad / 3600, rel=1e-12)
    # and both equal the continuous timeline's energy up to ms rounding
    e_cont = float(np.sum((60 + 340 * utils) * dur))
    assert e_ad == pytest.approx(e_cont, rel=1e-4)


def test_fixed_interval_mode(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 0.15, 1.0), (0.15, 0.3, 0.0), (0.3, 0.35, 0.4)]})
    out = tmp_path / "wl"
    stats = export_workload(sim, out, dc(), mode="interval", interval_s=0.1)
    f = frags(out)
    assert stats["mode"] == "interval" and stats["interval_s"] == 0.1 and stats["fragments"] == 4
    assert f["duration"].tolist() == [100, 100, 100, 50]
    assert (f["gpu_usage"] / A100_CAP).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.4])
    d, u = interval_bins(np.array([0.0, 0.25]), np.array([0.8]), 0.1)
    assert d.tolist() == [100, 100, 50] and u.tolist() == pytest.approx([0.8, 0.8, 0.8])


def test_gaps_and_padding_are_idle(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.5), (2, 3, 0.5)], 1: [(0, 1, 0.5)]}, makespan=4.0)
    out = tmp_path / "wl"
    export_workload(sim, out, dc(count=2), mode="segments")
    f = frags(out)
    r0 = f[f["id"] == 0]
    assert r0["duration"].tolist() == [1000, 1000, 1000, 1000]
    assert (r0["gpu_usage"] / A100_CAP).tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])
    r1 = f[f["id"] == 1]
    assert r1["duration"].tolist() == [1000, 3000]


def test_gpu_usage_scales_with_tp_and_cpu_load(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 2, 0.25)]}, tp=2)
    out = tmp_path / "wl"
    stats = export_workload(sim, out, dc(gpus_per_host=4), cpu_load_cores=1.5)
    f, t = frags(out), tasks(out)
    assert f["gpu_usage"].tolist() == pytest.approx([0.25 * 2 * A100_CAP])
    assert f["cpu_usage"].tolist() == pytest.approx([1.5 * 2000])
    assert t["gpu_count"].tolist() == [2 * 108]          # OpenDC counts GPU cores (SMs)
    assert t["gpu_capacity"].tolist() == pytest.approx([2 * A100_CAP])
    assert t["cpu_count"].tolist() == [2]
    assert t["cpu_capacity"].tolist() == pytest.approx([2 * 2000.0])
    assert t["mem_capacity"].tolist() == [256 * 1024 // 2 * 1000]   # KB: GPU share of host memory
    assert stats["gpu_busy_seconds"] == pytest.approx(0.25 * 2 * 2)


def test_bad_timeline_is_reported(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 1.7)]})
    with pytest.raises(KavierInputError, match="gpu_utilization"):
        export_workload(sim, tmp_path / "wl", dc())
    sim2 = write_sim(tmp_path / "sim2", {0: [(0, 2, 0.5), (1, 3, 0.5)]})
    with pytest.raises(KavierInputError, match="overlaps"):
        export_workload(sim2, tmp_path / "wl2", dc())
    with pytest.raises(KavierInputError, match="timeline not found"):
        export_workload(tmp_path / "nothing", tmp_path / "wl3", dc())
    with pytest.raises(KavierInputError, match="mode"):
        export_workload(sim2, tmp_path / "wl4", dc(), mode="per-sample")


# ------------------------------------------------------------ topology -----

def test_eight_gpu_host_split_into_two_four_gpu_hosts(tmp_path):
    d = dc(gpus_per_host=8)
    d["hosts"][0]["cpu"] = {"cores": 32, "mhz": 2400, "count": 2}
    d["hosts"][0]["memory_gib"] = 1024
    sim = write_sim(tmp_path / "sim", {r: [(0, 1, 0.5)] for r in range(4)}, tp=2)
    stats = write_opendc_inputs(sim, d, tmp_path / "odc")
    topo = json.loads((tmp_path / "odc" / "topology.json").read_text())
    hosts = topo["clusters"][0]["hosts"]
    assert len(hosts) == 1
    h = hosts[0]
    assert h["count"] == 2 and h["gpu"]["count"] == 4
    assert h["gpu"]["coreCount"] == 108 and h["gpu"]["coreSpeed"] == "1410 MHz"
    assert h["cpu"] == {"coreCount": 32, "coreSpeed": "2400 MHz", "count": 1,
                        "modelName": "unknown", "vendor": "unknown"}
    assert h["cpuPowerModel"] == {"modelType": "linear", "idlePower": "50 W", "maxPower": "150 W"}
    assert h["gpuPowerModel"] == {"modelType": "linear", "idlePower": "60 W", "maxPower": "400 W"}
    assert h["memory"] == {"memorySize": "524288 MiB"}
    # two replicas of tp=2 per 4-GPU host, each replica's GPUs on one host
    planned = [t["planned_host"] for t in stats["task_map"]]
    assert planned == ["node#0", "node#0", "node#1", "node#1"]
    # only known release-format keys
    cluster_keys = {"name", "count", "hosts", "powerSource", "battery"}
    host_keys = {"name", "cpu", "count", "memory", "gpu", "cpuPowerModel", "gpuPowerModel",
                 "cpuDistributionPolicy", "gpuDistributionPolicy"}
    gpu_keys = {"count", "coreCount", "coreSpeed", "memorySize", "memoryBandwidth", "vendor",
                "modelName", "architecture", "virtualizationOverHeadModel"}
    pm_keys = {"modelType", "power", "maxPower", "idlePower", "calibrationFactor", "asymUtil", "dvfs"}
    assert set(topo) == {"clusters"}
    assert set(topo["clusters"][0]) <= cluster_keys
    assert set(h) <= host_keys and set(h["gpu"]) <= gpu_keys
    assert set(h["cpuPowerModel"]) <= pm_keys and set(h["gpuPowerModel"]) <= pm_keys
    exp = json.loads((tmp_path / "odc" / "experiment.json").read_text())
    assert set(exp) == {"name", "outputFolder", "topologies", "workloads", "allocationPolicies",
                        "exportModels"}
    assert exp["workloads"][0]["type"] == "ComputeWorkload"
    assert Path(exp["workloads"][0]["pathToFile"]).is_absolute()
    assert Path(exp["topologies"][0]["pathToFile"]) == (tmp_path / "odc" / "topology.json").resolve()
    for name in ("workload/tasks.parquet", "workload/fragments.parquet", "topology.json", "experiment.json"):
        assert (tmp_path / "odc" / name).is_file()


def test_aggregate_and_uneven_split():
    d = dc(gpus_per_host=8, gpu_host_limit="aggregate")
    h = opendc_hosts(load_datacenter(d))
    assert len(h) == 1 and h[0].gpus == 1 and h[0].physical_gpus == 8
    j = h[0].to_opendc()
    assert j["gpu"]["count"] == 1 and j["gpu"]["coreCount"] == 8 * 108
    assert j["gpuPowerModel"] == {"modelType": "linear", "idlePower": "480 W", "maxPower": "3200 W"}
    d5 = dc(gpus_per_host=5)
    h5 = opendc_hosts(load_datacenter(d5))
    assert sorted(x.gpus for x in h5) == [2, 3]
    assert sum(x.cpu_cores * x.cpu_count for x in h5) == 16
    assert sum(x.cpu_power.idle_w for x in h5) == pytest.approx(100)
    assert sum(x.cpu_power.max_w for x in h5) == pytest.approx(300)


def test_tp8_on_split_host_and_slot_shortage(tmp_path):
    hosts = opendc_hosts(load_datacenter(dc(gpus_per_host=8, count=2)))
    plans = plan_tasks(hosts, replicas=2, tp=8, gpu_name="A100-80GB")
    assert [(p.replica, p.gpus) for p in plans] == [(0, 4), (0, 4), (1, 4), (1, 4)]
    with pytest.raises(KavierInputError, match="too few GPU slots"):
        plan_tasks(hosts, replicas=3, tp=8, gpu_name="A100-80GB")
    # 3 GPUs per host: a tp=2 replica uses 2 of them, the third stays free
    h3 = opendc_hosts(load_datacenter(dc(gpus_per_host=3, count=2)))
    assert len(plan_tasks(h3, 2, 2, "A100-80GB")) == 2
    with pytest.raises(KavierInputError, match="too few GPU slots"):
        plan_tasks(h3, 3, 2, "A100-80GB")
    sim = write_sim(tmp_path / "sim", {r: [(0, 1, 0.5)] for r in range(3)}, tp=2)
    with pytest.raises(KavierInputError, match="too few GPU slots"):
        write_opendc_inputs(sim, dc(gpus_per_host=3, count=2), tmp_path / "odc")


def test_gpu_from_simulation_and_mismatch(tmp_path):
    d = dc(gpus_per_host=2)
    del d["hosts"][0]["gpu"]
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.5)]}, gpu="H100-SXM")
    write_opendc_inputs(sim, d, tmp_path / "odc")
    topo = json.loads((tmp_path / "odc" / "topology.json").read_text())
    assert topo["clusters"][0]["hosts"][0]["gpu"]["modelName"] == "H100-SXM"
    with pytest.raises(KavierInputError, match="simulation ran on"):
        write_opendc_inputs(sim, dc(gpus_per_host=2), tmp_path / "odc2")


def test_schema_errors_name_json_paths(tmp_path):
    bad = {
        "hosts": [
            {"name": "a", "gpus_per_host": 4, "gpu": "A100-80GB", "cpu": {"cores": 0, "mhz": 2000},
             "memory_gib": 64, "gpus": 3},
            {"name": "b", "cpu": {"cores": 8}, "memory_gib": -1,
             "cpu_power_model": {"model": "quartic", "idle_w": 10, "max_w": 20}},
        ],
        "battery": {"charging_speed_w": 100, "policy": {"type": "single"}},
        "export_interval_s": 0,
    }
    with pytest.raises(KavierInputError) as ei:
        load_datacenter(bad)
    msg = str(ei.value)
    probs = ei.value.problems
    for path in ("hosts[0].cpu.cores", "hosts[0].gpus", "hosts[1].cpu.mhz", "hosts[1].memory_gib",
                 "hosts[1].cpu_power_model.model", "battery.capacity_kwh",
                 "battery.policy.carbon_threshold", "export_interval_s"):
        assert any(p.startswith(path + ":") for p in probs), (path, probs)
    assert "unknown key 'gpus' (did you mean 'gpu'?)" in msg
    # semantic problems also carry paths, and a file is named in the message
    f = tmp_path / "dc.yaml"
    f.write_text("hosts:\n  - gpus_per_host: 2\n    gpu: A100-80GBX\n    cpu: {cores: 8, mhz: 2000}\n"
                 "    memory_gib: 64\n    gpu_power_model: {idle_w: 500, max_w: 100}\n"
                 "power_source: {carbon_trace: missing.parquet}\n")
    with pytest.raises(KavierInputError) as ei:
        load_datacenter(f)
    probs = ei.value.problems
    assert str(f) in str(ei.value)
    assert any(p.startswith("hosts[0].gpu:") and "A100-80GB" in p for p in probs)
    assert any(p.startswith("hosts[0].gpu_power_model.max_w:") for p in probs)
    assert any(p.startswith("power_source.carbon_trace:") for p in probs)


def test_carbon_path_relative_to_description_written_absolute(tmp_path):
    (tmp_path / "traces").mkdir()
    C.write_synthetic_carbon_trace(tmp_path / "traces" / "syn.parquet", days=1)
    f = tmp_path / "dc.json"
    d = dc()
    d["power_source"] = {"name": "grid", "max_power_w": 100000, "carbon_trace": "traces/syn.parquet"}
    d["battery"] = {"capacity_kwh": 1.5, "charging_speed_w": 500,
                    "policy": {"type": "double", "lower_threshold": 100, "upper_threshold": 200}}
    f.write_text(json.dumps(d))
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.5)]})
    write_opendc_inputs(sim, f, tmp_path / "odc")
    cl = json.loads((tmp_path / "odc" / "topology.json").read_text())["clusters"][0]
    assert cl["powerSource"] == {"name": "grid", "maxPower": 100000,
                                 "carbonTracePath": str((tmp_path / "traces" / "syn.parquet").resolve())}
    assert cl["battery"] == {"name": "Battery", "capacity": 1.5, "chargingSpeed": 500.0, "initialCharge": 0.0,
                             "batteryPolicy": {"type": "double", "lowerThreshold": 100.0,
                                               "upperThreshold": 200.0}}


def test_region_name_resolved(tmp_path, monkeypatch):
    C.write_synthetic_carbon_trace(tmp_path / "XX_2022.parquet", days=1)
    C.write_synthetic_carbon_trace(tmp_path / "XX_2023.parquet", days=1, start="2023-01-01T00:00:00")
    monkeypatch.setenv(C.CARBON_DIR_ENV, str(tmp_path))
    d = load_datacenter(dc(region="XX", start="2023-05-01T00:00:00"))
    assert d.power_source.carbon_trace == (tmp_path / "XX_2023.parquet").resolve()
    with pytest.raises(KavierInputError, match="region: no carbon trace found for region 'YY'"):
        load_datacenter(dc(region="YY"))


def test_schema_copy_is_byte_identical():
    assert (REPO / "schemas" / "datacenter.schema.json").read_bytes() == \
        (REPO / "kavier_opendc" / "schemas" / "datacenter.schema.json").read_bytes()


# -------------------------------------------------------------- carbon -----

def test_synthetic_carbon_round_trip_and_daily_cycle(tmp_path):
    p = C.write_synthetic_carbon_trace(tmp_path / "syn.parquet", mean=300, amplitude=100,
                                       trough_hour=13, days=3, step_minutes=15)
    schema = pq.ParquetFile(p).schema
    assert schema.column(0).name == "timestamp" and schema.column(0).physical_type == "INT64"
    assert json.loads(schema.column(0).logical_type.to_json())["timeUnit"] == "milliseconds"
    assert schema.column(1).name == "carbon_intensity" and schema.column(1).physical_type == "DOUBLE"
    assert schema.column(0).max_definition_level == 0 and schema.column(1).max_definition_level == 0
    if (SHARED_CARBON / "NL_2022.parquet").exists():   # same layout as the real traces
        assert pq.read_schema(p).equals(pq.read_schema(SHARED_CARBON / "NL_2022.parquet"), check_metadata=False)
    df = C.read_carbon_trace(p)
    ref = C.synthetic_carbon_profile(mean=300, amplitude=100, trough_hour=13, days=3, step_minutes=15)
    assert len(df) == 3 * 96
    pd.testing.assert_frame_equal(df, ref.astype({"timestamp": "datetime64[ms]"}), check_dtype=False)
    ci = df["carbon_intensity"].to_numpy()
    hours = df["timestamp"].dt.hour + df["timestamp"].dt.minute / 60
    day1 = slice(0, 96)
    assert hours.iloc[int(np.argmin(ci[day1]))] == 13.0
    assert hours.iloc[int(np.argmax(ci[day1]))] == 1.0
    assert ci.min() == pytest.approx(200) and ci.max() == pytest.approx(400)
    assert ci[:96] == pytest.approx(ci[96:192]) and ci.mean() == pytest.approx(300, abs=1e-9)
    info = C.validate_carbon_trace(p)
    assert info.rows == 288 and info.step_s == 900


def test_carbon_trace_validation_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"timestamp": pa.array([0, 1], pa.int64()), "carbon_intensity": [1.0, 2.0]}), bad)
    with pytest.raises(KavierInputError, match="TIMESTAMP"):
        C.read_carbon_trace(bad)
    bad2 = tmp_path / "bad2.parquet"
    pq.write_table(pa.table({"timestamp": pa.array([0, 1000], pa.timestamp("ms")), "co2": [1.0, 2.0]}), bad2)
    with pytest.raises(KavierInputError, match="carbon_intensity"):
        C.read_carbon_trace(bad2)
    bad3 = tmp_path / "bad3.parquet"
    pq.write_table(pa.table({"timestamp": pa.array([0, 1000], pa.timestamp("ms")),
                             "carbon_intensity": [1.0, -2.0]}), bad3)
    with pytest.raises(KavierInputError, match="row 1"):
        C.read_carbon_trace(bad3)
    with pytest.raises(KavierInputError, match="amplitude"):
        C.synthetic_carbon_profile(mean=100, amplitude=150)


@pytest.mark.skipif(not (SHARED_CARBON / "NL_2022.parquet").exists(), reason="shared NL trace not present")
def test_real_traces_validate():
    for name, step in (("NL_2022.parquet", 900), ("FR_2022.parquet", 3600)):
        info = C.validate_carbon_trace(SHARED_CARBON / name)
        assert info.step_s == step and info.start.year == 2022 and info.min >= 0


# ------------------------------------------------------- output reading ----

def _fake_output(root: Path) -> Path:
    """A tiny OpenDC-shaped output: 2 intervals of 10 s, one host with one
    GPU, and OpenDC's extra final row (state after the last task, 0 J)."""
    raw = root / "out" / "exp" / "raw-output" / "0" / "seed=0"
    raw.mkdir(parents=True)
    ts = [10_000, 20_000, 20_000]
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    host = pd.DataFrame({"timestamp": ts, "timestamp_absolute": [1640995210000, 1640995220000, 1640995220000],
                         "host_name": ["node"] * 3, "cluster_name": ["dc"] * 3,
                         "power_draw": f32(500.0, 300.0, 160.0),
                         "energy_usage": f32(5000.0, 3000.0, 0.0),
                         "cpu_utilization": f32(0.0, 0.0, 0.0),
                         "gpu_power_draw_0": f32(400.0, 200.0, 60.0),
                         "gpu_utilization_0": f32(1.0, 0.4117647, 0.0),
                         "gpu_time_active_0": np.array([10_000, 4_118, 0], np.int64)})
    ps = pd.DataFrame({"timestamp": ts, "timestamp_absolute": [1640995210000, 1640995220000, 1640995220000],
                       "source_name": ["PS"] * 3, "cluster_name": ["dc"] * 3,
                       "power_draw": f32(500.0, 300.0, 160.0),
                       "energy_usage": f32(5000.0, 3000.0, 0.0),
                       "carbon_intensity": f32(100.0, 200.0, 200.0),
                       "carbon_emission": f32(5000 * 100 / 3.6e6, 3000 * 200 / 3.6e6, 0.0)})
    pq.write_table(pa.Table.from_pandas(host, preserve_index=False), raw / "host.parquet")
    pq.write_table(pa.Table.from_pandas(ps, preserve_index=False), raw / "powerSource.parquet")
    return raw


def test_read_output_units(tmp_path):
    _fake_output(tmp_path)
    topo = {"clusters": [{"name": "dc", "hosts": [{"name": "node", "cpu": {"coreCount": 4, "coreSpeed": 1000},
                                                  "memory": {"memorySize": 1000},
                                                  "gpu": {"count": 1, "coreCount": 1, "coreSpeed": 1},
                                                  "cpuPowerModel": {"modelType": "linear", "idlePower": "100 W",
                                                                    "maxPower": "200 W"},
                                                  "gpuPowerModel": {"modelType": "linear", "idlePower": 60,
                                                                    "maxPower": "400 W"}}]}]}
    r = read_opendc_output(tmp_path / "out", topology=topo)
    assert r["energy_wh"] == pytest.approx(8000 / 3600)          # J / 3600, not / 1000
    assert r["duration_s"] == 20 and r["avg_power_w"] == pytest.approx(400)
    assert r["peak_power_w"] == pytest.approx(500)     # not 500 + the duplicate final row
    assert r["carbon_g"] == pytest.approx((5000 * 100 + 3000 * 200) / 3.6e6, rel=1e-6)
    g = r["per_gpu"][0]
    assert g["method"] == "active-time"
    assert g["energy_wh"] * 3600 == pytest.approx(60 * 20 + 340 * 14.118, rel=1e-6)
    h = r["per_host"][0]
    assert h["cpu_energy_wh"] + h["gpu_energy_wh"] == pytest.approx(h["energy_wh"])
    assert r["idle_energy_wh"] == pytest.approx((100 + 60) * 20 / 3600)
    assert list(r["power"]["interval_s"]) == [10.0, 10.0]
    assert list(r["power"]["avg_power_w"]) == pytest.approx([500, 300])


def test_run_opendc_dir_requires_experiment(tmp_path):
    with pytest.raises(KavierInputError, match="experiment.json"):
        run_opendc_dir(tmp_path)
