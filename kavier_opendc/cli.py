"""The ``kavier`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kavier_opendc import __version__
from kavier_opendc.errors import KavierError, KavierInputError


def positive_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _count_or_inf(text: str) -> float:
    if text.strip().lower() in ("inf", "infinite", "unbounded"):
        return float("inf")
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'inf', got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return float(v)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def load_workload(path: str, fmt: str | None = None, seed: int | None = None):
    """A trace file (CSV/Parquet/JSONL) or a synthetic workload description (YAML/JSON object)."""
    from kavier_opendc.workload.synthetic import load_synthetic_spec
    from kavier_opendc.workload.trace import load_trace

    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml") or (p.suffix.lower() == ".json" and _is_json_object(p)):
        if fmt:
            raise KavierInputError("--trace-format applies to trace files, not to synthetic workload "
                                   "descriptions", source=str(p), location="--trace-format")
        return load_synthetic_spec(p)
    return load_trace(p, fmt)


def _is_json_object(p: Path) -> bool:
    try:
        with open(p) as fh:
            head = fh.read(1 << 16).lstrip()
    except OSError:
        return False
    if not head.startswith("{"):
        return False
    first_line = head.splitlines()[0] if head else ""
    try:
        obj = json.loads(first_line)
        # one object per line (JSON Lines) is a trace; a multi-line object is a description
        return not isinstance(obj, dict) or "timestamp" not in obj and "input_length" not in obj \
            and "num_input_tokens" not in obj
    except json.JSONDecodeError:
        return True


def _catalog(files: list[str] | None):
    from kavier_opendc.specs.catalog import default_catalog, load_catalog_file

    cat = default_catalog()
    for f in files or []:
        cat = load_catalog_file(f, base=cat)
    return cat


# ----------------------------------------------------------------- simulate
def add_simulate_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="LLM name from the catalogue (case-insensitive), e.g. Llama-3-8B")
    ap.add_argument("--gpu", required=True, help="GPU name from the catalogue (case-insensitive), e.g. A100-80GB")
    ap.add_argument("--trace", required=True,
                    help="trace file (CSV, Parquet or JSON Lines: kavier, azure, mooncake or vidur layout, "
                         "detected from the columns) or a synthetic workload description (YAML/JSON)")
    ap.add_argument("--out", required=True, help="output directory for requests.parquet, summary.json, "
                                                 "timeline.parquet")
    ap.add_argument("--trace-format", default=None, help="force the trace layout: kavier, azure, mooncake, vidur")
    ap.add_argument("--replicas", type=positive_int("--replicas"), default=1,
                    help="number of serving replicas (default 1)")
    ap.add_argument("--tp", type=positive_int("--tp"), default=1,
                    help="tensor-parallel GPUs per replica (default 1)")
    ap.add_argument("--max-num-seqs", type=positive_int("--max-num-seqs"), default=256,
                    help="most sequences running at once per replica (vLLM max_num_seqs, default 256)")
    ap.add_argument("--max-batched-tokens", type=positive_int("--max-batched-tokens"), default=8192,
                    help="token budget per iteration, prefill chunks plus decodes (vLLM "
                         "max_num_batched_tokens, default 8192)")
    ap.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9,
                    help="fraction of GPU memory vLLM may use for weights, activations and KV cache (default 0.9)")
    ap.add_argument("--num-kv-blocks", type=positive_int("--num-kv-blocks"), default=None,
                    help="override the KV capacity per replica, in 16-token blocks (default: derived from memory)")
    ap.add_argument("--max-model-len", type=positive_int("--max-model-len"), default=None, metavar="N",
                    help="reject requests whose prompt plus output exceed N tokens, as a server with this "
                         "context length would (default: no limit; summary.json counts the requests longer "
                         "than the model's context window)")
    ap.add_argument("--kv-cache", choices=["on", "off"], default="on",
                    help="'off' recomputes the whole context at every decode step (seed paper, experiment 2)")
    ap.add_argument("--prefix-cache", default="auto", metavar="POLICY",
                    help="prefix-cache policy: block (vLLM automatic prefix caching over 16-token KV blocks), "
                         "prefill / full (the Kavier paper's prompt cache: a repeated prompt skips prefill / "
                         "prefill and decode), none, or auto (default: block when the trace has token ids, "
                         "hash_ids or session ids, else none)")
    ap.add_argument("--prefix-cache-min-tokens", type=int, default=0, metavar="N",
                    help="prompts shorter than N tokens never enter the prefix cache (default 0)")
    ap.add_argument("--prefix-cache-scope", choices=["global", "session"], default="global",
                    help="share cached prefixes across all users (global) or only within a session")
    ap.add_argument("--prefix-cache-capacity-prompts", type=_count_or_inf, default=float("inf"), metavar="N|inf",
                    help="prefill/full policies: prompts kept in the LRU prompt cache (default inf)")
    ap.add_argument("--prefix-cache-capacity-tokens", type=_count_or_inf, default=None, metavar="N|inf",
                    help="block policy: keep evictable cached blocks in a pool of N tokens (or inf: never "
                         "evict) instead of in the GPU's free KV memory (default: GPU memory bounds the cache)")
    ap.add_argument("--host-cache-gb", type=float, default=0.0, metavar="GB",
                    help="block policy: a second cache tier in host memory per replica; blocks evicted from "
                         "the GPU go there and come back over PCIe instead of being recomputed (default 0)")
    ap.add_argument("--router", default="round-robin",
                    help="round-robin, least-outstanding, least-kv or random (default round-robin)")
    ap.add_argument("--seed", type=int, default=0, help="seed for the random router and synthetic workloads")
    ap.add_argument("--exact", action="store_true",
                    help="step every iteration instead of advancing decode runs in closed form (same results, slower)")
    ap.add_argument("--catalog", action="append", metavar="FILE",
                    help="extra model/GPU catalogue (JSON/YAML, schemas/catalog.schema.json); repeatable")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def cmd_simulate(args) -> int:
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.outputs import check_writable_dir, write_simulation

    t0 = time.perf_counter()
    out = Path(args.out)
    check_writable_dir(out)
    cat = _catalog(args.catalog)
    model, gpu = cat.model(args.model), cat.gpu(args.gpu)
    cfg = SimConfig(model=model, gpu=gpu, replicas=args.replicas, tp=args.tp, max_num_seqs=args.max_num_seqs,
                    max_batched_tokens=args.max_batched_tokens,
                    gpu_memory_utilization=args.gpu_memory_utilization, kv_cache=args.kv_cache == "on",
                    prefix_cache=args.prefix_cache.lower(), prefix_min_tokens=args.prefix_cache_min_tokens,
                    prefix_scope=args.prefix_cache_scope,
                    prefix_capacity_prompts=args.prefix_cache_capacity_prompts,
                    prefix_capacity_tokens=args.prefix_cache_capacity_tokens, host_memory_gb=args.host_cache_gb,
                    router=args.router, seed=args.seed,
                    exact=args.exact, num_kv_blocks=args.num_kv_blocks, max_model_len=args.max_model_len)
    cfg.validate()
    trace = load_workload(args.trace, args.trace_format, args.seed)
    result = simulate(trace, cfg, progress=False if args.quiet else None)
    summary = write_simulation(result, out)
    if not args.quiet:
        print(format_summary(summary, out, time.perf_counter() - t0))
    return 0


def format_summary(s: dict, out: Path, wall: float) -> str:
    c = s["config"]

    def ms(d):
        return "n/a" if d["mean"] is None else f"mean {d['mean'] * 1e3:.1f} / p50 {d['p50'] * 1e3:.1f} / " \
                                             f"p99 {d['p99'] * 1e3:.1f} ms"
    lines = [
        f"{c['model']} on {c['replicas']} x {c['tp']} x {c['gpu']} ({c['router']}, KV cache {c['kv_cache']}, "
        f"{c['kv_capacity_tokens_per_replica']} KV tokens/replica)",
        f"requests     {s['num_finished']} finished, {s['num_rejected']} rejected, makespan {s['makespan_s']:.1f} s",
        f"throughput   {s['output_tokens_per_s']:.1f} output tok/s, {s['total_tokens_per_s']:.1f} total tok/s",
        f"TTFT         {ms(s['ttft_s'])}",
        f"TPOT         {ms(s['tpot_s'])}",
        f"E2E          {ms(s['e2e_s'])}",
        f"GPU util     {s['gpu_utilization_mean']:.3f} mean, KV peak {s['kv_utilization_peak']:.3f}, "
        f"preemptions {s['preemptions']}",
        f"prefix cache {s['prefix_cache']['policy']}: hit ratio {s['prefix_cache_hit_ratio']:.3f}, "
        f"{s['prefix_cache']['evictions']} evictions",
        f"wrote        {out}/requests.parquet, summary.json, timeline.parquet in {wall:.2f} s",
    ]
    if s.get("num_over_model_context") and c.get("max_model_len") is None:
        lines.insert(-1, f"note         {s['num_over_model_context']} requests are longer than {c['model']}'s context "
                         "window; a real server would refuse them (--max-model-len N does)")
    return "\n".join(lines)


# ----------------------------------------------------------------- OpenDC
def cmd_export_opendc(args) -> int:
    """A simulation's timeline as OpenDC's workload, topology and experiment."""
    from kavier_opendc.opendc.topology import load_datacenter, write_opendc_inputs
    from kavier_opendc.outputs import check_writable_dir

    sim = Path(args.sim_dir)
    for name in ("timeline.parquet", "summary.json"):
        if not (sim / name).is_file():
            raise KavierInputError(f"{sim / name} not found", source=str(sim), location=name,
                                   expected="the output directory of 'kavier simulate'")
    datacenter = load_datacenter(args.datacenter)
    opts = {"mode": args.mode, "tolerance": args.tolerance, "interval_s": args.interval}
    if args.start:
        opts["start"] = args.start
    out = Path(args.out)
    check_writable_dir(out)
    # experiment.json holds absolute paths into ``out``, so it is written in place; a marker
    # says the directory is incomplete until every file is there
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "INCOMPLETE"
    marker.write_text("kavier export-opendc did not finish\n")
    stats = write_opendc_inputs(sim, datacenter, out, **opts)
    marker.unlink()
    if not args.quiet:
        print(f"wrote {out}/workload/tasks.parquet, workload/fragments.parquet, topology.json, experiment.json")
        print(f"export: {stats['mode']} mode, tolerance {stats['tolerance']}: {stats['fragments']} fragments "
              f"from {stats['timeline_segments']} timeline segments, GPU energy (linear model) "
              f"{stats['gpu_energy_linear_wh']:.3f} Wh")
    return 0


def cmd_opendc(args) -> int:
    """Run an OpenDC experiment directory through the bridge; write sustainability.json."""
    from kavier_opendc.opendc.results import run_opendc_dir
    from kavier_opendc.progress import Progress

    d = Path(args.dir)
    if not (d / "experiment.json").is_file():
        raise KavierInputError(f"{d / 'experiment.json'} not found", source=str(d), location="experiment.json",
                               expected="a directory with experiment.json, topology.json and workload/")
    bar = Progress(1.0, "opendc", enabled=False if args.quiet else None)
    try:
        result = run_opendc_dir(d, progress=bar.update)
    finally:
        bar.close()
    if not args.quiet:
        print(f"energy {result['energy_wh']:.3f} Wh, average power {result['avg_power_w']:.1f} W, "
              f"peak {result['peak_power_w']:.1f} W, carbon {result['carbon_g']:.3f} g")
        print(f"wrote {d}/sustainability.json and OpenDC's output under {d}/output/")
    return 0


# ----------------------------------------------------------------- catalog
def cmd_catalog(args) -> int:
    cat = _catalog(args.catalog)
    if args.what in ("models", "all"):
        print("Models (layers, hidden, heads/kv, params, dtype):")
        for m in cat.models():
            print(f"  {m.name:<18} {m.num_layers:>3} {m.hidden_size:>6} {m.num_attention_heads:>3}/"
                  f"{m.num_kv_heads:<3} {m.total_params / 1e9:7.2f}B {m.dtype}")
    if args.what in ("gpus", "all"):
        print("GPUs (dense FP16 TFLOP/s, GB/s, GiB, idle-max W, $/h):")
        for g in cat.gpus():
            print(f"  {g.name:<10} {g.peak_fp16_tflops:8.1f} {g.mem_bandwidth_gbs:7.0f} {g.memory_gib:5.0f} "
                  f"{g.idle_power_w:4.0f}-{g.max_power_w:<5.0f} {g.price_per_hour:5.2f}")
    return 0


# ----------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kavier", description="Kavier-OpenDC: cache-aware LLM inference "
                                 "simulation co-simulated with OpenDC for power, energy and carbon.")
    ap.add_argument("--version", action="version", version=f"kavier-opendc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sim = sub.add_parser("simulate", help="simulate serving a trace (performance only, no JVM)",
                         description="Simulate an LLM serving cluster (continuous batching, chunked prefill, "
                                     "KV-cache memory, preemption, routing) on a trace and write "
                                     "requests.parquet, summary.json and timeline.parquet.")
    add_simulate_args(sim)
    sim.set_defaults(func=cmd_simulate)
    # the experiment pipeline: kavier run, validate, sweep, efficiency, demo
    from kavier_opendc import cli_pipeline

    cli_pipeline.register(sub)
    e = sub.add_parser("export-opendc", help="turn a simulation's timeline into an OpenDC experiment",
                       description="Write DIR/workload/tasks.parquet, DIR/workload/fragments.parquet, "
                                   "DIR/topology.json and DIR/experiment.json in OpenDC's formats.")
    e.add_argument("sim_dir", help="output directory of 'kavier simulate'")
    e.add_argument("--datacenter", required=True, help="datacenter description (JSON/YAML, "
                                                       "schemas/datacenter.schema.json)")
    e.add_argument("--out", required=True, help="OpenDC experiment directory to write")
    e.add_argument("--mode", choices=["adaptive", "interval", "segments", "per-request"], default="adaptive",
                   help="adaptive: merge timeline segments whose utilisation differs by at most --tolerance "
                        "(default); interval: fixed --interval bins; segments: one fragment per segment; "
                        "per-request: one task per request (the Kavier prototype's way)")
    e.add_argument("--tolerance", type=float, default=0.02, help="adaptive merging tolerance (default 0.02)")
    e.add_argument("--interval", type=float, default=0.1, help="bin length in seconds for --mode interval")
    e.add_argument("--start", default=None, help="calendar start of the run (ISO date; default: the datacenter's)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export_opendc)
    o = sub.add_parser("opendc", help="run an OpenDC experiment directory through the bridge",
                       description="Run DIR/experiment.json with the real OpenDC (JVM, Py4J), put OpenDC's "
                                   "output under DIR/output/ and write DIR/sustainability.json.")
    o.add_argument("dir", help="directory with experiment.json, topology.json and workload/")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=cmd_opendc)
    c = sub.add_parser("catalog", help="list the built-in (and your) models and GPUs")
    c.add_argument("what", nargs="?", choices=["models", "gpus", "all"], default="all")
    c.add_argument("--catalog", action="append", metavar="FILE", help="extra catalogue file; repeatable")
    c.set_defaults(func=cmd_catalog)
    from kavier_opendc import cli_calibrate

    cli_calibrate.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KavierError as exc:
        msg = " ".join(str(exc).split("\n")) if "\n" not in str(exc).strip() else str(exc)
        print(f"kavier: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kavier: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
