"""The co-simulation chain end to end with the real OpenDC: simulation -> export -> OpenDC -> watts.

Two measurements, each run through the `kavier` command line exactly as a user would:

  power      Each row of ../shared/data/measurements/gpu_power_vllm_batch.csv (average GPU power of vLLM
             serving a batch of identical 1024/1024-token requests, Argonne LLM-Inference-Bench) becomes an
             experiment on a one-GPU host with the catalogue's GPU power model and the framework of the
             engine that ran it (vllm-0.5-offline, as bench/calibrate_power.py); `kavier run` simulates it,
             exports the timeline, runs OpenDC and reads the GPU's average power back. Prints the error per
             row and the MAPE per GPU.
  fragments  The Azure conversation trace on 2 replicas: fragment count of the adaptive export vs a 0.1 s
             fixed-interval export, and the energy of each as OpenDC computes it.

Usage: python bench/opendc_chain.py power|fragments [--work DIR]
Needs the bridge jar ('kavier bridge build').
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

SHARED = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
POWER_CSV = SHARED / "measurements" / "gpu_power_vllm_batch.csv"
AZURE_CONV = SHARED / "traces" / "azure_llm_2023_conv.csv"
MODEL_NAMES = {"Llama-2-7b-hf": "Llama-2-7B", "Meta-Llama-3-8B": "Llama-3-8B"}
GPU_NAMES = {"H100": "H100-SXM"}
# the framework of the engine that produced the power rows (vLLM 0.5-0.6 offline), as bench/calibrate_power.py
POWER_FRAMEWORK = "vllm-0.5-offline"


def kavier(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kavier_opendc.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"kavier {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def one_gpu_experiment(row: dict, work: Path) -> Path:
    """An experiment file for one measurement row: b identical requests at t=0 on one GPU of one host."""
    b, n_in, n_out = int(row["batch_size"]), int(row["input_tokens"]), int(row["output_tokens"])
    gpu = GPU_NAMES.get(row["gpu"], row["gpu"])
    name = f"{gpu}-{MODEL_NAMES[row['model']]}-b{b}"
    trace = work / f"{name}.csv"
    trace.write_text(
        "arrival_time_s,num_input_tokens,num_output_tokens\n" + "".join(f"0,{n_in},{n_out}\n" for _ in range(b))
    )
    exp = {
        "name": name,
        "model": MODEL_NAMES[row["model"]],
        "gpu": gpu,
        "trace": trace.name,
        "serving": {"replicas": 1, "tp": 1, "max_num_seqs": max(b, 1), "kv_cache": "on", "framework": POWER_FRAMEWORK},
        "datacenter": {
            "name": "bench",
            "export_interval_s": 1,
            "hosts": [
                {
                    "name": "node",
                    "count": 1,
                    "gpus_per_host": 1,
                    "cpu": {"cores": 16, "mhz": 2000, "count": 1},
                    "cpu_power_model": {"model": "linear", "idle_w": 0, "max_w": 0},
                    "memory_gib": 256,
                }
            ],
        },
        "opendc": {"export": {"mode": "adaptive", "tolerance": 0.02}},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def power(work: Path) -> None:
    rows = list(csv.DictReader(POWER_CSV.open(newline="")))
    by_gpu: dict[str, list[float]] = defaultdict(list)
    print(f"{'gpu':<10} {'model':<16} {'batch':>5} {'measured W':>10} {'OpenDC W':>9} {'error %':>8}")
    t0 = time.monotonic()
    for row in rows:
        exp = one_gpu_experiment(row, work)
        out = work / exp.stem
        kavier("run", exp, "--out", out, "--no-plots")
        report = json.loads((out / "report.json").read_text())
        gpus = report["sustainability"]["per_gpu"]
        assert len(gpus) == 1, gpus
        predicted = gpus[0]["avg_power_w"]
        measured = float(row["avg_power_w"])
        err = 100.0 * (predicted - measured) / measured
        by_gpu[row["gpu"]].append(abs(err))
        print(
            f"{row['gpu']:<10} {row['model']:<16} {int(row['batch_size']):>5} {measured:>10.1f} "
            f"{predicted:>9.1f} {err:>+8.1f}"
        )
    for gpu, errs in by_gpu.items():
        print(f"MAPE {gpu}: {sum(errs) / len(errs):.1f} % over {len(errs)} rows")
    every = [e for errs in by_gpu.values() for e in errs]
    print(f"MAPE all: {sum(every) / len(every):.1f} % over {len(every)} rows ({time.monotonic() - t0:.0f} s)")


def fragments(work: Path) -> None:
    sim = work / "azure-sim"
    kavier(
        "simulate",
        "--model",
        "llama-3-8b",
        "--gpu",
        "a100-80gb",
        "--replicas",
        "2",
        "--trace",
        AZURE_CONV,
        "--out",
        sim,
        "--quiet",
    )
    dc = work / "dc.yaml"
    dc.write_text(
        yaml.safe_dump(
            {
                "name": "azure-dc",
                "export_interval_s": 1,
                "hosts": [
                    {
                        "name": "node",
                        "count": 1,
                        "gpus_per_host": 2,
                        "gpu": "A100-80GB",
                        "cpu": {"cores": 32, "mhz": 2400, "count": 1},
                        "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
                        "memory_gib": 512,
                    }
                ],
            }
        )
    )
    results = {}
    for label, extra in (
        ("adaptive 0.02", ["--mode", "adaptive", "--tolerance", "0.02"]),
        ("adaptive 0.05", ["--mode", "adaptive", "--tolerance", "0.05"]),
        ("adaptive 0.1", ["--mode", "adaptive", "--tolerance", "0.1"]),
        ("interval 0.1 s", ["--mode", "interval", "--interval", "0.1"]),
    ):
        odc = work / ("odc-" + label.replace(" ", "-"))
        kavier("export-opendc", sim, "--datacenter", dc, "--out", odc, *extra, "--quiet")
        n_frag = sum(1 for _ in _fragment_rows(odc))
        t0 = time.monotonic()
        kavier("opendc", odc, "--quiet")
        wall = time.monotonic() - t0
        sus = json.loads((odc / "sustainability.json").read_text())
        results[label] = (n_frag, sus["energy_wh"], sus["gpu_energy_wh"], sus["peak_power_w"], wall)
    base = results["interval 0.1 s"]
    print(
        f"{'export':<16} {'fragments':>10} {'OpenDC Wh':>10} {'GPU Wh':>9} {'vs interval':>12} {'peak W':>7} "
        f"{'OpenDC s':>9}"
    )
    for label, (n, e, g, peak, wall) in results.items():
        print(
            f"{label:<16} {n:>10,} {e:>10.3f} {g:>9.3f} {100 * (e - base[1]) / base[1]:>+11.3f}% {peak:>7.0f} "
            f"{wall:>9.1f}"
        )
    for label, (n, *_rest) in results.items():
        if label != "interval 0.1 s":
            print(f"{label}: {base[0] / n:.1f}x fewer fragments than the 0.1 s interval export")


def _fragment_rows(odc: Path):
    import pyarrow.parquet as pq

    yield from range(pq.ParquetFile(odc / "workload" / "fragments.parquet").metadata.num_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["power", "fragments"])
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        {"power": power, "fragments": fragments}[args.what](work)


if __name__ == "__main__":
    main()
