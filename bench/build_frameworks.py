"""Refit the built-in framework profiles' step overheads (kavier_opendc/specs/frameworks.yaml).

Each fitted framework is fitted on the shared measurements of the engine that
produced them, with the built-in GPU profiles held fixed
(kavier_opendc/calibration/frameworks.py), and the lines between its
``# BEGIN fitted NAME`` / ``# END fitted NAME`` markers are rewritten:

    python bench/build_frameworks.py           # rewrite the fitted entries, print the error table
    python bench/build_frameworks.py --check   # fail if the committed entries differ from a refit
    python bench/build_frameworks.py --whole-runs  # also the MoE/FP8 closed-loop rows simulated whole (a check)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from kavier_opendc.calibration.frameworks import fit_framework, overhead_entries
from kavier_opendc.specs import default_catalog

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data")
OUT = REPO / "kavier_opendc" / "specs" / "frameworks.yaml"

#: framework -> inference-perf variants (load sweeps on one H100) measured with it
LOAD_SWEEPS = {
    "vllm-0.11-server": ["vllm", "vllm+batch_size"],
    "vllm-0.9-v0-server": ["vllm+v0_engine"],
}
INFERENCE_PERF = "calibration/inference_perf_vllm011_h100.csv"

#: framework -> the engine (the ``engine`` column's start) of the serving-benchmark rows measured with it
SERVING_BENCH = {
    "sglang-0.3-server": "SGLang v0.3.0",
    "vllm-0.6-multistep-server": "vLLM v0.6.0",
}
SERVING_BENCH_FILE = "calibration/sglang030_vllm060_sharegpt.csv"
SHAREGPT = "traces/sharegpt_lengths_llama2.csv"
BENCH_MODELS = {"Llama-3.1-8B-Instruct": "Llama-3.1-8B", "Llama-3.1-70B-Instruct": "Llama-3.1-70B"}
#: the benchmark's GPUs: its README's "A100 80GB" and "H100" (the SXM part of the DGX/HGX boards assumed)
BENCH_GPUS = {"1x A100 80GB": "A100-80GB", "4x H100 80GB": "H100-SXM"}

#: framework -> (backend, versions, model, precision) of the closed-loop rows (AIConfigurator's silicon table)
#: it is fitted on: the ISL 1,024 rows of the first version fitted, the others held out
#: (calibration/closed_loop_bench.py)
CLOSED_LOOP = {
    "vllm-0.12-server": ("vllm", ("0.12.0",), "Qwen3-32B", "bf16"),
    "sglang-0.5-server": ("sglang", ("0.5.1.post1", "0.5.8.post1"), "Qwen3-32B", "bf16"),
    "trtllm-1.0-server": ("trtllm", ("1.0.0rc3",), "Llama-3.1-8B", "bf16"),
}
#: backends whose TTFT jumps (closed_loop_bench.ttft_jumps: an unrecorded batch/token limit of the deployment)
#: are kept out of the fit and listed as their own set
CLOSED_LOOP_JUMP_BACKENDS = ("trtllm",)
CLOSED_LOOP_FILE = "calibration/aiconfigurator_e2e_h100.csv"
CLOSED_LOOP_FIT_ISL = 1024
#: rows only evaluated (no fitting): (label, backend, versions, model, precision, framework)
CLOSED_LOOP_CHECKS = (
    ("vLLM FP8 Llama-3.1-70B (no version recorded)", "vllm", ("unknown",), "Llama-3.1-70B", "fp8", "vllm-0.12-server"),
    ("vLLM 0.12.0 Qwen3-32B BF16, default profile", "vllm", ("0.12.0",), "Qwen3-32B", "bf16", "vllm-v1"),
)

#: framework -> the fitted frameworks of the same serving path whose client latencies it takes (their mean):
#: vLLM's OpenAI server front end (HTTP, tokenisation, the hand-off to the engine process, streaming) is the
#: V1 design from 0.8 on, measured on 0.11 (one H100) and 0.12 (TP 2-8); 0.14 has no shared measurement
INHERITED_CLIENT_LATENCY = {"vllm-0.14-server": ("vllm-0.11-server", "vllm-0.12-server")}

#: framework -> the shared files measured with it
SOURCES = {
    "vllm-0.5-server": ["calibration/mlenergy_v2_vllm054_chat.csv"],
    "vllm-0.5-offline": ["calibration/argonne_vllm_batch_latency.csv"],
}


def entry_line(row: dict) -> str:
    return "      - {" + ", ".join(f"{k}: {v}" for k, v in row.items()) + "}"


def inference_perf_points(variants: list[str], data: Path = DATA) -> list:
    """inference-perf's stages as load points: Llama-3-8B-Instruct on one H100 (GKE's SXM part)."""
    import csv

    from kavier_opendc.calibration.load_sweep import LoadPoint

    out = []
    with open(data / INFERENCE_PERF, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["variant"] not in variants:
                continue
            seqs = re.search(r"max-num-seqs=(\d+)", r["config"])
            out.append(
                LoadPoint(
                    INFERENCE_PERF,
                    f"{r['variant']} stage {r['stage']}",
                    r["variant"],
                    "Llama-3-8B",
                    "H100-SXM",
                    1,
                    float(r["requested_rate_rps"]),
                    float(r["achieved_rate_rps"]),
                    round(float(r["prompt_len_mean"])),
                    round(float(r["output_len_mean"])),
                    float(r["ttft_mean_s"]),
                    float(r["e2e_mean_s"]),
                    60.0,
                    int(seqs.group(1)) if seqs else None,
                    None,
                    int(r["max_model_len"]),
                )
            )
    return out


def _replace_block(text: str, name: str, lines: str) -> str:
    pattern = re.compile(rf"(# BEGIN fitted {re.escape(name)}\n)(?:.*?\n)??([ ]*# END fitted {re.escape(name)})", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no '# BEGIN fitted {name}' block in {OUT}")
    return pattern.sub(lambda m: m.group(1) + lines + "\n" + m.group(2), text)


def rebuild(text: str, data: Path = DATA, fitted: dict | None = None) -> tuple[str, list[str]]:
    """``text`` with every fitted block refitted, and the error table's lines; ``fitted`` (if given) gets the
    closed-loop frameworks as fitted."""
    table = [
        "| framework | source | GPU | TP | rows | MAPE | fixed ms/step | us/sequence |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    cat = default_catalog()
    for name, files in SOURCES.items():
        fit = fit_framework([data / f for f in files], cat)
        text = _replace_block(text, name, "\n".join(entry_line(r) for r in overhead_entries(fit)))
        for (src, gpu, tp), err in fit.mape().items():
            o = fit.overheads[(gpu, tp)]
            table.append(
                f"| {name} | {src} | {gpu} | {tp} | {len(fit.errors[(src, gpu, tp)])} | {100 * err:.1f} % "
                f"| {1e3 * o.fixed_s:.2f} | {1e6 * o.per_seq_s:.0f} |"
            )
        for src, line, why in fit.skipped:
            table.append(f"<!-- left out: {Path(src).name} line {line}: {why} -->")
    from kavier_opendc.calibration.load_sweep import fit_load_sweep
    from kavier_opendc.specs.frameworks import framework

    table += [
        "",
        "| framework | source | GPU | TP | stages | per-token MAPE | TTFT MAPE | fixed ms/step | us/sequence "
        "| client ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    clients: dict[str, float] = {}  # framework -> its fitted client latency (s)
    for name, variants in LOAD_SWEEPS.items():
        fit = fit_load_sweep(inference_perf_points(variants, data), cat, framework(name))
        clients[name] = float(f"{fit.client_latency_s:.4g}")
        o = fit.overhead
        lines = [
            f"    client_latency_s: {clients[name]}",
            "    step_overhead:",
            "      - {gpu: H100-SXM, tp: 1, fixed_s: " + f"{float(f'{o.fixed_s:.4g}')}, per_seq_s: "
            f"{float(f'{o.per_seq_s:.4g}')}" + "}",
        ]
        text = _replace_block(text, name, "\n".join(lines))
        e = fit.errors()
        source = f"{Path(INFERENCE_PERF).name} ({', '.join(variants)})"
        table.append(
            f"| {name} | {source} | H100-SXM | 1 | {len(fit.points)} "
            f"| {100 * np.mean(e['per_token']):.1f} % | {100 * np.mean(e['ttft']):.1f} % "
            f"| {1e3 * o.fixed_s:.2f} | {1e6 * o.per_seq_s:.0f} | {1e3 * fit.client_latency_s:.1f} |"
        )
    blocks: dict[str, str] = {}
    table += serving_bench_fits(cat, data, blocks)
    fitted = {} if fitted is None else fitted
    table += closed_loop_fits(cat, data, blocks, fitted)
    clients.update({name: fw.client_latency_s for name, fw in fitted.items()})
    for name, sources in INHERITED_CLIENT_LATENCY.items():
        mean = float(f"{np.mean([clients[s] for s in sources]):.4g}")
        blocks[name] = f"    client_latency_s: {mean}"
    for name, lines in blocks.items():
        text = _replace_block(text, name, lines)
    return text, table


def serving_bench_fits(cat, data: Path, blocks: dict) -> list[str]:
    """Fit the frameworks of the serving-benchmark rows (calibration/serving_bench.py); ``blocks`` gets each
    framework's fitted lines; returns the error table (measured vs simulated, per row)."""
    from kavier_opendc.calibration.serving_bench import (
        fit_bench,
        output_law,
        read_rows,
        sharegpt_lengths,
        workload_lengths,
    )
    from kavier_opendc.specs.frameworks import framework

    rows = read_rows(data / SERVING_BENCH_FILE, BENCH_MODELS, BENCH_GPUS)
    lengths = sharegpt_lengths(data / SHAREGPT)
    mean, median = workload_lengths(rows)
    law = output_law(lengths[1], mean, median)
    table = [
        "",
        f"Serving benchmark ({Path(SERVING_BENCH_FILE).name}): ShareGPT lengths ({Path(SHAREGPT).name}, "
        f"answers mapped to mean {mean:.1f} / median {median:.1f} tokens), medians; measured / simulated",
        "| row | framework | model | GPU | TP | rate | TTFT ms | TPOT ms | e2e s | TTFT err | TPOT err | e2e err |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks = [
        "",
        "| check | framework | model | GPU | TP | requests/s measured | simulated | error |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    itl = [
        "",
        "Held out (not fitted): the median gap between streamed chunks (ITL; multi-step streams a block at once)",
        "| check | framework | model | GPU | TP | rate | ITL ms measured / simulated | error |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, engine in SERVING_BENCH.items():
        fit = fit_bench([r for r in rows if r.engine.startswith(engine)], cat, framework(name), lengths, law)
        lines = [f"    client_latency_s: {fit.client_latency_s}", "    step_overhead:"]
        lines += ["      - {gpu: " + f"{g}, tp: {t}, fixed_s: {o.fixed_s}" + "}" for (g, t), o in fit.overheads.items()]
        blocks[name] = "\n".join(lines)
        c = fit.client_latency_s
        for s in fit.online:
            r, e = s.row, fit.errors(s)
            table.append(
                f"| online | {name} | {r.model} | {r.gpu} | {r.tp} | {r.rate_rps:g} "
                f"| {1e3 * r.ttft_s:.1f} / {1e3 * (s.ttft_s + c):.1f} "
                f"| {1e3 * r.tpot_s:.2f} / {1e3 * s.tpot_s:.2f} "
                f"| {r.e2e_s:.2f} / {s.e2e_s + c:.2f} | {100 * e['ttft']:.1f} % | {100 * e['tpot']:.1f} % "
                f"| {100 * e['e2e']:.1f} % |"
            )
            itl.append(
                f"| ITL | {name} | {r.model} | {r.gpu} | {r.tp} | {r.rate_rps:g} "
                f"| {1e3 * r.itl_s:.2f} / {1e3 * s.itl_s:.2f} | {100 * (s.itl_s - r.itl_s) / r.itl_s:+.1f} % |"
            )
        errs = [fit.errors(s) for s in fit.online]
        mape = {k: 100 * np.mean([e[k] for e in errs]) for k in ("ttft", "tpot", "e2e")}
        table.append(
            f"| MAPE | {name} | | | | | | | | {mape['ttft']:.1f} % | {mape['tpot']:.1f} % | {mape['e2e']:.1f} % |"
        )
        for s in fit.offline:
            r = s.row
            err = (s.request_throughput_rps - r.request_throughput_rps) / r.request_throughput_rps
            checks.append(
                f"| offline | {name} | {r.model} | {r.gpu} | {r.tp} | {r.request_throughput_rps:.2f} "
                f"| {s.request_throughput_rps:.2f} | {100 * err:+.1f} % |"
            )
    return table + checks + itl


def closed_loop_rows(rows: list, backend: str, versions: tuple, model: str, precision: str) -> list:
    """The closed-loop rows of one backend, its versions, a model and a precision."""
    return [
        r
        for r in rows
        if r.backend == backend and r.version in versions and r.model == model and r.precision == precision
    ]


def closed_loop_fits(cat, data: Path, blocks: dict, fitted: dict | None = None) -> list[str]:
    """Fit the frameworks of the closed-loop rows (calibration/closed_loop_bench.py); ``blocks`` gets each
    framework's fitted lines; returns the error table (TTFT and TPOT MAPE per framework, set, model and TP)."""
    import dataclasses

    from kavier_opendc.calibration.closed_loop_bench import evaluate, fit_closed_loop, read_rows, ttft_jumps
    from kavier_opendc.specs.frameworks import framework

    rows = read_rows(data / CLOSED_LOOP_FILE)
    table = [
        "",
        f"Closed-loop runs ({Path(CLOSED_LOOP_FILE).name}, H100-SXM, mode agg; fitted: ISL {CLOSED_LOOP_FIT_ISL}, "
        "held out: the others): mean TTFT and TPOT, MAPE",
        "| set | framework | rows of | model | precision | TP | rows | TTFT MAPE | TPOT MAPE | fixed ms/step "
        "| us/sequence | client ms |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def lines_of(name: str, fit, what: str, sets) -> None:
        for set_name, sims in sets:
            keys = sorted({(s.row.model, s.row.precision, s.row.tp) for s in sims})
            for model, prec, tp in keys:
                grp = [s for s in sims if (s.row.model, s.row.precision, s.row.tp) == (model, prec, tp)]
                m = fit.mape(grp)
                near = min(fit.overheads, key=lambda k: (abs(int(k[1]) - tp), int(k[1])), default=None)
                o = fit.overheads.get(near) if near is not None else None
                over = (
                    "GPU profile's | -"
                    if o is None
                    else f"{1e3 * o.fixed_s:.2f} | {1e6 * o.per_seq_s:.1f}"
                    + ("" if near[1] == tp else f" (TP {near[1]}'s)")
                )
                table.append(
                    f"| {set_name} | {name} | {what} | {model} | {prec} | {tp} | {len(grp)} | {100 * m['ttft']:.1f} % "
                    f"| {100 * m['tpot']:.1f} % | {over} | {1e3 * fit.client_latency_s:.1f} |"
                )

    fitted = {} if fitted is None else fitted
    for name, (backend, versions, model, precision) in CLOSED_LOOP.items():
        grp = closed_loop_rows(rows, backend, versions, model, precision)
        jumps = ttft_jumps(grp) if backend in CLOSED_LOOP_JUMP_BACKENDS else set()
        fit = fit_closed_loop(
            grp,
            cat,
            framework(name),
            lambda r, v=versions[0], j=jumps: r.isl == CLOSED_LOOP_FIT_ISL and r.version == v and r.id not in j,
        )
        lines = [f"    client_latency_s: {fit.client_latency_s}", "    step_overhead:"]
        lines += [
            "      - {gpu: " + f"{g}, tp: {t}, fixed_s: {o.fixed_s}, per_seq_s: {o.per_seq_s}" + "}"
            for (g, t), o in fit.overheads.items()
        ]
        blocks[name] = "\n".join(lines)
        fitted[name] = dataclasses.replace(
            framework(name), step_overhead=fit.overheads, client_latency_s=fit.client_latency_s
        )
        what = f"{backend} {'/'.join(versions)}"
        held = [s for s in fit.held_out if s.row.id not in jumps]
        jumped = [s for s in fit.held_out if s.row.id in jumps]
        lines_of(name, fit, what, [("fitted", fit.fitted), ("held out", held), ("TTFT jump", jumped)])
        for s in sorted(jumped, key=lambda s: (s.row.tp, s.row.isl, s.row.osl, s.row.concurrency)):
            table.append(f"<!-- jump: {s.row.label}: TTFT {1e3 * s.row.ttft_s:.0f} ms measured -->")
    for label, backend, versions, model, prec, name in CLOSED_LOOP_CHECKS:
        grp = closed_loop_rows(rows, backend, versions, model, prec)
        ev = evaluate(grp, cat, fitted.get(name) or framework(name))
        lines_of(name, ev, label, [("check", ev.held_out)])
    return table


#: the whole-run check (nothing fitted): (backend, model, precision) -> the framework its rows run under
WHOLE_RUN_CHECKS = {
    ("trtllm", "Qwen3-235B-A22B", "fp8"): "trtllm-1.0-server",
    ("trtllm", "Qwen3-32B", "fp8"): "trtllm-1.0-server",
    ("trtllm", "gpt-oss-120b", "fp8"): "trtllm-1.0-server",
    ("vllm", "gpt-oss-120b", "fp4"): "vllm-0.12-server",
    ("vllm", "Qwen3-32B", "fp8"): "vllm-0.12-server",
    ("vllm", "MiniMax-M2.5", "fp8"): "vllm-0.12-server",
}


#: disaggregated rows left out although the engine could lay them out, and why
DISAGG_LEFT_OUT = {
    ("trtllm", "DeepSeek-R1"): "worker counts not recorded, and the same runs as the DeepSeek-V3 rows (same "
    "container and date, the same measured numbers: C = 6, 8192/1024, 13,693 ms TTFT in both), which record "
    "another layout (1 prefill worker of TP 1 x attention DP 16, 2-3 decode workers): those are simulated",
}


def disagg_checks(data: Path = DATA) -> tuple[list[str], dict[str, int]]:
    """The disaggregated rows simulated as P/D pools (calibration/closed_loop_bench.py), nothing fitted: TTFT
    and TPOT MAPE and bias per backend, model and layout; and the rows left out, by reason."""
    from kavier_opendc.calibration.closed_loop_bench import BACKEND_FRAMEWORKS, evaluate_disagg, read_disagg_rows

    cat = default_catalog()
    rows, skipped = read_disagg_rows(data / CLOSED_LOOP_FILE)
    table = [
        "Disaggregated rows as P/D pools, nothing fitted: vLLM v1's P/D loop with the backend's fitted step "
        "overhead; '?' = a worker count not recorded, simulated as 1",
        "| backend version | overheads of | model | workers, prefill / decode layout | rows | TTFT MAPE | TTFT bias "
        "| TPOT MAPE | TPOT bias |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list] = {}
    for r in rows:
        why = DISAGG_LEFT_OUT.get((r.backend, r.model)) or r.unmodelled()
        if why is not None:
            key = f"disagg {r.backend} {r.model}: {why}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        groups.setdefault((r.model, r.backend, r.version, r.layout), []).append(r)
    for (model, backend, version, layout), grp in sorted(groups.items()):
        ev = evaluate_disagg(grp, cat, backend)
        m, b = ev.mape(ev.held_out), ev.bias(ev.held_out)
        table.append(
            f"| {backend} {version} | {BACKEND_FRAMEWORKS[backend]} | {model} | {layout} | {len(grp)} "
            f"| {100 * m['ttft']:.1f} % | {100 * b['ttft']:+.1f} % "
            f"| {100 * m['tpot']:.1f} % | {100 * b['tpot']:+.1f} % |"
        )
    return table, {k if k.startswith("disagg") else f"disagg {k}": n for k, n in skipped.items()}


def held_slot_check(fitted: dict, data: Path = DATA) -> list[str]:
    """An analysis, nothing fitted or kept: the fitted TRT-LLM rows (TTFT jumps left out) simulated as they
    are and with one batch slot fewer (``max_num_seqs`` = batch_size - 1), TTFT and TPOT MAPE and bias per
    TP and ISL. With one slot held, one of the C clients waits for the next completion, e2e / C on average:
    the measured TTFT's fall from C = 8 to 32 and its growth with OSL at C = 8."""
    import dataclasses

    from kavier_opendc.calibration.closed_loop_bench import evaluate, read_rows, ttft_jumps
    from kavier_opendc.specs.frameworks import framework

    name = "trtllm-1.0-server"
    backend, versions, model, precision = CLOSED_LOOP[name]
    cat = default_catalog()
    rows = closed_loop_rows(read_rows(data / CLOSED_LOOP_FILE), backend, versions, model, precision)
    jumps = ttft_jumps(rows)
    rows = [r for r in rows if r.id not in jumps]
    fw = fitted.get(name) or framework(name)
    table = [
        f"TRT-LLM rows ({len(rows)}, TTFT jumps left out) with the row's batch and with one slot fewer, under {name}:",
        "| TP | ISL | rows | TTFT MAPE | TTFT bias | TPOT MAPE | TTFT MAPE, one slot held | TTFT bias | TPOT MAPE |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errs = {}
    for held in (0, 1):
        grp = [dataclasses.replace(r, batch_size=r.batch_size - held) for r in rows]
        errs[held] = {(s.row.tp, s.row.isl, s.row.id): s for s in evaluate(grp, cat, fw).held_out}

    def stats(sims: list) -> str:
        t = np.array([(s.ttft_s + fw.client_latency_s) / s.row.ttft_s - 1 for s in sims])
        p = np.array([s.tpot_s / s.row.tpot_s - 1 for s in sims])
        return f"{100 * np.abs(t).mean():.1f} % | {100 * t.mean():+.1f} % | {100 * np.abs(p).mean():.1f} %"

    keys = sorted({(tp, isl) for tp, isl, _ in errs[0]})
    for tp, isl in [*keys, (None, None)]:
        pick = [[s for (t, i, _), s in errs[h].items() if tp is None or (t, i) == (tp, isl)] for h in (0, 1)]
        label = "all | all" if tp is None else f"{tp} | {isl:,}"
        table.append(f"| {label} | {len(pick[0])} | {stats(pick[0])} | {stats(pick[1])} |")
    return table


def whole_run_checks(fitted: dict, data: Path = DATA) -> list[str]:
    """The MoE and FP8 rows of the closed-loop table simulated whole under the closest fitted framework, nothing
    fitted to them: TTFT and TPOT MAPE and signed bias per backend, model, precision and layout; then the rows
    not simulated and why."""
    import csv

    from kavier_opendc.calibration.closed_loop_bench import MODELS, evaluate, read_rows
    from kavier_opendc.specs.frameworks import framework

    cat = default_catalog()
    rows = read_rows(data / CLOSED_LOOP_FILE)
    table = [
        f"Whole closed-loop runs, nothing fitted ({Path(CLOSED_LOOP_FILE).name}, H100-SXM, mode agg): measured vs "
        "simulated mean TTFT and TPOT; bias = mean (simulated - measured) / measured",
        "| backend version | framework | model | precision | layout | rows | TTFT MAPE | TTFT bias | TPOT MAPE "
        "| TPOT bias |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    skipped: dict[str, int] = {}
    groups: dict[tuple, list] = {}
    for r in rows:
        name = WHOLE_RUN_CHECKS.get((r.backend, r.model, r.precision))
        if name is None:
            continue
        why = r.unmodelled_layout()
        if why is not None:
            key = f"{r.backend} {r.model} {r.precision} {r.layout}: {why}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        groups.setdefault((r.backend, r.version, r.model, r.precision, r.layout, name), []).append(r)
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1], kv[0][3], len(kv[0][4]), kv[0][4]))
    for (backend, version, model, prec, layout, name), grp in order:
        ev = evaluate(grp, cat, fitted.get(name) or framework(name))
        m, b = ev.mape(ev.held_out), ev.bias(ev.held_out)
        table.append(
            f"| {backend} {version} | {name} | {model} | {prec} | {layout} | {len(grp)} | {100 * m['ttft']:.1f} % "
            f"| {100 * b['ttft']:+.1f} % | {100 * m['tpot']:.1f} % | {100 * b['tpot']:+.1f} % |"
        )
    with open(data / CLOSED_LOOP_FILE, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["mode"] != "disagg" and r["model_path"] not in MODELS:
                key = f"agg {r['backend']} {r['model_path']}: not in the catalogue"
                skipped[key] = skipped.get(key, 0) + 1
    disagg, left = disagg_checks(data)
    skipped.update(left)
    table += ["", *disagg, "", "Not simulated:"] + [f"- {k} ({n} rows)" for k, n in sorted(skipped.items())]
    return table


def simulated_batch_latency(framework: str, files: list[str], data: Path = DATA) -> dict[tuple[str, int], list[float]]:
    """Relative errors of the whole simulator on batch-latency rows: ``b`` requests of n in / n out at t = 0."""
    import numpy as np

    from kavier_opendc.calibration.layouts import ReadOptions, read_measurements
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.workload.trace import Trace

    cat = default_catalog()
    errs: dict[tuple[str, int], list[float]] = {}
    for f in files:
        layout, obs = read_measurements(data / f, cat, ReadOptions())
        if layout != "batch-latency":
            continue
        for o in obs:
            b, n = (int(x[1:]) for x in o.label.split()[-2:])
            tr = Trace(
                np.zeros(b),
                np.full(b, n, dtype=np.int64),
                np.full(b, n, dtype=np.int64),
                source=f,
                format="kavier",
                timed=False,
            )
            res = simulate(
                tr, SimConfig(model=o.model, gpu=cat.gpu(o.gpu), tp=o.tp, framework=framework), progress=False
            )
            errs.setdefault((o.gpu, o.tp), []).append(abs(res.makespan_s - o.measured_s) / o.measured_s)
    return errs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    ap.add_argument(
        "--whole-runs", action="store_true", help="also simulate the MoE/FP8 closed-loop rows whole (a check)"
    )
    ap.add_argument(
        "--held-slot",
        action="store_true",
        help="also simulate the TRT-LLM rows with one batch slot fewer (an analysis, nothing kept)",
    )
    args = ap.parse_args(argv)
    missing = [
        f
        for files in [*SOURCES.values(), [SERVING_BENCH_FILE, SHAREGPT, CLOSED_LOOP_FILE]]
        for f in files
        if not (DATA / f).exists()
    ]
    if missing:
        print("measurements not found: " + ", ".join(missing), file=sys.stderr)
        return 1
    old = OUT.read_text(encoding="utf-8")
    fitted: dict = {}
    new, table = rebuild(old, fitted=fitted)
    if args.check:
        print("frameworks.yaml is up to date" if new == old else "frameworks.yaml differs from a refit")
        return 0 if new == old else 1
    OUT.write_text(new, encoding="utf-8")
    print(f"wrote {OUT}")
    import build_catalog  # this folder's: the built-in snapshot holds frameworks.yaml too

    build_catalog.main([])
    print()
    print("\n".join(line for line in table if not line.startswith("<!--")))
    left = [line for line in table if line.startswith("<!-- left out")]
    if left:
        print(f"\n{len(left)} rows left out (their batch does not fit in the KV cache: vLLM v0 preempts)")
    jumps = [line[len("<!-- jump: ") : -len(" -->")] for line in table if line.startswith("<!-- jump")]
    if jumps:
        print(f"\n{len(jumps)} closed-loop rows with a TTFT jump (over 2 x the next lower concurrency's), not fitted:")
        print("\n".join(f"  {j}" for j in jumps))
    if args.whole_runs:
        print("\n" + "\n".join(whole_run_checks(fitted)))
    if args.held_slot:
        print("\n" + "\n".join(held_slot_check(fitted)))
    print("\nThrough the whole simulator (kavier simulate's engine, offline batch at t = 0):")
    for name, files in SOURCES.items():
        for (gpu, tp), e in sorted(simulated_batch_latency(name, files).items()):
            print(f"  {name} {gpu} TP{tp}: {len(e)} rows, MAPE {100 * sum(e) / len(e):.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
