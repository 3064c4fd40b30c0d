"""``kavier simulate``: the serving simulation alone (performance only, no JVM)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kavier_opendc.base import limits
from kavier_opendc.cli import text
from kavier_opendc.cli.args import bounded_float, bounded_int, catalog_with, count_or_inf, fraction, positive_int, seed
from kavier_opendc.engine.router import ROUTERS


def router(text: str) -> str:
    """A router name (or alias), checked by the parser."""
    from kavier_opendc.base.errors import KavierInputError
    from kavier_opendc.engine.router import normalise_router

    try:
        return normalise_router(text)
    except KavierInputError:
        raise argparse.ArgumentTypeError(f"unknown router '{text}'; expected one of {', '.join(ROUTERS)}") from None


def add_simulate_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="LLM name from the catalogue (case-insensitive), e.g. Llama-3-8B")
    ap.add_argument("--gpu", required=True, help="GPU name from the catalogue (case-insensitive), e.g. A100-80GB")
    ap.add_argument("--trace", required=True,
                    help="trace file (CSV, Parquet or JSON Lines: kavier, azure, mooncake or vidur layout, "
                         "detected from the columns) or a synthetic workload description (YAML/JSON)")
    ap.add_argument("--out", required=True, help="output directory for requests.parquet, summary.json, "
                                                 "timeline.parquet")
    ap.add_argument("--trace-format", default=None, help="force the trace layout: kavier, azure, mooncake, vidur")
    ap.add_argument("--keep-overlong-requests", action="store_true",
                    help="keep trace rows longer than any model's context (10M tokens) as rejected requests "
                         "instead of refusing the trace")
    ap.add_argument("--replicas", type=positive_int("--replicas", limits.REPLICAS), default=1,
                    help="number of serving replicas (default 1)")
    ap.add_argument("--tp", type=positive_int("--tp", limits.TP), default=1,
                    help="tensor-parallel GPUs per replica (default 1)")
    ap.add_argument("--max-num-seqs", type=positive_int("--max-num-seqs", limits.NUM_SEQS), default=None,
                    help="most sequences running at once per replica (vLLM max_num_seqs; default vLLM v1's: "
                         "1024 on GPUs of 70 GiB or more other than A100, else 256)")
    ap.add_argument("--max-batched-tokens", type=positive_int("--max-batched-tokens", limits.BATCHED_TOKENS),
                    default=None,
                    help="token budget per iteration, prefill chunks plus decodes (vLLM max_num_batched_tokens; "
                         "default vLLM v1's: as a server 8192 on GPUs of 70 GiB or more other than A100, else "
                         "2048; offline 16384 and 8192)")
    ap.add_argument("--framework", default="vllm-v1", metavar="NAME",
                    help="serving framework whose scheduler rules, batch defaults and CPU time per step are "
                         "simulated: vllm-v1 (default), vllm-0.5-server, vllm-0.5-offline; 'kavier catalog' lists them")
    ap.add_argument("--usage", choices=("auto", "server", "offline"), default="auto",
                    help="whose vLLM v1 batch defaults apply: server (vllm serve), offline (the LLM class), or "
                         "auto: offline when every request arrives at once (default)")
    ap.add_argument("--gpu-memory-utilization", type=fraction, default=0.9,
                    help="fraction of GPU memory vLLM may use for weights, activations and KV cache (default 0.9)")
    ap.add_argument("--num-kv-blocks", type=positive_int("--num-kv-blocks", limits.KV_BLOCKS), default=None,
                    help="override the KV capacity per replica, in 16-token blocks (default: derived from memory)")
    ap.add_argument("--max-model-len", type=bounded_int("--max-model-len", 2, limits.CONTEXT_TOKENS), default=None,
                    metavar="N",
                    help="reject requests whose prompt plus output exceed N tokens, as a server with this "
                         "context length would (default: no limit; summary.json counts the requests longer "
                         "than the model's context window)")
    ap.add_argument("--allow-long-max-model-len", action="store_true",
                    help="accept a --max-model-len longer than the model's context window (refused otherwise, "
                         "as vLLM does without VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); a warning is printed")
    ap.add_argument("--kv-cache", choices=["on", "off"], default="on",
                    help="'off' recomputes the whole context at every decode step (seed paper, experiment 2)")
    ap.add_argument("--prefix-cache", default="auto", metavar="POLICY",
                    help="prefix-cache policy: block (vLLM automatic prefix caching over 16-token KV blocks), "
                         "prefill / full (the Kavier paper's prompt cache: a repeated prompt skips prefill / "
                         "prefill and decode), none, or auto (default: block when the trace has token ids, "
                         "hash_ids or session ids, else none)")
    ap.add_argument("--prefix-cache-min-tokens",
                    type=bounded_int("--prefix-cache-min-tokens", 0, limits.CONTEXT_TOKENS), default=0, metavar="N",
                    help="prompts shorter than N tokens never enter the prefix cache (default 0)")
    ap.add_argument("--prefix-cache-scope", choices=["global", "session"], default="global",
                    help="share cached prefixes across all users (global) or only within a session")
    ap.add_argument("--prefix-cache-capacity-prompts", type=count_or_inf, default=float("inf"), metavar="N|inf",
                    help="prefill/full policies: prompts kept in the LRU prompt cache (default inf)")
    ap.add_argument("--prefix-cache-capacity-tokens", type=count_or_inf, default=None, metavar="N|inf",
                    help="block policy: keep evictable cached blocks in a pool of N tokens (or inf: never "
                         "evict) instead of in the GPU's free KV memory (default: GPU memory bounds the cache)")
    ap.add_argument("--host-cache-gb", type=bounded_float("--host-cache-gb", 0.0, limits.MEMORY_GB), default=0.0,
                    metavar="GB",
                    help="block policy: a second cache tier in host memory per replica; blocks evicted from "
                         "the GPU go there and come back over PCIe instead of being recomputed (default 0)")
    ap.add_argument("--router", type=router, default="round-robin",
                    help=f"{', '.join(ROUTERS[:-1])} or {ROUTERS[-1]} (default round-robin; the last two are "
                         "cache-aware: a session stays on one replica, or the replica holding the longest "
                         "cached prefix among the less loaded ones)")
    ap.add_argument("--seed", type=seed, default=0, help="seed for the random router and synthetic workloads")
    ap.add_argument("--exact", action="store_true",
                    help="step every iteration instead of advancing decode runs in closed form (same results, slower)")
    ap.add_argument("--catalog", action="append", metavar="FILE",
                    help="extra model/GPU catalogue (JSON/YAML, schemas/catalog.schema.json); repeatable")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def cmd_simulate(args) -> int:
    from kavier_opendc.base.atomic import check_writable_dir
    from kavier_opendc.engine.outputs import write_simulation
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.workload.load import load_workload

    t0 = time.perf_counter()
    out = Path(args.out)
    check_writable_dir(out)
    cat = catalog_with(args.catalog)
    model, gpu = cat.model(args.model), cat.gpu(args.gpu)
    cfg = SimConfig(model=model, gpu=gpu, replicas=args.replicas, tp=args.tp, max_num_seqs=args.max_num_seqs,
                    max_batched_tokens=args.max_batched_tokens, usage=args.usage,
                    framework=cat.framework(args.framework), gpu_memory_utilization=args.gpu_memory_utilization,
                    kv_cache=args.kv_cache == "on",
                    prefix_cache=args.prefix_cache.lower(), prefix_min_tokens=args.prefix_cache_min_tokens,
                    prefix_scope=args.prefix_cache_scope,
                    prefix_capacity_prompts=args.prefix_cache_capacity_prompts,
                    prefix_capacity_tokens=args.prefix_cache_capacity_tokens, host_memory_gb=args.host_cache_gb,
                    router=args.router, seed=args.seed,
                    exact=args.exact, num_kv_blocks=args.num_kv_blocks, max_model_len=args.max_model_len,
                    allow_long_max_model_len=args.allow_long_max_model_len)
    cfg.validate()
    for warning in cfg.warnings():
        print(f"kavier: warning: {warning}", file=sys.stderr)
    trace = load_workload(args.trace, args.trace_format, args.seed, keep_overlong=args.keep_overlong_requests)
    result = simulate(trace, cfg, progress=False if args.quiet else None)
    summary = write_simulation(result, out)
    if not args.quiet:
        print(format_summary(summary, out, time.perf_counter() - t0))
    return 0


def format_summary(s: dict, out: Path, wall: float) -> str:
    from kavier_opendc.engine.outputs import batch_limits_origin
    c = s["config"]
    lines = [
        f"{c['model']} on {c['replicas']} x {c['tp']} x {c['gpu']} ({c['router']}, KV cache {c['kv_cache']}, "
        f"{c['kv_capacity_tokens_per_replica']} KV tokens/replica)",
        f"framework    {c['framework']['name']} ({c['framework']['versions']})",
        f"batching     {c['max_batched_tokens']} tokens, {c['max_num_seqs']} sequences per iteration "
        f"({batch_limits_origin(c)})",
        f"requests     {s['num_finished']} finished, {s['num_rejected']} rejected, makespan {s['makespan_s']:.1f} s",
        f"throughput   {s['output_tokens_per_s']:.1f} output tok/s, {s['total_tokens_per_s']:.1f} total tok/s",
        f"TTFT         {text.latencies(s['ttft_s'])}",
        f"TPOT         {text.latencies(s['tpot_s'])}",
        f"E2E          {text.latencies(s['e2e_s'])}",
        f"GPU busy     {text.gpu_line(s)}",
        f"KV cache     peak {s['kv_utilization_peak']:.3f}, preemptions {s['preemptions']}",
        f"prefix cache {s['prefix_cache']['policy']}: hit ratio {s['prefix_cache_hit_ratio']:.3f}, "
        f"{s['prefix_cache']['evictions']} evictions",
        f"wrote        {out}/requests.parquet, summary.json, timeline.parquet in {wall:.2f} s",
    ]
    if s.get("num_over_model_context") and c.get("max_model_len") is None:
        lines.insert(-1, f"note         {s['num_over_model_context']} requests are longer than {c['model']}'s context "
                         "window; a real server would refuse them (--max-model-len N does)")
    note = text.offline_batch_note(s)
    if note:
        lines.insert(-1, f"note         {note}")
    return "\n".join(lines)


def register(sub) -> None:
    sim = sub.add_parser("simulate", help="simulate serving a trace (performance only, no JVM)",
                         description="Simulate an LLM serving cluster (continuous batching, chunked prefill, "
                                     "KV-cache memory, preemption, routing) on a trace and write "
                                     "requests.parquet, summary.json and timeline.parquet.")
    add_simulate_args(sim)
    sim.set_defaults(func=cmd_simulate)
