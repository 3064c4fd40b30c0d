"""A check of the MoE cost model against measurements, not a fit: measured TPOT at low concurrency vs the
simulated decode step.

Reads the MoE rows of AIConfigurator's H100 end-to-end measurements
(``calibration/aiconfigurator_e2e_h100.csv``: Qwen3-235B-A22B-FP8 on TRT-LLM, gpt-oss-120b on vLLM; closed
loop of C clients, fixed ISL/OSL) with C <= 8, aggregated serving, and a layout the engine models (experts
all EP over the TP GPUs, or all TP). Each row's mean TPOT is set against the cost model's decode step of a
batch of C sequences at context ISL + OSL/2 (the mean context of a decode step), on the row's TP/EP and
precision, nothing fitted to these rows. A closed loop also runs the clients' prefills between decode steps
(chunked into them), which a pure decode step leaves out: the measured TPOT includes them.

    python bench/moe_tpot_check.py            # a Markdown table
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CSV = DATA / "calibration" / "aiconfigurator_e2e_h100.csv"
MODELS = {"Qwen/Qwen3-235B-A22B-FP8": "Qwen3-235B-A22B", "openai/gpt-oss-120b": "gpt-oss-120b"}
MAX_C = 8


def rows():
    import pandas as pd

    d = pd.read_csv(CSV)
    d = d[d.model_path.isin(list(MODELS)) & (d["mode"] == "agg") & (d.concurrency <= MAX_C)]
    d = d[(d.moe_ep_size == d.tp_size) | (d.moe_tp_size == d.tp_size)]  # EP over all, or TP over all
    d = d[d.attention_dp_size.fillna(1) == 1]
    keys = ["model_path", "backend", "backend_version", "precision", "moe_quant_mode", "tp_size", "moe_ep_size"]
    keys += ["isl", "osl", "concurrency"]
    return d.drop_duplicates(keys).sort_values(["model_path", "tp_size", "isl", "osl", "concurrency"])


def predicted_step_s(row) -> tuple[float, str]:
    from kavier_opendc.engine.cost_model import CostModel
    from kavier_opendc.specs import default_catalog

    cat = default_catalog()
    model = cat.model(MODELS[row.model_path])
    tp, ep = int(row.tp_size), int(row.moe_ep_size) > 1
    if row.precision == "fp8":  # FP8 weights everywhere (block FP8 for Qwen3), bf16 activations and KV
        model = dataclasses.replace(model, dtype="fp8", expert_dtype=None)
    elif row.moe_quant_mode == "nvfp4":  # the row's expert quantisation (4.5 bits), weight-only on the H100
        model = dataclasses.replace(model, expert_dtype="nvfp4")
    model = dataclasses.replace(model, expert_parallel=ep)
    cm = CostModel(model, cat.gpu("H100-SXM"), tp)
    c, ctx = int(row.concurrency), int(row.isl + row.osl / 2)
    t = cm.iteration(c, c * (ctx + 1), c * ctx, c)[0]
    layout = f"TP{tp}" + (f" EP{tp}" if ep else "")
    return t, layout


def main() -> int:
    print("| model | backend | precision | layout | ISL/OSL | C | measured TPOT ms | predicted step ms | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    errs = []
    for row in rows().itertuples():
        t, layout = predicted_step_s(row)
        meas = row.silicon_tpot_ms
        err = (t * 1e3 - meas) / meas
        errs.append(abs(err))
        ver = f"{row.backend} {row.backend_version}" if isinstance(row.backend_version, str) else row.backend
        print(
            f"| {MODELS[row.model_path]} | {ver} | {row.precision} ({row.moe_quant_mode}) | {layout} | "
            f"{int(row.isl)}/{int(row.osl)} | {int(row.concurrency)} | {meas:.2f} | {t * 1e3:.2f} | {err:+.0%} |"
        )
    if errs:
        print(f"\n{len(errs)} rows, mean absolute error {sum(errs) / len(errs):.0%}, max {max(errs):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
