"""Fit the ``trtllm-0.17`` and ``trtllm-1.0`` step overheads on TensorRT-LLM's published throughput tables.

Source: calibration/trtllm_perf_overview.csv (TensorRT-LLM's docs/source/performance/perf-overview.md
@ 258c7540c035, v0.17: the TRT engine with in-flight batching; @ 00f37686aa85, v1.0: the PyTorch backend;
both ``trtllm-bench throughput``, output tokens/s of all TP GPUs together). Every row is simulated as
trtllm-bench runs it: a batch of requests of the row's ISL/OSL at t = 0, the engine's ``max_batch_size`` /
``max_num_tokens`` from trtllm-bench's own heuristic (``calc_engine_setting``, below), FP8 weights and KV
cache on FP8 rows, KV memory 95 % of what the weights leave. With every request there at t = 0 the
iterations do not depend on time, so the makespan is linear in the two overhead terms: three simulations
per row give it exactly, and the fit is a bounded linear least squares on relative errors. Each version is
fitted on one GPU's decode-dominated rows (H100-SXM, Llama-3.1-8B FP8, TP 1, OSL >= ISL), the GPU profiles
held fixed; every other row is held out.

    python bench/build_trtllm.py           # rewrite the fitted block in frameworks.yaml, print the tables
    python bench/build_trtllm.py --check   # fail if the committed block differs from a refit
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data")
OUT = REPO / "kavier_opendc" / "specs" / "frameworks.yaml"
SOURCE = "calibration/trtllm_perf_overview.csv"
#: framework -> (the table's version, its model names -> the catalogue's, its GPU names -> the catalogue's)
PROFILES = {
    "trtllm-0.17": (
        "0.17",
        {"LLaMA v3.1 8B": "Llama-3.1-8B", "LLaMA v3.1 70B": "Llama-3.1-70B", "Mistral 7B": "Mistral-7B"},
        {"H100 80GB HBM3": "H100-SXM", "H200 141GB HBM3": "H200", "A100-SXM4-80GB": "A100-80GB", "L40S": "L40S"},
    ),
    # Llama 3.3 70B has Llama 3.1 70B's architecture (the same config.json dimensions): the catalogue's
    "trtllm-1.0": (
        "1.0",
        {"Llama 3.1 8B": "Llama-3.1-8B", "Llama 3.3 70B": "Llama-3.1-70B"},
        {"H100": "H100-SXM", "H200": "H200"},
    ),
}
FIT = ("H100-SXM", "Llama-3.1-8B", 1)  # (GPU, model, TP) of the fitted rows: those with OSL >= ISL
#: trtllm-bench warns below this KV memory per GPU (calc_engine_setting): such rows are listed apart
STARVED_GB = 10.0
#: requests per row: three batches' worth, at least 1,000 (perf-overview's own counts are not in the csv)
MIN_REQUESTS = 1000
BATCHES = 3
KV_FREE_FRACTION = 0.95  # trtllm-bench's kv_cache_free_gpu_mem_fraction (calc_engine_setting's default)


@dataclass
class Row:
    profile: str  # the framework fitted on this row's version
    model: str
    gpu: str
    precision: str
    tp: int
    isl: int
    osl: int
    tok_s: float  # output tokens/s, all GPUs of the row
    line: int


@dataclass
class Result:
    row: Row
    base_s: float  # makespan without overhead
    per_fixed: float  # makespan per second of fixed overhead (= iterations)
    per_seq: float  # makespan per second of per-sequence overhead (= sequence-iterations)
    max_bs: int
    max_tokens: int
    rejected: int
    n: int  # requests simulated
    kv_gb_per_gpu: float  # trtllm-bench's estimate of the KV memory per GPU

    @property
    def fitted(self) -> bool:
        return is_fitted(self.row)

    @property
    def kind(self) -> str:
        if self.fitted:
            return "fitted"
        return "KV < 10 GB/GPU" if self.kv_gb_per_gpu < STARVED_GB else "held out"

    def tok_s(self, fixed: float, per_seq: float) -> float:
        t = self.base_s + fixed * self.per_fixed + per_seq * self.per_seq
        return (self.n - self.rejected) * self.row.osl / t


def read_rows(data: Path = DATA, name: str = "trtllm-0.17") -> tuple[list[Row], list[str]]:
    """The rows of ``name``'s version on the catalogue's models and GPUs, and why each other is not simulated."""
    version, models, gpus = PROFILES[name]
    rows, left = [], []
    with open(data / SOURCE, newline="", encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh), start=2):
            if r["trtllm_version"] != version or r["metric"] != "throughput":
                continue
            model, gpu = models.get(r["model"]), gpus.get(r["gpu"])
            why = None
            if model is None:
                why = f"model {r['model']} is not mapped to a catalogue model here (MoE, 405B, FP4: outside this fit)"
            elif gpu is None:
                why = f"GPU {r['gpu']} is not mapped to a catalogue GPU here"
            elif int(r["pp"]) != 1:
                why = "pipeline parallelism is not modelled"
            if why:
                left.append(f"line {i}: {r['model']} {r['gpu']} TP{r['tp']} PP{r['pp']}: {why}")
                continue
            rows.append(
                Row(
                    name,
                    model,
                    gpu,
                    r["precision"],
                    int(r["tp"]),
                    int(r["isl"]),
                    int(float(r["osl"])),
                    float(r["value"]),
                    i,
                )
            )
    return rows, left


def engine_setting(model, gpu, tp: int, isl: int, osl: int, fp8: bool) -> tuple[int, int, float]:
    """trtllm-bench's engine build heuristic (tensorrt_llm/bench/build/tuning.py ``calc_engine_setting`` and
    ``finetune_setting``): requests whose ISL+OSL fit the KV memory, capped at 4,096, rounded up; the
    token budget that many requests' share of ISL/OSL, at least 2,048 and at most 32,768. Also returns the
    heuristic's KV memory per GPU (GB)."""
    bytes_w = 1 if fp8 else 2
    engine_gb = model.total_params / 1e9 * bytes_w  # the heuristic counts 10^9 parameters x bytes as GB of 2^30
    kv_heads = max(tp, model.num_kv_heads)
    per_token_gb = 2 * model.num_layers * kv_heads * model.dim_head * bytes_w / 1024**3
    kv_gb = (gpu.memory_gib * tp - engine_gb) * KV_FREE_FRACTION
    kv_requests = kv_gb / per_token_gb / (isl + osl)
    raw_bs = min(kv_requests, 4096)
    raw_tok = min(raw_bs * (1 + isl / osl), 32768)
    if raw_bs < 256:
        bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        bs = 128 * math.ceil(raw_bs / 128)
    else:
        bs = 256 * math.ceil(raw_bs / 256)
    if raw_tok < 4096:
        tok = max(2048, 256 * math.ceil(raw_tok / 256))
    elif raw_tok < 8192:
        tok = 512 * math.ceil(raw_tok / 512)
    else:
        tok = 1024 * math.ceil(raw_tok / 1024)
    return bs, tok, kv_gb / tp


def simulate_row(row: Row, cat) -> Result:
    """The row's makespan and its slopes in the two overhead terms (three simulations)."""
    from kavier_opendc.engine.results import REJECTED
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.specs.frameworks import StepOverhead, framework
    from kavier_opendc.workload.trace import Trace

    model, gpu = cat.model(row.model), cat.gpu(row.gpu)
    fp8 = row.precision == "FP8"
    bs, tok, kv_gb = engine_setting(model, gpu, row.tp, row.isl, row.osl, fp8)
    n = max(MIN_REQUESTS, BATCHES * bs)
    tr = Trace(np.zeros(n), np.full(n, row.isl), np.full(n, row.osl), source=SOURCE, format="kavier", timed=False)
    base = framework(row.profile)
    weights = model.total_params * (1 if fp8 else 2) / row.tp
    util = KV_FREE_FRACTION + (1 - KV_FREE_FRACTION) * weights / gpu.memory_bytes
    spans = []
    for fixed, per_seq in ((0.0, 0.0), (1e-3, 0.0), (0.0, 1e-5)):
        fw = dataclasses.replace(base, step_overhead={("*", "*"): StepOverhead(fixed, per_seq)})
        cfg = SimConfig(
            model=model,
            gpu=gpu,
            tp=row.tp,
            framework=fw,
            max_num_seqs=bs,
            max_batched_tokens=tok,
            gpu_memory_utilization=min(util, 0.99),
            max_model_len=row.isl + row.osl,
            **({"weight_dtype": "fp8", "kv_cache_dtype": "fp8"} if fp8 else {}),
        )
        res = simulate(tr, cfg, progress=False)
        spans.append(res.makespan_s)
        rejected = int((res.results.status == REJECTED).sum())
    slopes = ((spans[1] - spans[0]) / 1e-3, (spans[2] - spans[0]) / 1e-5)
    return Result(row, spans[0], *slopes, bs, tok, rejected, n, kv_gb)


def fit(results: list[Result]) -> tuple[float, float]:
    """Fixed and per-sequence overhead (s) minimising the squared relative errors of the makespans, >= 0."""
    a, b = [], []
    for r in results:
        measured_s = (r.n - r.rejected) * r.row.osl / r.row.tok_s
        a.append([r.per_fixed / measured_s, r.per_seq / measured_s])
        b.append(1 - r.base_s / measured_s)
    am, bm = np.array(a), np.array(b)
    x = np.linalg.lstsq(am, bm, rcond=None)[0]
    if (x >= 0).all():
        return float(x[0]), float(x[1])
    # a bound is active: the better of the two one-term fits (each clipped at 0)
    best = None
    for j in (0, 1):
        col = am[:, j]
        v = max(0.0, float(col @ bm / (col @ col)))
        cand = np.zeros(2)
        cand[j] = v
        sse = float(((am @ cand - bm) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, cand)
    assert best is not None
    return float(best[1][0]), float(best[1][1])


def is_fitted(row: Row) -> bool:
    """The fitted rows: the fitted GPU's, decode-dominated (OSL >= ISL), where a step overhead shows."""
    return (row.gpu, row.model, row.tp) == FIT and row.osl >= row.isl


def fitted_overhead(
    data: Path = DATA, name: str = "trtllm-0.17", results: list[Result] | None = None
) -> tuple[float, float]:
    """The fitted (fixed_s, per_seq_s) at 4 significant digits, simulating the fitted rows only unless given."""
    if results is None:
        from kavier_opendc.specs import default_catalog

        cat = default_catalog()
        results = [simulate_row(r, cat) for r in read_rows(data, name)[0] if is_fitted(r)]
    fixed, per_seq = fit([r for r in results if r.fitted])
    return float(f"{fixed:.4g}"), float(f"{per_seq:.4g}")


def rebuild(text: str, data: Path = DATA) -> tuple[str, list[str]]:
    """``text`` with every profile's fitted block refitted, and the error tables' lines."""
    lines: list[str] = []
    for name in PROFILES:
        text, more = rebuild_one(text, name, data)
        lines += more + [""]
    return text, lines


def rebuild_one(text: str, name: str, data: Path = DATA) -> tuple[str, list[str]]:
    from kavier_opendc.specs import default_catalog

    cat = default_catalog()
    rows, left = read_rows(data, name)
    results = [simulate_row(r, cat) for r in rows]
    fitted = [r for r in results if r.fitted]
    fixed, per_seq = fitted_overhead(data, name, results)
    gpu, _, tp = FIT
    block = "    step_overhead:\n      - {gpu: " + f"{gpu}, tp: {tp}, fixed_s: {fixed}, per_seq_s: {per_seq}" + "}"
    pattern = re.compile(rf"(# BEGIN fitted {re.escape(name)}\n)(?:.*?\n)??([ ]*# END fitted {re.escape(name)})", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no '# BEGIN fitted {name}' block in {OUT}")
    text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    at = [r.tok_s(5e-4, 0.0) / r.row.tok_s - 1 for r in fitted]
    lines = [
        f"{name}: fixed {1e3 * fixed:.3f} ms/step, {1e6 * per_seq:.2f} us/sequence, fitted on "
        f"{len(fitted)} rows ({FIT[1]} on {FIT[0]}, TP {FIT[2]}, OSL >= ISL); with 0.5 ms/step instead the "
        f"fitted rows' MAPE would be {100 * np.mean(np.abs(at)):.1f} % (mean {100 * np.mean(at):+.1f} %)",
        "",
        "| set | model | GPU | precision | TP | rows | MAPE | mean signed error |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[float]] = {}
    detail = ["", "| set | model | GPU | prec | TP | ISL/OSL | batch/tokens | measured tok/s | simulated | error |"]
    detail.append("|---|---|---|---|---:|---|---|---:|---:|---:|")
    for r in results:
        sim = r.tok_s(fixed, per_seq)
        err = (sim - r.row.tok_s) / r.row.tok_s
        groups.setdefault((r.kind, r.row.model, r.row.gpu, r.row.precision, r.row.tp), []).append(err)
        detail.append(
            f"| {r.kind} | {r.row.model} | {r.row.gpu} | {r.row.precision} | {r.row.tp} | {r.row.isl}/{r.row.osl} "
            f"| {r.max_bs}/{r.max_tokens} | {r.row.tok_s:.0f} | {sim:.0f} | {100 * err:+.1f} % |"
            + (f" {r.rejected} of {r.n} rejected" if r.rejected else "")
        )
    order = {"fitted": 0, "held out": 1}
    for (kind, model, g, prec, t), errs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0][1:])):
        e = np.array(errs)
        lines.append(
            f"| {kind} | {model} | {g} | {prec} | {t} | {len(e)} | {100 * np.mean(np.abs(e)):.1f} % "
            f"| {100 * np.mean(e):+.1f} % |"
        )
    for kind in ("fitted", "held out", "KV < 10 GB/GPU"):
        e = np.array([x for k, v in groups.items() if k[0] == kind for x in v])
        if len(e):
            lines.append(
                f"| **all {kind}** | | | | | {len(e)} | {100 * np.mean(np.abs(e)):.1f} % | {100 * np.mean(e):+.1f} % |"
            )
    lines += detail
    lines += ["", f"{len(left)} rows of version {PROFILES[name][0]} not simulated:"] + [f"  {x}" for x in left]
    return text, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = ap.parse_args(argv)
    if not (DATA / SOURCE).exists():
        print(f"measurements not found: {DATA / SOURCE}", file=sys.stderr)
        return 1
    old = OUT.read_text(encoding="utf-8")
    new, lines = rebuild(old)
    print("\n".join(lines))
    if args.check:
        print("frameworks.yaml is up to date" if new == old else "frameworks.yaml differs from a refit")
        return 0 if new == old else 1
    OUT.write_text(new, encoding="utf-8")
    print(f"\nwrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
