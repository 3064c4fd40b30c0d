"""`kavier plan`: which configuration to run for a traffic under latency SLOs (parsing and printing only).

The search itself is ``kavier_opendc.experiments.plan``; the plan file is
described in ``kavier_opendc.experiments.plan_file`` and
``schemas/plan.schema.json``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.output_folder import complete_result_name, output_lock, recover_replacement, replacing
from kavier_opendc.cli.args import positive_int
from kavier_opendc.cli.commands import HELP
from kavier_opendc.experiments.plan import MAX_RATE_FILES, PLAN_ENTRIES, PLAN_FILES, run_max_rate, run_plan
from kavier_opendc.experiments.plan_file import EXAMPLE_PLAN, check_embodied_known, load_plan
from kavier_opendc.experiments.run_folder import clear_incomplete, mark_incomplete
from kavier_opendc.opendc.jvm import check_opendc_available


def cmd_plan(args) -> int:
    """kavier plan PLAN_FILE --out DIR [--objective ...] [--max-rate] [--jobs N | --scheduler ADDR]"""

    if (args.plan is None) == (not args.example):
        raise KavierInputError("give a PLAN_FILE or --example (not both)", location="PLAN_FILE")
    command = " ".join(["kavier"] + [shlex.quote(a) for a in sys.argv[1:]])
    plan = load_plan(EXAMPLE_PLAN if args.example else Path(args.plan), opendc=False if args.no_opendc else None)
    if not args.max_rate:
        check_embodied_known(plan, args.objective or plan.objective)  # before the output folder is touched
    out = Path(args.out)
    files = MAX_RATE_FILES if args.max_rate else PLAN_FILES
    if not args.max_rate and not args.no_opendc and args.scheduler is None:
        check_opendc_available()  # before the lock, the INCOMPLETE marker or a folder moved aside
    with output_lock(out, command=command):
        note = recover_replacement(out, PLAN_ENTRIES, files)
        if note:
            print(f"kavier: note: {note}", file=sys.stderr)
        earlier = complete_result_name(out, files, "plan")
        # the same plan again (another objective) reuses its runs: nothing of it is lost
        if earlier is not None and earlier != plan.name and not args.overwrite:
            raise KavierInputError(
                f"{out} already holds the complete plan '{earlier}' ({', '.join(files)}), which is kept",
                location="--out",
                expected=f"another folder, --overwrite to replace it, or plan '{earlier}' itself (its runs reused)",
            )
        guard = contextlib.nullcontext(False)
        if args.overwrite:
            guard = replacing(out, PLAN_ENTRIES, files, first=files[0], what="plan")
        with guard as replaced:
            if not replaced:  # a plan killed or failed midway never leaves a complete-looking folder
                mark_incomplete(out, f"kavier plan did not finish (pid {os.getpid()}: {command})\n")
            rc = _plan(plan, args, command)
            clear_incomplete(out)
            return rc


def _plan(plan, args, command: str) -> int:
    if args.max_rate:
        res = run_max_rate(
            plan,
            Path(args.out),
            jobs=args.jobs,
            scheduler=args.scheduler,
            quiet=args.quiet,
            run_plots=args.run_plots,
            command=command,
        )
        print(res.text)
        return 0 if res.summary["max_rate_rps"] is not None else 3
    res = run_plan(
        plan,
        Path(args.out),
        jobs=args.jobs,
        scheduler=args.scheduler,
        opendc=not args.no_opendc,
        objective=args.objective,
        quiet=args.quiet,
        run_plots=args.run_plots,
        command=command,
    )
    print(res.text)
    print(f"wrote {args.out}/plan.md, plan.html, plan.json, candidates.csv, evaluations.csv, front.csv, plots/, runs/")
    return 0 if res.summary["chosen"] is not None else 3


def register(sub) -> None:
    """Add ``plan`` to the ``kavier`` parser."""
    ap = sub.add_parser(
        "plan",
        help=HELP["plan"],
        description="Search a plan file's candidates (schemas/plan.schema.json): per serving shape "
        "the smallest replica count meeting the SLOs (bisection, without OpenDC), then "
        "OpenDC for the shapes on or near the Pareto front; prints the chosen "
        "configuration and the front, and writes plan.md, tables, plots and every run. "
        "With --max-rate: the highest request rate one configuration sustains.",
    )
    ap.add_argument("plan", metavar="PLAN_FILE", nargs="?", help="the plan file (JSON or YAML)")
    ap.add_argument(
        "--example",
        action="store_true",
        help="plan the built-in example (kavier_opendc/data/plan_example.yaml: multi-turn chat at "
        "24 req/s on Llama-3-8B; A100-80GB or H100-SXM, TP 1/2, prefix caching on/off)",
    )
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (runs/<id>/ per evaluated run)")
    ap.add_argument(
        "--objective",
        choices=["cost", "energy", "carbon", "total-carbon"],
        help="what the chosen configuration minimises (default: the plan file's objective)",
    )
    ap.add_argument(
        "--max-rate",
        action="store_true",
        help="find the highest request rate at which the plan's single configuration meets the SLOs",
    )
    ap.add_argument(
        "--jobs", type=positive_int("--jobs"), default=2, help="worker processes of the local Dask cluster (default 2)"
    )
    ap.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on an existing Dask cluster instead")
    ap.add_argument(
        "--no-opendc",
        action="store_true",
        help="no OpenDC at all: energy is the estimate from the catalogue's GPU power, carbon unknown",
    )
    ap.add_argument("--run-plots", action="store_true", help="also draw each run's own plots (slower)")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete earlier plan in --out, every run redone (refused for another plan's "
        "otherwise; the same plan again reuses its runs)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.set_defaults(func=cmd_plan)
