"""The ``kavier`` command line: one module per command group, each parsing arguments and printing.

The work itself happens in the layers below (``experiments``, ``reports``,
``opendc``, ``engine``, ``workload``, ``specs``); a command module only turns
arguments into calls and results into text. A command line imports only its
command's module (:func:`build_parser`), so ``kavier --help`` and light commands
never load the simulator. :func:`main` prints every :class:`KavierError` as one
paragraph without a traceback, and SIGINT or SIGTERM as one line (``kavier: interrupted (SIGTERM)``,
exit 130 or 143) after the command's own clean-up.

    commands.py     the command table: each command's module and help line (all `kavier --help` reads)
    simulate.py     kavier simulate
    experiments.py  kavier run, demo, sweep, efficiency
    validate.py     kavier validate
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
import importlib
import os
import sys

from kavier_opendc import __version__
from kavier_opendc.base.errors import KavierError, OutputWriteError
from kavier_opendc.base.interrupts import Interrupted, signals_as_interrupts
from kavier_opendc.cli.commands import HELP, MODULES, chosen_command


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``kavier`` parser. Given the command line, only its command's module is imported and the other
    commands are named by their help line; without one (tests, documentation) every command is complete."""
    ap = argparse.ArgumentParser(
        prog="kavier",
        description="Kavier-OpenDC: cache-aware LLM inference "
        "simulation co-simulated with OpenDC for power, energy and carbon.",
    )
    ap.add_argument("--version", action="version", version=f"kavier-opendc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None if argv is None else MODULES.get(chosen_command(argv) or "")
    registered: set[str] = set()
    for command, module in MODULES.items():
        if module in registered:
            continue
        if argv is None or module == chosen:
            # a module registers all of its commands, which sit together in the table
            importlib.import_module(f"kavier_opendc.cli.{module}").register(sub)
            registered.add(module)
        else:
            sub.add_parser(command, help=HELP[command])
    return ap


#: BLAS threads for a command unless the user set them: the commands do no large matrix products, and
#: OpenBLAS's pool of idle threads costs about 0.07 s of CPU at numpy's import, a third of a small run
BLAS_THREADS = "1"


def main(argv: list[str] | None = None) -> int:
    """Run one command; SIGINT and SIGTERM end it alike (its clean-up runs, one line, exit 130 or 143)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", BLAS_THREADS)  # before any command imports numpy
    with signals_as_interrupts():
        try:
            return _main(argv)
        except KavierError as exc:
            msg = " ".join(str(exc).split("\n")) if "\n" not in str(exc).strip() else str(exc)
            print(f"kavier: error: {msg}", file=sys.stderr)
            return exc.exit_code
        except OSError as exc:  # a disk fault outside the writers' own wrapping: still one paragraph
            print(f"kavier: error: {OutputWriteError.from_os(exc, writing=False)}", file=sys.stderr)
            return OutputWriteError.exit_code
        except KeyboardInterrupt as exc:
            name = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
            print(f"kavier: interrupted ({name})", file=sys.stderr)
            return exc.exit_code if isinstance(exc, Interrupted) else 130


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
