"""Human units for printed durations: an overloaded run's TTFT of two hours reads "2.11 h", not
"7580914.2 ms". One unit per line, chosen by the line's largest value, so its numbers compare at a glance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: (unit, seconds per unit, use it while the largest value is below this many seconds)
_UNITS = (("ms", 1e-3, 10.0), ("s", 1.0, 600.0), ("min", 60.0, 2 * 3600.0), ("h", 3600.0, float("inf")))


def duration_unit(largest_s: float) -> tuple[str, float]:
    """The unit for a line whose largest value is ``largest_s`` seconds, and its size in seconds."""
    for name, size, below in _UNITS:
        if largest_s < below:
            return name, size
    return _UNITS[-1][0], _UNITS[-1][1]


def latencies(stats: Mapping, keys: tuple[str, ...] = ("mean", "p50", "p99")) -> str:
    """'mean 84.7 / p50 62.1 / p99 463.7 ms' in a unit that fits the largest of ``keys``."""
    values: dict[str, Any] = {k: stats.get(k) for k in keys if stats.get(k) is not None}  # numbers, never None
    if not values:
        return "n/a"
    unit, size = duration_unit(max(abs(v) for v in values.values()))
    digits = 1 if unit in ("ms", "min") else 2
    return " / ".join(f"{k} {v / size:.{digits}f}" for k, v in values.items()) + f" {unit}"


def duration(seconds: float) -> str:
    """One duration in the unit that suits it."""
    return latencies({"": seconds}, ("",)).strip()
