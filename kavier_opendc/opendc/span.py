"""OpenDC's simulated span, checked before the JVM starts (issue 17).

OpenDC steps through every export interval from the first submission to the end of the last task, idle or
not, so a trace with a long idle gap (arrivals a year apart) makes it run for tens of minutes, memory growing with
the span. Compressing the gap would change the energy (hosts draw idle power all along), so a span of more
than :data:`~kavier_opendc.base.limits.OPENDC_INTERVALS` export intervals is refused up front, with what to
do instead: a larger ``datacenter.export_interval_s``, or the trace split at its gap.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kavier_opendc.base import limits
from kavier_opendc.base.documents import load_json
from kavier_opendc.base.errors import KavierInputError


def _days(span_s: float) -> str:
    return f"{span_s / 86_400:,.1f} days" if span_s >= 86_400 else f"{span_s / 3_600:,.1f} hours"


def longest_gap(arrival_s) -> tuple[float, float, float] | None:
    """(gap, arrival before it, arrival after it) of the longest idle gap between sorted arrivals."""
    a = np.asarray(arrival_s, dtype=np.float64)
    if a.size < 2:
        return None
    d = np.diff(a)
    i = int(d.argmax())
    return float(d[i]), float(a[i]), float(a[i + 1])


def span_problem(
    span_s: float,
    interval_s: float,
    *,
    gap: tuple[float, float, float] | None = None,
    interval_field: str = "datacenter.export_interval_s",
) -> str | None:
    """The one-paragraph refusal for a span of more than OPENDC_INTERVALS export intervals, or None."""
    lim = limits.OPENDC_INTERVALS
    if not (interval_s > 0) or not math.isfinite(span_s):
        return None
    intervals = math.ceil(span_s / interval_s)
    if intervals <= lim.value:
        return None
    need = math.ceil(span_s / lim.value)
    gap_text = ""
    if gap is not None and gap[0] > 0.5 * span_s:
        gap_text = (
            f" (its longest idle gap: {gap[0]:,.1f} s between the arrivals at {gap[1]:,.1f} s and {gap[2]:,.1f} s)"
        )
    return (
        f"the run spans {span_s:,.1f} s of simulated time ({_days(span_s)}), which OpenDC would step "
        f"through in {intervals:,} export intervals of {interval_s:g} s: this is above the limit of "
        f"{lim.text()} ({lim.why}). Refused before OpenDC starts; compressing the idle time instead would "
        f"change the energy, since hosts draw idle power all along. Set {interval_field} to at least "
        f"{need:,} s (OpenDC then reports power at that resolution), or split the trace{gap_text} and run "
        f"the parts separately; 'kavier run --no-opendc' gives the performance results without OpenDC."
    )


def check_span(
    span_s: float,
    interval_s: float,
    *,
    source: str | None,
    location: str | None = None,
    gap: tuple[float, float, float] | None = None,
    interval_field: str = "datacenter.export_interval_s",
) -> None:
    """Raise :class:`KavierInputError` (exit code 2) when :func:`span_problem` finds one."""
    problem = span_problem(span_s, interval_s, gap=gap, interval_field=interval_field)
    if problem:
        raise KavierInputError(problem, source=source, location=location)


def experiment_dir_span(dir: str | os.PathLike) -> tuple[float, float] | None:
    """(simulated span in s, smallest export interval in s) of an OpenDC experiment folder, read from its
    experiment.json and workload Parquet files (relative paths against the folder); None when they cannot
    be read (the run then reports that itself)."""
    d = Path(dir).resolve()
    try:
        exp = load_json((d / "experiment.json").read_text(encoding="utf-8"), str(d / "experiment.json"))
        models = exp.get("exportModels") or [{}]
        interval = min(float(m.get("exportInterval", 300)) for m in models)
        span = 0.0
        for w in exp.get("workloads") or []:
            wp = Path(w["pathToFile"]).expanduser()
            wp = wp if wp.is_absolute() else d / wp
            tasks = pq.read_table(wp / "tasks.parquet", columns=["id", "submission_time"])
            frags = pq.read_table(wp / "fragments.parquet", columns=["id", "duration"])
            if not tasks.num_rows:
                continue
            # epoch ms (INT64 or a millisecond timestamp) and ms of busy time per task id
            sub = tasks.column("submission_time").cast(pa.int64()).to_numpy().astype(np.float64)
            ids = tasks.column("id").to_numpy()
            fdur = frags.column("duration").cast(pa.int64()).to_numpy().astype(np.float64)
            busy = pd.Series(fdur).groupby(frags.column("id").to_numpy()).sum()
            task_busy = busy.reindex(ids).fillna(0.0).to_numpy(dtype=np.float64)
            span = max(span, float((sub - sub.min() + task_busy).max()) / 1000.0)
    except (
        KavierInputError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
        pa.ArrowException,
    ):
        return None
    return span, interval
