"""``kavier calibrate``: fit GPU efficiency profiles to measurement files.

Reads one or more measurement files (layouts in
``kavier_opendc/calibration/layouts.py`` and the README), fits a profile per
GPU they measure, writes a catalogue file with a ``profiles`` list that
``--catalog`` accepts, and prints the profiles and the error of their
predictions per file (with ``--loso``, also leaving each file out in turn).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kavier_opendc.base import limits
from kavier_opendc.base.atomic import atomic_write_text
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.output_folder import output_lock
from kavier_opendc.calibration.layouts import LAYOUTS, ReadOptions
from kavier_opendc.calibration.load_sweep import fit_load_sweep, replay_point
from kavier_opendc.calibration.report import (
    Source,
    all_profiles,
    calibrate_files,
    describe_profiles,
    error_markdown,
    error_table,
    write_catalog,
)
from kavier_opendc.cli.args import bounded_float, positive_int
from kavier_opendc.cli.commands import HELP
from kavier_opendc.specs.catalog import default_catalog, load_catalog_file
from kavier_opendc.specs.frameworks import framework_to_entry
from kavier_opendc.specs.profiles import profile_to_entry

HEADER = """GPU efficiency profiles written by 'kavier calibrate' from:
{files}
Use with --catalog (kavier_opendc/specs/profiles.py documents every field)."""


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``calibrate`` to the ``kavier`` sub-command parser."""
    p = subparsers.add_parser(
        "calibrate",
        help=HELP["calibrate"],
        description="Fit per-GPU efficiency profiles (GEMM, attention, all-reduce, framework overhead) to "
        "measurement files and write them as a catalogue file for --catalog. Layouts (detected from "
        "the CSV header): single-request (the Kavier A10 table; needs --model/--gpu), operator "
        "(per-layer GEMM times vs tokens), allreduce (NCCL time vs bytes and GPUs), step-times "
        "(prefill and decode-step times with TP), serving (batch size, TPOT, throughput).",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="measurement CSV files, or 'kavier trace' replay folders of one deployment at several "
        "request rates (then the serving framework's CPU time per step and client latency are "
        "fitted, with --model, --gpu, --tp)",
    )
    p.add_argument("--out", required=True, help="catalogue file to write (.yaml or .json)")
    p.add_argument("--model", help="model of single-request files (catalogue name)")
    p.add_argument("--gpu", help="GPU of single-request files (catalogue name)")
    p.add_argument(
        "--tp",
        type=positive_int("--tp", limits.TP),
        default=1,
        help="tensor parallelism of single-request files (default 1)",
    )
    p.add_argument("--layout", choices=list(LAYOUTS), help="force the layout of every file instead of detecting it")
    p.add_argument(
        "--default-framework",
        action="store_true",
        help="the files' end-to-end times are of the framework the simulator models (vLLM v1): their "
        "overheads become the profile's own (otherwise each file's overheads are fitted apart)",
    )
    p.add_argument(
        "--max-batched-tokens",
        type=positive_int("--max-batched-tokens", limits.BATCHED_TOKENS),
        default=8192,
        help="token budget that chunked single-request prefills (default 8192)",
    )
    p.add_argument(
        "--prompt-tokens",
        type=bounded_float("--prompt-tokens", 0.0, limits.CONTEXT_TOKENS, exclusive=True),
        default=100.0,
        help="mean prompt length of serving files without avg_input_tokens (default 100)",
    )
    p.add_argument(
        "--framework-name",
        metavar="NAME",
        default=None,
        help="replay folders: the name of the framework to write (default: calibrated-<base>)",
    )
    p.add_argument(
        "--base-framework",
        metavar="NAME",
        default="vllm-v1",
        help="replay folders: the framework whose scheduler rules the server follows (default vllm-v1)",
    )
    p.add_argument("--catalog", action="append", metavar="FILE", help="extra catalogue file; repeatable")
    p.add_argument("--loso", action="store_true", help="also report the leave-one-source-out error")
    p.set_defaults(func=cmd_calibrate)
    return p


def cmd_calibrate(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise KavierInputError("the catalogue file must end in .yaml, .yml or .json", location="--out")
    if not out.parent.exists():
        raise KavierInputError("directory does not exist", source=str(out.parent), location="--out")
    with output_lock(out, command=" ".join(["kavier"] + [shlex.quote(a) for a in sys.argv[1:]]), file=True):
        return _calibrate(args, out)


def _calibrate(args, out: Path) -> int:
    cat = default_catalog()
    for f in args.catalog or []:
        cat = load_catalog_file(f, base=cat)
    replays = [f for f in args.files if (Path(f) / "requests.parquet").is_file()]
    if replays:
        if len(replays) != len(args.files):
            raise KavierInputError(
                "measurement files and replay folders cannot be mixed in one calibration",
                source=", ".join(f for f in args.files if f not in replays),
                expected="only CSV files (GPU profiles) or only replay folders (a framework)",
            )
        return _calibrate_framework(args, cat, out)
    opts = ReadOptions(
        model=args.model,
        gpu=args.gpu,
        tp=args.tp,
        max_batched_tokens=args.max_batched_tokens,
        prompt_tokens=args.prompt_tokens,
        default_framework=args.default_framework,
    )
    cal = calibrate_files([Source(f, opts, args.layout) for f in args.files], cat)
    profiles = all_profiles(cal, only_fitted=True)
    header = HEADER.format(files="\n".join(f"  {f} ({cal.layouts[f]})" for f in args.files))
    if out.suffix.lower() == ".json":
        import json

        atomic_write_text(
            out, json.dumps({"description": header, "profiles": [profile_to_entry(p) for p in profiles]}, indent=2)
        )
    else:
        write_catalog(out, profiles, header)
    load_catalog_file(out, base=cat)  # what we wrote is a valid catalogue
    print(describe_profiles(profiles))
    for fit in cal.fits.values():
        for o, why in fit.rejected:
            print(f"left out {o.source} line {o.row}: {why}")
    for name, fit in cal.fits.items():
        for fw, o in fit.frameworks.items():
            print(
                f"{name}: overheads of {fw}: {o.fixed_s * 1e3:.2f} ms/iteration, "
                f"{o.per_seq_s * 1e6:.1f} us/sequence, "
                f"{o.per_token_s * 1e6:.2f} us/token, {o.per_token_sq_s * 1e12:.3g} ps/token²"
            )
    rows = error_table(cal, cat, loso=args.loso)
    print(error_markdown(rows))
    print(f"wrote {out} (use it with --catalog {out})")
    return 0


def _calibrate_framework(args, cat, out: Path) -> int:
    """Replay folders -> one framework: its CPU time per step and client latency, by simulating each replay."""
    import dataclasses

    import yaml

    if not args.model or not args.gpu:
        raise KavierInputError(
            "a replay does not name the model and GPU it measured",
            location="--model/--gpu",
            expected="--model and --gpu (and --tp) of the deployment that was traced",
        )
    model, gpu = cat.model(args.model), cat.gpu(args.gpu)
    base = cat.framework(args.base_framework)
    points = [replay_point(Path(f), model.name, gpu.name, args.tp) for f in args.files]
    fit = fit_load_sweep(points, cat, base)
    name = args.framework_name or f"calibrated-{base.name}"
    o = fit.overhead
    fw = dataclasses.replace(
        base,
        name=name,
        description=f"{base.name} as measured on {gpu.name} x {args.tp} serving {model.name}",
        serving_path="server",
        step_overhead={(gpu.name, args.tp): o},
        client_latency_s=fit.client_latency_s,
        provenance={
            **base.provenance,
            "step_overhead": "fitted by 'kavier calibrate' on the replays " + ", ".join(args.files),
            "client_latency_s": "the median of measured minus simulated TTFT over the same replays",
        },
    )
    entry = framework_to_entry(fw)
    entry = {
        "name": name,
        "base": base.name,
        "serving_path": "server",
        "description": entry["description"],
        "client_latency_s": entry["client_latency_s"],
        "step_overhead": entry["step_overhead"],
        "provenance": {k: fw.provenance[k] for k in ("step_overhead", "client_latency_s")},
    }
    header = (
        f"# A serving framework written by 'kavier calibrate' from {len(args.files)} replay(s); use it with\n"
        f"# kavier simulate --catalog {out.name} --framework {name}\n"
    )
    if out.suffix.lower() == ".json":
        import json

        atomic_write_text(out, json.dumps({"frameworks": [entry]}, indent=2) + "\n")
    else:
        atomic_write_text(out, header + yaml.safe_dump({"frameworks": [entry]}, sort_keys=False))
    load_catalog_file(out, base=cat)  # what we wrote is a valid catalogue
    e = fit.errors()
    print(f"framework {name} (scheduler {base.policy}, from {base.name}) on {gpu.name} x {args.tp}, {model.name}:")
    print(f"  CPU time per step  {o.fixed_s * 1e3:.3f} ms + {o.per_seq_s * 1e6:.1f} us per running sequence")
    print(f"  client latency     {fit.client_latency_s * 1e3:.2f} ms")
    per_token, ttft = (100 * sum(e[k]) / len(e[k]) for k in ("per_token", "ttft"))
    print(
        f"  fit                {len(fit.points)} replays, time per output token MAPE {per_token:.2f} %, "
        f"TTFT MAPE {ttft:.2f} %"
    )
    print(f"wrote {out} (use it with --catalog {out} --framework {name})")
    return 0
