"""Speed benchmark of the serving engine: requests simulated per second, wall and CPU seconds.

Without options it measures four standard runs of Llama-3-8B on 2 x A100-80GB
replicas (default batching, round-robin) and prints one table:

    azure-conv     the Azure LLM 2023 conversation trace (19,366 requests, one hour)
    azure-code     the Azure LLM 2023 code trace (8,819 requests)
    mooncake-conv  the Mooncake conversation trace (12,031 requests) with block prefix caching
    synthetic-1m   1,000,000 synthetic requests (Poisson, ShareGPT-like lengths)

Each run is a fresh process (``--worker``), so ``process CPU`` is everything a
``kavier simulate`` pays: interpreter start, imports, reading the trace,
simulating and writing the three output files (under the CLI's conditions: one
BLAS thread, bytecode cached); ``sim CPU`` is the simulation
alone (time.process_time around simulate()). requests/s is requests over the
whole run's wall time. The best of ``--repeat`` runs is reported (the 1M run
once). With ``--baseline DIR`` (another checkout) every run is made with both
checkouts, alternating candidate and baseline so that a busy machine slows both
alike, and the table shows both and their ratio.

    python bench/simulate_speed.py
    python bench/simulate_speed.py --baseline ../base --runs azure-conv,azure-code
    python bench/simulate_speed.py --trace ../shared/data/traces/mooncake_conversation.jsonl --prefix-cache block
    python bench/simulate_speed.py --exact
    python bench/simulate_speed.py --prefill-replicas 1 --decode-replicas 1
    python bench/simulate_speed.py --synthetic 1000000
    python bench/simulate_speed.py --model Qwen3-235B-A22B --gpu H100-SXM --tp 8 --enable-expert-parallel
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACES = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data") / "traces"
DEFAULT_TRACE = TRACES / "azure_llm_2023_conv.csv"

#: the standard runs: name -> the options of a custom run
RUNS: dict[str, dict] = {
    "azure-conv": {"trace": str(TRACES / "azure_llm_2023_conv.csv")},
    "azure-code": {"trace": str(TRACES / "azure_llm_2023_code.csv")},
    "mooncake-conv": {"trace": str(TRACES / "mooncake_conversation.jsonl"), "prefix_cache": "block"},
    "synthetic-1m": {"synthetic": 1_000_000},
}

DEFAULTS = {
    "trace": str(DEFAULT_TRACE),
    "model": "Llama-3-8B",
    "gpu": "A100-80GB",
    "replicas": 2,
    "router": "round-robin",
    "exact": False,
    "prefix_cache": "auto",
    "synthetic": 0,
    "rate": None,
    "prefill_replicas": None,
    "decode_replicas": None,
    "kv_transfer_mode": "whole",
    "tp": 1,
    "expert_parallel": False,
    "dp_size": 1,
}


def worker(spec: dict) -> dict:
    """One run in this process; the package is whichever checkout PYTHONPATH names."""
    t_start = time.perf_counter()
    from kavier_opendc.engine.outputs import write_simulation
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.specs import default_catalog
    from kavier_opendc.workload.synthetic import LengthSpec, synthetic_trace
    from kavier_opendc.workload.trace import load_trace

    cat = default_catalog()
    cfg = SimConfig(
        model=cat.model(spec["model"]),
        gpu=cat.gpu(spec["gpu"]),
        replicas=spec["replicas"],
        router=spec["router"],
        exact=spec["exact"],
        prefix_cache=spec["prefix_cache"],
        prefill_replicas=spec["prefill_replicas"],
        decode_replicas=spec["decode_replicas"],
        kv_transfer_mode=spec["kv_transfer_mode"],
        # MoE layouts only when asked (an older baseline checkout has no such fields)
        **({"tp": spec["tp"]} if spec["tp"] != 1 else {}),
        **({"expert_parallel": True} if spec["expert_parallel"] else {}),
        **({"data_parallel_size": spec["dp_size"]} if spec["dp_size"] != 1 else {}),
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if spec["synthetic"]:
            rate = spec["rate"] or 2.5 * spec["replicas"]
            trace = synthetic_trace(
                spec["synthetic"],
                rate=rate,
                input=LengthSpec.lognormal(median=600, sigma=0.9, min=4, max=6000),
                output=LengthSpec.lognormal(median=200, sigma=0.9, min=1, max=2000),
                seed=1,
            )
            name = f"synthetic {spec['synthetic']:,} requests at {rate} req/s"
        else:
            trace = load_trace(spec["trace"])
            name = Path(spec["trace"]).name
        t1 = time.perf_counter()
        c1 = time.process_time()
        result = simulate(trace, cfg, progress=False)
        c2 = time.process_time()
        t2 = time.perf_counter()
        write_simulation(result, Path(tmp) / "out")
        t3 = time.perf_counter()
    topo = cfg.topology()
    where = (
        f"{cfg.replicas} x {cfg.gpu.name}"
        if topo is None
        else f"{topo.prefill.replicas} prefill + {topo.decode.replicas} decode x {cfg.gpu.name} "
        f"({topo.link.mode} KV transfer)"
    )
    return {
        "name": name,
        "setup": f"{cfg.model.name} on {where}, {'exact' if cfg.exact else 'fast'} mode, "
        f"prefix cache {result.replicas[0].policy}",
        "requests": len(trace),
        "iterations": sum(r.iterations for r in result.replicas),
        "makespan_s": result.makespan_s,
        "wall_s": t3 - t_start,
        "load_s": t1 - t0,
        "simulate_s": t2 - t1,
        "write_s": t3 - t2,
        "sim_cpu_s": c2 - c1,
    }


def measure(checkout: Path, spec: dict) -> dict:
    """One run in a fresh interpreter importing ``checkout``'s package: its report plus the process's CPU
    seconds (user + system, from wait4) and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    # as `kavier simulate` runs: one BLAS thread (the CLI's default, kavier_opendc/cli/__init__.py) and
    # bytecode cached (an installed package has its .pyc; without them every start compiles every module)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        cwd=checkout,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"simulate_speed: the run in {checkout} failed (exit {proc.returncode})")
    report = json.loads(out)
    report["process_wall_s"] = time.perf_counter() - t0
    report["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    report["rss_mib"] = usage.ru_maxrss / 1024
    return report


def best(reports: list[dict]) -> dict:
    """The fastest run's report, with the least CPU seconds of all runs (CPU time varies less than wall)."""
    out = dict(min(reports, key=lambda r: r["process_wall_s"]))
    out["process_cpu_s"] = min(r["process_cpu_s"] for r in reports)
    out["sim_cpu_s"] = min(r["sim_cpu_s"] for r in reports)
    return out


def rate(r: dict) -> float:
    return r["requests"] / r["process_wall_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="requests simulated per second, wall and CPU seconds")
    ap.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--runs", default=None, help=f"standard runs, comma-separated (default all: {', '.join(RUNS)})")
    ap.add_argument("--baseline", metavar="DIR", default=None, help="another checkout, measured alternately")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported (1M: once)")
    ap.add_argument("--trace", default=None, help="a custom run: this trace instead of the standard runs")
    ap.add_argument("--model", default=DEFAULTS["model"])
    ap.add_argument("--gpu", default=DEFAULTS["gpu"])
    ap.add_argument("--replicas", type=int, default=DEFAULTS["replicas"])
    ap.add_argument("--router", default=DEFAULTS["router"])
    ap.add_argument("--exact", action="store_true", help="step every iteration")
    ap.add_argument(
        "--prefix-cache",
        default=DEFAULTS["prefix_cache"],
        metavar="POLICY",
        help="prefix-cache policy as for kavier simulate (default auto: block when the trace has "
        "hash_ids, token ids or sessions)",
    )
    ap.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="a custom run of N synthetic requests (Poisson, ShareGPT-like lengths)",
    )
    ap.add_argument("--rate", type=float, default=None, help="synthetic arrival rate (default: 2.5 req/s per replica)")
    ap.add_argument(
        "--prefill-replicas",
        type=int,
        default=None,
        metavar="N",
        help="disaggregated serving: N prefill replicas (with --decode-replicas; --replicas is unused)",
    )
    ap.add_argument("--decode-replicas", type=int, default=None, metavar="N")
    ap.add_argument("--kv-transfer-mode", default="whole", choices=("whole", "layerwise"))
    ap.add_argument("--tp", type=int, default=1, help="GPUs per replica")
    ap.add_argument(
        "--enable-expert-parallel", dest="expert_parallel", action="store_true", help="MoE: expert parallelism"
    )
    ap.add_argument("--dp-size", type=int, default=1, help="MoE: attention data-parallel ranks")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) != DEFAULTS[k] and k != "trace"}
    if args.trace or given:  # a custom run: the options given on top of the defaults
        runs = {"custom": {**DEFAULTS, "trace": args.trace or DEFAULTS["trace"], **given}}
    else:
        names = args.runs.split(",") if args.runs else list(RUNS)
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            ap.error(f"unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
        runs = {n: {**DEFAULTS, **RUNS[n]} for n in names}
    checkouts = [("candidate", REPO)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])

    results: dict[tuple[str, str], dict] = {}
    described = []
    for name, spec in runs.items():
        repeat = 1 if spec["synthetic"] >= 100_000 else args.repeat
        reports: dict[str, list[dict]] = {who: [] for who, _ in checkouts}
        for i in range(repeat):
            order = checkouts if i % 2 == 0 else checkouts[::-1]  # alternate who goes first
            for who, checkout in order:
                reports[who].append(measure(checkout, spec))
        for who, _ in checkouts:
            results[name, who] = best(reports[who])
        r = results[name, "candidate"]
        described.append(f"{name:<14} {r['name']} ({r['requests']:,} requests), {r['setup']}")

    print("\n".join(described))
    head = f"{'run':<14} {'checkout':<10} {'requests':>9} {'req/s':>8} {'wall s':>7} {'process CPU s':>13} "
    head += f"{'sim CPU s':>9} {'load s':>7} {'write s':>7} {'RSS MiB':>7}"
    print(head)
    for name in runs:
        for who, _ in checkouts:
            r = results[name, who]
            print(
                f"{name:<14} {who:<10} {r['requests']:>9,} {rate(r):>8,.0f} {r['process_wall_s']:>7.2f} "
                f"{r['process_cpu_s']:>13.2f} {r['sim_cpu_s']:>9.2f} {r['load_s']:>7.3f} {r['write_s']:>7.3f} "
                f"{r['rss_mib']:>7.0f}"
            )
        if args.baseline:
            c, b = results[name, "candidate"], results[name, "baseline"]
            print(
                f"{name:<14} {'ratio':<10} {'':>9} {rate(c) / rate(b):>7.2f}x {'':>7} "
                f"{b['process_cpu_s'] / c['process_cpu_s']:>12.2f}x {b['sim_cpu_s'] / c['sim_cpu_s']:>8.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
