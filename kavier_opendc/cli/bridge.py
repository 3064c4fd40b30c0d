"""``kavier bridge build|check|run``: build the OpenDC bridge jar, check it, or run one OpenDC experiment.

The Makefile and the Dockerfile call it as ``python -m kavier_opendc.cli bridge ...`` (no ``kavier`` on
PATH needed).
"""

from __future__ import annotations

import sys
import time

from kavier_opendc.cli.commands import HELP
from kavier_opendc.opendc.bridge import OpenDCBridge, run_opendc_experiment
from kavier_opendc.opendc.jvm import OPENDC_REPO_ENV, build_bridge_jar


def cmd_build(args) -> int:
    t0 = time.monotonic()
    print(
        "building the OpenDC bridge jar with Maven (minutes the first time, while Maven downloads "
        "OpenDC and its dependencies) ...",
        file=sys.stderr,
        flush=True,
    )
    jar = build_bridge_jar(
        run_tests=args.with_tests,
        lite=args.lite,
        quiet=not args.verbose,
        opendc_version=args.opendc_version,
        update=args.update,
        opendc_repo=args.opendc_repo,
    )
    print(f"built {jar} in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_check(args) -> int:
    with OpenDCBridge() as bridge:
        for k, v in bridge.info().items():
            print(f"{k}: {v}")
    return 0


def cmd_run(args) -> int:
    t0 = time.monotonic()
    out = run_opendc_experiment(args.experiment, progress=lambda f: print(f"progress {f:.0%}", file=sys.stderr))
    print(out)
    print(f"done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


def register(sub) -> None:
    b = sub.add_parser("bridge", help=HELP["bridge"], description="Build, check or run the Kavier-OpenDC bridge.")
    actions = b.add_subparsers(dest="bridge_command", required=True, metavar="{build,check,run}")
    build = actions.add_parser(
        "build",
        help="build the bridge jar with Maven (opendc-bridge/target/ in a source "
        "checkout, else the per-user data folder)",
    )
    build.add_argument("--with-tests", action="store_true", help="also run the bridge's JUnit tests")
    build.add_argument("--lite", action="store_true", help="build the gateway without OpenDC")
    build.add_argument("--opendc-version", default=None, help="OpenDC release (default: the pom's)")
    build.add_argument("--update", action="store_true", help="mvn -U: retry downloads that failed before")
    build.add_argument(
        "--opendc-repo",
        metavar="DIR",
        default=None,
        help=f"a local Maven repository holding OpenDC's artifacts (default ${OPENDC_REPO_ENV})",
    )
    build.add_argument("--verbose", action="store_true", help="show Maven's output")
    build.set_defaults(func=cmd_build)
    check = actions.add_parser("check", help="start the bridge and print versions")
    check.set_defaults(func=cmd_check)
    run = actions.add_parser("run", help="run an OpenDC experiment JSON through the bridge")
    run.add_argument("experiment")
    run.set_defaults(func=cmd_run)
