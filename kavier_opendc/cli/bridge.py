"""``kavier bridge build|check|run ...``: build or check the OpenDC bridge jar (the bridge's own command line)."""

from __future__ import annotations

import argparse


def cmd_bridge(args: argparse.Namespace) -> int:
    from kavier_opendc.opendc.bridge import bridge_main

    return bridge_main(args.bridge_args, prog="kavier bridge")


def register(sub) -> None:
    # every argument goes to the bridge's own parser (kavier bridge --help shows it)
    b = sub.add_parser("bridge", add_help=False, prefix_chars="\0",
                       help="build or check the OpenDC bridge jar: kavier bridge build|check|run ... "
                            "(kavier bridge --help)")
    b.add_argument("bridge_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bridge)
