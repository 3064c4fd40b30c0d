"""``kavier simulate``: the serving simulation alone (performance only, no JVM)."""

from __future__ import annotations

import argparse
import math
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


def _as_flags(exc: KavierInputError, pool_flags: dict | None = None) -> KavierInputError:
    """An engine error named by `kavier simulate`'s flag of the field (``pool_flags``: the flags a topology
    built from --prefill-pool/--decode-pool/--kv-link-pair names its fields by)."""
    if not exc.location or (exc.source and exc.location.startswith(("row ", "column"))):
        return exc  # a file's row or column (a trace's): not a flag
    loc = exc.location
    for prefix, flag in (pool_flags or {}).items():
        if loc == prefix or loc.startswith(prefix + "."):
            field = loc[len(prefix) + 1 :]
            return exc.relocated(flag(field) if callable(flag) else flag)
    return exc.relocated(knobs.flag_of(loc))


def _pool_spec(text: str, flag: str, cat) -> tuple:
    """'GPU:TP:REPLICAS' -> (GPUSpec, tp, replicas), or a clear error naming the flag."""
    parts = text.rsplit(":", 2)
    try:
        if len(parts) != 3 or not parts[0]:
            raise ValueError
        tp, replicas = int(parts[1]), int(parts[2])
    except ValueError:
        raise KavierInputError(
            f"cannot read the pool {text!r}", location=flag, expected="GPU:TP:REPLICAS, e.g. H100-SXM:1:2"
        ) from None
    try:
        gpu = cat.gpu(parts[0])
    except KavierInputError as exc:
        raise exc.relocated(flag) from None
    return gpu, tp, replicas


def _pair_spec(text: str, mode: str):
    """'P:D:GBS[:LATENCY_S[:SETUP_S[:J_PER_BYTE]]]' -> PairLink (defaults: LinkSpec's)."""
    from kavier_opendc.engine.kv_link import LinkSpec, PairLink

    parts = text.split(":")
    d = LinkSpec()
    try:
        if not 3 <= len(parts) <= 6:
            raise ValueError
        p, q = int(parts[0]), int(parts[1])
        nums = [float(x) for x in parts[2:]] + [d.latency_s, d.setup_s, math.nan][len(parts) - 3 :]
    except ValueError:
        raise KavierInputError(
            f"cannot read the link {text!r}",
            location="--kv-link-pair",
            expected="P:D:GBS[:LATENCY_S[:SETUP_S[:J_PER_BYTE]]], e.g. 0:1:450:1e-6",
        ) from None
    energy = None if math.isnan(nums[3]) else nums[3]
    return PairLink(p, q, LinkSpec(nums[0], nums[1], nums[2], mode, energy))


def _pool_topology(args, cat, model, gpu, values: dict) -> dict:
    """--prefill-pool/--decode-pool/--kv-link-pair/--kv-link-energy-j-per-byte: the topology they declare, put
    in ``values["disaggregation"]`` (the single-pool flags then describe a role without --<role>-pool). Returns
    the flags that name its fields in errors."""
    from kavier_opendc.engine.kv_link import Disaggregation, LinkSpec, Pool

    given = {r: getattr(args, f"{r}_pool", None) or [] for r in ("prefill", "decode")}
    if not (given["prefill"] or given["decode"] or args.kv_link_pair or args.kv_link_energy_j_per_byte is not None):
        return {}
    flags: dict = {}
    pools: dict[str, list] = {}
    for role in ("prefill", "decode"):
        if given[role]:
            for name in ("replicas", "gpu", "tp"):
                if values.get(f"{role}_{name}") is not None:
                    raise KavierInputError(
                        f"the {role} pools are given twice (--{role}-pool and --{role}-{name})",
                        location=f"--{role}-{name}",
                        expected=f"--{role}-pool only, or the single-pool flags only",
                    )
            pools[role] = []
            for k, text in enumerate(given[role]):
                g, tp, n = _pool_spec(text, f"--{role}-pool", cat)
                pools[role].append(
                    Pool(
                        model,
                        g,
                        n,
                        tp,
                        values.get("num_kv_blocks"),
                        max_num_seqs=values.get(f"{role}_max_num_seqs"),
                        max_batched_tokens=values.get(f"{role}_max_batched_tokens"),
                    )
                )
                where = f"--{role}-pool {text}"
                key = f"disaggregation.{role}_pools[{k}]" if len(given[role]) > 1 else f"disaggregation.{role}"
                flags[key] = where
        else:
            n = values.get(f"{role}_replicas")
            if n is None:
                raise KavierInputError(
                    f"disaggregated serving needs a {role} pool",
                    location=f"--{role}-pool",
                    expected=f"--{role}-pool GPU:TP:REPLICAS (or --{role}-replicas N)",
                )
            g = values.get(f"{role}_gpu") or gpu
            pools[role] = [
                Pool(
                    model,
                    g,
                    n,
                    values.get(f"{role}_tp") or values["tp"],
                    values.get("num_kv_blocks"),
                    max_num_seqs=values.get(f"{role}_max_num_seqs"),
                    max_batched_tokens=values.get(f"{role}_max_batched_tokens"),
                )
            ]
            flags[f"disaggregation.{role}"] = lambda field, role=role: f"--{role}-{field.replace('_', '-')}"
        for name in ("replicas", "gpu", "tp", "max_num_seqs", "max_batched_tokens"):
            values[f"{role}_{name}"] = None  # now in the pools
    mode = values["kv_transfer_mode"]
    link = LinkSpec(
        values["kv_link_gbs"],
        values["kv_link_latency_s"],
        values["kv_link_setup_s"],
        mode,
        args.kv_link_energy_j_per_byte,
    )
    flags["disaggregation.link"] = lambda field: (
        "--kv-transfer-mode" if field == "mode" else f"--kv-link-{field.replace('_', '-')}"
    )
    pairs = tuple(_pair_spec(t, mode) for t in args.kv_link_pair or [])
    for j, t in enumerate(args.kv_link_pair or []):
        flags[f"disaggregation.pair_links[{j}]"] = f"--kv-link-pair {t}"
    routing = knobs.BY_FIELD["decode_routing"].normalise(values.get("decode_routing")) or "free-kv"
    values["decode_routing"] = None  # now in the topology
    flags["disaggregation.decode_routing"] = "--decode-routing"
    values["disaggregation"] = Disaggregation(
        pools["prefill"][0],
        pools["decode"][0],
        link,
        tuple(pools["prefill"][1:]),
        tuple(pools["decode"][1:]),
        pairs,
        routing,
    )
    return flags


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
    pools = ap.add_argument_group(
        "several pools per role (disaggregated serving; README 'Disaggregated prefill/decode')"
    )
    for role in ("prefill", "decode"):
        pools.add_argument(
            f"--{role}-pool",
            action="append",
            metavar="GPU:TP:REPLICAS",
            help=f"a {role} pool of REPLICAS replicas of TP x GPU; repeatable, pool after pool (named {role}-0, "
            f"{role}-1, ...); replaces --{role}-replicas/--{role}-gpu/--{role}-tp",
        )
    pools.add_argument(
        "--kv-link-pair",
        action="append",
        metavar="P:D:GBS[:LATENCY_S[:SETUP_S[:J_PER_BYTE]]]",
        help="a link of its own between prefill pool P and decode pool D (0-based, in flag order), with the "
        "--kv-transfer-mode; repeatable; other pairs share the --kv-link-* link",
    )
    pools.add_argument(
        "--kv-link-energy-j-per-byte",
        type=float,
        default=None,
        metavar="J",
        help="energy per byte of KV moved on the shared link (default 3.4e-10, derived: engine/kv_link.py)",
    )
    dfr = ap.add_argument_group("carbon-aware deferral of requests with a deadline_s (README 'Carbon-aware deferral')")
    dfr.add_argument(
        "--deferral",
        default="none",
        metavar="POLICY",
        help="none (run on arrival, the default) or lowest-carbon (hold each request with a deadline_s until the "
        "lowest-carbon window before its deadline; needs --carbon-trace and --start); battery-aware follows a "
        "datacenter battery: kavier run",
    )
    dfr.add_argument(
        "--deferral-spread",
        action="store_true",
        help="release the held requests that share one release instant evenly over the carbon step in force then, "
        "each by its latest start, instead of all at once (README 'Carbon-aware deferral')",
    )
    dfr.add_argument(
        "--carbon-trace", default=None, metavar="FILE|REGION", help="carbon-intensity trace (OpenDC Parquet) or region"
    )
    dfr.add_argument(
        "--start", default=None, metavar="ISO", help="calendar time (UTC) of the trace's time 0, e.g. 2022-06-01T00:00"
    )
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
    from kavier_opendc.engine.deferral import check_policy, missed_warning, simulate_deferred
    from kavier_opendc.engine.outputs import FILES, write_simulation
    from kavier_opendc.engine.simulator import SimConfig
    from kavier_opendc.workload.load import load_workload

    cat = catalog_with(args.catalog)
    model, gpu = cat.model(args.model), cat.gpu(args.gpu)
    values = {k.field: getattr(args, k.field) for k in knobs.KNOBS if k.flag}
    try:
        values["framework"] = cat.framework(args.framework, usage=args.usage)
    except KavierInputError as e:
        raise e.relocated("--framework") from None
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
        pool_flags = _pool_topology(args, cat, model, gpu, values)
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
        policy = check_policy(args.deferral, "--deferral")
        trace = load_workload(args.trace, args.trace_format, args.seed, keep_overlong=args.keep_overlong_requests)
        steps = _deferral_carbon(args, policy, trace)
        if args.deferral_spread and policy == "none":
            raise KavierInputError(
                "--deferral-spread spreads the requests a deferral policy holds, and policy none holds none",
                location="--deferral-spread",
                expected="--deferral lowest-carbon (or no --deferral-spread)",
            )
        result = simulate_deferred(
            trace, cfg, policy, steps, progress=False if args.quiet else None, spread=args.deferral_spread
        )
    except KavierInputError as exc:
        raise _as_flags(exc, pool_flags if "pool_flags" in locals() else {}) from None
    with replacing(out, FILES + (INCOMPLETE,), FILES, first="summary.json", what="simulation"):  # kept until then
        summary = write_simulation(result, out)
    missed = missed_warning(summary)
    if missed:
        print(f"kavier: warning: {missed}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(summary, out, time.perf_counter() - t0))
    return 0


def _deferral_carbon(args, policy: str, trace):
    """The carbon steps a deferral policy needs (None for none): --carbon-trace from --start on."""
    import numpy as np

    given = args.carbon_trace is not None or args.start is not None
    if policy == "none":
        if given:
            raise KavierInputError(
                "--carbon-trace and --start are read by a deferral policy only",
                location="--deferral",
                expected="--deferral lowest-carbon with them, or neither",
            )
        return None
    if args.carbon_trace is None or args.start is None:
        raise KavierInputError(
            f"--deferral {policy} chooses windows on a carbon-intensity trace",
            location="--carbon-trace" if args.carbon_trace is None else "--start",
            expected="--carbon-trace FILE|REGION and --start ISO (the calendar time of the trace's time 0)",
        )
    from kavier_opendc.opendc import carbon as C

    start = C.parse_start(args.start, "--start")
    path = C.resolve_carbon_trace(args.carbon_trace, Path.cwd(), year=start.year, location="--carbon-trace")
    df = C.read_carbon_trace(path)
    d = trace.deadline_s
    horizon = float(np.nanmax(d)) if d is not None and np.isfinite(d).any() else float(trace.arrival_s[-1])
    return C.carbon_steps(df, start, horizon, label=path.name, location="--start/--carbon-trace")


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
    dfr = s.get("deferral")
    if dfr:  # before the "wrote" line
        from kavier_opendc.engine.deferral import describe

        lines[-1:-1] = [f"{'deferral' if k == 0 else '':<12} {line}" for k, line in enumerate(describe(dfr))]
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
        several = pd.get("pools") and (len(pd["pools"]) > 2 or len(pd["links"]) > 1)
        if several:  # a line per pool and per link (one pool per role and one link: the line as before)
            pools = ", ".join(
                f"{q['name']} {q['replicas']} x {q['tp']} x {q['gpu']} (busy {q['busy_fraction']:.3f}, "
                f"{q['requests']} requests)"
                for q in pd["pools"]
            )
            per_link = "; ".join(
                f"{lk['pair']} {lk['gbs']:g} GB/s: {lk['bytes_moved'] / 1e9:.2f} GB in {lk['transfers']} transfers, "
                f"busy {lk['busy_fraction']:.3f}, {lk['energy_j']:.3g} J"
                for lk in pd["links"]
            )
            moved = f"KV links {link['mode']}: {per_link}"
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
