"""Argument types shared by the command groups (argparse ``type=`` callables) and the --catalog option."""

from __future__ import annotations

import argparse


def positive_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
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
    return float(v)


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def catalog_with(files: list[str] | None):
    """The built-in catalogue extended by the --catalog files, in order."""
    from kavier_opendc.specs.catalog import default_catalog, load_catalog_file

    cat = default_catalog()
    for f in files or []:
        cat = load_catalog_file(f, base=cat)
    return cat
