"""What ``kavier trace`` writes.

``requests.parquet``  one row per request with the simulator's columns
    (``request_id, replica, arrival_s, num_input_tokens, num_output_tokens,
    cached_tokens, queue_s, ttft_s, tpot_s, e2e_s, finish_s, preemptions,
    status``) and the tracer's own: ``start_s, send_s, first_token_s, client_wait_s,
    target_input_tokens, target_output_tokens, expected_input_tokens,
    num_chunks, token_times_s`` (list: arrival of every streamed chunk with
    text), ``sse_ignored_lines`` (comments and lines that were not data),
    ``finish_reason, error_kind, error, http_status, attempts`` (``error_kind``: http,
    rate_limited, server_error, connection, incomplete_stream, timeout, invalid_json,
    no_tokens, flood, line_too_long, not_streaming, client; ``error`` never holds the
    API key, which is redacted wherever the server is quoted).
``summary.json``      the simulator's summary keys, plus ``complete``,
    ``status`` and how the measurement was taken.
``measurements.csv``  (sweep) prefill and decode times per length, in the
    layout of the seeds' A10 table, which the calibration reads as it is.

Conventions: times are seconds from the start of the run; ``arrival_s`` is
the scheduled arrival, ``start_s`` the moment the request was handed to the
HTTP client and ``send_s`` the moment it went out on its connection.  ``ttft_s``
and ``e2e_s`` are measured from ``send_s`` (the server cannot see a request
before it is sent), ``client_wait_s = send_s - arrival_s`` is the client's own
lateness (a full ``--concurrency``).  ``tpot_s = (last - first token) /
(num_output_tokens - 1)`` as in the simulator.  Token counts are the server's
``usage``; server-side queueing, preemptions and the replica are not
observable and are null.  The API key is never written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kavier_opendc import __version__
from kavier_opendc.base.atomic import (
    INCOMPLETE,
    atomic_write_text,
    staged_output,
    write_json_atomic,
    write_parquet_atomic,
)
from kavier_opendc.engine.outputs import stats
from kavier_opendc.tracer.runner import Measurement

A10_COLUMNS = [
    "prompt_size",
    "prefill_input_tokens",
    "reality_prefill",
    "kavier_prefill",
    "decode_input_tokens",
    "decode_output_tokens",
    "reality_decode",
    "kavier_decode",
]
MEASUREMENTS_FILE = "measurements.csv"


def _f(x) -> float:
    return math.nan if x is None else float(x)


def requests_frame(m: Measurement) -> pd.DataFrame:
    rows = []
    for r in m.records:
        fin = r.status == "finished"
        n_out = r.completion_tokens if r.completion_tokens is not None else (r.num_chunks if fin else None)
        n_in = r.prompt_tokens if r.prompt_tokens is not None else (r.expected_input_tokens if fin else None)
        ttft = r.first_token_s - r.send_s if fin else math.nan
        e2e = r.last_token_s - r.send_s if fin else math.nan
        tpot = (r.last_token_s - r.first_token_s) / (n_out - 1) if fin and n_out and n_out > 1 else math.nan
        rows.append(
            {
                "request_id": r.request_id,
                "replica": -1,
                "arrival_s": r.arrival_s,
                "num_input_tokens": n_in,
                "num_output_tokens": n_out,
                "cached_tokens": r.cached_tokens,
                "queue_s": math.nan,
                "ttft_s": ttft,
                "tpot_s": tpot,
                "e2e_s": e2e,
                "finish_s": r.last_token_s if fin else math.nan,
                "preemptions": None,
                "status": r.status,
                "start_s": r.start_s,
                "send_s": r.send_s,
                "first_token_s": r.first_token_s,
                "client_wait_s": r.send_s - r.arrival_s,
                "target_input_tokens": r.target_input_tokens,
                "target_output_tokens": r.target_output_tokens,
                "expected_input_tokens": r.expected_input_tokens,
                "num_chunks": r.num_chunks,
                "sse_ignored_lines": r.ignored_lines,
                "token_times_s": list(r.token_times_s),
                "finish_reason": r.finish_reason,
                "error_kind": r.error_kind,
                "error": r.error,
                "http_status": r.http_status,
                "attempts": r.attempts,
            }
        )
    return pd.DataFrame(rows, columns=None if rows else list(_SCHEMA.names))


_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("replica", pa.int32()),
        ("arrival_s", pa.float64()),
        ("num_input_tokens", pa.int64()),
        ("num_output_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("queue_s", pa.float64()),
        ("ttft_s", pa.float64()),
        ("tpot_s", pa.float64()),
        ("e2e_s", pa.float64()),
        ("finish_s", pa.float64()),
        ("preemptions", pa.int32()),
        ("status", pa.string()),
        ("start_s", pa.float64()),
        ("send_s", pa.float64()),
        ("first_token_s", pa.float64()),
        ("client_wait_s", pa.float64()),
        ("target_input_tokens", pa.int64()),
        ("target_output_tokens", pa.int64()),
        ("expected_input_tokens", pa.int64()),
        ("num_chunks", pa.int64()),
        ("sse_ignored_lines", pa.int64()),
        ("token_times_s", pa.list_(pa.float64())),
        ("finish_reason", pa.string()),
        ("error_kind", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("attempts", pa.int32()),
    ]
)


def requests_table(m: Measurement) -> pa.Table:
    df = requests_frame(m)
    cols = {}
    for f in _SCHEMA:
        vals = df[f.name].tolist() if len(df) else []
        if pa.types.is_integer(f.type):
            vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in vals]
        elif pa.types.is_string(f.type):
            vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in vals]
        cols[f.name] = pa.array(vals, type=f.type)
    return pa.table(cols, schema=_SCHEMA)


def summary_dict(m: Measurement) -> dict:
    df = requests_frame(m)
    n = len(df)
    fin = df[df["status"] == "finished"] if n else df
    makespan = float(np.nanmax(fin["finish_s"])) if len(fin) else 0.0
    inp = int(fin["num_input_tokens"].fillna(0).sum()) if len(fin) else 0
    outp = int(fin["num_output_tokens"].fillna(0).sum()) if len(fin) else 0
    cached = fin["cached_tokens"].dropna() if len(fin) else pd.Series([], dtype=float)
    failed = df[df["status"] == "error"] if n else df
    errors = failed["error_kind"].value_counts().to_dict() if len(failed) else {}
    num_finished = int(len(fin))
    complete = not m.interrupted and num_finished > 0
    status = (
        "interrupted"
        if m.interrupted
        else "all_failed"
        if num_finished == 0
        else "some_failed"
        if len(failed)
        else "ok"
    )
    mismatch = int((fin["num_input_tokens"] != fin["target_input_tokens"]).sum()) if len(fin) else 0
    short = int((fin["num_output_tokens"] != fin["target_output_tokens"]).sum()) if len(fin) else 0

    def col(name):
        return fin[name].to_numpy(dtype=np.float64) if len(fin) else np.zeros(0)

    return {
        "measured": True,
        "complete": complete,
        "status": status,
        "num_requests": n,
        "num_finished": num_finished,
        "num_failed": int(len(failed)),
        "num_cancelled": int((df["status"] == "cancelled").sum()) if n else 0,
        "num_not_sent": int((df["status"] == "not_sent").sum()) if n else 0,
        "num_rejected": int(len(failed)),
        "makespan_s": makespan,
        "request_throughput_per_s": num_finished / makespan if makespan > 0 else 0.0,
        "output_tokens_per_s": outp / makespan if makespan > 0 else 0.0,
        "total_tokens_per_s": (inp + outp) / makespan if makespan > 0 else 0.0,
        "input_tokens": inp,
        "output_tokens": outp,
        "ttft_s": stats(col("ttft_s")),
        "tpot_s": stats(col("tpot_s")),
        "e2e_s": stats(col("e2e_s")),
        "queue_s": stats(np.zeros(0)),
        "client_wait_s": stats(col("client_wait_s")),
        "prefix_cache_hit_ratio": (float(cached.sum()) / inp if len(cached) == len(fin) and inp else None),
        "cached_tokens": int(cached.sum()) if len(cached) else None,
        "preemptions": None,
        "gpu_utilization_mean": None,
        "errors": {str(k): int(v) for k, v in errors.items()},
        "first_error": None if not len(failed) else str(failed["error"].iloc[0]),
        "input_token_mismatches": mismatch,
        "output_token_mismatches": short,
        "config": dict(m.settings, mode=m.mode, prompt_method=m.prompt_method, chars_per_token=m.chars_per_token),
        "endpoint": {k: v for k, v in m.endpoint_info.items()},
        "tracer": {
            "version": __version__,
            "started_at_utc": m.started_at_utc,
            "wall_s": m.wall_s,
            "clock": "time.perf_counter, seconds from the start of the run",
        },
    }


def sweep_frame(m: Measurement) -> pd.DataFrame:
    """The A10-table layout: one row per (prompt length, output length), means over repetitions."""
    df = requests_frame(m)
    fin = df[df["status"] == "finished"] if len(df) else df
    rows = []
    if len(fin):
        for (p, _o), g in fin.groupby(["target_input_tokens", "target_output_tokens"], sort=True):
            n_in = int(np.median(g["num_input_tokens"]))
            rows.append(
                {
                    "prompt_size": int(p),
                    "prefill_input_tokens": n_in,
                    "reality_prefill": float(g["ttft_s"].mean()),
                    "kavier_prefill": math.nan,
                    "decode_input_tokens": n_in,
                    "decode_output_tokens": int(np.median(g["num_output_tokens"])),
                    "reality_decode": float((g["e2e_s"] - g["ttft_s"]).mean()),
                    "kavier_decode": math.nan,
                }
            )
    return pd.DataFrame(rows, columns=A10_COLUMNS)


def write_measurement(m: Measurement, out: Path) -> dict:
    """requests.parquet, summary.json (and measurements.csv for a sweep), all or nothing."""
    summary = summary_dict(m)
    with staged_output(Path(out)) as stage:
        write_parquet_atomic(stage / "requests.parquet", requests_table(m))
        if m.mode == "sweep":
            atomic_write_text(
                stage / MEASUREMENTS_FILE, sweep_frame(m).to_csv(index=False, na_rep="nan", float_format="%.6f")
            )
        write_json_atomic(stage / "summary.json", summary)
        if not summary["complete"]:
            atomic_write_text(stage / INCOMPLETE, f"kavier trace did not complete: {summary['status']}\n")
    stale = ([INCOMPLETE] if summary["complete"] else []) + ([MEASUREMENTS_FILE] if m.mode != "sweep" else [])
    for name in stale:  # left by an earlier run into the same directory
        if (Path(out) / name).is_file():
            (Path(out) / name).unlink()
    return summary
