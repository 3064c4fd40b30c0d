"""Calibrate the cost model's efficiency constants on the A10 measurements.

Data: ../shared/data/measurements/kavier_a10_llama3_8b_vllm.csv (vLLM,
Llama-3-8B FP16, one A10, single requests; Kavier reproducibility capsule).
Each row gives a prefill time (TTFT of a prompt alone) and a decode time (end
to end minus TTFT, 7-token prompt). The five global constants of
``Efficiency`` (mfu, attn_eff, mbu, overlap, overhead_s) are chosen to minimise the mean
of the prefill and decode MAPEs over *all* rows at once (coordinate search
over a bounded, physically plausible box); no row gets its own constant.

Usage: python bench/calibrate_a10.py [--fit]
Without --fit it prints the table and MAPEs of the constants in the code.
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

DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "measurements" / "kavier_a10_llama3_8b_vllm.csv"


def load_rows(path: Path = DATA) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def single_request(prompt: int, output: int, eff: Efficiency) -> tuple[float, float]:
    """(TTFT, e2e - TTFT) of one request alone on one A10 serving Llama-3-8B."""
    cat = default_catalog()
    trace = Trace(np.zeros(1), np.array([prompt], dtype=np.int64), np.array([output], dtype=np.int64))
    cfg = SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A10"), efficiency=eff)
    res = simulate(trace, cfg, progress=False).results
    return float(res.first_token[0]), float(res.finish[0] - res.first_token[0])


def evaluate(rows: list[dict], eff: Efficiency) -> tuple[float, float, list[tuple]]:
    table = []
    for r in rows:
        ttft, _ = single_request(int(r["prefill_input_tokens"]), 1, eff)
        _, dec = single_request(int(r["decode_input_tokens"]), int(r["decode_output_tokens"]), eff)
        table.append((int(r["prefill_input_tokens"]), r["reality_prefill"], ttft, r["kavier_prefill"],
                      int(r["decode_output_tokens"]), r["reality_decode"], dec, r["kavier_decode"]))
    pre = float(np.mean([abs(t[2] - t[1]) / t[1] for t in table])) * 100
    dec = float(np.mean([abs(t[6] - t[5]) / t[5] for t in table])) * 100
    return pre, dec, table


BOUNDS = {"mfu": (0.2, 0.9), "attn_eff": (0.1, 0.9), "mbu": (0.5, 0.95), "overlap": (0.0, 1.0),
          "overhead_s": (0.0, 0.02)}


def fit(rows: list[dict], start: Efficiency) -> Efficiency:
    best = start
    best_score = sum(evaluate(rows, best)[:2])
    step = {k: (hi - lo) / 4 for k, (lo, hi) in BOUNDS.items()}
    for _ in range(60):
        improved = False
        for k, (lo, hi) in BOUNDS.items():
            for sign in (1, -1):
                v = min(hi, max(lo, getattr(best, k) + sign * step[k]))
                cand = dataclasses.replace(best, **{k: v})
                score = sum(evaluate(rows, cand)[:2])
                if score < best_score - 1e-9:
                    best, best_score, improved = cand, score, True
        if not improved:
            step = {k: s / 2 for k, s in step.items()}
            if max(s / (BOUNDS[k][1] - BOUNDS[k][0]) for k, s in step.items()) < 1e-3:
                break
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="search the constants instead of using the code's")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"measurements not found: {DATA}", file=sys.stderr)
        return 1
    rows = load_rows()
    eff = fit(rows, DEFAULT_EFFICIENCY) if args.fit else DEFAULT_EFFICIENCY
    pre, dec, table = evaluate(rows, eff)
    print(f"constants: mfu={eff.mfu:.4f} attn_eff={eff.attn_eff:.4f} mbu={eff.mbu:.4f} "
          f"overlap={eff.overlap:.4f} overhead_s={eff.overhead_s:.5f}")
    print("| prompt | real prefill s | sim prefill s | err % | Kavier proto s | out tokens | real decode s "
          "| sim decode s | err % | Kavier proto s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, rp, sp, kp, o, rd, sd, kd in table:
        print(f"| {p} | {rp:.3f} | {sp:.3f} | {100 * (sp - rp) / rp:+.1f} | {kp:.3f} | {o} | {rd:.3f} | "
              f"{sd:.3f} | {100 * (sd - rd) / rd:+.1f} | {kd:.3f} |")
    kp = np.mean([abs(t[3] - t[1]) / t[1] for t in table]) * 100
    kd = np.mean([abs(t[7] - t[5]) / t[5] for t in table]) * 100
    print(f"prefill MAPE {pre:.2f}% (Kavier prototype {kp:.2f}%), decode MAPE {dec:.2f}% (prototype {kd:.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
