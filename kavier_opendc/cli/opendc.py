"""``kavier export-opendc`` and ``kavier opendc``: a simulation's timeline to OpenDC, and OpenDC runs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from kavier_opendc.base import limits
from kavier_opendc.base.atomic import check_writable_dir, output_root
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.output_folder import output_lock
from kavier_opendc.base.progress import Progress
from kavier_opendc.cli.args import bounded_float
from kavier_opendc.cli.commands import HELP
from kavier_opendc.experiments.run_folder import clear_incomplete, mark_incomplete
from kavier_opendc.opendc.datacenter import load_datacenter
from kavier_opendc.opendc.inputs import write_opendc_inputs
from kavier_opendc.opendc.jvm import check_bridge_jar, find_bridge_jar, find_java
from kavier_opendc.opendc.results import run_opendc_dir
from kavier_opendc.opendc.span import check_span, experiment_dir_span


def _command_line() -> str:
    return " ".join(["kavier"] + [shlex.quote(a) for a in sys.argv[1:]])


def cmd_export_opendc(args) -> int:
    """A simulation's timeline as OpenDC's workload, topology and experiment."""

    sim = Path(args.sim_dir)
    for name in ("timeline.parquet", "summary.json"):
        if not (sim / name).is_file():
            raise KavierInputError(
                f"{sim / name} not found",
                source=str(sim),
                location=name,
                expected="the output directory of 'kavier simulate'",
            )
    datacenter = load_datacenter(args.datacenter)
    opts = {
        "mode": args.mode,
        "tolerance": args.tolerance,
        "interval_s": args.interval,
        "min_fragment_s": args.min_fragment,
    }
    if args.start:
        opts["start"] = args.start
    # a span OpenDC would step through for hours is refused before anything is written
    makespan = json.loads((sim / "summary.json").read_text(encoding="utf-8")).get("makespan_s")
    if isinstance(makespan, (int, float)):
        check_span(
            float(makespan),
            float(datacenter.export_interval_s),
            source=str(sim / "summary.json"),
            location="makespan_s",
        )
    out = Path(args.out)
    check_writable_dir(out)
    # the folder's paths are relative to it (it can be copied or moved afterwards); a marker
    # says the directory is incomplete until every file is there
    with output_lock(out, command=_command_line()), output_root(out):
        mark_incomplete(out, "kavier export-opendc did not finish\n")
        stats = write_opendc_inputs(sim, datacenter, out, **opts)
        clear_incomplete(out, missing_ok=False)
    note = (stats.get("power_curve") or {}).get("note")
    if note:  # an approximation that changes a number says so
        print(f"kavier: warning: {note} (--mode segments)", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {out}/workload/tasks.parquet, workload/fragments.parquet, topology.json, experiment.json")
        print(
            f"export: {stats['mode']} mode, tolerance {stats['tolerance']}: {stats['fragments']} fragments "
            f"from {stats['timeline_segments']} timeline segments"
            + (
                f", GPU energy (linear model) {stats['gpu_energy_linear_wh']:.3f} Wh"
                if stats.get("gpu_energy_linear_wh") is not None
                else ""
            )
        )
    return 0


def cmd_opendc(args) -> int:
    """Run an OpenDC experiment directory through the bridge; write sustainability.json."""

    d = Path(args.dir)
    if not (d / "experiment.json").is_file():
        raise KavierInputError(
            f"{d / 'experiment.json'} not found",
            source=str(d),
            location="experiment.json",
            expected="a directory with experiment.json, topology.json and workload/",
        )
    span = experiment_dir_span(d)  # before the JVM: a span OpenDC would step through for hours
    if span is not None:
        check_span(
            *span,
            source=str(d / "experiment.json"),
            location="workloads",
            interval_field="exportModels[].exportInterval (datacenter.export_interval_s)",
        )
    # Java and the jar before anything is written (OpenDC's output folder is prepared before the JVM starts)
    check_bridge_jar(find_bridge_jar())
    find_java()
    with output_lock(d, command=_command_line(), location="DIR"):  # it writes DIR/output/, sustainability.json
        bar = Progress(1.0, "opendc", enabled=False if args.quiet else None)
        try:
            result = run_opendc_dir(d, progress=bar.update, stall_timeout=args.stall_timeout)
        finally:
            bar.close()
    if not args.quiet:
        print(
            f"energy {result['energy_wh']:.3f} Wh, average power {result['avg_power_w']:.1f} W, "
            f"peak {result['peak_power_w']:.1f} W, carbon {result['carbon_g']:.3f} g"
        )
        print(f"wrote {d}/sustainability.json and OpenDC's output under {d}/output/")
    return 0


def register(sub) -> None:
    e = sub.add_parser(
        "export-opendc",
        help=HELP["export-opendc"],
        description="Write DIR/workload/tasks.parquet, DIR/workload/fragments.parquet, "
        "DIR/topology.json and DIR/experiment.json in OpenDC's formats.",
    )
    e.add_argument("sim_dir", help="output directory of 'kavier simulate'")
    e.add_argument(
        "--datacenter", required=True, help="datacenter description (JSON/YAML, schemas/datacenter.schema.json)"
    )
    e.add_argument("--out", required=True, help="OpenDC experiment directory to write")
    e.add_argument(
        "--mode",
        choices=["adaptive", "interval", "segments", "per-request"],
        default="adaptive",
        help="adaptive: merge timeline segments whose utilisation differs by at most --tolerance "
        "(default); interval: fixed --interval bins; segments: one fragment per segment; "
        "per-request: one task per request (the Kavier prototype's way)",
    )
    e.add_argument(
        "--tolerance",
        type=bounded_float("--tolerance", 0.0, limits.Limit(1.0, "", "a utilisation difference is at most 1")),
        default=0.02,
        help="adaptive merging tolerance (default 0.02)",
    )
    e.add_argument(
        "--min-fragment",
        type=bounded_float("--min-fragment", 0.0, limits.DURATION_S),
        default=None,
        metavar="SECONDS",
        help="adaptive mode: no fragment shorter than this, shorter runs merged by their mean "
        "(default: the datacenter's export_interval_s; 0: tolerance merging only)",
    )
    e.add_argument(
        "--interval",
        type=bounded_float("--interval", 0.0, limits.DURATION_S, exclusive=True),
        default=0.1,
        help="bin length in seconds for --mode interval",
    )
    e.add_argument("--start", default=None, help="calendar start of the run (ISO date; default: the datacenter's)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_export_opendc)
    o = sub.add_parser(
        "opendc",
        help=HELP["opendc"],
        description="Run DIR/experiment.json with the real OpenDC (JVM, Py4J), put OpenDC's "
        "output under DIR/output/ and write DIR/sustainability.json.",
    )
    o.add_argument("dir", help="directory with experiment.json, topology.json and workload/")
    o.add_argument(
        "--stall-timeout",
        type=bounded_float("--stall-timeout", 0.0, limits.OPENDC_STALL_S),
        default=None,
        metavar="SECONDS",
        help="stop OpenDC (kill its JVM, exit status 3) when its progress has not advanced for this "
        f"long (default: ${limits.OPENDC_STALL_ENV} or {limits.OPENDC_STALL_DEFAULT_S:g} s; "
        "0: never)",
    )
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=cmd_opendc)
