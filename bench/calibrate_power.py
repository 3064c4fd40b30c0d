"""Calibrate the power-relevant activity weights on measured GPU power.

Data: ../shared/data/measurements/gpu_power_vllm_batch.csv (Argonne
LLM-Inference-Bench: average GPU power of vLLM serving Llama-2-7B and
Llama-3-8B, 1024 input and 1024 output tokens, batch 1-64, on one A100-40GB
and one H100). Each row is simulated (a batch of identical requests arriving
together); the simulated timeline's activity u gives a power
idle + (max - idle) * u with the catalogue's idle and maximum power (the
linear model OpenDC uses). Two weights (compute, memory) of the activity
are chosen on a grid to minimise the mean absolute percentage error, per GPU
with measurements and over all rows for the others: bench/build_profiles.py
calls ``fit_weights`` and writes them into each profile
(``power_compute_weight``, ``power_memory_weight``).

Usage: python bench/calibrate_power.py [--fit]
Without --fit: the error of each GPU profile's own weights; --fit: one pair for all.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace

DATA = (Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
        / "measurements" / "gpu_power_vllm_batch.csv")
MODEL_NAMES = {"Llama-2-7b-hf": "Llama-2-7B", "Meta-Llama-3-8B": "Llama-3-8B"}


def load_rows(path: Path = DATA) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def simulated_power(row: dict, weights: tuple[float, float] | None = None, catalog=None) -> float:
    """Average GPU power (W) of one measurement row as the simulator predicts it.

    ``weights`` (compute, memory) replace the GPU profile's activity weights;
    ``catalog`` (default: the built-in one) gives the GPU and its profile.
    """
    cat = catalog or default_catalog()
    gpu = cat.gpu(row["gpu"])
    eff = gpu.profile
    if weights is not None:
        eff = dataclasses.replace(eff, power_compute_weight=weights[0], power_memory_weight=weights[1])
    model = cat.model(MODEL_NAMES.get(row["model"], row["model"]))
    b = int(row["batch_size"])
    trace = Trace(np.zeros(b), np.full(b, int(row["input_tokens"]), dtype=np.int64),
                  np.full(b, int(row["output_tokens"]), dtype=np.int64))
    res = simulate(trace, SimConfig(model=model, gpu=gpu, max_num_seqs=b, efficiency=eff), progress=False)
    tl = res.replicas[0].timeline
    d = np.asarray(tl.end) - np.asarray(tl.start)
    u = float(np.dot(d, np.asarray(tl.util)) / d.sum())
    return gpu.idle_power_w + (gpu.max_power_w - gpu.idle_power_w) * u


def evaluate(rows: list[dict], weights: tuple[float, float] | None = None) -> tuple[float, list[tuple]]:
    table = []
    for r in rows:
        p = simulated_power(r, weights)
        m = float(r["avg_power_w"])
        table.append((r["gpu"], r["model"], int(r["batch_size"]), m, p, 100 * (p - m) / m))
    return float(np.mean([abs(t[5]) for t in table])), table


def fit_weights(rows: list[dict], catalog=None) -> dict[str, tuple[float, float]]:
    """Weights per measured GPU (catalogue name) and, under '*', over all rows."""
    cat = catalog or default_catalog()
    out = {"*": fit(rows, cat)}
    for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
        out[name] = fit([r for r in rows if cat.gpu(r["gpu"]).name == name], cat)
    return out


def fit(rows: list[dict], catalog=None) -> tuple[float, float]:
    """Grid search of the two weights (activity is linear in them, so two simulations per row suffice)."""
    cat = catalog or default_catalog()
    parts = []
    for r in rows:
        gpu = cat.gpu(r["gpu"])
        span = gpu.max_power_w - gpu.idle_power_w
        u_c = (simulated_power(r, (1.0, 0.0), cat) - gpu.idle_power_w) / span
        u_m = (simulated_power(r, (0.0, 1.0), cat) - gpu.idle_power_w) / span
        parts.append((u_c, u_m, gpu.idle_power_w, span, float(r["avg_power_w"])))
    best = None
    for wc in np.arange(0.0, 4.001, 0.05):
        for wm in np.arange(0.0, 2.001, 0.05):
            err = np.mean([abs(idle + span * min(1.0, wc * uc + wm * um) - m) / m for uc, um, idle, span, m in parts])
            if best is None or err < best[0]:
                best = (err, (round(float(wc), 2), round(float(wm), 2)))
    return best[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="grid-search the two weights")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"measurements not found: {DATA}", file=sys.stderr)
        return 1
    rows = load_rows()
    weights = None  # each GPU's profile
    if args.fit:
        weights = fit(rows)
    mape, table = evaluate(rows, weights)
    if weights is None:
        for name in sorted({default_catalog().gpu(r["gpu"]).name for r in rows}):
            p = default_catalog().gpu(name).profile
            print(f"{name}: weights compute {p.power_compute_weight}, memory {p.power_memory_weight}")
    else:
        print(f"weights (all GPUs): compute {weights[0]}, memory {weights[1]}")
    print("| GPU | model | batch | measured W | simulated W | err % |")
    print("|---|---|---:|---:|---:|---:|")
    for g, m, b, meas, sim, err in table:
        print(f"| {g} | {m} | {b} | {meas:.1f} | {sim:.1f} | {err:+.1f} |")
    print(f"power MAPE {mape:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
