"""Calibrate the power-relevant activity weights on measured GPU power.

Data: ../shared/data/measurements/gpu_power_vllm_batch.csv (Argonne
LLM-Inference-Bench: average GPU power of vLLM serving Llama-2-7B and
Llama-3-8B, 1024 input and 1024 output tokens, batch 1-64, on one A100-40GB
and one H100).

The engine that produced it: Argonne ran vLLM 0.5.x-0.6.x OFFLINE, through
vLLM's benchmark_latency (the ``LLM`` class: ``batch_size`` requests
submitted together; ../shared/data/calibration/README.md), on this same grid
of GPUs, models, lengths and batches. In the simulator that engine is the
framework ``vllm-0.5-offline`` (specs/frameworks.yaml), whose CPU time per
step (0.7-1.6 ms + 75-77 us per running sequence at TP 1) was fitted on
Argonne's batch latencies (the simulated batches of these 16 configurations
are 3.1 % off Argonne's latencies on average, 7.0 % at worst: printed beside
each row). Every row is simulated under it, so the activity is that of the
run whose power was measured.

How the CPU time counts: as GPU idle. It is part of each iteration's duration
and carries none of its FLOPs or bytes, so an iteration's activity is diluted
by it (power at the idle level for that share). The data supports that: on
the H100, where the CPU time is 20-34 % of each run, a fitted power level in
the gaps comes out at the idle level (``--gaps``: -0.12 of the idle-to-maximum
span, i.e. none above idle); the A100-40GB's gaps (5-16 %) are too short to
tell (its fitted level, -5.6, is no power level at all).

The activity of an iteration is w_c x (achieved / peak FLOP/s) + w_m x
(weight bytes / peak bandwidth) + w_kv x (KV-cache bytes / peak bandwidth),
capped at 1 (engine/cost_model.py); the power is
idle + (max - idle) x activity with the catalogue's idle and maximum power
(the linear model OpenDC uses). The three weights are chosen on a grid, then
refined, to minimise the mean absolute percentage error, per GPU with
measurements and over all rows for the others: bench/build_profiles.py calls
``fit_weights`` and writes them into each profile (``power_compute_weight``,
``power_memory_weight``, ``power_kv_weight``).

Physics check (printed last): the power the fitted weights give an H100 (and
an A100) in saturated decode of Llama-3-8B (256 sequences, vLLM v1) must come
near the GPU's maximum power, as real serving does.

Usage: python bench/calibrate_power.py [--fit] [--gaps] [--tied] [--mlenergy]
Without --fit: the error of each GPU profile's own weights; --fit: one triple for all GPUs;
--gaps: also fit a power level for the framework's CPU time per step; --tied: also fit one weight
for all bytes (for comparison); --mlenergy: also check ML.ENERGY's measured power (not fitted).
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

DATA = (
    Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    / "measurements"
    / "gpu_power_vllm_batch.csv"
)
MODEL_NAMES = {"Llama-2-7b-hf": "Llama-2-7B", "Meta-Llama-3-8B": "Llama-3-8B"}
# Argonne's batch latencies of the same grid: the timing of the runs whose power was measured
LATENCY = DATA.parents[1] / "calibration" / "argonne_vllm_batch_latency.csv"
# the simulator's framework for the engine that produced the file's rows (see the module doc)
FRAMEWORK = "vllm-0.5-offline"
WEIGHT_NAMES = ("power_compute_weight", "power_memory_weight", "power_kv_weight")
UNIT = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
# grid of the fit: coarse steps over these ranges, then a fine one around the best
RANGES = ((0.0, 3.0), (0.0, 2.0), (0.0, 3.0))
COARSE, FINE = 0.1, 0.01
# the physics check: saturated decode (sequences, prompt and output tokens of each)
SATURATED = (256, 512, 1024)


def load_rows(path: Path = DATA) -> list[dict]:
    """The measurement rows, each with the framework that produced it (``kavier_framework``)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.setdefault("kavier_framework", FRAMEWORK)
    return rows


def _profile(gpu, weights: tuple[float, ...] | None):
    eff = gpu.profile
    if weights is not None:
        eff = dataclasses.replace(eff, **dict(zip(WEIGHT_NAMES, weights, strict=True)))
    return eff


def _simulate_row(row: dict, weights: tuple[float, ...] | None, catalog, merge_tol: float = 1e-3):
    cat = catalog or default_catalog()
    gpu = cat.gpu(row["gpu"])
    model = cat.model(MODEL_NAMES.get(row["model"], row["model"]))
    b = int(row["batch_size"])
    trace = Trace(
        np.zeros(b),
        np.full(b, int(row["input_tokens"]), dtype=np.int64),
        np.full(b, int(row["output_tokens"]), dtype=np.int64),
    )
    cfg = SimConfig(
        model=model,
        gpu=gpu,
        max_num_seqs=b,
        efficiency=_profile(gpu, weights),
        framework=row.get("kavier_framework", FRAMEWORK),
        timeline_merge_tol=merge_tol,
    )
    return gpu, simulate(trace, cfg, progress=False)


def _mean_activity(res) -> float:
    tl = res.replicas[0].timeline
    d = np.asarray(tl.end) - np.asarray(tl.start)
    return float(np.dot(d, np.asarray(tl.util)) / d.sum())


def simulated_power(row: dict, weights: tuple[float, ...] | None = None, catalog=None) -> float:
    """Average GPU power (W) of one measurement row as the simulator predicts it.

    ``weights`` (compute, weight bytes, KV bytes) replace the GPU profile's
    activity weights; ``catalog`` (default: the built-in one) gives the GPU
    and its profile.
    """
    return simulated_run(row, weights, catalog)[0]


def simulated_run(row: dict, weights: tuple[float, ...] | None = None, catalog=None) -> tuple[float, float]:
    """(average GPU power in W, duration of the batch in s) of one measurement row as simulated."""
    gpu, res = _simulate_row(row, weights, catalog)
    return gpu.idle_power_w + (gpu.max_power_w - gpu.idle_power_w) * _mean_activity(res), float(res.makespan_s)


def measured_latencies(path: Path = LATENCY) -> dict[tuple[str, str, int], float]:
    """Argonne's batch latencies (s) of the same runs' grid, TP 1 and 1024 tokens in and out, by
    (GPU, catalogue model, batch); empty when the file is absent."""
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {
            (r["gpu"], r["model"], int(r["batch_size"])): float(r["latency_s"])
            for r in csv.DictReader(fh)
            if r["tp"] == "1" and r["in_out_tokens"] == "1024"
        }


def activity_parts(row: dict, catalog=None) -> tuple[np.ndarray, np.ndarray]:
    """(durations, parts): every iteration's (or decode run's) duration and its activity per unit weight.

    The timing does not depend on the weights, so three runs with unit weights
    and no merging of segments give the same segments; the activity of any
    weights is then min(1, parts @ weights) per segment, as the engine caps it.
    """
    runs = []
    for unit in UNIT:
        _, res = _simulate_row(row, unit, catalog, merge_tol=-1.0)  # a negative tolerance never merges
        tl = res.replicas[0].timeline
        runs.append((np.asarray(tl.start), np.asarray(tl.end), np.asarray(tl.util)))
    start, end = runs[0][0], runs[0][1]
    for s, e, _ in runs[1:]:
        if not (np.array_equal(s, start) and np.array_equal(e, end)):
            raise RuntimeError(f"segments differ between unit-weight runs of {row}")
    return end - start, np.column_stack([u for _, _, u in runs])


def _power_of(parts: list[tuple], w: np.ndarray) -> np.ndarray:
    """Predicted power (W) of every row (axis 0) for every weight triple (columns of ``w``, 3 x k)."""
    out = []
    for d, u, idle, span in parts:
        act = np.minimum(1.0, u @ w)  # segments x candidates
        out.append(idle + span * (d @ act) / d.sum())
    return np.array(out)


def _grid(lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
    axes = [np.round(np.arange(a, b + step / 2, step), 6) for a, b in zip(lo, hi, strict=True)]
    return np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)


def fit(rows: list[dict], catalog=None, tied: bool = False) -> tuple[float, float, float]:
    """The three weights of least power MAPE over ``rows``: a coarse grid, then a fine one around its best.

    ``tied``: one weight for all bytes (the KV weight equal to the weight-bytes one, the model before the KV
    cache had its own), the compute weight searched up to 4.
    """
    cat = catalog or default_catalog()
    parts = []
    for r in rows:
        gpu = cat.gpu(r["gpu"])
        d, u = activity_parts(r, cat)
        parts.append((d, u, gpu.idle_power_w, gpu.max_power_w - gpu.idle_power_w))
    meas = np.array([float(r["avg_power_w"]) for r in rows])[:, None]

    def best(cands: np.ndarray) -> np.ndarray:
        errs = []
        for k in range(0, cands.shape[1], 4096):  # bounded memory: segments x 4096 candidates per row
            c = cands[:, k : k + 4096]
            errs.append(np.mean(np.abs(_power_of(parts, c) - meas) / meas, axis=0))
        return cands[:, int(np.argmin(np.concatenate(errs)))]

    lo, hi = np.array([r[0] for r in RANGES]), np.array([r[1] for r in RANGES])
    grid = _grid
    if tied:
        hi[0] = 4.0

        def grid(lo: np.ndarray, hi: np.ndarray, step: float) -> np.ndarray:
            g = _grid(lo, hi, step)
            return np.unique(np.vstack([g[0], g[1], g[1]]), axis=1)

    w = best(grid(lo, hi, COARSE))
    w = best(grid(np.maximum(lo, w - COARSE), np.minimum(hi, w + COARSE), FINE))
    return tuple(round(float(x), 2) for x in w)  # type: ignore[return-value]


def fit_weights(rows: list[dict], catalog=None) -> dict[str, tuple[float, float, float]]:
    """Weights per measured GPU (catalogue name) and, under '*', over all rows."""
    cat = catalog or default_catalog()
    out = {"*": fit(rows, cat)}
    for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
        out[name] = fit([r for r in rows if cat.gpu(r["gpu"]).name == name], cat)
    return out


def evaluate(rows: list[dict], weights: tuple[float, ...] | None = None) -> tuple[float, list[tuple]]:
    """Power MAPE (%) and per row (GPU, model, batch, measured W, simulated W, error %, simulated s,
    Argonne's measured batch latency s or nan)."""
    cat = default_catalog()
    lat = measured_latencies()
    table = []
    for r in rows:
        p, t = simulated_run(r, weights)
        m = float(r["avg_power_w"])
        key = (cat.gpu(r["gpu"]).name, cat.model(MODEL_NAMES.get(r["model"], r["model"])).name, int(r["batch_size"]))
        table.append(
            (r["gpu"], r["model"], int(r["batch_size"]), m, p, 100 * (p - m) / m, t, lat.get(key, float("nan")))
        )
    return float(np.mean([abs(t[5]) for t in table])), table


def gap_level(rows: list[dict], catalog=None) -> tuple[tuple[float, ...], float, list[float]]:
    """Least squares of the measured activity on (compute, weight bytes, KV bytes, CPU-gap share).

    The gap share of a row is the framework's CPU time (fixed per step and per
    running sequence) over the run's duration; its coefficient is the power
    level of the gaps as a fraction of the idle-to-maximum span (0: idle).
    Returns the four coefficients, the fit's mean relative error and the rows' gap shares.
    """
    cat = catalog or default_catalog()
    feats, target = [], []
    for r in rows:
        gpu, res = _simulate_row(r, UNIT[0], cat)
        rep = res.replicas[0]
        d, u = activity_parts(r, cat)
        over = rep.cm.overhead
        fixed, per_seq = (
            (over.fixed_s, over.per_seq_s)
            if over is not None
            else (rep.cm.eff.overhead_fixed_s, rep.cm.eff.overhead_per_seq_s)
        )
        sampled = int(r["batch_size"]) * int(r["output_tokens"])
        gap = (rep.iterations * fixed + per_seq * sampled) / d.sum()
        feats.append(list(d @ u / d.sum()) + [gap])
        target.append((float(r["avg_power_w"]) - gpu.idle_power_w) / (gpu.max_power_w - gpu.idle_power_w))
    a, y = np.array(feats), np.array(target)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    return tuple(float(c) for c in coef), float(np.mean(np.abs(a @ coef - y) / y)), [float(g) for g in a[:, 3]]


def saturated_decode_power(
    gpu_name: str,
    model_name: str = "Llama-3-8B",
    catalog=None,
    framework: str = "vllm-v1",
    shape: tuple[int, int, int] = SATURATED,
) -> dict:
    """Average power (W) of ``seqs`` sequences decoding together (all arrive at once), under the profile's weights.

    ``steady_w`` averages the iterations in which every sequence decodes (no
    prefill), ``run_w`` the whole run; ``steady_activity`` is the steady
    activity before the cap at 1 (above 1: the GPU would be at its power limit).
    """
    cat = catalog or default_catalog()
    gpu, model = cat.gpu(gpu_name), cat.model(model_name)
    w = np.array([getattr(gpu.profile, name) for name in WEIGHT_NAMES])
    seqs, prompt, out = shape
    trace = Trace(np.zeros(seqs), np.full(seqs, prompt, dtype=np.int64), np.full(seqs, out, dtype=np.int64))
    runs = []
    for unit in UNIT:  # as activity_parts: one segment per iteration or decode run, activity per unit weight
        cfg = SimConfig(
            model=model,
            gpu=gpu,
            max_num_seqs=seqs,
            framework=framework,
            efficiency=_profile(gpu, unit),
            timeline_merge_tol=-1.0,
        )
        runs.append(simulate(trace, cfg, progress=False))
    tl = runs[0].replicas[0].timeline
    d = np.asarray(tl.end) - np.asarray(tl.start)
    parts = np.column_stack([np.asarray(r.replicas[0].timeline.util) for r in runs])
    raw = parts @ w
    act = np.minimum(1.0, raw)
    steady = (np.asarray(tl.batch) == seqs) & (np.asarray(tl.prefill) == 0)
    span = gpu.max_power_w - gpu.idle_power_w
    return {
        "gpu": gpu.name,
        "max_w": gpu.max_power_w,
        "idle_w": gpu.idle_power_w,
        "steady_w": gpu.idle_power_w + span * float(d[steady] @ act[steady] / d[steady].sum()),
        "run_w": gpu.idle_power_w + span * float(d @ act / d.sum()),
        "steady_activity": float(d[steady] @ raw[steady] / d[steady].sum()),
        "preemptions": int(np.sum(runs[0].results.preemptions)),
    }


MLENERGY = DATA.parents[1] / "calibration" / "mlenergy_v2_vllm054_chat.csv"
MLENERGY_FRAMEWORK = "vllm-0.5-server"


def mlenergy_check(catalog=None, path: Path = MLENERGY) -> list[dict]:
    """A check, not a fit: ML.ENERGY v2's measured power of saturated vLLM 0.5.4 OpenAI-server serving
    against the profile's weights, each row timed under ``vllm-0.5-server`` (whose CPU time per step was
    fitted on these rows' TPOT) with the iterations that fit used (calibration/layouts.py, ``serving``).

    Per row: the measured power per GPU, the predicted one with the CPU time as GPU idle (the model), and
    with the CPU time at the activity of the kernels around it (``busy_w``: gaps as busy).
    """
    from kavier_opendc.calibration.layouts import ReadOptions, read_measurements
    from kavier_opendc.engine.cost_model import CostModel
    from kavier_opendc.specs.frameworks import framework

    cat = catalog or default_catalog()
    fw = framework(MLENERGY_FRAMEWORK)
    with open(path, newline="") as fh:
        measured = {i + 2: r for i, r in enumerate(csv.DictReader(fh))}
    out = []
    for o in read_measurements(path, cat, ReadOptions())[1]:
        gpu = cat.gpu(o.gpu)
        cm = CostModel(o.model, gpu, o.tp, framework=fw)
        t = work = kernel_t = 0.0
        for count, sh in o.iterations:
            dt, flops, wb, kvb = cm.iteration(sh.n_tokens, sh.attn_pairs, sh.kv_read_tokens, sh.n_seqs)
            over = cm.overhead.fixed_s + cm.overhead.per_seq_s * sh.n_seqs if cm.overhead is not None else 0.0
            t += count * dt
            work += count * dt * cm.activity(dt, flops, wb, kvb)
            kernel_t += count * max(dt - over, 0.0)
        span = gpu.max_power_w - gpu.idle_power_w
        row = measured[o.row]
        out.append(
            {
                "gpu": gpu.name,
                "model": o.model.name,
                "tp": o.tp,
                "max_num_seqs": int(row["max_num_seqs"]),
                "measured_w": float(row["avg_power_all_gpus_w"]) / o.tp,
                "idle_gaps_w": gpu.idle_power_w + span * work / t,
                "busy_w": gpu.idle_power_w + span * min(1.0, work / kernel_t),
                "cpu_share": 1.0 - kernel_t / t,
            }
        )
    return out


def mlenergy_gap_level(checks: list[dict], catalog=None) -> dict[str, tuple[float, float]]:
    """What power level during the server's CPU time would fit ML.ENERGY's rows (an analysis, not used by the
    model): per GPU and over all rows, the fraction g of the idle-to-maximum span (power = the CPU-time-idle
    prediction + g x span x CPU share) with the least mean absolute percentage error, on a 0.001 grid.
    Returns name -> (g, MAPE %); ``fit on A -> B`` entries hold A's g applied to B's rows."""
    cat = catalog or default_catalog()
    span = {c["gpu"]: cat.gpu(c["gpu"]).max_power_w - cat.gpu(c["gpu"]).idle_power_w for c in checks}

    def mape(rows: list[dict], g: float) -> float:
        return float(
            100
            * np.mean(
                [
                    abs(r["idle_gaps_w"] + g * span[r["gpu"]] * r["cpu_share"] - r["measured_w"]) / r["measured_w"]
                    for r in rows
                ]
            )
        )

    def best(rows: list[dict]) -> tuple[float, float]:
        grid = np.linspace(0.0, 1.0, 1001)
        errs = [mape(rows, g) for g in grid]
        i = int(np.argmin(errs))
        return float(grid[i]), errs[i]

    groups = {g: [c for c in checks if c["gpu"] == g] for g in sorted({c["gpu"] for c in checks})}
    out = {name: best(rows) for name, rows in groups.items()} | {"all": best(checks)}
    for a in groups:
        for b in groups:
            if a != b:
                out[f"fit on {a} -> {b}"] = (out[a][0], mape(groups[b], out[a][0]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="grid-search one weight triple for all GPUs")
    ap.add_argument("--gaps", action="store_true", help="also fit a power level for the CPU time per step")
    ap.add_argument(
        "--tied",
        action="store_true",
        help="also fit one weight for all bytes (weights and KV alike) per GPU, for comparison",
    )
    ap.add_argument(
        "--mlenergy",
        action="store_true",
        help="also check ML.ENERGY's measured power of vLLM 0.5.4's server (not fitted)",
    )
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"measurements not found: {DATA}", file=sys.stderr)
        return 1
    rows = load_rows()
    cat = default_catalog()
    weights = fit(rows) if args.fit else None  # None: each GPU's profile
    mape, table = evaluate(rows, weights)
    print(f"framework of every row: {FRAMEWORK} (Argonne: vLLM 0.5-0.6 offline, benchmark_latency)")
    if weights is None:
        for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
            p = cat.gpu(name).profile
            print(
                f"{name}: weights compute {p.power_compute_weight}, weight bytes {p.power_memory_weight}, "
                f"KV bytes {p.power_kv_weight}"
            )
    else:
        print(f"weights (all GPUs): compute {weights[0]}, weight bytes {weights[1]}, KV bytes {weights[2]}")
    print("| GPU | model | batch | measured W | simulated W | err % | simulated s | Argonne's latency s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for g, m, b, meas, sim, err, t_sim, t_meas in table:
        print(f"| {g} | {m} | {b} | {meas:.1f} | {sim:.1f} | {err:+.1f} | {t_sim:.2f} | {t_meas:.2f} |")
    print(f"power MAPE {mape:.2f}%")
    terr = [abs(t[6] - t[7]) / t[7] for t in table if t[7] == t[7]]
    if terr:
        print(
            f"batch duration against Argonne's latency of the same configuration: mean error "
            f"{100 * np.mean(terr):.1f} %, worst {100 * max(terr):.1f} % ({len(terr)} rows)"
        )
    for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
        errs = [abs(t[5]) for t in table if cat.gpu(t[0]).name == name]
        print(f"  {name}: MAPE {np.mean(errs):.2f}% over {len(errs)} rows, worst {max(errs):.1f}%")
    if args.gaps:
        for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
            coef, err, shares = gap_level([r for r in rows if cat.gpu(r["gpu"]).name == name], cat)
            print(
                f"{name}: CPU time {100 * min(shares):.0f}-{100 * max(shares):.0f} % of the run; activity = "
                f"{coef[0]:.3f} compute + {coef[1]:.3f} weight bytes + {coef[2]:.3f} KV bytes "
                f"{coef[3]:+.3f} x CPU-gap share (least squares, mean error {100 * err:.1f} %)"
            )
    if args.tied:
        for name in sorted({cat.gpu(r["gpu"]).name for r in rows}):
            sub = [r for r in rows if cat.gpu(r["gpu"]).name == name]
            w = fit(sub, cat, tied=True)
            errs = [abs(t[5]) for t in evaluate(sub, w)[1]]
            print(
                f"{name}, one weight for all bytes: compute {w[0]}, bytes {w[1]}: MAPE {np.mean(errs):.2f}%, "
                f"worst {max(errs):.1f}%"
            )
    if args.mlenergy:
        print(f"ML.ENERGY v2 (vLLM 0.5.4 OpenAI server, saturated), simulated as {MLENERGY_FRAMEWORK}, W per GPU:")
        print("| GPU | model | TP | max_num_seqs | CPU share | measured | CPU time idle | CPU time busy |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        checks = mlenergy_check(cat)
        for c in checks:
            print(
                f"| {c['gpu']} | {c['model']} | {c['tp']} | {c['max_num_seqs']} | {100 * c['cpu_share']:.0f} % | "
                f"{c['measured_w']:.0f} | {c['idle_gaps_w']:.0f} | {c['busy_w']:.0f} |"
            )
        for g in sorted({c["gpu"] for c in checks}):
            rs = [c for c in checks if c["gpu"] == g]
            for key, what in (("idle_gaps_w", "CPU time idle"), ("busy_w", "CPU time busy")):
                bias = np.mean([100 * (c[key] - c["measured_w"]) / c["measured_w"] for c in rs])
                print(f"  {g}: {what}: mean error {bias:+.1f} % over {len(rs)} rows")
        print("  analysis (not used by the model): a power level during the CPU time, as a fraction g of the")
        print("  idle-to-maximum span, that would fit these rows (least MAPE):")
        for name, (g, err) in mlenergy_gap_level(checks, cat).items():
            print(f"    {name}: g = {g:.3f}, MAPE {err:.1f} %")
    seqs, prompt, out = SATURATED
    print(f"physics check: saturated decode, Llama-3-8B, {seqs} sequences of {prompt} + {out} tokens, vllm-v1")
    for name in ("A100-80GB", "H100-SXM"):
        s = saturated_decode_power(name, catalog=cat)
        print(
            f"  {s['gpu']}: {s['steady_w']:.0f} W while all decode ({100 * s['steady_w'] / s['max_w']:.1f} % of "
            f"its {s['max_w']:.0f} W maximum; activity {s['steady_activity']:.2f} before the cap at 1), "
            f"{s['run_w']:.0f} W over the run, {s['preemptions']} preemptions"
        )
    by_batch = [
        (b, saturated_decode_power("H100-SXM", catalog=cat, shape=(b, prompt, out))["steady_w"])
        for b in (1, 16, 64, 128, 256)
    ]
    print("  H100-SXM by batch: " + ", ".join(f"{b} sequences {w:.0f} W" for b, w in by_batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
