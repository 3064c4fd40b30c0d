"""Request traces: the in-memory :class:`Trace` and :func:`load_trace`.

``load_trace`` reads CSV, Parquet and JSON Lines files (the file type comes
from the extension; ``.gz`` compression is accepted for CSV and JSON Lines)
and recognises four layouts by their columns:

========  ===========================================================  ==================
format    columns                                                      arrival time
========  ===========================================================  ==================
kavier    ``num_input_tokens``, ``num_output_tokens``; optional        ``arrival_time_s``
          ``arrival_time_s``, ``session_id``, ``input_tokens``,        (seconds)
          ``hash_ids``, ``n``, ``deadline_s``
azure     ``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``;       date-time strings
          optional ``DEADLINE``
mooncake  ``timestamp``, ``input_length``, ``output_length``;          milliseconds
          optional ``hash_ids`` (one per 512-token block),
          ``deadline_s``
vidur     ``num_prefill_tokens``, ``num_decode_tokens``; optional      ``arrived_at``
          ``arrived_at``, ``deadline_s`` (also Splitwise/Sarathi       (seconds)
          length files)
========  ===========================================================  ==================

A deadline (carbon-aware deferral, engine/deferral.py) is on the clock of the
layout's arrival column: ``deadline_s`` in seconds for kavier and vidur, in
seconds for mooncake too (on its timestamp / 1000), and for azure a
``DEADLINE`` date-time as TIMESTAMP. An empty cell: not deferrable.

The input files of the Kavier prototype (``session_id, turn_id, ts,
num_input_tokens, num_output_tokens, input_tokens, output_tokens``) load as
the kavier layout.  Like the prototype itself, which replays such a file in
row order, the loader ignores ``turn_id``, ``ts`` (in the prototype's example
a per-session offset, not a global clock) and ``output_tokens``; such a file
is an offline batch unless it also has ``arrival_time_s`` (or ``arrival_s``, the
column of the ``requests.parquet`` that ``kavier simulate`` and ``kavier trace`` write).

Every row is validated with vectorised checks; the first problem is reported
as a :class:`~kavier_opendc.base.errors.KavierInputError` naming the file, the
1-based data row (and, for JSON Lines, the line) and the offending value.
Arrival times are re-based so that the first request arrives at 0; a trace
without arrival times is an offline batch (every request arrives at 0).

Conventions of the loaded :class:`Trace`:

* ``session_id``: whatever the file holds (ints or strings) is mapped to dense
  int64 indices 0, 1, 2, ... in order of first appearance.
* ``input_tokens`` / ``hash_ids``: a list per request.  An empty cell means
  "unknown" and loads as an empty list.  A non-empty ``input_tokens`` list
  must have exactly ``num_input_tokens`` entries.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError

if TYPE_CHECKING:  # pandas and pyarrow are imported where a trace is read: argument parsing stays fast
    import pandas as pd
    import pyarrow as pa

TRACE_FORMATS: tuple[str, ...] = ("kavier", "azure", "mooncake", "vidur")
_FORMAT_ALIASES = {"native": "kavier", "splitwise": "vidur", "sarathi": "vidur"}

CSV_EXTENSIONS = (".csv",)
PARQUET_EXTENSIONS = (".parquet", ".pq")
JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
_SUPPORTED_EXT_TEXT = ".csv, .parquet, .pq, .jsonl, .ndjson, .json (optionally .gz for CSV/JSON)"

# Guard against values that cannot be represented exactly as int64 via float64.
_MAX_EXACT = float(2**53)


@dataclass(frozen=True)
class ClosedLoop:
    """Closed-loop clients (benchmark clients such as ``vllm bench serve --max-concurrency``): ``concurrency``
    clients each send their next request ``think_time_s`` after their previous one ends, so the arrival times
    are the simulation's, not the trace's (only the first one is kept; the requests go in trace order)."""

    concurrency: int
    think_time_s: float = 0.0


@dataclass
class Trace:
    """A sequence of inference requests, sorted by arrival time."""

    arrival_s: np.ndarray  # float64, first == 0.0, non-decreasing
    num_input_tokens: np.ndarray  # int64 >= 1
    num_output_tokens: np.ndarray  # int64 >= 1
    session_id: np.ndarray | None = None  # int64 dense session index, or None
    hash_ids: list[list[int]] | None = None  # per request: prefix-block hashes
    hash_block_size: int = 512
    input_tokens: list[list[int]] | None = None  # per request token ids, or None
    n: np.ndarray | None = None  # int64 >= 1 samples per prompt, or None
    source: str = ""  # file path or description
    format: str = ""  # kavier|azure|mooncake|vidur|synthetic
    timed: bool = True  # False: the file had no arrival times (an offline batch at 0)
    closed_loop: ClosedLoop | None = None  # arrivals driven by closed-loop clients (arrival_s: all at 0)
    # carbon-aware deferral (engine/deferral.py): a request's deadline on the same clock as arrival_s (NaN: not
    # deferrable); held_s is set only on a trace whose requests a deferral policy held, whose arrival_s are
    # then the release times (no longer sorted) and arrival_s - held_s the trace's arrivals
    deadline_s: np.ndarray | None = None
    held_s: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.num_input_tokens.shape[0])

    def total_tokens(self) -> int:
        """Sum of input and output tokens over all requests."""
        return int(self.num_input_tokens.sum(dtype=np.int64) + self.num_output_tokens.sum(dtype=np.int64))

    def to_frame(self) -> pd.DataFrame:
        """The trace as a DataFrame in the kavier native layout."""
        import pandas as pd

        cols: dict[str, Any] = {
            "arrival_time_s": self.arrival_s,
            "num_input_tokens": self.num_input_tokens,
            "num_output_tokens": self.num_output_tokens,
        }
        if self.session_id is not None:
            cols["session_id"] = self.session_id
        if self.n is not None:
            cols["n"] = self.n
        if self.deadline_s is not None:
            cols["deadline_s"] = self.deadline_s
        if self.input_tokens is not None:
            cols["input_tokens"] = self.input_tokens
        if self.hash_ids is not None:
            cols["hash_ids"] = self.hash_ids
        return pd.DataFrame(cols)


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Layout:
    name: str
    input_col: str
    output_col: str
    time_col: str | None
    time_kind: str  # "seconds" | "milliseconds" | "datetime"
    time_required: bool
    optional: tuple[str, ...] = ()
    deadline_col: str = "deadline_s"  # carbon-aware deferral: a deadline on the arrival column's clock

    @property
    def required(self) -> tuple[str, ...]:
        req = [self.input_col, self.output_col]
        if self.time_col and self.time_required:
            req.insert(0, self.time_col)
        return tuple(req)

    @property
    def columns(self) -> tuple[str, ...]:
        cols = list(self.required)
        if self.time_col and not self.time_required:
            cols.append(self.time_col)
        cols.extend(self.optional)
        return tuple(cols)

    def describe(self) -> str:
        opt = [c for c in self.columns if c not in self.required]
        text = f"{self.name}: " + ", ".join(self.required)
        if opt:
            text += " (optional: " + ", ".join(opt) + ")"
        return text


_LAYOUTS: dict[str, _Layout] = {
    "kavier": _Layout(
        "kavier",
        "num_input_tokens",
        "num_output_tokens",
        "arrival_time_s",
        "seconds",
        False,
        ("session_id", "input_tokens", "hash_ids", "n", "deadline_s"),
    ),
    # a deadline in each layout is on its arrival column's clock: Azure's a date-time as TIMESTAMP, Mooncake's in
    # seconds (its timestamp / 1000), Vidur's in the seconds of arrived_at
    "azure": _Layout(
        "azure", "ContextTokens", "GeneratedTokens", "TIMESTAMP", "datetime", True, ("DEADLINE",), "DEADLINE"
    ),
    "mooncake": _Layout(
        "mooncake", "input_length", "output_length", "timestamp", "milliseconds", True, ("hash_ids", "deadline_s")
    ),
    "vidur": _Layout(
        "vidur", "num_prefill_tokens", "num_decode_tokens", "arrived_at", "seconds", False, ("deadline_s",)
    ),
}
# Detection order when a file happens to carry the token columns of several layouts.
_DETECT_ORDER = ("kavier", "mooncake", "azure", "vidur")


def _expected_layouts_text() -> str:
    return "; ".join(_LAYOUTS[f].describe() for f in TRACE_FORMATS)


def detect_format(columns: Sequence[str]) -> str | None:
    """The layout whose token-count columns are all present, or None."""
    cols = set(columns)
    for name in _DETECT_ORDER:
        lay = _LAYOUTS[name]
        if lay.input_col in cols and lay.output_col in cols:
            return name
    return None


def _normalise_format(fmt: str, source: str | None = None) -> str:
    key = str(fmt).strip().lower()
    key = _FORMAT_ALIASES.get(key, key)
    if key not in _LAYOUTS:
        raise KavierInputError(
            f"unknown trace format {fmt!r}; known formats are {', '.join(TRACE_FORMATS)} "
            f"(columns: {_expected_layouts_text()})",
            source=source,
            location="trace format",
        )
    return key


# --------------------------------------------------------------------------- reading


class _Source:
    """A file being read plus how to name a data row in messages."""

    def __init__(self, path: str, lines: np.ndarray | Callable[[], np.ndarray] | None = None):
        self.path = path
        self._lines = lines  # 1-based line numbers of JSON Lines records (or a function giving them)

    @property
    def lines(self) -> np.ndarray | None:
        if callable(self._lines):
            self._lines = self._lines()
        return self._lines

    def where(self, i: int) -> str:
        lines = self.lines
        if lines is not None and i < len(lines):
            return f"row {i + 1} (line {int(lines[i])})"
        return f"row {i + 1}"

    def error(self, i: int | None, message: str) -> KavierInputError:
        return KavierInputError(message, source=self.path, location=None if i is None else self.where(i))


def _file_kind(path: Path) -> tuple[str, str | None]:
    """(kind, compression) from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] == ".gz":
        compression = "gzip"
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in CSV_EXTENSIONS:
        return "csv", compression
    if ext in PARQUET_EXTENSIONS and compression is None:
        return "parquet", None
    if ext in JSONL_EXTENSIONS:
        return "jsonl", compression
    shown = "".join(path.suffixes) or "(none)"
    raise KavierInputError(
        f"unsupported file extension {shown!r}; expected one of {_SUPPORTED_EXT_TEXT}",
        source=str(path),
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise KavierInputError(
            "file not found", source=str(path), expected="an existing CSV, Parquet or JSON Lines trace file"
        )
    if path.is_dir():
        raise KavierInputError("is a directory, not a trace file", source=str(path))
    if not os.access(path, os.R_OK):
        raise KavierInputError("file is not readable (permission denied)", source=str(path))


def _clean_columns(df: pd.DataFrame) -> pd.DataFrame:
    renamed = {c: c.strip() for c in df.columns if isinstance(c, str) and c != c.strip()}
    return df.rename(columns=renamed) if renamed else df


def _pick_layout(src: _Source, columns: Sequence[str], fmt: str | None) -> _Layout:
    found = ", ".join(map(str, columns)) or "(none)"
    if fmt is not None:
        lay = _LAYOUTS[_normalise_format(fmt, src.path)]
        missing = [c for c in lay.required if c not in columns]
        if missing:
            raise KavierInputError(
                f"missing required column(s) {', '.join(missing)} for trace format {lay.name!r}; "
                f"columns found: {found}; expected {lay.describe()}",
                source=src.path,
                location="columns",
            )
        return lay
    name = detect_format(columns)
    if name is None:
        raise KavierInputError(
            f"cannot recognise the trace layout; columns found: {found}; expected the columns of one "
            f"of these formats: {_expected_layouts_text()}",
            source=src.path,
            location="columns",
        )
    lay = _LAYOUTS[name]
    missing = [c for c in lay.required if c not in columns]
    if missing:
        raise KavierInputError(
            f"looks like a {lay.name!r} trace but is missing required column(s) {', '.join(missing)}; "
            f"columns found: {found}; expected {lay.describe()}",
            source=src.path,
            location="columns",
        )
    return lay


def _read_csv(path: Path, compression: str | None, fmt: str | None) -> tuple[pd.DataFrame, _Layout, _Source]:
    import pandas as pd

    src = _Source(str(path))
    try:
        header = pd.read_csv(path, nrows=0, compression=compression)
    except pd.errors.EmptyDataError:
        raise KavierInputError(
            "file is empty; expected a header row and at least one request", source=str(path)
        ) from None
    except (UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError, ValueError) as exc:
        raise KavierInputError(f"cannot read the CSV header: {_one_line(exc)}", source=str(path)) from None
    columns = [c.strip() if isinstance(c, str) else str(c) for c in header.columns]
    _check_unique_columns(src, _raw_csv_header(path, compression) or columns)
    lay = _pick_layout(src, columns, fmt)
    df = _csv_frame(path, compression)
    wanted = _kept_columns(lay, columns)
    return df[[c for c in df.columns if c in wanted]], lay, src


def _raw_csv_header(path: Path, compression: str | None) -> list[str] | None:
    """The header's field names as written (pandas renames a repeated name to 'name.1')."""
    import csv

    try:
        opener = gzip.open if compression == "gzip" else open
        with opener(path, "rt", newline="", encoding="utf-8") as fh:
            fields = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError):
        return None
    return [f.strip() for f in fields] if fields else None


def _check_unique_columns(src: _Source, columns: Sequence[str]) -> None:
    """A column named twice leaves the reader to pick one of them silently: an error instead."""
    seen: set[str] = set()
    for c in columns:
        if c in seen:
            raise KavierInputError(
                f"column {c!r} appears more than once; columns found: {', '.join(map(str, columns))}",
                source=src.path,
                location="columns",
                expected="each column once",
            )
        seen.add(c)


def _csv_frame(path: Path, compression: str | None) -> pd.DataFrame:
    """The whole CSV file as a DataFrame; malformed files raise KavierInputError."""
    import pandas as pd

    # No usecols: with it pandas silently drops surplus fields of malformed rows (for
    # example an unquoted JSON list), which must be reported instead.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, compression=compression, low_memory=False, index_col=False)
    except (UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as exc:
        row = _ragged_csv_row(path, compression)
        raise KavierInputError(
            f"cannot parse the CSV file: {_one_line(exc)}",
            source=str(path),
            location=row,
            expected='the same number of comma-separated fields on every line; quote JSON lists such as "[1, 2]"',
        ) from None
    return _clean_columns(df)


def _ragged_csv_row(path: Path, compression: str | None) -> str | None:
    """Name the first data row whose field count differs from the header's (error path only)."""
    import csv

    try:
        opener = gzip.open if compression == "gzip" else open
        with opener(path, "rt", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return None
            for i, fields in enumerate(reader, start=1):
                if fields and len(fields) != len(header):
                    return f"row {i} (line {reader.line_num}) has {len(fields)} fields but the header has {len(header)}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _read_parquet(path: Path, fmt: str | None) -> tuple[pd.DataFrame, _Layout, _Source]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = _Source(str(path))
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise KavierInputError(
            f"cannot read the Parquet file: {_one_line(exc)}", source=str(path), expected="a valid Parquet file"
        ) from None
    names = list(schema.names)
    _check_unique_columns(src, [n.strip() for n in names])
    lay = _pick_layout(src, [n.strip() for n in names], fmt)
    keep = _kept_columns(lay, [n.strip() for n in names])
    wanted = [n for n in names if n.strip() in keep]
    try:
        table = pq.read_table(path, columns=wanted)
        df = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise KavierInputError(f"cannot read the Parquet file: {_one_line(exc)}", source=str(path)) from None
    return _clean_columns(df), lay, src


def _read_text(path: Path, compression: str | None) -> tuple[bytes, str]:
    """Raw bytes and decoded UTF-8 text of a (possibly gzip-compressed) text file."""
    try:
        if compression == "gzip":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise KavierInputError(f"cannot read the file: {_one_line(exc)}", source=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KavierInputError(
            f"not UTF-8 text (byte {exc.start}); expected JSON Lines", source=str(path), location=f"line {line}"
        ) from None
    return raw, text


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (a column that appears twice)."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _parse_jsonl(path: Path, text: str) -> tuple[list[dict], _Source, list[str]]:
    """Records of JSON Lines text (or a JSON array of objects), their source and column names."""
    stripped = text.lstrip()
    if not stripped:
        raise KavierInputError("file is empty; expected one JSON object per line", source=str(path))

    if stripped[0] == "[":
        # A whole-file JSON array of records (accepted for .json files).
        try:
            records = json.loads(text, object_pairs_hook=_unique_object)
        except json.JSONDecodeError as exc:
            raise KavierInputError(
                f"invalid JSON: {exc.msg}", source=str(path), location=f"line {exc.lineno}, column {exc.colno}"
            ) from None
        except _DuplicateKey as exc:
            raise KavierInputError(
                f"column {str(exc)!r} appears more than once in a record",
                source=str(path),
                expected="each key once per record",
            ) from None
        except RecursionError:
            raise KavierInputError(
                f"nested deeper than Python can parse ({limits.DOCUMENT_DEPTH.why})", source=str(path)
            ) from None
        line_numbers = None
    else:
        all_lines = text.split("\n")  # JSON Lines separator (not str.splitlines' extra breaks)
        keep = [i for i, ln in enumerate(all_lines) if ln.strip()]
        lines = [all_lines[i] for i in keep]
        line_numbers = np.asarray(keep, dtype=np.int64) + 1
        records = None
        try:  # fast path: one parser call for the whole file
            records = json.loads("[" + ",".join(lines) + "]", object_pairs_hook=_unique_object)
            if len(records) != len(lines):
                records = None
        except (json.JSONDecodeError, RecursionError, _DuplicateKey):
            records = None
        if records is None:  # slow path: find the offending line
            records = []
            for ln_no, ln in zip(line_numbers, lines, strict=True):
                where = f"row {len(records) + 1} (line {int(ln_no)})"
                try:
                    records.append(json.loads(ln, object_pairs_hook=_unique_object))
                except _DuplicateKey as exc:
                    raise KavierInputError(
                        f"column {str(exc)!r} appears more than once",
                        source=str(path),
                        location=where,
                        expected="each key once per record",
                    ) from None
                except RecursionError:
                    raise KavierInputError(
                        "nested too deeply to be a trace record",
                        source=str(path),
                        location=where,
                        expected="one flat JSON object per line",
                    ) from None
                except json.JSONDecodeError as exc:
                    snippet = ln.strip()
                    if len(snippet) > 80:
                        snippet = snippet[:77] + "..."
                    raise KavierInputError(
                        f"invalid JSON ({exc.msg} at column {exc.colno}): {snippet!r}; "
                        "expected one JSON object per line",
                        source=str(path),
                        location=f"row {len(records) + 1} (line {int(ln_no)})",
                    ) from None
        del lines, all_lines
    src = _Source(str(path), line_numbers)
    if not isinstance(records, list):
        raise KavierInputError("expected JSON Lines (one object per line) or a JSON array of objects", source=str(path))
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise src.error(
                i,
                f"is {type(rec).__name__} {_short(rec)}; expected a JSON object "
                'such as {"input_length": ..., "output_length": ...}',
            )
    if not records:
        raise KavierInputError("trace contains no requests", source=str(path))
    columns = [str(k) for k in dict.fromkeys(chain.from_iterable(records))]
    return records, src, columns


def _records_frame(records: list[dict], columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({c: _series_from_values([rec.get(c) for rec in records]) for c in columns})


def _nonblank_line_numbers(raw: bytes) -> np.ndarray:
    """1-based numbers of the non-blank lines of a text (for error messages)."""
    return np.asarray([no for no, line in enumerate(raw.split(b"\n"), start=1) if line.strip()], dtype=np.int64)


def _read_jsonl_arrow(path: Path, raw: bytes, fmt: str | None) -> tuple[pd.DataFrame, _Layout, _Source] | None:
    """Fast path through pyarrow's JSON reader; None when it cannot read the data.

    Anything pyarrow rejects (invalid JSON, mixed types, non-objects) goes to
    the pure-Python reader, which locates the offending line.
    """
    try:
        import pyarrow as pa
        import pyarrow.json as pj

        table = pj.read_json(pa.BufferReader(raw))
    except Exception:  # noqa: BLE001 - fall back to the precise reader
        return None
    if table.num_rows == 0:
        return None
    src = _Source(str(path), lambda: _nonblank_line_numbers(raw))
    columns = list(table.column_names)
    lay = _pick_layout(src, columns, fmt)
    keep = _kept_columns(lay, columns)
    wanted = [c for c in columns if c in keep]
    for c in ("hash_ids", "input_tokens"):
        if c in wanted:
            t = table.schema.field(c).type
            ok = (
                pa.types.is_null(t)
                or pa.types.is_string(t)
                or (
                    (pa.types.is_list(t) or pa.types.is_large_list(t))
                    and (pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type))
                )
            )
            if not ok:  # e.g. one float promoted the whole column: let the precise reader name the row
                return None
    try:
        df = table.select(wanted).to_pandas()
    except (pa.ArrowException, ValueError, TypeError):
        return None
    return df, lay, src


def _read_jsonl(path: Path, compression: str | None, fmt: str | None) -> tuple[pd.DataFrame, _Layout, _Source]:
    raw, text = _read_text(path, compression)
    if not text.strip():
        raise KavierInputError("file is empty; expected one JSON object per line", source=str(path))
    if not text.lstrip().startswith("["):
        fast = _read_jsonl_arrow(path, raw, fmt)
        if fast is not None:
            return fast
    del raw
    records, src, columns = _parse_jsonl(path, text)
    del text
    lay = _pick_layout(src, columns, fmt)
    present = set(columns)
    df = _records_frame(records, [c for c in _kept_columns(lay, columns) if c in present])
    return df, lay, src


def _series_from_values(values: list) -> pd.Series:
    """A Series from JSON values; list-valued cells stay Python lists."""
    import pandas as pd

    if values and any(isinstance(v, (list, dict)) for v in values[:50]):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return pd.Series(arr, dtype=object)
    return pd.Series(values)


def _read_table(path: str | Path, fmt: str | None) -> tuple[pd.DataFrame, _Layout, _Source]:
    p = Path(path)
    _check_file(p)
    kind, compression = _file_kind(p)
    if kind == "csv":
        return _read_csv(p, compression, fmt)
    if kind == "parquet":
        return _read_parquet(p, fmt)
    return _read_jsonl(p, compression, fmt)


# --------------------------------------------------------------------------- validation


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _numeric_values(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for missing/bad, mask of cells that are present but not numbers)."""
    import pandas as pd

    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return np.full(len(s), np.nan), np.ones(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(s), dtype=bool)
    present = s.notna().to_numpy()
    if dtype == np.dtype(object):
        is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in s), dtype=bool, count=len(s))
        is_container = np.fromiter(
            (isinstance(v, (list, dict, tuple, np.ndarray)) for v in s), dtype=bool, count=len(s)
        )
        bad_obj = is_bool | is_container
        if bad_obj.any():
            s = s.where(~bad_obj, None)
    else:
        bad_obj = np.zeros(len(s), dtype=bool)
    try:
        num = pd.to_numeric(s, errors="coerce")
    except Exception:  # noqa: BLE001 - e.g. Arrow-backed strings pandas cannot convert
        num = pd.Series([_to_float(v) for v in s])
    vals = np.array(num.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64, copy=True)
    nonnum = (np.isnan(vals) & present) | bad_obj
    vals[bad_obj] = np.nan
    return vals, nonnum


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _int_column(src: _Source, s: pd.Series, column: str, meaning: str, minimum: int = 1) -> np.ndarray:
    """Validate a column of integer counts >= ``minimum``; return int64."""
    import pandas as pd

    what = f"{column} ({meaning})" if meaning else column
    dtype = s.dtype
    if pd.api.types.is_integer_dtype(dtype) and not s.isna().any():
        arr = np.array(s.to_numpy(dtype=np.int64), dtype=np.int64, copy=True)  # writable, owned
        bad = _first(arr < minimum)
        if bad is not None:
            raise src.error(bad, _too_small_message(what, int(arr[bad]), minimum))
        return arr
    vals, nonnum = _numeric_values(s)
    finite = np.isfinite(vals)
    missing = np.isnan(vals) & ~nonnum
    infinite = np.isinf(vals)
    with np.errstate(invalid="ignore"):
        nonint = finite & (vals != np.floor(vals))
        small = finite & (vals < minimum)
        huge = finite & (np.abs(vals) > _MAX_EXACT)
    bad = _first(nonnum | missing | infinite | nonint | small | huge)
    if bad is not None:
        raw = s.iloc[bad]
        if nonnum[bad]:
            msg = f"{what} is {_short(raw)}, which is not a number; expected an integer >= {minimum}"
        elif missing[bad]:
            msg = f"{what} is missing (empty cell, null or NaN); expected an integer >= {minimum}"
        elif infinite[bad]:
            msg = f"{what} is {_short(raw)}; expected a finite integer >= {minimum}"
        elif nonint[bad]:
            msg = f"{what} is {_short(raw)}, which is not a whole number; token counts must be integers >= {minimum}"
        elif small[bad]:
            msg = _too_small_message(what, vals[bad], minimum)
        else:
            msg = f"{what} is {_short(raw)}, which is too large; expected an integer below 2**53"
        raise src.error(bad, msg)
    return vals.astype(np.int64)


def _too_small_message(what: str, value: float, minimum: int) -> str:
    v = int(value) if float(value).is_integer() else value
    if v == 0 and "output" in what:
        return (
            f"{what} is 0; at least one output token is required (every request generates "
            "at least one token); expected an integer >= 1"
        )
    if v < 0:
        return f"{what} is {v}, which is negative; expected an integer >= {minimum}"
    return f"{what} is {v}; expected an integer >= {minimum}"


def _time_seconds(src: _Source, s: pd.Series, column: str, kind: str) -> np.ndarray:
    """Arrival times in seconds (not yet re-based), validated and checked to be sorted."""
    if kind == "datetime":
        secs = _datetime_seconds(src, s, column)
    else:
        vals, nonnum = _numeric_values(s)
        missing = np.isnan(vals) & ~nonnum
        infinite = np.isinf(vals)
        bad = _first(nonnum | missing | infinite)
        if bad is not None:
            raw = s.iloc[bad]
            unit = "seconds" if kind == "seconds" else "milliseconds"
            if nonnum[bad]:
                msg = f"{column} is {_short(raw)}, which is not a number; expected a time in {unit}"
            elif missing[bad]:
                msg = f"{column} is missing (empty cell, null or NaN); expected a time in {unit}"
            else:
                msg = f"{column} is {_short(raw)}; expected a finite time in {unit}"
            raise src.error(bad, msg)
        secs = vals / 1000.0 if kind == "milliseconds" else vals
    if secs.size:
        with np.errstate(invalid="ignore"):
            far = _first(secs - secs[0] > limits.DURATION_S.value)
        if far is not None:
            lim = limits.DURATION_S
            raise src.error(
                far,
                f"{column} is {_short(s.iloc[far])}, {secs[far] - secs[0]:.3g} s after the first "
                f"request, above the limit of {lim.text()} ({lim.why})",
            )
    back = _first(np.diff(secs) < 0)
    if back is not None:
        i = back + 1
        raise src.error(
            i,
            f"{column} goes backwards: {_short(s.iloc[i])} is earlier than {_short(s.iloc[i - 1])} "
            f"in {src.where(i - 1)}; requests must be sorted by arrival time",
        )
    return secs


def _datetime_seconds(src: _Source, s: pd.Series, column: str) -> np.ndarray:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        ts = s
        bad_value = np.zeros(len(s), dtype=bool)
    else:
        if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            raise src.error(
                0, f"{column} is {_short(s.iloc[0])}; expected a date-time string such as '2023-11-16 18:15:46.6805900'"
            )
        strs = s.astype("string") if s.dtype == object else s
        try:
            ts = pd.to_datetime(strs, format="ISO8601", utc=True, errors="coerce")
        except (ValueError, TypeError, OverflowError):
            ts = pd.to_datetime(strs, format="mixed", utc=True, errors="coerce")
        bad_value = (ts.isna() & s.notna()).to_numpy()
    missing = (ts.isna()).to_numpy() & ~bad_value
    bad = _first(bad_value | missing)
    if bad is not None:
        if bad_value[bad]:
            msg = (
                f"{column} is {_short(s.iloc[bad])}, which is not a date-time; expected a string "
                "such as '2023-11-16 18:15:46.6805900'"
            )
        else:
            msg = f"{column} is missing (empty cell or null); expected a date-time"
        raise src.error(bad, msg)
    return (ts - ts.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)


def _list_column(src: _Source, s: pd.Series, column: str) -> list[list[int]]:
    """A column of integer lists (JSON strings in CSV, lists in JSON/Parquet); empty cells -> []."""
    import pandas as pd

    return _list_values(src, s.tolist(), column, pd.NA)


def _list_values(src: _Source, values: list, column: str, na: Any = None) -> list[list[int]]:
    """_list_column over the cells as Python values (``na``: the reader's own missing-value marker)."""
    n = len(values)
    out: list[Any] = [None] * n
    str_idx = []
    for i, v in enumerate(values):
        if isinstance(v, list):
            out[i] = v
        elif isinstance(v, np.ndarray):
            out[i] = v.tolist()
        elif isinstance(v, str):
            str_idx.append(i)
        elif v is None or (isinstance(v, float) and math.isnan(v)) or v is na:
            out[i] = []
        elif isinstance(v, tuple):
            out[i] = list(v)
        else:
            raise src.error(i, f"{column} is {_short(v)}; expected a list of integers such as [0, 1, 2]")
    if str_idx:
        texts = [values[i].strip() or "[]" for i in str_idx]
        parsed = None
        try:
            parsed = json.loads("[" + ",".join(texts) + "]")
            if len(parsed) != len(texts):
                parsed = None
        except (json.JSONDecodeError, RecursionError):
            parsed = None
        if parsed is None:
            parsed = []
            for i, t in zip(str_idx, texts, strict=True):
                try:
                    parsed.append(json.loads(t))
                except json.JSONDecodeError:
                    raise src.error(
                        i,
                        f"{column} is {_short(t)}, which is not a JSON list; expected a "
                        "list of integers such as [0, 1, 2]",
                    ) from None
        for i, p in zip(str_idx, parsed, strict=True):
            out[i] = p
    types = set(map(type, out))
    if not types <= {list}:
        for i, v in enumerate(out):
            if not isinstance(v, list):
                raise src.error(i, f"{column} is {_short(values[i])}; expected a list of integers")
    elem_types = set(map(type, chain.from_iterable(out)))
    if not elem_types <= {int}:
        for i, v in enumerate(out):
            for x in v:
                if type(x) is not int:
                    raise src.error(i, f"{column} contains {_short(x)}; expected a list of integers")
    return out


def _build(df: pd.DataFrame, lay: _Layout, src: _Source, keep_overlong: bool = False) -> Trace:
    import pandas as pd

    if len(df) == 0:
        raise KavierInputError(
            "trace contains no requests (only a header)", source=src.path, expected="at least one data row"
        )
    native = lay.name == "kavier"
    n_in = _int_column(src, df[lay.input_col], lay.input_col, "" if native else "input tokens", 1)
    n_out = _int_column(src, df[lay.output_col], lay.output_col, "" if native else "output tokens", 1)
    if not keep_overlong:
        _check_context(src, lay, n_in, n_out)
    time_col = lay.time_col
    if native and time_col not in df.columns and "arrival_s" in df.columns:
        time_col = "arrival_s"  # requests.parquet of 'kavier simulate' or 'kavier trace': its own arrivals
    if time_col and time_col in df.columns:
        secs = _time_seconds(src, df[time_col], time_col, lay.time_kind)
        arrival = secs - secs[0]
    else:
        secs = arrival = np.zeros(len(df), dtype=np.float64)
    trace = Trace(
        arrival_s=np.ascontiguousarray(arrival, dtype=np.float64),
        num_input_tokens=n_in,
        num_output_tokens=n_out,
        source=src.path,
        format=lay.name,
        timed=bool(time_col and time_col in df.columns),
    )
    if "session_id" in lay.optional and "session_id" in df.columns:
        s = df["session_id"]
        miss = _first(s.isna().to_numpy())
        if miss is not None:
            raise src.error(
                miss,
                "session_id is missing (empty cell, null or NaN); expected a session "
                "identifier (integer or string) in every row",
            )
        codes, _ = pd.factorize(s, sort=False)
        trace.session_id = codes.astype(np.int64)
    if "n" in lay.optional and "n" in df.columns:
        trace.n = _int_column(src, df["n"], "n", "samples per prompt", 1)
    dcol = lay.deadline_col
    if dcol in lay.optional and dcol in df.columns:
        if lay.time_kind == "datetime":
            deadline = _datetime_deadlines(src, df[dcol], df[str(time_col)], dcol)
        else:
            deadline = df[dcol]
        trace.deadline_s = _deadline_column(
            src, deadline, secs, str(time_col) if trace.timed else None, dcol, df[dcol], lay.time_kind
        )
    if "hash_ids" in lay.optional and "hash_ids" in df.columns:
        trace.hash_ids = _list_column(src, df["hash_ids"], "hash_ids")
        _check_hash_ids(src, lay, trace.hash_ids, n_in, trace.hash_block_size)
    if "input_tokens" in lay.optional and "input_tokens" in df.columns:
        toks = _list_column(src, df["input_tokens"], "input_tokens")
        lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        bad = _first((lens != 0) & (lens != n_in))
        if bad is not None:
            raise src.error(
                bad,
                f"input_tokens has {int(lens[bad])} token ids but num_input_tokens is "
                f"{int(n_in[bad])}; expected one token id per input token (or an empty cell)",
            )
        trace.input_tokens = toks
    return trace


def _datetime_deadlines(src: _Source, s: pd.Series, times: pd.Series, column: str) -> pd.Series:
    """Date-time deadlines as seconds after the first arrival (the clock _datetime_seconds gives the arrivals);
    an empty cell stays empty (not deferrable), a cell that is not a date-time is an error naming the row."""
    import pandas as pd

    def parse(x: pd.Series) -> pd.Series:
        if pd.api.types.is_datetime64_any_dtype(x.dtype):
            return x if x.dt.tz is not None else x.dt.tz_localize("UTC")
        strs = x.astype("string") if x.dtype == object else x
        try:
            return pd.to_datetime(strs, format="ISO8601", utc=True, errors="coerce")
        except (ValueError, TypeError, OverflowError):
            return pd.to_datetime(strs, format="mixed", utc=True, errors="coerce")

    if pd.api.types.is_numeric_dtype(s.dtype) and s.notna().any():
        i = _first(s.notna().to_numpy())
        raise src.error(
            i,
            f"{column} is {_short(s.iloc[i])}; expected a date-time as in TIMESTAMP (or an empty cell: not deferrable)",
        )
    ts = parse(s) if not s.isna().all() else pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    bad = _first((ts.isna() & s.notna() & (s.astype("string").str.strip() != "")).to_numpy())
    if bad is not None:
        raise src.error(
            bad,
            f"{column} is {_short(s.iloc[bad])}, which is not a date-time; expected a date-time as in TIMESTAMP, "
            "such as '2023-11-16 18:15:46.6805900' (or an empty cell: not deferrable)",
        )
    t0 = parse(times.iloc[:1]).iloc[0]
    return (ts - t0).dt.total_seconds()


def _deadline_column(
    src: _Source,
    s: pd.Series,
    secs: np.ndarray,
    time_col: str | None,
    column: str = "deadline_s",
    raw: pd.Series | None = None,
    kind: str = "seconds",
) -> np.ndarray:
    """Deadlines (s, on the arrival column's clock; re-based with it): an empty cell is a request that is not
    deferrable (NaN); a deadline before its own arrival is an error naming the row. ``s``: the deadlines in
    seconds (Azure's date-times already converted); ``raw``: the cells as in the file, for messages."""
    raw = s if raw is None else raw
    vals, nonnum = _numeric_values(s)
    bad = _first(nonnum | np.isinf(vals))
    if bad is not None:
        raise src.error(
            bad,
            f"{column} is {_short(raw.iloc[bad])}; expected a finite time in seconds on the clock of "
            f"{time_col or 'the arrivals (all at 0: the trace has no arrival times)'}"
            + (" (its milliseconds / 1000)" if kind == "milliseconds" else "")
            + " (or an empty cell: not deferrable)",
        )
    with np.errstate(invalid="ignore"):
        early = _first(vals < secs)
    if early is not None:
        arrival = f"{secs[early]:g}" + ("" if kind == "seconds" else " s")
        raise src.error(
            early,
            f"{column} is {_short(raw.iloc[early])}, before the request's arrival "
            + (
                f"({time_col} {arrival}" + (" after the first request" if kind == "datetime" else "") + ")"
                if time_col
                else "(at 0: the trace has no arrival times)"
            )
            + "; expected a deadline at or after the arrival, on the same clock (or an empty cell: not deferrable)",
        )
    return np.ascontiguousarray(vals - (secs[0] if secs.size else 0.0), dtype=np.float64)


def _check_context(src: _Source, lay: _Layout, n_in: np.ndarray, n_out: np.ndarray) -> None:
    """A request longer than any model's context is a data error, unless the user keeps such rows."""
    lim = limits.CONTEXT_TOKENS
    total = n_in + n_out
    bad = _first(total > lim.value)
    if bad is not None:
        raise src.error(
            bad,
            f"{lay.input_col} + {lay.output_col} = {int(total[bad]):,} tokens, above the limit "
            f"of {lim.text()} ({lim.why}); fix the row, or keep such rows as rejected "
            "requests with --keep-overlong-requests (trace.keep_overlong_requests: true)",
        )


def _check_hash_ids(src: _Source, lay: _Layout, hash_ids: list[list[int]], n_in: np.ndarray, block: int) -> None:
    """One hash id per ``block`` prompt tokens, the last block partial (Mooncake's definition)."""
    counts = np.fromiter(map(len, hash_ids), dtype=np.int64, count=len(hash_ids))
    want = -(-n_in // block)
    bad = _first((counts != 0) & (counts != want))
    if bad is not None:
        raise src.error(
            bad,
            f"hash_ids has {int(counts[bad])} ids but {lay.input_col} is {int(n_in[bad])}, which "
            f"needs {int(want[bad])} (one per {block} prompt tokens, the last one partial)",
        )


# --------------------------------------------------------------------------- the fast reader
#
# arrow_trace reads a CSV, Parquet or JSON Lines trace with pyarrow straight into numpy arrays and returns the
# Trace the pandas reader above would return, or None whenever it cannot vouch for that: a cell pyarrow reads
# differently from pandas (an NA spelling, a float spelling of a token count in CSV), any invalid row, any problem
# at all. load_trace then reads the file with pandas, which words the error (or reads the unusual file) exactly as
# before. So the fast reader never raises and never words an error; it only spares the well-formed traces that
# nearly every run reads the import of pandas (a third of a second). Where pandas infers types each rule below is
# conservative (None when in doubt); tests/test_trace_arrow.py checks that both readers agree.


class _Unsure(Exception):
    """The pandas reader might read this file differently (or refuse it): let it."""


#: date-times both readers parse alike (pandas' format="ISO8601" and numpy's datetime64): no zone, years
#: 1900-2099 (inside datetime64[ns]), up to nanoseconds
_ISO = re.compile(r"(19|20)\d\d-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d{1,9})?")
#: integers pandas' CSV parser reads as int64 (with an optional sign and leading zeros)
_INT = re.compile(r"[+-]?\d{1,18}")
#: the cells pandas' CSV reader turns into NaN by default (pandas.io.parsers: STR_NA_VALUES) and its booleans
_PANDAS_NA = frozenset(
    "-1.#IND 1.#QNAN 1.#IND -1.#QNAN #N/A N/A n/a NA <NA> #NA NULL null NaN -NaN nan -nan None".split()
) | {"", "#N/A N/A"}
_PANDAS_BOOL = frozenset({"True", "TRUE", "true", "False", "FALSE", "false"})


def arrow_trace(path: str | Path, fmt: str | None, keep_overlong: bool) -> Trace | None:
    """The trace in ``path`` as ``trace.load_trace`` reads it, or None where only the pandas reader can say."""
    try:
        return _arrow_read(Path(path), fmt, keep_overlong)
    except Exception:  # noqa: BLE001 - any doubt or problem: the pandas reader decides, with its own words
        return None


def _arrow_read(p: Path, fmt: str | None, keep_overlong: bool) -> Trace:
    if not p.is_file():
        raise _Unsure
    kind, compression = _file_kind(p)
    if kind == "csv":
        cols, lay = _arrow_csv_columns(p, compression, fmt)
    elif kind == "parquet":
        cols, lay = _arrow_parquet_columns(p, fmt)
    else:
        cols, lay = _arrow_jsonl_columns(p, compression, fmt)
    return _arrow_build(cols, lay, _Source(str(p)), keep_overlong, csv_text=kind == "csv")


# --------------------------------------------------------------------------- reading


def _arrow_csv_header(p: Path, compression: str | None) -> list[str]:
    opener = gzip.open if compression == "gzip" else open
    with opener(p, "rt", newline="", encoding="utf-8") as fh:
        fields = next(csv.reader(fh), None)
    if not fields or fields[0].startswith("\ufeff"):  # pandas drops a byte-order mark; pyarrow may not
        raise _Unsure
    stripped = [f.strip() for f in fields]
    if "" in stripped or len(set(stripped)) != len(stripped):  # pandas names these 'Unnamed: 2' or refuses
        raise _Unsure
    return fields


def _kept_columns(lay: _Layout, names: Sequence[str]) -> tuple[str, ...]:
    """The columns a layout reads from a file with these (stripped) names, in the layout's order: its own, and
    ``arrival_s`` for a native file without ``arrival_time_s`` (a requests.parquet, or a table written from
    one, read back: every reader the same, so a CSV's ``arrival_s`` is not dropped by one and kept by another)."""
    if lay.name == "kavier" and "arrival_time_s" not in names:
        return (*lay.columns, "arrival_s")
    return lay.columns


def _arrow_csv_columns(p: Path, compression: str | None, fmt: str | None) -> tuple[dict[str, Any], _Layout]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _arrow_csv_header(p, compression)
    lay = _pick_layout(_Source(str(p)), [f.strip() for f in header], fmt)
    keep = _kept_columns(lay, [f.strip() for f in header])
    # token counts as int64 (a float spelling such as 374.0, an empty cell or NA: not read, pandas decides),
    # numeric times as float64, the rest as the text written
    types: dict[str, Any] = {}
    for name in header:
        col = name.strip()
        if col in (lay.input_col, lay.output_col, "n"):
            types[name] = pa.int64()
        elif (col == lay.time_col and lay.time_kind != "datetime") or (col == "arrival_s" and col in keep):
            types[name] = pa.float64()
        else:
            types[name] = pa.string()
    wanted = [name for name in header if name.strip() in keep]
    raw = pa.input_stream(str(p), compression=compression).read()
    if b"0x" in raw or b"0X" in raw:  # Arrow reads a hexadecimal count (0x10) as a number; pandas refuses it
        raise _Unsure
    table = pacsv.read_csv(
        pa.BufferReader(raw),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(
            column_types={n: types[n] for n in wanted}, include_columns=wanted, strings_can_be_null=False
        ),
    )
    return {name.strip(): table.column(name) for name in wanted}, lay


def _arrow_parquet_columns(p: Path, fmt: str | None) -> tuple[dict[str, Any], _Layout]:
    import pyarrow.parquet as pq

    names = list(pq.read_schema(p).names)
    stripped = [n.strip() for n in names]
    if len(set(stripped)) != len(stripped):
        raise _Unsure
    lay = _pick_layout(_Source(str(p)), stripped, fmt)
    keep = _kept_columns(lay, stripped)
    wanted = [n for n in names if n.strip() in keep]
    table = pq.read_table(p, columns=wanted)
    return {n.strip(): table.column(n) for n in wanted}, lay


def _arrow_jsonl_columns(p: Path, compression: str | None, fmt: str | None) -> tuple[dict[str, Any], _Layout]:
    import pyarrow as pa
    import pyarrow.json as pj

    raw, text = _read_text(p, compression)
    if not text.strip() or text.lstrip().startswith("["):  # a JSON array: the pure-Python reader's
        raise _Unsure
    del text
    table = pj.read_json(pa.BufferReader(raw))
    columns = list(table.column_names)
    lay = _pick_layout(_Source(str(p)), columns, fmt)
    keep = _kept_columns(lay, columns)
    return {c: table.column(c) for c in columns if c in keep}, lay


# --------------------------------------------------------------------------- columns


#: numpy's dtype of each arrow number type read here (by the type's name)
_ARROW_NUMPY_TYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
} | {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
}


def _arrow_numbers(col: pa.ChunkedArray, dtype: np.dtype | None = None) -> np.ndarray:
    """A column of numbers without nulls as a numpy copy, read from its data buffers (pyarrow's to_numpy
    would import pandas, a third of a second)."""
    kind = dtype if dtype is not None else _ARROW_NUMPY_TYPES[str(col.type)]
    parts = [
        np.frombuffer(ch.buffers()[1], dtype=kind, count=len(ch), offset=ch.offset * kind.itemsize)
        for ch in col.chunks
        if len(ch)
    ]
    return np.concatenate(parts) if parts else np.empty(0, dtype=kind)


def _arrow_plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if col.null_count:  # an empty cell or null: the pandas reader names the row
        raise _Unsure
    return col


def _arrow_counts(col: pa.ChunkedArray) -> np.ndarray:
    """Token counts (or ``n``): int64 >= 1, as _int_column accepts them."""
    import pyarrow as pa

    t = _arrow_plain(col).type
    if pa.types.is_integer(t) and not pa.types.is_uint64(t):
        arr = _arrow_numbers(col).astype(np.int64)
    elif pa.types.is_float32(t) or pa.types.is_float64(t):
        vals = _arrow_numbers(col).astype(np.float64)
        with np.errstate(invalid="ignore"):
            if not (np.isfinite(vals).all() and (vals == np.floor(vals)).all() and (vals <= _MAX_EXACT).all()):
                raise _Unsure
        arr = vals.astype(np.int64)
    else:
        raise _Unsure
    if arr.size and arr.min() < 1:
        raise _Unsure
    return arr


def _arrow_seconds(col: pa.ChunkedArray, kind: str) -> np.ndarray:
    """Arrival times in seconds (not re-based), as _time_seconds computes them."""
    import pyarrow as pa

    t = _arrow_plain(col).type
    if kind == "datetime":
        secs = _arrow_datetime_seconds(col)
    elif (pa.types.is_integer(t) and not pa.types.is_uint64(t)) or pa.types.is_float32(t) or pa.types.is_float64(t):
        vals = _arrow_numbers(col).astype(np.float64)
        if not np.isfinite(vals).all():
            raise _Unsure
        secs = vals / 1000.0 if kind == "milliseconds" else vals
    else:
        raise _Unsure
    if secs.size and (secs - secs[0] > limits.DURATION_S.value).any():
        raise _Unsure
    if (np.diff(secs) < 0).any():
        raise _Unsure
    return secs


_ARROW_TICKS_PER_S = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _arrow_datetime_seconds(col: pa.ChunkedArray) -> np.ndarray:
    """Seconds since the first date-time, the way pandas' Series.dt.total_seconds computes them (whole
    seconds plus the remainder divided by the ticks per second)."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_timestamp(t):
        per_s = _ARROW_TICKS_PER_S[t.unit]
        ticks = _arrow_numbers(col, np.dtype(np.int64))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        texts = col.to_pylist()
        if not all(_ISO.fullmatch(s) for s in texts):
            raise _Unsure
        per_s = 10**9
        ticks = np.array(texts, dtype="datetime64[ns]").view(np.int64)
    else:
        raise _Unsure
    delta = ticks - ticks[0]
    # above 2**53 nanoseconds (104 days) pandas may nudge a result off a whole second: it decides
    if np.abs(delta).max() > 2**53 // (10**9 // per_s):
        raise _Unsure
    whole, rest = np.divmod(delta, per_s)
    return whole + rest / per_s


def _arrow_sessions(col: pa.ChunkedArray, csv_text: bool) -> np.ndarray:
    """Dense session indices in order of first appearance (pandas.factorize's codes)."""
    import pyarrow as pa

    t = _arrow_plain(col).type
    values: list[Any]
    if pa.types.is_integer(t) and not pa.types.is_uint64(t):
        values = col.to_pylist()
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        values = col.to_pylist()
        if csv_text:  # pandas infers the column's type from the text: mirror it or let it read the file
            if any(v in _PANDAS_NA for v in values):
                raise _Unsure
            if all(_INT.fullmatch(v) for v in values):
                values = [int(v) for v in values]  # '01' and '1' are one session, as for pandas
            elif not any(_surely_text(v) for v in values):
                raise _Unsure
    else:
        raise _Unsure
    index: dict[Any, int] = {}
    return np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))


def _surely_text(v: str) -> bool:
    """A CSV cell no pandas parser reads as a number or boolean (so its column stays text)."""
    if v in _PANDAS_BOOL:
        return False
    try:
        float(v)  # accepts more spellings than pandas does: a doubt keeps the pandas reader
    except ValueError:
        return True
    return False


# --------------------------------------------------------------------------- the trace


def _arrow_build(cols: dict[str, Any], lay: _Layout, src: _Source, keep_overlong: bool, csv_text: bool) -> Trace:
    """_build over arrow columns; every check that would fail there is _Unsure (or raises) here."""
    rows = len(cols[lay.input_col])
    if rows == 0:
        raise _Unsure
    native = lay.name == "kavier"
    n_in = _arrow_counts(cols[lay.input_col])
    n_out = _arrow_counts(cols[lay.output_col])
    if not keep_overlong:
        _check_context(src, lay, n_in, n_out)
    time_col = lay.time_col
    if native and time_col not in cols and "arrival_s" in cols:
        time_col = "arrival_s"
    timed = bool(time_col and time_col in cols)
    if timed:
        secs = _arrow_seconds(cols[str(time_col)], lay.time_kind)
        arrival = secs - secs[0]
    else:
        arrival = np.zeros(rows, dtype=np.float64)
    trace = Trace(
        arrival_s=np.ascontiguousarray(arrival, dtype=np.float64),
        num_input_tokens=n_in,
        num_output_tokens=n_out,
        source=src.path,
        format=lay.name,
        timed=timed,
    )
    if lay.deadline_col in cols:  # empty cells mean "not deferrable": the pandas reader reads and words them
        raise _Unsure
    if "session_id" in lay.optional and "session_id" in cols:
        trace.session_id = _arrow_sessions(cols["session_id"], csv_text)
    if "n" in lay.optional and "n" in cols:
        trace.n = _arrow_counts(cols["n"])
    for name in ("hash_ids", "input_tokens"):
        if name in lay.optional and name in cols:
            values = [_arrow_list_cell(v, csv_text) for v in cols[name].to_pylist()]
            lists = _list_values(src, values, name)
            if name == "hash_ids":
                _check_hash_ids(src, lay, lists, n_in, trace.hash_block_size)
                trace.hash_ids = lists
            else:
                lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
                if ((lens != 0) & (lens != n_in)).any():
                    raise _Unsure
                trace.input_tokens = lists
    return trace


def _arrow_list_cell(v: Any, csv_text: bool) -> Any:
    if csv_text and isinstance(v, str) and v in _PANDAS_NA and v.strip():  # pandas reads 'NA' as an empty cell
        raise _Unsure
    if isinstance(v, float) and math.isnan(v):
        raise _Unsure
    return v


# --------------------------------------------------------------------------- public API


def load_trace(path: str | Path, fmt: str | None = None, *, keep_overlong: bool = False) -> Trace:
    """Load a request trace, auto-detecting its layout unless ``fmt`` names one.

    Raises :class:`KavierInputError` for a missing/unreadable file, an
    unsupported extension, unknown or duplicated columns or any invalid row.
    ``keep_overlong`` keeps rows longer than any model's context (the
    simulator rejects them) instead of refusing the file.
    """
    if fmt is not None:
        _normalise_format(fmt, str(path))  # reject unknown names before touching the file
    fast = arrow_trace(path, fmt, keep_overlong)  # pyarrow alone, for the well-formed files it can vouch for
    if fast is not None:
        return fast
    df, lay, src = _read_table(path, fmt)
    return _build(df, lay, src, keep_overlong)


def read_length_column(path: str | Path, column: str) -> np.ndarray:
    """The integer column ``column`` (values >= 1) of a CSV/Parquet/JSON Lines file.

    Used for empirical length distributions from files that are not traces.
    """
    import pandas as pd

    p = Path(path)
    _check_file(p)
    kind, compression = _file_kind(p)
    src = _Source(str(p))
    try:
        if kind == "csv":
            df = _csv_frame(p, compression)
        elif kind == "parquet":
            df = pd.read_parquet(p)
        else:
            records, src, columns = _parse_jsonl(p, _read_text(p, compression)[1])
            if column not in columns:
                raise KavierInputError(
                    f"has no column {column!r}; columns found: {', '.join(columns)}", source=str(p), location="columns"
                )
            df = _records_frame(records, [column])
    except KavierInputError:
        raise
    except pd.errors.EmptyDataError:
        raise KavierInputError("file is empty", source=str(p)) from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise KavierInputError(f"cannot read the file: {_one_line(exc)}", source=str(p)) from None
    df = _clean_columns(df)
    if column not in df.columns:
        raise KavierInputError(
            f"has no column {column!r}; columns found: {', '.join(map(str, df.columns)) or '(none)'}",
            source=str(p),
            location="columns",
        )
    if len(df) == 0:
        raise KavierInputError("contains no rows", source=str(p))
    return _int_column(src, df[column], column, "", 1)


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` in the kavier native layout (CSV, Parquet or JSON Lines by extension)."""
    p = Path(path)
    kind, compression = _file_kind(p)
    df = trace.to_frame()
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        df.to_parquet(p, index=False)
    elif kind == "csv":
        for col in ("input_tokens", "hash_ids"):
            if col in df.columns:
                df[col] = [json.dumps(v) for v in df[col]]
        df.to_csv(p, index=False, compression=compression)
    else:
        # json.dumps writes floats with repr (exact round trip); pandas' to_json rounds them.
        names = list(df.columns)
        columns = [df[c].tolist() for c in names]
        opener = gzip.open if compression == "gzip" else open
        with opener(p, "wt", encoding="utf-8") as fh:
            for row in zip(*columns, strict=True):
                fh.write(json.dumps(dict(zip(names, row, strict=True))))
                fh.write("\n")
    return p
