"""The experiment pipeline's commands: run, demo, sweep, efficiency.

`kavier_opendc.cli` calls :func:`register` with its sub-parsers. Every
command returns an exit code and raises :class:`KavierError` subclasses for
user errors (printed by ``cli.main`` without a traceback). The work is done by
``kavier_opendc.experiments``; this module parses and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path

from kavier_opendc.base import limits
from kavier_opendc.base.atomic import refuse_complete_output, write_json_atomic
from kavier_opendc.base.errors import KavierInputError, KavierRuntimeError
from kavier_opendc.base.output_folder import complete_result_name, output_lock, recover_replacement, replacing
from kavier_opendc.cli import text
from kavier_opendc.cli.args import bounded_float, positive_int
from kavier_opendc.cli.commands import HELP
from kavier_opendc.experiments.demo import DEMO_EXPERIMENT, copy_demo_inputs
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.experiments.run_folder import REPORT_JSON, RUN_ENTRIES
from kavier_opendc.experiments.sweep import SWEEP_ENTRIES, SWEEP_FILES, check_opendc_for, load_sweep, run_sweep
from kavier_opendc.opendc.jvm import check_opendc_available
from kavier_opendc.reports.efficiency import prototype_efficiency_summary


def _command_line(argv_name: str = "kavier") -> str:
    return " ".join([argv_name] + [shlex.quote(a) for a in sys.argv[1:]])


# ----------------------------------------------------------------- run
def add_run_args(ap: argparse.ArgumentParser, experiment: bool = True) -> None:
    if experiment:
        ap.add_argument(
            "experiment", metavar="EXPERIMENT", help="experiment file (JSON or YAML, schemas/experiment.schema.json)"
        )
    ap.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: report.json, report.md, report.html, plots/, simulation/, opendc/",
    )
    ap.add_argument(
        "--no-opendc",
        action="store_true",
        help="skip OpenDC: simulation and the performance report only (no JVM needed)",
    )
    ap.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    if experiment:
        ap.add_argument(
            "--deferral",
            default=None,
            metavar="POLICY",
            help="deferral policy of the requests with a deadline_s, overriding deferral.policy: none, "
            "lowest-carbon (on the experiment's carbon trace from datacenter.start) or battery-aware (also on "
            "datacenter.battery)",
        )
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete earlier run in --out (refused otherwise; an incomplete one is replaced)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr and no summary on stdout")


def _run_file(path: Path, args, command: str) -> int:
    exp = load_experiment(path, opendc=False if args.no_opendc else None)
    if getattr(args, "deferral", None) is not None:
        from kavier_opendc.engine.deferral import check_policy

        exp.deferral = check_policy(args.deferral, "--deferral")
    out = Path(args.out)
    with output_lock(out, command=command):
        note = recover_replacement(out, RUN_ENTRIES, (REPORT_JSON,))
        if note:
            print(f"kavier: note: {note}", file=sys.stderr)
        refuse_complete_output(out, (REPORT_JSON,), "run (report.json)", overwrite=args.overwrite)
        # (a failure ends with what became of the earlier run: put back, or kept aside where it cannot be)
        with replacing(out, RUN_ENTRIES, (REPORT_JSON,), first=REPORT_JSON, what="run") as replaced:
            res = run_experiment(
                exp,
                out,
                opendc=False if args.no_opendc else None,
                plots=not args.no_plots,
                quiet=args.quiet,
                command=command,
                partial_note=not replaced,
            )
    if not args.quiet:
        print(format_run_summary(res.report, Path(args.out), res.wall_s, plots=not args.no_plots))
    return 0


def cmd_run(args) -> int:
    """kavier run EXPERIMENT --out DIR [--no-opendc]"""
    return _run_file(Path(args.experiment), args, _command_line())


def format_run_summary(report: dict, out: Path, wall_s: float, plots: bool = True) -> str:
    """The few lines `kavier run` prints on stdout."""
    p, s, e = report["performance"], report.get("sustainability"), report["efficiency"]
    cur = e.get("currency", "USD")

    def ms(d):
        return text.latencies(d, ("p50", "p99"))

    lines = [
        f"{report['experiment']['name']}: "
        + ", ".join(
            f"{g['replicas']} x {g['tp']} x {g['gpu']} ({g['model']})" for g in report["experiment"]["replica_groups"]
        ),
        f"requests     {p['num_finished']} finished, {p['num_rejected']} rejected, makespan {p['makespan_s']:.1f} s",
        f"throughput   {p['output_tokens_per_s']:.1f} output tok/s, {p['total_tokens_per_s']:.1f} total tok/s",
        f"TTFT         {ms(p['ttft_s'])}",
        f"TPOT         {ms(p['tpot_s'])}",
    ]
    lines.append(f"GPU busy     {text.gpu_line(p)}")
    if p.get("deferral"):
        from kavier_opendc.engine.deferral import describe

        lines += [f"{'deferral' if k == 0 else '':<12} {line}" for k, line in enumerate(describe(p["deferral"]))]
    if e.get("slo_attainment") is not None:
        lines.append(
            f"SLOs         {e['slo_attainment']:.1%} of requests met both, goodput {e['goodput_rps']:.3f} req/s"
        )
    if s is not None:
        lines.append(
            f"energy       {s['energy_wh']:.2f} Wh, avg {s['avg_power_w']:.0f} W, "
            f"peak {s['peak_power_w']:.0f} W, "
            f"carbon {s['carbon_g']:.2f} gCO2"
        )
        lines.append(
            f"efficiency   {e['wh_per_mtoken']:.1f} Wh/Mtoken, {e['gco2_per_mtoken']:.1f} gCO2/Mtoken, "
            f"{e['cost_per_mtoken']:.3f} {cur}/Mtoken"
        )
    else:
        lines.append(f"cost         {e['cost_per_mtoken']:.3f} {cur}/Mtoken (GPU-hours only; no OpenDC)")
    for note in (text.context_note(p), text.offline_batch_note(p)):
        if note:
            lines.append(f"note         {note}")
    written = "report.json, report.md, report.html" + ("" if not plots else ", plots/")
    lines.append(f"wrote        {out}/{written} in {wall_s:.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """The built-in demo experiment, run exactly as `kavier run` would."""
    if args.init:
        return _demo_init(Path(args.init))
    if not args.out:
        raise KavierInputError("give --out DIR (or --init DIR to copy the demo's input files)", location="--out")
    if not args.no_opendc:
        # the demo must run on any fresh machine: without a working OpenDC bridge it still gives the
        # performance report, and says loudly why the sustainability part is missing
        try:
            check_opendc_available()
        except KavierRuntimeError as exc:
            print(f"kavier: warning: running the demo without OpenDC (performance report only): {exc}", file=sys.stderr)
            args.no_opendc = True
    return _run_file(DEMO_EXPERIMENT, args, _command_line())


def _demo_init(dest: Path) -> int:
    """Copy the demo's input files into ``dest`` and say how to run them."""
    written = copy_demo_inputs(dest)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"run it with: kavier run {dest / 'experiment.yaml'} --out {dest / 'results'}")
    return 0


# ----------------------------------------------------------------- sweep
def cmd_sweep(args) -> int:
    """kavier sweep SWEEP_FILE --out DIR [--jobs N] [--overwrite]"""
    sweep = load_sweep(Path(args.sweep), opendc=False if args.no_opendc else None)
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.scheduler is None:  # a remote cluster's workers have their own OpenDC
        check_opendc_for(sweep, out, redo_all=args.overwrite)
    with output_lock(out, command=_command_line()):
        note = recover_replacement(out, SWEEP_ENTRIES, SWEEP_FILES)
        if note:
            print(f"kavier: note: {note}", file=sys.stderr)
        earlier = complete_result_name(out, SWEEP_FILES, "name")
        # the same sweep again resumes (or extends) it, reusing its finished runs: nothing of it is lost
        if earlier is not None and earlier != sweep.name and not args.overwrite:
            raise KavierInputError(
                f"{out} already holds the complete sweep '{earlier}' (sweep.json, comparison.csv), which is kept",
                location="--out",
                expected=f"another folder, --overwrite to replace it, or sweep '{earlier}' itself to resume or "
                "extend it",
            )
        guard = contextlib.nullcontext(False)
        if args.overwrite:
            # (a failure, a disk fault included, ends with what became of the earlier sweep)
            guard = replacing(out, SWEEP_ENTRIES, SWEEP_FILES, first="sweep.json", what="sweep")
        with guard as replaced:
            res = run_sweep(
                sweep,
                out,
                jobs=args.jobs,
                run_plots=args.run_plots,
                quiet=args.quiet,
                retry_failed=True,
                command=_command_line(),
                scheduler=args.scheduler,
            )
            if replaced and res.failed:
                first = next(iter(res.errors.items()), ("?", "?"))
                raise KavierRuntimeError(
                    f"{res.failed} run(s) of sweep '{sweep.name}' failed (first: {first[0]}: {first[1]}), so the "
                    "new sweep was not kept"
                )
    if not args.quiet:
        print(res.summary_text(time.perf_counter() - t0))
    return 0 if res.failed == 0 else 3


# ----------------------------------------------------------------- efficiency
def cmd_efficiency(args) -> int:
    """The Kavier prototype's efficiency summary from its tasks.parquet and
    OpenDC's powerSource.parquet, with the J-to-Wh error fixed."""
    import pandas as pd

    def read(path: str, what: str, cols: list[str]):
        p = Path(path)
        if not p.is_file():
            raise KavierInputError(f"{what} not found", source=str(p), expected="a Parquet file")
        try:
            df = pd.read_parquet(p)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise KavierInputError(f"cannot read Parquet ({type(exc).__name__}: {exc})", source=str(p)) from None
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise KavierInputError(
                f"missing column(s) {', '.join(missing)}; columns found: {', '.join(map(str, df.columns))}",
                source=str(p),
                expected=f"the {what} layout with {', '.join(cols)}",
            )
        return df

    tasks = read(args.tasks, "tasks file", ["duration"] + ([] if args.total_tokens is not None else ["total_tokens"]))
    ps = read(args.opendc, "OpenDC powerSource file", ["energy_usage", "carbon_emission"])
    if args.duration_unit == "s":
        tasks = tasks.assign(duration=tasks["duration"] * 1000.0)
    s = prototype_efficiency_summary(tasks, ps, args.price, args.total_tokens)
    if s["total_tokens"] <= 0 or s["total_latency_s"] <= 0:
        raise KavierInputError(
            f"total_tokens={s['total_tokens']}, total_latency_s={s['total_latency_s']}",
            source=args.tasks,
            expected="positive token counts and task durations",
        )
    print("\n----------  Efficiency summary  ----------")
    for k, v in s.items():
        if k == "note":
            continue
        print(f"{k:>55}: {v:,.6g}")
    print("------------------------------------------")
    print("Note: " + s["note"])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, s)
        print(f"\nSaved -> {out}")
    return 0


# ----------------------------------------------------------------- registration
def register(sub) -> None:
    """Add run, demo, sweep and efficiency to the ``kavier`` parser."""
    run = sub.add_parser(
        "run",
        help=HELP["run"],
        description="Run an experiment file end to end: trace -> serving simulation -> OpenDC "
        "export -> OpenDC (through the bridge) -> report.json, report.md, report.html and plots. "
        "The output folder holds a file INCOMPLETE while running or after a failure.",
    )
    add_run_args(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo",
        help=HELP["demo"],
        description="Run the built-in demo experiment (kavier_opendc/data/demo_experiment.yaml: "
        "synthetic multi-turn chat on Llama-3-8B, 4 x A100-80GB in 2 hosts, a synthetic "
        "daily carbon cycle) exactly as `kavier run` would.",
    )
    demo.add_argument("--out", metavar="DIR", help="output folder (as for kavier run)")
    demo.add_argument("--no-opendc", action="store_true", help="skip OpenDC (performance report only)")
    demo.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    demo.add_argument("--overwrite", action="store_true", help="replace a complete earlier demo run in --out")
    demo.add_argument("--quiet", action="store_true", help="no progress and no summary")
    demo.add_argument(
        "--init",
        metavar="DIR",
        help="instead of running, copy the demo experiment, workload and sweep into DIR as a starting point",
    )
    demo.set_defaults(func=cmd_demo)

    sw = sub.add_parser(
        "sweep",
        help=HELP["sweep"],
        description="Run a sweep (schemas/sweep.schema.json): a base experiment and axes whose "
        "cartesian product gives the configurations; runs them on a Dask cluster (local "
        "worker processes, or --scheduler; one JVM per worker), skips finished runs when "
        "restarted, and writes comparison.csv, comparison.md and comparison plots.",
    )
    sw.add_argument(
        "sweep",
        metavar="SWEEP_FILE",
        help="sweep file (JSON or YAML, schemas/sweep.schema.json): a base experiment and its axes",
    )
    sw.add_argument("--out", required=True, metavar="DIR", help="sweep output folder (runs/<id>/ per configuration)")
    sw.add_argument(
        "--jobs",
        type=positive_int("--jobs", limits.JOBS),
        default=2,
        help="worker processes of the local Dask cluster (default 2)",
    )
    sw.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on an existing Dask cluster through its scheduler instead of a local one "
        "(inputs travel to the workers, outputs come back to --out)",
    )
    sw.add_argument("--no-opendc", action="store_true", help="skip OpenDC in every run")
    sw.add_argument("--run-plots", action="store_true", help="also draw each run's own plots (slower)")
    sw.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a complete earlier sweep in --out, every run redone (refused for another sweep's "
        "otherwise; the same sweep again resumes it)",
    )
    sw.add_argument("--quiet", action="store_true", help="no progress and no summary")
    sw.set_defaults(func=cmd_sweep)

    ef = sub.add_parser(
        "efficiency",
        help=HELP["efficiency"],
        description="Reproduce the Kavier prototype's efficiency summary (financial, energy and "
        "carbon efficiency per million tokens per second) from its tasks.parquet "
        "(duration in ms, total_tokens) and OpenDC's powerSource.parquet "
        "(energy_usage J, carbon_emission g), with joules converted to Wh correctly "
        "(/3600; the prototype divides by 1000).",
    )
    ef.add_argument("--tasks", required=True, metavar="TASKS", help="the prototype's tasks.parquet")
    ef.add_argument("--opendc", required=True, metavar="POWERSOURCE", help="OpenDC's powerSource.parquet")
    ef.add_argument(
        "--price", type=bounded_float("--price"), default=10.0, help="GPU-hour price (default 10.0, the prototype's)"
    )
    ef.add_argument(
        "--total-tokens",
        type=bounded_float("--total-tokens", exclusive=True),
        default=None,
        help="tokens to divide by (default: sum of the tasks' total_tokens column)",
    )
    ef.add_argument(
        "--duration-unit",
        choices=["ms", "s"],
        default="ms",
        help="unit of the tasks' duration column (the prototype's formula assumes ms)",
    )
    ef.add_argument("--out", metavar="JSON", help="also save the summary as JSON")
    ef.set_defaults(func=cmd_efficiency)
