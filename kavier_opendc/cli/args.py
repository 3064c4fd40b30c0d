"""Argument types shared by the command groups (argparse ``type=`` callables) and the --catalog option.

Every numeric option is checked by its type, bounds included (the size limits of
``base/limits.py``), so a bad value is argparse's one-line usage error with exit
status 2, never a traceback from deeper down.
"""

from __future__ import annotations

import argparse
import math

from kavier_opendc.base import limits
from kavier_opendc.base.limits import Limit


def _over(name: str, v, limit: Limit | None) -> None:
    if limit is not None and v > limit.value:
        raise argparse.ArgumentTypeError(limit.exceeded(name, v))


def bounded_int(name: str, minimum: int = 1, limit: Limit | None = None):
    """An integer >= ``minimum`` and within ``limit``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        _over(name, v, limit)
        return v

    return parse


def positive_int(name: str, limit: Limit | None = None):
    """An integer >= 1 and within ``limit``."""
    return bounded_int(name, 1, limit)


def seed(text: str) -> int:
    """A random seed: an integer in 0 .. 2**63 - 1."""
    return bounded_int("--seed", 0, limits.SEED)(text)


def bounded_float(name: str, minimum: float = 0.0, limit: Limit | None = None, *, exclusive: bool = False):
    """A finite number >= ``minimum`` (> with ``exclusive``) and within ``limit``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{text}'") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got '{text}'")
        if v < minimum or (exclusive and v == minimum):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {v:g}")
        _over(name, v, limit)
        return v

    return parse


def count_or_inf(text: str) -> float:
    if text.strip().lower() in ("inf", "infinite", "unbounded"):
        return float("inf")
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'inf', got '{text}'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    _over("the capacity", v, limits.CACHE_TOKENS)
    return float(v)


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'") from None
    if not 0.0 < v <= 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def catalog_with(files: list[str] | None):
    """The built-in catalogue extended by the --catalog files, in order."""
    from kavier_opendc.specs.catalog import default_catalog, load_catalog_file

    cat = default_catalog()
    for f in files or []:
        cat = load_catalog_file(f, base=cat)
    return cat
