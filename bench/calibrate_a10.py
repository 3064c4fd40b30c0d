"""Check the A10 profile against the A10 measurements, through the whole simulator.

Data: ../shared/data/measurements/kavier_a10_llama3_8b_vllm.csv (vLLM,
Llama-3-8B FP16, one A10, single requests; Kavier reproducibility capsule).
Each row gives a prefill time (TTFT of a prompt alone) and a decode time (end
to end minus TTFT, 7-token prompt). The A10's profile is fitted on this table
(with the other GPUs' data) by ``bench/build_profiles.py`` / ``kavier
calibrate``, by minimising the relative error over *all* rows at once; no row
gets its own constant. This script simulates every row with the engine and
prints the table and the MAPEs.

Usage: python bench/calibrate_a10.py
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.profiles import GPUProfile
from kavier_opendc.workload.trace import Trace

DATA = (
    Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    / "measurements"
    / "kavier_a10_llama3_8b_vllm.csv"
)


def load_rows(path: Path = DATA) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def single_request(prompt: int, output: int, eff: GPUProfile | None = None) -> tuple[float, float]:
    """(TTFT, e2e - TTFT) of one request alone on one A10 serving Llama-3-8B."""
    cat = default_catalog()
    trace = Trace(np.zeros(1), np.array([prompt], dtype=np.int64), np.array([output], dtype=np.int64))
    cfg = SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A10"), efficiency=eff)
    res = simulate(trace, cfg, progress=False).results
    return float(res.first_token[0]), float(res.finish[0] - res.first_token[0])


def evaluate(rows: list[dict], eff: GPUProfile | None = None) -> tuple[float, float, list[tuple]]:
    """(prefill MAPE %, decode MAPE %, table) of ``eff`` (default: the catalogue's A10 profile)."""
    table = []
    for r in rows:
        ttft, _ = single_request(int(r["prefill_input_tokens"]), 1, eff)
        _, dec = single_request(int(r["decode_input_tokens"]), int(r["decode_output_tokens"]), eff)
        table.append(
            (
                int(r["prefill_input_tokens"]),
                r["reality_prefill"],
                ttft,
                r["kavier_prefill"],
                int(r["decode_output_tokens"]),
                r["reality_decode"],
                dec,
                r["kavier_decode"],
            )
        )
    pre = float(np.mean([abs(t[2] - t[1]) / t[1] for t in table])) * 100
    dec = float(np.mean([abs(t[6] - t[5]) / t[5] for t in table])) * 100
    return pre, dec, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)
    if not DATA.exists():
        print(f"measurements not found: {DATA}", file=sys.stderr)
        return 1
    rows = load_rows()
    eff = default_catalog().gpu("A10").profile
    pre, dec, table = evaluate(rows, eff)
    print(
        f"A10 profile ({eff.status}): gemm_mbu={eff.gemm_mbu:.4f} gemm_mfu={eff.gemm_mfu:.4f} "
        f"attn_prefill_eff={eff.attn_prefill_eff:.4f} attn_decode_mbu={eff.attn_decode_mbu:.4f} "
        f"overhead_fixed_s={eff.overhead_fixed_s:.5f}"
    )
    print(
        "| prompt | real prefill s | sim prefill s | err % | Kavier proto s | out tokens | real decode s "
        "| sim decode s | err % | Kavier proto s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, rp, sp, kp, o, rd, sd, kd in table:
        print(
            f"| {p} | {rp:.3f} | {sp:.3f} | {100 * (sp - rp) / rp:+.1f} | {kp:.3f} | {o} | {rd:.3f} | "
            f"{sd:.3f} | {100 * (sd - rd) / rd:+.1f} | {kd:.3f} |"
        )
    kp = np.mean([abs(t[3] - t[1]) / t[1] for t in table]) * 100
    kd = np.mean([abs(t[7] - t[5]) / t[5] for t in table]) * 100
    print(f"prefill MAPE {pre:.2f}% (Kavier prototype {kp:.2f}%), decode MAPE {dec:.2f}% (prototype {kd:.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
