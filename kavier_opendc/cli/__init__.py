"""The ``kavier`` command line: one module per command group, each parsing arguments and printing.

The work itself happens in the layers below (``experiments``, ``reports``,
``opendc``, ``engine``, ``workload``, ``specs``); a command module only turns
arguments into calls and results into text. :func:`main` prints every
:class:`KavierError` as one paragraph without a traceback.

    simulate.py     kavier simulate
    experiments.py  kavier run, demo, validate, sweep, efficiency
    opendc.py       kavier export-opendc, opendc
    catalog.py      kavier catalog
    calibrate.py    kavier calibrate (fit GPU profiles from measurements)
    bridge.py       kavier bridge build, check, run (the OpenDC bridge jar)
    measure.py      kavier trace, compare (measure a real deployment, compare the simulator with it)
    plan.py         kavier plan (capacity planning under latency SLOs)
    args.py         argument types shared by the groups
    text.py         wording shared by the printed summaries
    __main__.py     python -m kavier_opendc.cli, the same as kavier
"""

from __future__ import annotations

import argparse
import sys

from kavier_opendc import __version__
from kavier_opendc.base.errors import KavierError
from kavier_opendc.cli import bridge, calibrate, catalog, experiments, measure, opendc, plan, simulate


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kavier", description="Kavier-OpenDC: cache-aware LLM inference "
                                 "simulation co-simulated with OpenDC for power, energy and carbon.")
    ap.add_argument("--version", action="version", version=f"kavier-opendc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    # registration order is the order of `kavier --help`
    simulate.register(sub)
    experiments.register(sub)
    opendc.register(sub)
    catalog.register(sub)
    calibrate.register(sub)
    bridge.register(sub)
    measure.register(sub)
    plan.register(sub)
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
