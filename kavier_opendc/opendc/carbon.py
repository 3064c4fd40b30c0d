"""Carbon-intensity traces in OpenDC's Parquet format.

OpenDC reads one Parquet file per power source with two required columns
(OpenDC ``opendc-trace-api`` ``formats/carbon``; verified against the real
reader through the bridge):

* ``timestamp``: INT64 annotated TIMESTAMP(MILLIS), the instant from which
  the value holds (epoch milliseconds, UTC);
* ``carbon_intensity``: DOUBLE, gCO2 per kWh.

Each value holds until the next row. OpenDC sorts the rows, stretches the
first value back to the beginning of time and the last value forward to the
end of time (``CarbonTraceLoader.fixReportTimes``), so a run outside the
trace's range would silently use the first or last value: :func:`fit_trace_to_run`
refuses that, or maps the run onto the trace's days when asked
(``carbon.align: same-day-of-year``).

This module reads and validates such traces, resolves region names to trace
files, and generates a synthetic profile with a daily cycle (for the demo;
the project never ships real traces).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kavier_opendc.base.atomic import write_parquet_atomic
from kavier_opendc.base.errors import KavierInputError

#: The exact Arrow schema OpenDC expects for a carbon trace.
CARBON_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("ms"), nullable=False),
        pa.field("carbon_intensity", pa.float64(), nullable=False),
    ]
)

#: Environment variable with extra folders (os.pathsep separated) searched for
#: region traces such as ``NL_2022.parquet``.
CARBON_DIR_ENV = "KAVIER_CARBON_DIR"


@dataclass(frozen=True)
class CarbonTraceInfo:
    """Summary of a validated carbon trace."""

    path: Path
    rows: int
    start: pd.Timestamp
    end: pd.Timestamp  # timestamp of the last row
    step_s: float  # median spacing of the rows
    mean: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "step_s": self.step_s,
            "mean_g_per_kwh": self.mean,
            "min_g_per_kwh": self.min,
            "max_g_per_kwh": self.max,
        }


def read_carbon_trace(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an OpenDC carbon trace.

    Returns a DataFrame with ``timestamp`` (datetime64[ms], naive UTC) and
    ``carbon_intensity`` (float64, gCO2/kWh), sorted by time.
    Raises :class:`KavierInputError` naming the file, the column or row and
    the expectation when the file does not meet OpenDC's format.
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise KavierInputError(
            "carbon trace file not found",
            source=src,
            expected="an existing Parquet file with columns timestamp, carbon_intensity",
        )
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types
        raise KavierInputError(
            f"cannot read as Parquet ({exc})", source=src, expected="a Parquet file in OpenDC's carbon-trace format"
        ) from None
    pschema = pf.schema  # Parquet (physical) schema
    names = list(pschema.names)
    for col in ("timestamp", "carbon_intensity"):
        if col not in names:
            raise KavierInputError(
                f"column '{col}' is missing (found {names})",
                source=src,
                location=f"column {col}",
                expected="columns timestamp (INT64 TIMESTAMP(MILLIS)) and carbon_intensity (DOUBLE)",
            )
    ts_col = pschema.column(names.index("timestamp"))
    ci_col = pschema.column(names.index("carbon_intensity"))
    if ts_col.physical_type != "INT64":
        raise KavierInputError(
            f"physical type is {ts_col.physical_type}",
            source=src,
            location="column timestamp",
            expected="INT64 TIMESTAMP(MILLIS)",
        )
    if ci_col.physical_type != "DOUBLE":
        raise KavierInputError(
            f"physical type is {ci_col.physical_type}",
            source=src,
            location="column carbon_intensity",
            expected="DOUBLE (gCO2/kWh)",
        )
    table = pf.read(columns=["timestamp", "carbon_intensity"])
    ts_type = table.schema.field("timestamp").type
    if pa.types.is_timestamp(ts_type):
        if ts_type.unit != "ms":
            raise KavierInputError(
                f"timestamp unit is {ts_type.unit}",
                source=src,
                location="column timestamp",
                expected="TIMESTAMP(MILLIS)",
            )
    else:
        raise KavierInputError(
            f"type is {ts_type} without a TIMESTAMP annotation",
            source=src,
            location="column timestamp",
            expected="INT64 TIMESTAMP(MILLIS)",
        )
    if table.num_rows == 0:
        raise KavierInputError("the trace has no rows", source=src, expected="at least one row")
    for col in ("timestamp", "carbon_intensity"):
        nulls = table.column(col).null_count
        if nulls:
            raise KavierInputError(
                f"{nulls} null value(s)",
                source=src,
                location=f"column {col}",
                expected="no nulls (OpenDC requires the column)",
            )
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    ci = table.column("carbon_intensity").to_numpy()
    bad = np.flatnonzero(~np.isfinite(ci) | (ci < 0))
    if bad.size:
        raise KavierInputError(
            f"value {ci[bad[0]]!r}",
            source=src,
            location=f"row {int(bad[0])}, column carbon_intensity",
            expected="a finite, non-negative intensity in gCO2/kWh",
        )
    order = np.argsort(ts, kind="stable")
    ts, ci = ts[order], ci[order]
    dup = np.flatnonzero(np.diff(ts) == 0)
    if dup.size:
        raise KavierInputError(
            "duplicate timestamp",
            source=src,
            location=f"row {int(order[dup[0] + 1])}, column timestamp",
            expected="strictly increasing timestamps",
        )
    return pd.DataFrame({"timestamp": pd.to_datetime(ts, unit="ms"), "carbon_intensity": ci})


def validate_carbon_trace(path: str | os.PathLike) -> CarbonTraceInfo:
    """Validate ``path`` (see :func:`read_carbon_trace`) and summarise it."""
    df = read_carbon_trace(path)
    ts = df["timestamp"]
    step = (
        float(np.median(np.diff(ts.to_numpy().astype("datetime64[ms]").astype(np.int64)))) / 1000.0
        if len(df) > 1
        else 0.0
    )
    ci = df["carbon_intensity"]
    return CarbonTraceInfo(
        Path(path).resolve(), len(df), ts.iloc[0], ts.iloc[-1], step, float(ci.mean()), float(ci.min()), float(ci.max())
    )


#: How a run outside its carbon trace's dates is mapped onto it (experiment ``carbon.align``).
CARBON_ALIGN = ("none", "same-day-of-year")


def _span(df: pd.DataFrame) -> tuple[datetime, datetime]:
    """First instant and end of the last row's validity (one more step; its own instant for one row)."""
    first = df["timestamp"].iloc[0].to_pydatetime()
    last = df["timestamp"].iloc[-1].to_pydatetime()
    if len(df) > 1:
        last = last + (df["timestamp"].iloc[-1] - df["timestamp"].iloc[-2]).to_pytimedelta()
    return first, last


def fit_trace_to_run(
    path: str | os.PathLike,
    start: datetime | str,
    duration_s: float,
    align: str,
    out_dir: str | os.PathLike,
    *,
    location: str = "carbon",
) -> tuple[Path, dict]:
    """The carbon trace a run of ``duration_s`` from ``start`` uses, and how it was mapped.

    A trace that covers the run is used as it is (``{}``). Otherwise, with ``align == "same-day-of-year"``,
    a copy whose rows are moved by whole years (the same month, day and time; 29 February falls on the
    28th) and repeated year after year until it covers the run is written into ``out_dir``; without it the
    run is refused, since OpenDC would hold the trace's first or last value for the whole run.
    """
    df = read_carbon_trace(path)
    t0 = _to_utc_naive(start)
    t1 = t0 + timedelta(seconds=float(duration_s))
    first, last = _span(df)
    if first <= t0 and t1 <= last:
        return Path(path), {}
    fmt = "%Y-%m-%dT%H:%M:%S"
    where = (
        f"the run ({t0.strftime(fmt)} to {t1.strftime(fmt)} UTC) lies outside the carbon trace "
        f"{Path(path).name} ({first.strftime(fmt)} to {last.strftime(fmt)} UTC)"
    )
    if align != "same-day-of-year":
        raise KavierInputError(
            f"{where}; OpenDC would hold the trace's {'last' if t0 >= first else 'first'} value for the whole run",
            location=location,
            expected="a datacenter.start inside the trace, another trace, or carbon.align: "
            "same-day-of-year to map the run onto the trace's calendar days",
        )
    if last - first < timedelta(days=360):  # a year's trace may lack a day or two (NL 2022: 364 days)
        raise KavierInputError(
            f"{where}, and the trace covers less than a year, so the same day of another year is not in it",
            location=location,
            expected="a trace of (nearly) a whole year for carbon.align: same-day-of-year",
        )
    years = t0.year - first.year - (1 if (t0.month, t0.day) < (first.month, first.day) else 0)
    moved = pd.DataFrame(
        {"timestamp": df["timestamp"] + pd.DateOffset(years=years), "carbon_intensity": df["carbon_intensity"]}
    )
    repeats = 1
    lo, hi = _span(moved)
    while hi < t1 and repeats < 1000:  # the next year's copy continues where the last one ends
        nxt = df["timestamp"] + pd.DateOffset(years=years + repeats)
        keep = nxt >= hi
        moved = pd.concat(
            [moved, pd.DataFrame({"timestamp": nxt[keep], "carbon_intensity": df["carbon_intensity"][keep]})],
            ignore_index=True,
        )
        repeats += 1
        lo, hi = _span(moved)
    if not (lo <= t0 and t1 <= hi):
        raise KavierInputError(
            f"{where}, and no whole-year shift of it covers the run",
            location=location,
            expected="a trace whose calendar days cover the run's",
        )
    ms = moved["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    gaps = np.diff(ms)  # where a year's copy lacks days the previous value holds: said, not hidden
    in_run = (ms[1:] > int(t0.replace(tzinfo=timezone.utc).timestamp() * 1000)) & (
        ms[:-1] < int(t1.replace(tzinfo=timezone.utc).timestamp() * 1000)
    )
    longest = float(gaps[in_run].max()) / 1000.0 if in_run.any() else 0.0
    out = Path(out_dir) / f"{Path(path).stem}_aligned.parquet"
    write_carbon_trace(moved, out)
    return out, {
        "align": "same-day-of-year",
        "shift_years": years,
        "repeats": repeats,
        "longest_gap_s": longest,
        "source_trace": str(Path(path).resolve()),
        "path": str(out),
    }


def intensity_at(df: pd.DataFrame, when_ms: np.ndarray) -> np.ndarray:
    """Carbon intensity in force at absolute epoch milliseconds ``when_ms``
    following OpenDC's rule (a value holds until the next row; the first
    value also holds before the trace, the last after it)."""
    ts = df["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    idx = np.searchsorted(ts, np.asarray(when_ms, dtype=np.int64), side="right") - 1
    idx = np.clip(idx, 0, len(ts) - 1)
    return df["carbon_intensity"].to_numpy()[idx]


def write_carbon_trace(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` (``timestamp``, ``carbon_intensity``) in OpenDC's exact
    format, atomically."""
    path = Path(path)
    ts = pd.to_datetime(df["timestamp"])
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    ms = ts.to_numpy().astype("datetime64[ms]")
    table = pa.Table.from_arrays(
        [
            pa.array(ms, type=pa.timestamp("ms")),
            pa.array(np.asarray(df["carbon_intensity"], dtype=np.float64), type=pa.float64()),
        ],
        schema=CARBON_SCHEMA,
    )
    write_parquet_atomic(path, table)
    return path


def _to_utc_naive(value: datetime | str) -> datetime:
    if isinstance(value, str):
        txt = value.strip()
        if txt.endswith("Z"):
            txt = txt[:-1] + "+00:00"
        value = datetime.fromisoformat(txt)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def synthetic_carbon_profile(
    *,
    mean: float = 300.0,
    amplitude: float = 120.0,
    trough_hour: float = 13.0,
    days: float = 7.0,
    step_minutes: float = 15.0,
    start: datetime | str = "2022-01-01T00:00:00",
) -> pd.DataFrame:
    """A synthetic carbon-intensity profile with a daily (24 h) cosine cycle.

    intensity(t) = mean - amplitude * cos(2 pi (hour_of_day(t) - trough_hour) / 24)

    so the minimum ``mean - amplitude`` falls at ``trough_hour`` (e.g. solar
    noon) and the maximum ``mean + amplitude`` twelve hours later. Values are
    sampled every ``step_minutes`` for ``days`` days from ``start`` (UTC).
    """
    if not (math.isfinite(mean) and mean >= 0):
        raise KavierInputError(
            f"mean {mean!r}", location="synthetic carbon profile: mean", expected="a finite non-negative gCO2/kWh"
        )
    if not (math.isfinite(amplitude) and 0 <= amplitude <= mean):
        raise KavierInputError(
            f"amplitude {amplitude!r}",
            location="synthetic carbon profile: amplitude",
            expected="0 <= amplitude <= mean (intensities stay non-negative)",
        )
    if not (0 <= trough_hour < 24):
        raise KavierInputError(
            f"trough_hour {trough_hour!r}",
            location="synthetic carbon profile: trough_hour",
            expected="an hour of day in [0, 24)",
        )
    if not (days > 0 and step_minutes > 0):
        raise KavierInputError(
            f"days {days!r}, step_minutes {step_minutes!r}",
            location="synthetic carbon profile: days/step_minutes",
            expected="positive numbers",
        )
    t0 = _to_utc_naive(start)
    step_ms = int(round(step_minutes * 60_000))
    if step_ms <= 0:
        raise KavierInputError(
            f"step_minutes {step_minutes!r}",
            location="synthetic carbon profile: step_minutes",
            expected="at least one millisecond",
        )
    n = int(math.ceil(days * 86_400_000 / step_ms))
    start_ms = int((t0 - datetime(1970, 1, 1)).total_seconds() * 1000)
    ms = start_ms + np.arange(n, dtype=np.int64) * step_ms
    hour = (ms % 86_400_000) / 3_600_000.0
    ci = mean - amplitude * np.cos(2.0 * np.pi * (hour - trough_hour) / 24.0)
    return pd.DataFrame({"timestamp": pd.to_datetime(ms, unit="ms"), "carbon_intensity": ci.astype(np.float64)})


def write_synthetic_carbon_trace(path: str | os.PathLike, **params) -> Path:
    """Generate :func:`synthetic_carbon_profile` (``params``) and write it to
    ``path`` in OpenDC's format."""
    return write_carbon_trace(synthetic_carbon_profile(**params), path)


def carbon_search_dirs(base_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for region traces, in order: ``$KAVIER_CARBON_DIR``
    entries, ``base_dir``, ``base_dir/carbon``, ``base_dir/data/carbon``,
    the package's ``data/carbon`` and ``./data/carbon``."""
    dirs: list[Path] = []
    env = os.environ.get(CARBON_DIR_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    if base_dir is not None:
        b = Path(base_dir)
        dirs += [b, b / "carbon", b / "data" / "carbon"]
    dirs.append(Path(__file__).resolve().parent.parent / "data" / "carbon")
    dirs.append(Path.cwd() / "data" / "carbon")
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(".parquet") or value.startswith(".")


def resolve_carbon_trace(
    value: str,
    base_dir: str | os.PathLike | None = None,
    *,
    year: int | None = None,
    source: str | None = None,
    location: str | None = "carbon_trace",
) -> Path:
    """Resolve a carbon-trace reference to an absolute path.

    ``value`` is either a path to a Parquet file (relative paths are resolved
    against ``base_dir``) or a region name such as ``NL``: then a file
    ``NL_<year>.parquet``, ``NL.parquet`` or ``NL_*.parquet`` (case-insensitive)
    is looked up in :func:`carbon_search_dirs`.
    """
    if looks_like_path(value):
        p = Path(value).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        p = p.resolve()
        if not p.is_file():
            raise KavierInputError(
                f"carbon trace '{value}' not found (resolved to {p})",
                source=source,
                location=location,
                expected="a Parquet file in OpenDC's carbon format, path relative to the description file",
            )
        return p
    region = value.strip()
    if not region:
        raise KavierInputError(
            "empty carbon trace / region name",
            source=source,
            location=location,
            expected="a file path or a region name such as NL",
        )
    wanted = []
    if year is not None:
        wanted.append(f"{region}_{year}.parquet".lower())
    wanted.append(f"{region}.parquet".lower())
    dirs = carbon_search_dirs(base_dir)
    for name in wanted:
        for d in dirs:
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    if f.is_file() and f.name.lower() == name:
                        return f.resolve()
    prefix = f"{region}_".lower()
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.is_file() and f.name.lower().startswith(prefix) and f.name.lower().endswith(".parquet"):
                    return f.resolve()
    raise KavierInputError(
        f"no carbon trace found for region '{region}' (searched {', '.join(str(d) for d in dirs)})",
        source=source,
        location=location,
        expected=f"a file {region}_<year>.parquet or {region}.parquet in one of those folders "
        f"(add folders with ${CARBON_DIR_ENV}) or a path to a trace",
    )


def parse_start(value: str, location: str) -> datetime:
    """A run's calendar start (ISO, UTC unless it names a zone) as a naive UTC datetime."""
    try:
        return _to_utc_naive(value)
    except (ValueError, TypeError):
        raise KavierInputError(
            f"{value!r} is not a date-time", location=location, expected="an ISO date-time such as 2022-06-01T00:00"
        ) from None


def carbon_steps(df: pd.DataFrame, start: datetime | str, horizon_s: float, *, label: str, location: str):
    """The trace ``df`` as a step function of a run's clock (s from ``start``) for the deferral policies
    (engine/deferral.py). The run's first ``horizon_s`` seconds (its latest deadline) must lie inside the
    trace: outside it the first or last value would hold silently, as in OpenDC."""
    from kavier_opendc.engine.deferral import CarbonSteps

    t0 = _to_utc_naive(start)
    first, last = _span(df)
    t1 = t0 + timedelta(seconds=float(horizon_s))
    if not (first <= t0 and t1 <= last):
        fmt = "%Y-%m-%dT%H:%M:%S"
        raise KavierInputError(
            f"the deferral looks at {t0.strftime(fmt)} to {t1.strftime(fmt)} UTC (the run's start to its latest "
            f"deadline), outside the carbon trace {label} ({first.strftime(fmt)} to {last.strftime(fmt)} UTC)",
            location=location,
            expected="a start and deadlines inside the carbon trace's dates",
        )
    ms = df["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    t0_ms = int((t0 - datetime(1970, 1, 1)).total_seconds() * 1000)
    return CarbonSteps((ms - t0_ms) / 1000.0, df["carbon_intensity"].to_numpy(np.float64), label)
