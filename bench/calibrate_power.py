"""Calibrate the power-relevant activity weights on measured GPU power.

Data: ../shared/data/measurements/gpu_power_vllm_batch.csv (Argonne
LLM-Inference-Bench: average GPU power of vLLM serving Llama-2-7B and
Llama-3-8B, 1024 input and 1024 output tokens, batch 1-64, on one A100-40GB
and one H100). Each row is simulated (a batch of identical requests arriving
together); the simulated timeline's activity u gives a power
idle + (max - idle) * u with the catalogue's idle and maximum power (the
linear model OpenDC uses). Two global weights (compute, memory) of the
activity are chosen on a grid to minimise the mean absolute percentage error.

Usage: python bench/calibrate_power.py [--fit]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from kavier_opendc.engine.cost_model import DEFAULT_EFFICIENCY, Efficiency
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace

DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "measurements" / "gpu_power_vllm_batch.csv"
MODEL_NAMES = {"Llama-2-7b-hf": "Llama-2-7B", "Meta-Llama-3-8B": "Llama-3-8B"}


def load_rows(path: Path = DATA) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def simulated_power(row: dict, eff: Efficiency) -> float:
    """Average GPU power (W) of one measurement row as the simulator predicts it."""
    cat = default_catalog()
    gpu = cat.gpu(row["gpu"])
    model = cat.model(MODEL_NAMES.get(row["model"], row["model"]))
    b = int(row["batch_size"])
    trace = Trace(np.zeros(b), np.full(b, int(row["input_tokens"]), dtype=np.int64),
                  np.full(b, int(row["output_tokens"]), dtype=np.int64))
    res = simulate(trace, SimConfig(model=model, gpu=gpu, max_num_seqs=b, efficiency=eff), progress=False)
    tl = res.replicas[0].timeline
    d = np.asarray(tl.end) - np.asarray(tl.start)
    u = float(np.dot(d, np.asarray(tl.util)) / d.sum())
    return gpu.idle_power_w + (gpu.max_power_w - gpu.idle_power_w) * u


def evaluate(rows: list[dict], eff: Efficiency) -> tuple[float, list[tuple]]:
    table = []
    for r in rows:
        p = simulated_power(r, eff)
        m = float(r["avg_power_w"])
        table.append((r["gpu"], r["model"], int(r["batch_size"]), m, p, 100 * (p - m) / m))
    return float(np.mean([abs(t[5]) for t in table])), table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="grid-search the two weights")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"measurements not found: {DATA}", file=sys.stderr)
        return 1
    rows = load_rows()
    eff = DEFAULT_EFFICIENCY
    if args.fit:
        best = None
        for wc in np.arange(0.0, 4.01, 0.1):
            for wm in np.arange(0.5, 2.01, 0.1):
                cand = dataclasses.replace(eff, power_compute_weight=round(wc, 2), power_memory_weight=round(wm, 2))
                score = evaluate(rows, cand)[0]
                if best is None or score < best[0]:
                    best = (score, cand)
        eff = best[1]
    mape, table = evaluate(rows, eff)
    print(f"weights: compute {eff.power_compute_weight}, memory {eff.power_memory_weight}")
    print("| GPU | model | batch | measured W | simulated W | err % |")
    print("|---|---|---:|---:|---:|---:|")
    for g, m, b, meas, sim, err in table:
        print(f"| {g} | {m} | {b} | {meas:.1f} | {sim:.1f} | {err:+.1f} |")
    print(f"power MAPE {mape:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
