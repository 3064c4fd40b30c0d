"""What the side-by-side scripts with peer simulators share (bench/splitwise_side_by_side.py,
bench/distserve_side_by_side.py): the error they print as one paragraph, percentiles, the table's cells and
the command's ending. Not part of the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np


class BenchError(Exception):
    """A problem with the inputs of a side-by-side script; printed as one paragraph."""


def pcts(values: np.ndarray) -> tuple[float, float]:
    """p50 and p99 of the finite values, linear interpolation (numpy's default; Splitwise-sim's and
    simdistserve's pandas quantiles are the same)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, 50)), float(np.percentile(v, 99))


def ms(pair: tuple[float, float]) -> str:
    """A (p50, p99) pair of seconds as the table's 'p50 / p99' milliseconds."""
    return f"{pair[0] * 1e3:.1f} / {pair[1] * 1e3:.1f}"


def finish(
    args: argparse.Namespace, side_by_side: Callable[[argparse.Namespace], dict], table: Callable[[dict], str]
) -> int:
    """Run both simulators, print the table (and write --json): exit 0, or 2 with the one-paragraph error."""
    try:
        result = side_by_side(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0
