"""``kavier validate``: check experiment, sweep, plan, workload, datacenter, catalogue and trace files.

Each file is recognised by its keys (:func:`experiments.documents.document_kind`) or, for traces, by its
extension, and loaded exactly as a run would load it, so every problem a run would meet is reported here
with its file and JSON path; nothing is simulated.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kavier_opendc.base.errors import KavierError, KavierRuntimeError
from kavier_opendc.cli.commands import HELP
from kavier_opendc.experiments.documents import document_kind, is_trace_file
from kavier_opendc.experiments.experiment import load_experiment, load_trace_for, read_document
from kavier_opendc.experiments.plan_file import load_plan
from kavier_opendc.experiments.sweep import load_sweep
from kavier_opendc.opendc.datacenter import load_datacenter
from kavier_opendc.opendc.jvm import check_opendc_available
from kavier_opendc.specs.catalog import load_catalog_file
from kavier_opendc.workload.synthetic import load_synthetic_spec
from kavier_opendc.workload.trace import load_trace


def cmd_validate(args) -> int:
    """Validate experiment, sweep, plan, workload, datacenter or catalogue files; report every problem."""
    failed = 0
    for f in args.files:
        path = Path(f)
        try:
            if is_trace_file(path):
                trace = load_trace(path)
                print(
                    f"{path}: valid {trace.format} trace, {len(trace)} requests, {trace.total_tokens():,} tokens"
                    + ("" if trace.timed else " (no arrival times: an offline batch)")
                )
                continue
            doc = read_document(path, "input")
            print(_validate_document(path, doc, args.no_opendc))
        except KavierError as exc:
            failed += 1
            print(f"kavier: error: {exc}", file=sys.stderr)
    return 2 if failed else 0


def _validate_document(path: Path, doc, no_opendc: bool) -> str:
    """One line saying what the file is and that it is valid (errors are raised)."""
    kind = document_kind(doc)
    if kind == "plan":
        plan = load_plan(path, opendc=False if no_opendc else None)
        return (
            f"{path}: valid plan '{plan.name}', {len(plan.shapes)} candidate shapes x replicas "
            f"{plan.units[0]}..{plan.units[1]}" + _opendc_status(not no_opendc)
        )
    if kind == "sweep":
        sweep = load_sweep(path, opendc=False if no_opendc else None)
        return (
            f"{path}: valid sweep, {len(sweep.runs)} configurations "
            f"({' x '.join(str(len(a.values)) for a in sweep.axes)})"
            + _opendc_status(
                not no_opendc and any(r.document.get("opendc", {}).get("enabled", True) for r in sweep.runs)
            )
        )
    if kind == "workload":
        trace = load_synthetic_spec(path)
        return f"{path}: valid synthetic workload, {len(trace)} requests, {trace.total_tokens():,} tokens"
    if kind == "catalog":
        load_catalog_file(path)
        return (
            f"{path}: valid catalogue ("
            + ", ".join(f"{len(doc.get(k) or [])} {k}" for k in ("models", "gpus", "profiles") if k in doc)
            + ")"
        )
    if kind == "datacenter":
        load_datacenter(path)
        return f"{path}: valid datacenter description"
    exp = load_experiment(path, opendc=False if no_opendc else None)
    for note in exp.notes:
        print(f"kavier: warning: {path}: {note}", file=sys.stderr)
    trace = load_trace_for(exp)
    return f"{path}: valid experiment '{exp.name}': {exp.describe()}, {len(trace)} requests" + _opendc_status(
        exp.opendc_enabled and not no_opendc
    )


def _opendc_status(wanted: bool) -> str:
    """Whether the OpenDC part of the run can run on this machine."""
    if not wanted:
        return " (OpenDC off)"
    try:
        check_opendc_available()
    except KavierRuntimeError as exc:
        return f"; OpenDC is NOT available here, so `kavier run` would stop: {exc}"
    return "; OpenDC is available (bridge jar and Java found)"


def register(sub) -> None:
    """Add ``validate`` to the ``kavier`` parser."""
    val = sub.add_parser(
        "validate",
        help=HELP["validate"],
        description="Validate experiment, sweep, plan, synthetic workload, datacenter or "
        "catalogue files "
        "against their schemas and check their meaning (catalogue names, files, "
        "datacenter size); every problem is reported with its JSON path, and for a run "
        "that needs OpenDC whether it is available here. Exit status 0 when all are "
        "valid.",
    )
    val.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="experiment, sweep, plan, synthetic workload, datacenter or catalogue files (JSON or YAML; "
        "the kind is recognised from the keys) or trace files (CSV, Parquet, JSON Lines)",
    )
    val.add_argument("--no-opendc", action="store_true", help="validate as for a run without OpenDC")
    val.set_defaults(func=cmd_validate)
