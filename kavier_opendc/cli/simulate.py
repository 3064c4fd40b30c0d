"""``kavier simulate``: the serving simulation alone (performance only, no JVM)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli import text
from kavier_opendc.cli.args import bounded_float, bounded_int, catalog_with, count_or_inf, fraction
from kavier_opendc.cli.commands import HELP
from kavier_opendc.engine import knobs
from kavier_opendc.engine.router import ROUTERS, normalise_router

# The parser needs only the knobs; the simulator, the trace readers and the output writers (numpy, pyarrow)
# are imported by cmd_simulate, so `kavier simulate --help` and a usage error stay fast.


def router(text: str) -> str:
    """A router name (or alias), checked by the parser."""

    try:
        return normalise_router(text)
    except KavierInputError:
        raise argparse.ArgumentTypeError(f"unknown router '{text}'; expected one of {', '.join(ROUTERS)}") from None


def _argument(knob: knobs.Knob) -> dict:
    """argparse's keywords for a serving knob: its type and bounds, default (SimConfig's) and help."""
    flag = knob.flag or ""
    kw: dict = {"dest": knob.field, "help": knob.help, "default": knob.default}
    if knob.metavar:
        kw["metavar"] = knob.metavar
    if knob.kind == "int":
        kw["type"] = bounded_int(flag, int(knob.minimum or 0), knob.limit)
    elif knob.kind == "float":
        kw["type"] = bounded_float(flag, knob.minimum or 0.0, knob.limit)
    elif knob.kind == "fraction":
        kw["type"] = fraction
    elif knob.kind == "count_or_inf":
        kw["type"] = count_or_inf
    elif knob.kind == "choice" and not knob.aliases:
        kw["choices"] = knob.choices
    elif knob.kind == "choice":  # other spellings allowed: the engine folds them and names a wrong one
        kw["type"] = str.lower
    elif knob.field == "router":
        kw["type"] = router
    elif knob.field == "kv_cache":  # a switch spelled on/off, as vLLM's flags
        kw.update(choices=["on", "off"], default="on")
    elif knob.kind == "switch":
        kw["action"] = "store_true"
    return kw


def _as_flags(exc: KavierInputError) -> KavierInputError:
    """An engine error named by `kavier simulate`'s flag of the field."""
    return exc.relocated(knobs.flag_of(exc.location)) if exc.location else exc


def add_simulate_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="LLM name from the catalogue (case-insensitive), e.g. Llama-3-8B")
    ap.add_argument("--gpu", required=True, help="GPU name from the catalogue (case-insensitive), e.g. A100-80GB")
    ap.add_argument(
        "--trace",
        required=True,
        help="trace file (CSV, Parquet or JSON Lines: kavier, azure, mooncake or vidur layout, "
        "detected from the columns) or a synthetic workload description (YAML/JSON)",
    )
    ap.add_argument(
        "--out", required=True, help="output directory for requests.parquet, summary.json, timeline.parquet"
    )
    ap.add_argument("--trace-format", default=None, help="force the trace layout: kavier, azure, mooncake, vidur")
    ap.add_argument(
        "--keep-overlong-requests",
        action="store_true",
        help="keep trace rows longer than any model's context (10M tokens) as rejected requests "
        "instead of refusing the trace",
    )
    for knob in knobs.KNOBS:
        ap.add_argument(knob.flag, **_argument(knob))
    ap.add_argument(
        "--catalog",
        action="append",
        metavar="FILE",
        help="extra model/GPU catalogue (JSON/YAML, schemas/catalog.schema.json); repeatable",
    )
    ap.add_argument(
        "--overwrite", action="store_true", help="replace a complete earlier simulation in --out (refused otherwise)"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def cmd_simulate(args) -> int:
    from kavier_opendc.base.atomic import check_writable_dir
    from kavier_opendc.base.output_folder import output_lock

    t0 = time.perf_counter()
    out = Path(args.out)
    check_writable_dir(out)
    with output_lock(out):
        return _simulate(args, out, t0)


def _simulate(args, out: Path, t0: float) -> int:
    """cmd_simulate holding --out's lock."""
    from kavier_opendc.base.atomic import INCOMPLETE, refuse_complete_output
    from kavier_opendc.base.output_folder import recover_replacement, replacing
    from kavier_opendc.engine.outputs import FILES, write_simulation
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.workload.load import load_workload

    cat = catalog_with(args.catalog)
    model, gpu = cat.model(args.model), cat.gpu(args.gpu)
    values = {k.field: getattr(args, k.field) for k in knobs.KNOBS if k.flag}
    values["framework"] = cat.framework(args.framework)
    values["kv_cache"] = args.kv_cache == "on"
    for name in ("prefill_gpu", "decode_gpu"):
        if values[name] is not None:
            values[name] = cat.gpu(values[name])
    if values["draft_model"] is not None:  # looked up in the catalogues given (with --catalog)
        try:
            values["draft_model"] = cat.model(values["draft_model"])
        except KavierInputError as e:
            raise e.relocated("--draft-model") from None
    try:
        cfg = SimConfig(model=model, gpu=gpu, **values)
        cfg.validate()
        # the settings' own errors first; then a complete earlier result in --out, before any work
        note = recover_replacement(out, FILES + (INCOMPLETE,), FILES)
        if note:
            print(f"kavier: note: {note}", file=sys.stderr)
        refuse_complete_output(
            out, FILES, "simulation (requests.parquet, timeline.parquet, summary.json)", overwrite=args.overwrite
        )
        names = [
            (f"--{f.replace('_', '-')}", getattr(args, f), "model" if f == "model" else "gpu")
            for f in ("model", "gpu", "prefill_gpu", "decode_gpu")
        ]
        notes = [
            f"{flag}: {n}"
            for flag, value, kind in names
            if isinstance(value, str)
            for n in [cat.resolution_note(value, kind)]
            if n
        ]
        for warning in notes + cfg.warnings():
            print(f"kavier: warning: {warning}", file=sys.stderr)
        trace = load_workload(args.trace, args.trace_format, args.seed, keep_overlong=args.keep_overlong_requests)
        result = simulate(trace, cfg, progress=False if args.quiet else None)
    except KavierInputError as exc:
        raise _as_flags(exc) from None
    with replacing(out, FILES + (INCOMPLETE,), FILES, first="summary.json"):  # the earlier one kept until then
        summary = write_simulation(result, out)
    if not args.quiet:
        print(format_summary(summary, out, time.perf_counter() - t0))
    return 0


def _moe_layout(c: dict) -> str:
    """', EP 8, attention DP 8 x TP 1' for a MoE run with expert / attention data parallelism, else ''."""
    m = c.get("moe_parallel")
    if not m:
        return ""
    parts = [f"EP {m['ep_size']}"] if m["expert_parallel"] else ["experts TP"]
    if m["data_parallel_size"] > 1:
        parts.append(f"attention DP {m['data_parallel_size']} x TP {m['attention_tp']}")
    return " (" + ", ".join(parts) + ")"


def format_summary(s: dict, out: Path, wall: float) -> str:
    from kavier_opendc.engine.outputs import batch_limits_origin

    c = s["config"]
    head = (
        f"{c['model']} on {c['replicas']} x {c['tp']} x {c['gpu']}{_moe_layout(c)} ({c['router']}, KV cache "
        f"{c['kv_cache']}, {c['kv_capacity_tokens_per_replica']} KV tokens/replica)"
    )
    pd = s.get("disaggregation")
    if pd:  # routing is the P/D loop's own; each pool's capacity is in its section
        head = (
            f"{c['model']} on {c['replicas']} replicas, disaggregated (KV cache {c['kv_cache']}, "
            f"{pd['prefill_pool']['kv_capacity_blocks'] * 16} / {pd['decode_pool']['kv_capacity_blocks'] * 16} "
            "KV tokens per prefill / decode replica)"
        )
    lines = [
        head,
        f"framework    {c['framework']['name']} ({c['framework']['versions']})",
        f"batching     {c['max_batched_tokens']} tokens, {c['max_num_seqs']} sequences per iteration "
        f"({batch_limits_origin(c)})",
        f"requests     {s['num_finished']} finished, {s['num_rejected']} rejected, makespan {s['makespan_s']:.1f} s",
        f"throughput   {s['output_tokens_per_s']:.1f} output tok/s, {s['total_tokens_per_s']:.1f} total tok/s",
        f"TTFT         {text.latencies(s['ttft_s'])}",
        f"TPOT         {text.latencies(s['tpot_s'])}",
        f"ITL          {text.latencies(s['itl_s'])} (gaps between streamed chunks)",
        f"E2E          {text.latencies(s['e2e_s'])}",
        f"GPU busy     {text.gpu_line(s)}",
        f"KV cache     peak {s['kv_utilization_peak']:.3f}, preemptions {s['preemptions']}",
        f"prefix cache {s['prefix_cache']['policy']}: hit ratio {s['prefix_cache_hit_ratio']:.3f}, "
        f"{s['prefix_cache']['evictions']} evictions",
        f"wrote        {out}/requests.parquet, summary.json, timeline.parquet in {wall:.2f} s",
    ]
    sp = c.get("speculative")
    if sp:  # after the batching line
        src = "given" if sp["acceptance_rate_source"] == "given" else "assumed"
        draft = f", draft {sp['draft_model']}" if sp["draft_model"] else ""
        lines.insert(
            3,
            f"speculative  {sp['method']}{draft}, k={sp['num_speculative_tokens']}, acceptance "
            f"{sp['acceptance_rate']:g} ({src}): {sp['mean_accepted_length']:.3f} tokens per verify step",
        )
    arr = s.get("arrival")
    if arr:
        lines.insert(
            3,
            f"arrival      closed-loop, concurrency {arr['concurrency']} (think time {arr['think_time_s']:g} s)",
        )
    if pd:
        p, d, link = pd["prefill_pool"], pd["decode_pool"], pd["link"]
        mean = link["transfer_s_mean"]
        pools = (
            f"prefill {p['replicas']} x {p['tp']} x {p['gpu']} (busy {p['busy_fraction']:.3f}), "
            f"decode {d['replicas']} x {d['tp']} x {d['gpu']} (busy {d['busy_fraction']:.3f})"
        )
        moved = (
            f"KV link {link['gbs']:g} GB/s {link['mode']}: {link['bytes_moved'] / 1e9:.2f} GB in "
            f"{link['transfers']} transfers, busy {link['busy_fraction']:.3f}, mean "
            + (
                f"{mean * 1e3:.2f} ms ({link['exposed_s_mean'] * 1e3:.2f} ms after the prefill)"
                if mean is not None
                else "-"
            )
        )
        lines.insert(1, f"disaggregated {pools}; {moved}")
    for note in (text.context_note(s), text.offline_batch_note(s)):
        if note:
            lines.insert(-1, f"note         {note}")
    return "\n".join(lines)


def register(sub) -> None:
    sim = sub.add_parser(
        "simulate",
        help=HELP["simulate"],
        description="Simulate an LLM serving cluster (continuous batching, chunked prefill, "
        "KV-cache memory, preemption, routing) on a trace and write "
        "requests.parquet, summary.json and timeline.parquet.",
    )
    add_simulate_args(sim)
    sim.set_defaults(func=cmd_simulate)
