"""Speed benchmark of the serving engine: requests simulated per second.

Default: the Azure LLM 2023 conversation trace (19,366 requests, one hour) with
Llama-3-8B on 2 x A100-80GB replicas; wall clock of the whole simulation
including loading the trace and writing the three output files. Also reports
the peak RSS, and optionally a synthetic trace of N requests (--synthetic N)
to show that memory stays bounded.

    python bench/simulate_speed.py
    python bench/simulate_speed.py --exact
    python bench/simulate_speed.py --prefill-replicas 1 --decode-replicas 1
    python bench/simulate_speed.py --synthetic 1000000
    python bench/simulate_speed.py --trace ../shared/data/traces/mooncake_conversation.jsonl --prefix-cache block
    python bench/simulate_speed.py --model Qwen3-235B-A22B --gpu H100-SXM --tp 8 --enable-expert-parallel
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TRACE = (
    Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    / "traces"
    / "azure_llm_2023_conv.csv"
)


def main(argv: list[str] | None = None) -> int:
    from kavier_opendc.engine.outputs import write_simulation
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.specs import default_catalog
    from kavier_opendc.workload.synthetic import LengthSpec, synthetic_trace
    from kavier_opendc.workload.trace import load_trace

    ap = argparse.ArgumentParser(description="requests simulated per second")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--model", default="Llama-3-8B")
    ap.add_argument("--gpu", default="A100-80GB")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--enable-expert-parallel", action="store_true", help="MoE: expert parallelism")
    ap.add_argument("--dp-size", type=int, default=1, help="MoE: attention data-parallel ranks")
    ap.add_argument("--router", default="round-robin")
    ap.add_argument("--exact", action="store_true", help="step every iteration")
    ap.add_argument(
        "--prefix-cache",
        default="auto",
        metavar="POLICY",
        help="prefix-cache policy as for kavier simulate (default auto: block when the trace has "
        "hash_ids, token ids or sessions)",
    )
    ap.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="instead of --trace, N synthetic requests (Poisson, ShareGPT-like lengths)",
    )
    ap.add_argument("--rate", type=float, default=None, help="synthetic arrival rate (default: 2.5 req/s per replica)")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    ap.add_argument(
        "--prefill-replicas",
        type=int,
        default=None,
        metavar="N",
        help="disaggregated serving: N prefill replicas (with --decode-replicas; --replicas is unused)",
    )
    ap.add_argument("--decode-replicas", type=int, default=None, metavar="N")
    ap.add_argument("--kv-transfer-mode", default="whole", choices=("whole", "layerwise"))
    args = ap.parse_args(argv)

    cat = default_catalog()
    cfg = SimConfig(
        model=cat.model(args.model),
        gpu=cat.gpu(args.gpu),
        replicas=args.replicas,
        tp=args.tp,
        expert_parallel=args.enable_expert_parallel,
        data_parallel_size=args.dp_size,
        router=args.router,
        exact=args.exact,
        prefix_cache=args.prefix_cache,
        prefill_replicas=args.prefill_replicas,
        decode_replicas=args.decode_replicas,
        kv_transfer_mode=args.kv_transfer_mode,
    )
    best = None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if args.synthetic:
                rate = args.rate or 2.5 * args.replicas
                trace = synthetic_trace(
                    args.synthetic,
                    rate=rate,
                    input=LengthSpec.lognormal(median=600, sigma=0.9, min=4, max=6000),
                    output=LengthSpec.lognormal(median=200, sigma=0.9, min=1, max=2000),
                    seed=1,
                )
                name = f"synthetic {args.synthetic} requests at {rate} req/s"
            else:
                trace = load_trace(args.trace)
                name = Path(args.trace).name
            t1 = time.perf_counter()
            result = simulate(trace, cfg, progress=False)
            t2 = time.perf_counter()
            write_simulation(result, Path(tmp) / "out")
            t3 = time.perf_counter()
        wall = t3 - t0
        if best is None or wall < best[0]:
            best = (wall, t1 - t0, t2 - t1, t3 - t2, len(trace), result)
        if args.synthetic:
            break
    wall, load, sim, write, n, result = best
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    topo = cfg.topology()
    where = (
        f"{cfg.replicas} x {cfg.tp} x {cfg.gpu.name}"
        + (" EP" if cfg.expert_parallel else "")
        + (f" DP {cfg.data_parallel_size}" if cfg.data_parallel_size > 1 else "")
        if topo is None
        else f"{topo.prefill.replicas} prefill + {topo.decode.replicas} decode x {cfg.gpu.name} "
        f"({topo.link.mode} KV transfer)"
    )
    print(
        f"trace        {name} ({n} requests), {cfg.model.name} on {where}, "
        f"{'exact' if cfg.exact else 'fast'} mode, prefix cache {result.replicas[0].policy}"
    )
    print(f"makespan     {result.makespan_s:.1f} s simulated, {sum(r.iterations for r in result.replicas)} iterations")
    print(f"wall         {wall:.3f} s (load {load:.3f}, simulate {sim:.3f}, write {write:.3f})")
    print(f"peak RSS     {rss_mib:.0f} MiB")
    print(f"requests/s   {n / wall:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
