"""``kavier trace`` and ``kavier compare``: measure a real deployment and compare the simulator with it.

``register(subparsers)`` registers both commands on the ``kavier`` parser.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from kavier_opendc.base.atomic import check_writable_dir, refuse_complete_output
from kavier_opendc.base.errors import KavierError, KavierInputError, KavierRuntimeError
from kavier_opendc.base.output_folder import output_lock
from kavier_opendc.cli import text
from kavier_opendc.cli.args import seed
from kavier_opendc.cli.commands import HELP
from kavier_opendc.reports.compare import compare_paths, format_result
from kavier_opendc.specs.catalog import default_catalog, load_catalog_file
from kavier_opendc.tracer.client import REDACTED, Endpoint, api_key_from_env
from kavier_opendc.tracer.outputs import MEASUREMENTS_FILE, write_measurement
from kavier_opendc.tracer.runner import replay_plans, run_measurement, sweep_plans
from kavier_opendc.workload.synthetic import load_synthetic_spec
from kavier_opendc.workload.trace import load_trace

DEFAULT_PROMPT_LENGTHS = "64,128,256,512,1024,2048"
DEFAULT_OUTPUT_LENGTHS = "128"


def _int_list(name: str):
    def parse(text: str) -> list[int]:
        try:
            vals = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated whole numbers, got '{text}'") from None
        if not vals or min(vals) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated whole numbers >= 1, got '{text}'")
        return vals

    return parse


def _positive(kind, name: str, minimum=1):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{text}'") from None
        if not v >= minimum or v != v:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {text}")
        return v

    return parse


def register(sub) -> None:
    t = sub.add_parser(
        "trace",
        help=HELP["trace"],
        description="Measure a real LLM deployment through its OpenAI-compatible /v1/completions endpoint "
        "(stream: true). sweep: single requests over a grid of prompt x output lengths, written "
        "as DIR/measurements.csv in the layout of the A10 measurement table (what the calibration "
        "reads). replay: a trace sent at its arrival times (or --rate, or --all-at-once); writes "
        "DIR/requests.parquet with the simulator's columns plus every token's arrival time, and "
        "DIR/summary.json. An API key is read from $KAVIER_API_KEY or $OPENAI_API_KEY and never "
        "written (nor quoted from a server that echoes it). A request that fails is recorded with its "
        "reason and counted in summary.json; when all fail the command exits 3 with the outputs marked "
        "incomplete. Ctrl-C writes what was measured, marked incomplete.",
    )
    t.add_argument("endpoint", metavar="ENDPOINT", help="the server's base URL, e.g. http://localhost:8000")
    t.add_argument("--model", required=True, help="model name as the server knows it (see GET /v1/models)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--mode", choices=["sweep", "replay"], default="replay", help="default replay")
    g = t.add_argument_group("replay")
    g.add_argument("--trace", help="trace file (any layout 'kavier simulate' reads) or synthetic workload YAML")
    g.add_argument("--trace-format", default=None, help="force the trace layout: kavier, azure, mooncake, vidur")
    when = g.add_mutually_exclusive_group()
    when.add_argument(
        "--rate",
        type=_positive(float, "--rate", 1e-9),
        default=None,
        metavar="R",
        help="send at Poisson arrivals of R requests/s (with --seed) instead of the trace's times",
    )
    when.add_argument("--all-at-once", action="store_true", help="send every request at time 0")
    g.add_argument(
        "--max-requests",
        type=_positive(int, "--max-requests"),
        default=None,
        metavar="N",
        help="replay only the first N requests",
    )
    s = t.add_argument_group("sweep")
    s.add_argument(
        "--prompt-lengths",
        type=_int_list("--prompt-lengths"),
        default=None,
        metavar="LIST",
        help=f"prompt lengths in tokens (default {DEFAULT_PROMPT_LENGTHS})",
    )
    s.add_argument(
        "--output-lengths",
        type=_int_list("--output-lengths"),
        default=None,
        metavar="LIST",
        help=f"output lengths in tokens (default {DEFAULT_OUTPUT_LENGTHS})",
    )
    s.add_argument(
        "--repetitions", type=_positive(int, "--repetitions"), default=3, help="measurements per grid point (default 3)"
    )
    s.add_argument(
        "--warmup",
        type=_positive(int, "--warmup", 0),
        default=None,
        help="unrecorded requests sent first (default 1 for sweep, 0 for replay)",
    )
    t.add_argument(
        "--concurrency",
        type=_positive(int, "--concurrency"),
        default=None,
        help="most requests in flight (replay default 64; sweep always sends one at a time)",
    )
    t.add_argument(
        "--timeout",
        type=_positive(float, "--timeout", 1e-3),
        default=600.0,
        metavar="S",
        help="longest one attempt of a request may take, in seconds (default 600)",
    )
    t.add_argument(
        "--connect-timeout",
        type=_positive(float, "--connect-timeout", 1e-3),
        default=10.0,
        metavar="S",
        help="longest wait for a connection, DNS included (default 10 s)",
    )
    t.add_argument(
        "--first-byte-timeout",
        type=_positive(float, "--first-byte-timeout", 1e-3),
        default=None,
        metavar="S",
        help="longest wait from sending a request to the first byte of its reply, the "
        "connection included (default: --read-timeout)",
    )
    t.add_argument(
        "--read-timeout",
        type=_positive(float, "--read-timeout", 1e-3),
        default=60.0,
        metavar="S",
        help="longest wait for the first token after the reply's headers, and between two chunks of "
        "the stream (default 60 s)",
    )
    t.add_argument(
        "--retries",
        type=_positive(int, "--retries", 0),
        default=0,
        help="resend a request that failed before any answer arrived (default 0: a retried request "
        "is a different measurement); HTTP 4xx other than 408, 409, 425 and 429 is not retried",
    )
    t.add_argument(
        "--retry-backoff",
        type=_positive(float, "--retry-backoff", 0.0),
        default=1.0,
        metavar="S",
        help="wait before the n-th retry: S x 2^(n-1) seconds, or the server's Retry-After; at most 60 s (default 1)",
    )
    t.add_argument(
        "--overwrite", action="store_true", help="replace a complete earlier measurement in --out (refused otherwise)"
    )
    t.add_argument(
        "--no-ignore-eos",
        action="store_true",
        help="do not send ignore_eos (for servers that reject it); output lengths may then fall short",
    )
    t.add_argument("--seed", type=seed, default=0, help="seed for prompts and --rate arrivals (default 0)")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")
    t.set_defaults(func=cmd_trace)

    c = sub.add_parser(
        "compare",
        help=HELP["compare"],
        description="Compare a simulation with a measurement of the same trace: per-request and aggregate "
        "MAPE and signed bias of TTFT, TPOT and e2e (mean, p50, p90, p99) and throughput; CDF "
        "and scatter plots (PNG), report.md and compare.json. Either side may be a directory "
        "with requests.parquet (kavier simulate / kavier trace) or, on both sides, a table in "
        "the layout of the A10 measurements (prefill and decode per length; the simulated side "
        "uses kavier_prefill/kavier_decode, or --model/--gpu to simulate each row now).",
    )
    c.add_argument("sim_dir", metavar="SIM_DIR", help="simulation output directory, or an A10-layout CSV")
    c.add_argument(
        "measured_dir",
        metavar="MEASURED_DIR",
        help="kavier trace output directory, or an A10-layout CSV (e.g. DIR/measurements.csv)",
    )
    c.add_argument("--out", required=True, help="output directory for report.md, compare.json and plots")
    c.add_argument("--model", default=None, help="A10-layout tables: simulate each row with this model")
    c.add_argument("--gpu", default=None, help="A10-layout tables: ... on this GPU")
    c.add_argument("--catalog", action="append", metavar="FILE", help="extra model/GPU catalogue; repeatable")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)


# ----------------------------------------------------------------- trace
def _load_trace(path: str, fmt: str | None):
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml"):
        if fmt:
            raise KavierInputError(
                "--trace-format applies to trace files, not to synthetic workload descriptions",
                source=str(p),
                location="--trace-format",
            )
        return load_synthetic_spec(p)
    return load_trace(p, fmt)


TRACE_FILES = ("requests.parquet", "summary.json")


def cmd_trace(args) -> int:
    """``kavier trace``; every message it ends with has the API key redacted (a server may echo it)."""
    api_key = api_key_from_env(os.environ)
    try:
        return _trace(args, api_key)
    except KavierError as exc:
        if api_key:
            exc.args = tuple(str(a).replace(api_key, REDACTED) for a in exc.args)
        raise


def _trace(args, api_key: str | None) -> int:
    out = Path(args.out)
    check_writable_dir(out)
    with output_lock(out, command=_command_line(api_key)):
        return _trace_locked(args, api_key, out)


def _command_line(api_key: str | None) -> str:
    """The command line for the lock's holder note (which another user may read): no API key in it."""
    line = " ".join(["kavier"] + [shlex.quote(a) for a in sys.argv[1:]])
    return line.replace(api_key, REDACTED) if api_key else line


def _trace_locked(args, api_key: str | None, out: Path) -> int:
    refuse_complete_output(out, TRACE_FILES, "measurement (requests.parquet, summary.json)", overwrite=args.overwrite)
    if args.mode == "sweep":
        for opt, val in (("--trace", args.trace), ("--rate", args.rate), ("--max-requests", args.max_requests)):
            if val:
                raise KavierInputError(f"{opt} applies to --mode replay", location=opt)
        if args.all_at_once:
            raise KavierInputError("--all-at-once applies to --mode replay", location="--all-at-once")
        if args.concurrency not in (None, 1):
            raise KavierInputError(
                "a sweep sends single requests, one at a time",
                location="--concurrency",
                expected="no --concurrency (or 1) with --mode sweep",
            )
        prompts = args.prompt_lengths or _int_list("")(DEFAULT_PROMPT_LENGTHS)
        outputs = args.output_lengths or _int_list("")(DEFAULT_OUTPUT_LENGTHS)
        plans = sweep_plans(prompts, outputs, args.repetitions)
        concurrency = 1
        warmup = 1 if args.warmup is None else args.warmup
        trace_info = {"prompt_lengths": prompts, "output_lengths": outputs, "repetitions": args.repetitions}
    else:
        for opt, val in (("--prompt-lengths", args.prompt_lengths), ("--output-lengths", args.output_lengths)):
            if val:
                raise KavierInputError(f"{opt} applies to --mode sweep", location=opt)
        if not args.trace:
            raise KavierInputError(
                "--mode replay needs --trace",
                location="--trace",
                expected="a trace file or a synthetic workload description",
            )
        trace = _load_trace(args.trace, args.trace_format)
        plans = replay_plans(
            trace, rate=args.rate, all_at_once=args.all_at_once, seed=args.seed, limit=args.max_requests
        )
        concurrency = args.concurrency or 64
        warmup = args.warmup or 0
        trace_info = {
            "source": str(trace.source),
            "format": trace.format,
            "arrivals": "all-at-once" if args.all_at_once else (f"poisson {args.rate}/s" if args.rate else "trace"),
        }
    endpoint = Endpoint(
        args.endpoint,
        args.model,
        api_key,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        read_timeout_s=args.read_timeout,
        first_byte_timeout_s=args.first_byte_timeout,
        concurrency=concurrency,
        ignore_eos=not args.no_ignore_eos,
        retries=args.retries,
        retry_backoff_s=args.retry_backoff,
    )
    m = run_measurement(
        endpoint,
        plans,
        mode=args.mode,
        concurrency=concurrency,
        seed=args.seed,
        warmup=warmup,
        progress=False if args.quiet else None,
    )
    m.settings = {
        "endpoint": endpoint.public,
        "model": args.model,
        "concurrency": concurrency,
        "timeout_s": args.timeout,
        "connect_timeout_s": args.connect_timeout,
        "read_timeout_s": args.read_timeout,
        "first_byte_timeout_s": endpoint.first_byte_timeout_s,
        "retries": args.retries,
        "retry_backoff_s": args.retry_backoff,
        "max_line_bytes": endpoint.max_line_bytes,
        "ignore_eos": not args.no_ignore_eos,
        "seed": args.seed,
        "warmup": warmup,
        "api_key_set": bool(api_key),
        "trace": trace_info,
    }
    summary = write_measurement(m, out)
    files = "requests.parquet, summary.json" + (f", {MEASUREMENTS_FILE}" if args.mode == "sweep" else "")
    if not args.quiet:
        print(_format(summary, out, files))
    if m.interrupted:
        print(
            f"kavier: interrupted: wrote the {summary['num_finished']} requests measured so far to {out}, "
            'marked incomplete (summary.json "complete": false)',
            file=sys.stderr,
        )
        return 130
    if summary["status"] == "all_failed":
        raise KavierRuntimeError(
            f"all {summary['num_requests']} requests to {endpoint.public} failed "
            f"(first error: {summary['first_error']}); {out} is marked incomplete"
        )
    if summary["num_failed"]:
        print(
            f"kavier: warning: {summary['num_failed']} of {summary['num_requests']} requests failed "
            f"({', '.join(f'{k}: {v}' for k, v in summary['errors'].items())}; first: {summary['first_error']})",
            file=sys.stderr,
        )
    return 0


def _format(s: dict, out: Path, files: str) -> str:
    def ms(d):
        return text.latencies(d)

    c = s["config"]
    return "\n".join(
        [
            f"{c['model']} at {c['endpoint']} ({c['mode']}, concurrency {c['concurrency']}, prompts by "
            f"{c['prompt_method']})",
            f"requests     {s['num_finished']} finished, {s['num_failed']} failed, makespan {s['makespan_s']:.2f} s",
            f"throughput   {s['output_tokens_per_s']:.1f} output tok/s, {s['total_tokens_per_s']:.1f} total tok/s",
            f"TTFT         {ms(s['ttft_s'])}",
            f"TPOT         {ms(s['tpot_s'])}",
            f"E2E          {ms(s['e2e_s'])}",
            f"wrote        {out}/{files}" + ("" if s["complete"] else " (incomplete)"),
        ]
    )


# ----------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    out = Path(args.out)
    check_writable_dir(out)
    if (args.model is None) != (args.gpu is None):
        raise KavierInputError(
            "--model and --gpu go together",
            location="--model/--gpu",
            expected="both (to simulate the rows of an A10-layout table) or neither",
        )
    simulate = None
    if args.model:
        cat = default_catalog()
        for f in args.catalog or []:
            cat = load_catalog_file(f, base=cat)
        simulate = (cat.model(args.model), cat.gpu(args.gpu))
    with output_lock(out, command=_command_line(None)):
        result = compare_paths(Path(args.sim_dir), Path(args.measured_dir), out, simulate=simulate)
    if not args.quiet:
        print(format_result(result, out))
    return 0
