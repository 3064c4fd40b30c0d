"""``kavier compare``: errors of a simulation against a measurement.

Two kinds of input, recognised from the paths:

* **requests**: a directory with ``requests.parquet`` (and ``summary.json``),
  written by ``kavier simulate`` or ``kavier trace --mode replay``.  Requests
  are matched by ``request_id``; only requests finished on both sides count.
* **table**: a CSV in the layout of the seeds' A10 measurements
  (``prompt_size, prefill_input_tokens, reality_prefill, kavier_prefill,
  decode_input_tokens, decode_output_tokens, reality_decode, kavier_decode``),
  e.g. the ``measurements.csv`` of ``kavier trace --mode sweep``, or a
  directory holding one.  The simulated side's values are its
  ``kavier_prefill``/``kavier_decode`` columns, or, given a model and GPU,
  this simulator's times for each row's single requests (prefill: TTFT of the
  prompt alone; decode: end-to-end minus TTFT), exactly as
  ``bench/calibrate_a10.py`` computes them.  The measured side's values are
  its ``reality_prefill``/``reality_decode``.  Rows are matched by their
  token counts.

Errors, for every matched request (row) and metric: relative error
``(simulated - measured) / measured``; aggregated as MAPE (mean absolute
relative error, %) and signed bias (mean relative error, %: positive means the
simulator predicts longer times than measured), plus the mean absolute and
mean signed error in seconds.  For requests, also the error of each summary
statistic (mean, p50, p90, p99) and of the throughputs.

Writes ``compare.json``, ``report.md``, ``per_request.csv`` and PNG plots
(``cdf.png`` and ``scatter.png`` for requests; ``scatter.png`` and
``errors.png`` for tables), all or nothing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kavier_opendc.base.atomic import atomic_write_text, staged_output, write_json_atomic  # noqa: E402
from kavier_opendc.base.errors import KavierInputError  # noqa: E402

TABLE_COLUMNS = (
    "prompt_size",
    "prefill_input_tokens",
    "reality_prefill",
    "kavier_prefill",
    "decode_input_tokens",
    "decode_output_tokens",
    "reality_decode",
    "kavier_decode",
)
TABLE_KEY = ("prefill_input_tokens", "decode_input_tokens", "decode_output_tokens")
REQUEST_METRICS = ("ttft_s", "tpot_s", "e2e_s")
TABLE_METRICS = ("prefill", "decode")
STATS = ("mean", "p50", "p90", "p99")
THROUGHPUTS = ("output_tokens_per_s", "total_tokens_per_s", "request_throughput_per_s")
TABLE_FILE_NAMES = ("measurements.csv",)


@dataclass
class Side:
    kind: str  # "requests" | "table"
    path: Path
    frame: pd.DataFrame
    summary: dict | None = None


# ------------------------------------------------------------------ reading
def _read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise KavierInputError(f"cannot read the table: {' '.join(str(exc).split())}", source=str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise KavierInputError(
            f"missing column(s) {', '.join(missing)}",
            source=str(path),
            location="columns",
            expected="the A10 measurement layout: " + ", ".join(TABLE_COLUMNS),
        )
    if len(df) == 0:
        raise KavierInputError("the table has no rows", source=str(path))
    for c in TABLE_COLUMNS:
        vals = pd.to_numeric(df[c], errors="coerce")
        bad = np.flatnonzero(vals.isna() & df[c].notna() & (df[c].astype(str).str.lower() != "nan"))
        if bad.size:
            raise KavierInputError(
                f"{c} is {df[c].iloc[bad[0]]!r}, which is not a number", source=str(path), location=f"row {bad[0] + 1}"
            )
        df[c] = vals.astype(np.float64)
    return df


def _is_table_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv":
        return False
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, pd.errors.ParserError):
        return False
    return {"reality_prefill", "reality_decode"} <= {str(c).strip() for c in header}


def load_side(path: Path, role: str, prefer_table: bool = False) -> Side:
    """A simulation or measurement: a requests directory or an A10-layout table.

    A sweep's directory holds both; its table is taken when ``prefer_table``."""
    path = Path(path)
    what = "SIM_DIR" if role == "simulated" else "MEASURED_DIR"
    if not path.exists():
        raise KavierInputError(
            f"{path} not found",
            location=what,
            expected="an output directory of 'kavier simulate' / 'kavier trace', or an A10-layout CSV",
        )
    if path.is_file():
        if _is_table_csv(path):
            return Side("table", path, _read_table(path))
        if path.suffix.lower() in (".parquet", ".pq"):
            return _requests_side(path, path.with_name("summary.json"), what)
        raise KavierInputError(
            "is neither an A10-layout table (CSV with reality_prefill, reality_decode, ...) nor a requests.parquet",
            source=str(path),
            location=what,
        )
    tables = [path / n for n in TABLE_FILE_NAMES if (path / n).is_file() and _is_table_csv(path / n)]
    if tables and (prefer_table or not (path / "requests.parquet").is_file()):
        return Side("table", tables[0], _read_table(tables[0]))
    if (path / "requests.parquet").is_file():
        return _requests_side(path / "requests.parquet", path / "summary.json", what)
    raise KavierInputError(
        f"{path} has no requests.parquet (nor measurements.csv)",
        location=what,
        expected="the output directory of 'kavier simulate' or 'kavier trace'",
    )


def _requests_side(parquet: Path, summary_path: Path, what: str) -> Side:
    try:
        df = pd.read_parquet(parquet)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise KavierInputError(
            f"cannot read: {' '.join(str(exc).split())}", source=str(parquet), location=what
        ) from None
    need = ("request_id", *REQUEST_METRICS)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KavierInputError(
            f"missing column(s) {', '.join(missing)}",
            source=str(parquet),
            location="columns",
            expected="the request columns of 'kavier simulate' (request_id, ttft_s, tpot_s, e2e_s, ...)",
        )
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KavierInputError(f"cannot read: {exc}", source=str(summary_path)) from None
    if summary is not None and summary.get("complete") is False:
        raise KavierInputError(
            f'the measurement is marked incomplete (summary.json "complete": false, status {summary.get("status")!r})',
            source=str(summary_path),
            expected="a complete run of 'kavier trace'",
        )
    return Side("requests", parquet, df, summary)


# ------------------------------------------------------------------ maths
def errors(sim: np.ndarray, meas: np.ndarray) -> dict:
    """MAPE and signed bias (%), mean absolute and signed error (s) over pairs with a positive measurement."""
    sim = np.asarray(sim, dtype=np.float64)
    meas = np.asarray(meas, dtype=np.float64)
    ok = np.isfinite(sim) & np.isfinite(meas) & (meas > 0)
    if not ok.any():
        return {
            "n": 0,
            "mape_pct": None,
            "bias_pct": None,
            "median_ape_pct": None,
            "max_ape_pct": None,
            "mae_s": None,
            "bias_s": None,
        }
    rel = (sim[ok] - meas[ok]) / meas[ok]
    diff = sim[ok] - meas[ok]
    return {
        "n": int(ok.sum()),
        "mape_pct": float(np.mean(np.abs(rel)) * 100),
        "bias_pct": float(np.mean(rel) * 100),
        "median_ape_pct": float(np.median(np.abs(rel)) * 100),
        "max_ape_pct": float(np.max(np.abs(rel)) * 100),
        "mae_s": float(np.mean(np.abs(diff))),
        "bias_s": float(np.mean(diff)),
    }


def _stat(values: np.ndarray, which: str) -> float | None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    return float(v.mean()) if which == "mean" else float(np.percentile(v, float(which[1:])))


def _rel(sim, meas) -> float | None:
    if sim is None or meas is None or not meas:
        return None
    return float((sim - meas) / meas * 100)


def _finished(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "finished"] if "status" in df.columns else df


def _throughputs(side: Side) -> dict:
    if side.summary is not None and all(k in side.summary for k in THROUGHPUTS):
        return {k: side.summary[k] for k in THROUGHPUTS}
    fin = _finished(side.frame)
    span = float(fin["finish_s"].max()) if "finish_s" in fin and len(fin) else 0.0
    out = float(fin["num_output_tokens"].sum()) if "num_output_tokens" in fin else math.nan
    inp = float(fin["num_input_tokens"].sum()) if "num_input_tokens" in fin else math.nan
    return {
        "output_tokens_per_s": out / span if span > 0 else None,
        "total_tokens_per_s": (out + inp) / span if span > 0 else None,
        "request_throughput_per_s": len(fin) / span if span > 0 else None,
    }


def compare_requests(sim: Side, meas: Side) -> tuple[dict, pd.DataFrame]:
    s = _finished(sim.frame).drop_duplicates("request_id").set_index("request_id")
    m = _finished(meas.frame).drop_duplicates("request_id").set_index("request_id")
    ids = s.index.intersection(m.index).sort_values()
    if len(ids) == 0:
        raise KavierInputError(
            f"no request_id is finished in both {sim.path} and {meas.path}",
            location="request_id",
            expected="a simulation and a measurement of the same trace",
        )
    per = pd.DataFrame({"request_id": ids.to_numpy()})
    metrics = {}
    for k in REQUEST_METRICS:
        sv = s.loc[ids, k].to_numpy(dtype=np.float64)
        mv = m.loc[ids, k].to_numpy(dtype=np.float64)
        per[f"{k}_sim"], per[f"{k}_measured"] = sv, mv
        with np.errstate(invalid="ignore", divide="ignore"):
            per[f"{k}_error_pct"] = np.where(mv > 0, (sv - mv) / mv * 100, np.nan)
        e = errors(sv, mv)
        e["stats"] = {st: {"simulated": _stat(sv, st), "measured": _stat(mv, st)} for st in STATS}
        for st in STATS:
            e["stats"][st]["error_pct"] = _rel(e["stats"][st]["simulated"], e["stats"][st]["measured"])
        metrics[k] = e
    mismatched = 0
    for col in ("num_input_tokens", "num_output_tokens"):
        if col in s.columns and col in m.columns:
            a = s.loc[ids, col].to_numpy(dtype=np.float64)
            b = m.loc[ids, col].to_numpy(dtype=np.float64)
            per[f"{col}_sim"], per[f"{col}_measured"] = a, b
            mismatched = max(mismatched, int(np.sum(np.isfinite(b) & (a != b))))
    ts, tm = _throughputs(sim), _throughputs(meas)
    result = {
        "kind": "requests",
        "simulated": str(sim.path),
        "measured": str(meas.path),
        "matched": int(len(ids)),
        "unmatched_simulated": int(len(s.index.difference(m.index))),
        "unmatched_measured": int(len(m.index.difference(s.index))),
        "token_count_mismatches": mismatched,
        "metrics": metrics,
        "throughput": {
            k: {"simulated": ts.get(k), "measured": tm.get(k), "error_pct": _rel(ts.get(k), tm.get(k))}
            for k in THROUGHPUTS
        },
    }
    return result, per


def simulate_table(frame: pd.DataFrame, model, gpu, efficiency=None) -> pd.DataFrame:
    """This simulator's prefill and decode time for each row's single requests (one request alone)."""
    from kavier_opendc.engine.simulator import SimConfig, simulate
    from kavier_opendc.workload.trace import Trace

    kw = {} if efficiency is None else {"efficiency": efficiency}
    cfg = SimConfig(model=model, gpu=gpu, **kw)

    def one(prompt: int, output: int) -> tuple[float, float]:
        tr = Trace(np.zeros(1), np.array([prompt], dtype=np.int64), np.array([output], dtype=np.int64))
        r = simulate(tr, cfg, progress=False).results
        return float(r.first_token[0]), float(r.finish[0] - r.first_token[0])

    out = frame.copy()
    out["kavier_prefill"] = [one(int(p), 1)[0] for p in frame["prefill_input_tokens"]]
    out["kavier_decode"] = [
        one(int(p), int(o))[1] for p, o in zip(frame["decode_input_tokens"], frame["decode_output_tokens"], strict=True)
    ]
    return out


def _match_rows(sim: pd.DataFrame, meas: pd.DataFrame) -> list[tuple[int, int]]:
    """Pairs of row positions with equal token counts (duplicates paired in order)."""

    def keys(df):
        return [
            tuple(int(round(v)) if np.isfinite(v) else -1 for v in row)
            for row in df[list(TABLE_KEY)].to_numpy(dtype=np.float64)
        ]

    pool: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys(sim)):
        pool.setdefault(k, []).append(i)
    pairs = []
    for j, k in enumerate(keys(meas)):
        if pool.get(k):
            pairs.append((pool[k].pop(0), j))
    return pairs


def compare_tables(sim: Side, meas: Side, simulate=None) -> tuple[dict, pd.DataFrame]:
    sframe = simulate_table(sim.frame, *simulate) if simulate else sim.frame
    source = (
        f"this simulator ({simulate[0].name} on {simulate[1].name})"
        if simulate
        else f"the kavier_prefill/kavier_decode columns of {sim.path}"
    )
    pairs = _match_rows(sframe, meas.frame)
    if not pairs:
        raise KavierInputError(
            f"no row of {sim.path} has the token counts of a row of {meas.path}",
            location=", ".join(TABLE_KEY),
            expected="tables of the same lengths",
        )
    si = [p[0] for p in pairs]
    mi = [p[1] for p in pairs]
    S = sframe.iloc[si].reset_index(drop=True)
    M = meas.frame.iloc[mi].reset_index(drop=True)
    per = pd.DataFrame(
        {
            "prompt_size": M["prompt_size"],
            "prefill_input_tokens": M["prefill_input_tokens"],
            "decode_input_tokens": M["decode_input_tokens"],
            "decode_output_tokens": M["decode_output_tokens"],
        }
    )
    metrics = {}
    for k in TABLE_METRICS:
        sv = S[f"kavier_{k}"].to_numpy(dtype=np.float64)
        mv = M[f"reality_{k}"].to_numpy(dtype=np.float64)
        if not np.isfinite(sv).any():
            raise KavierInputError(
                f"kavier_{k} has no values",
                source=str(sim.path),
                location=f"kavier_{k}",
                expected="simulated times, or --model and --gpu to simulate each row",
            )
        per[f"{k}_sim_s"], per[f"{k}_measured_s"] = sv, mv
        with np.errstate(invalid="ignore", divide="ignore"):
            per[f"{k}_error_pct"] = (sv - mv) / mv * 100
        metrics[k] = errors(sv, mv)
    result = {
        "kind": "table",
        "simulated": str(sim.path),
        "measured": str(meas.path),
        "simulated_values": source,
        "matched": len(pairs),
        "unmatched_simulated": len(sframe) - len(pairs),
        "unmatched_measured": len(meas.frame) - len(pairs),
        "metrics": metrics,
    }
    return result, per


# ------------------------------------------------------------------ plots
def _figure(ncols: int, w: float = 4.2, h: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _label(k: str) -> str:
    return {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "end-to-end", "prefill": "prefill", "decode": "decode"}[k]


def plot_requests(per: pd.DataFrame, out: Path) -> list[str]:
    fig, axes = _figure(3)
    for ax, k in zip(axes, REQUEST_METRICS, strict=True):
        for which, color in (("measured", "#1f77b4"), ("sim", "#ff7f0e")):
            v = np.sort(per[f"{k}_{which}"].to_numpy(dtype=np.float64))
            v = v[np.isfinite(v)] * 1e3
            if v.size:
                ax.step(
                    v,
                    np.arange(1, v.size + 1) / v.size,
                    where="post",
                    color=color,
                    label="measured" if which == "measured" else "simulated",
                )
        ax.set_xlabel(f"{_label(k)} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    _save(fig, out / "cdf.png")
    fig, axes = _figure(3)
    for ax, k in zip(axes, REQUEST_METRICS, strict=True):
        x = per[f"{k}_measured"].to_numpy(dtype=np.float64) * 1e3
        y = per[f"{k}_sim"].to_numpy(dtype=np.float64) * 1e3
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=8, alpha=0.6)
        if ok.any():
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="simulated = measured")
            ax.legend(loc="upper left")
        ax.set_xlabel(f"measured {_label(k)} (ms)")
        ax.set_ylabel(f"simulated {_label(k)} (ms)")
        ax.grid(alpha=0.3)
    _save(fig, out / "scatter.png")
    return ["cdf.png", "scatter.png"]


def plot_table(per: pd.DataFrame, out: Path) -> list[str]:
    fig, axes = _figure(2)
    for ax, k in zip(axes, TABLE_METRICS, strict=True):
        x = per[f"{k}_measured_s"].to_numpy(dtype=np.float64)
        y = per[f"{k}_sim_s"].to_numpy(dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        ax.scatter(x[ok], y[ok], s=14)
        if ok.any():
            lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="simulated = measured")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(loc="upper left")
        ax.set_xlabel(f"measured {k} time (s)")
        ax.set_ylabel(f"simulated {k} time (s)")
        ax.grid(alpha=0.3, which="both")
    _save(fig, out / "scatter.png")
    fig, axes = _figure(2)
    for ax, k, xcol in zip(axes, TABLE_METRICS, ("prefill_input_tokens", "decode_output_tokens"), strict=True):
        x = per[xcol].to_numpy(dtype=np.float64)
        y = per[f"{k}_error_pct"].to_numpy(dtype=np.float64)
        ax.axhline(0, color="grey", lw=1)
        ax.plot(x, y, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens" if k == "prefill" else "output tokens")
        ax.set_ylabel(f"{k} error (%, simulated - measured)")
        ax.grid(alpha=0.3)
    _save(fig, out / "errors.png")
    return ["scatter.png", "errors.png"]


# ------------------------------------------------------------------ report
def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.2f} %"


def _abs_pct(v) -> str:
    return "n/a" if v is None else f"{v:.2f} %"


def _ms(v) -> str:
    return "n/a" if v is None else f"{v * 1e3:.2f} ms"


def report_markdown(result: dict, plots: list[str]) -> str:
    lines = [
        "# Simulation vs measurement",
        "",
        f"- simulated: `{result['simulated']}`",
        f"- measured: `{result['measured']}`",
    ]
    if result["kind"] == "table":
        lines.append(f"- simulated values: {result['simulated_values']}")
    lines += [
        f"- matched {'rows' if result['kind'] == 'table' else 'requests'}: {result['matched']} "
        f"(unmatched: {result['unmatched_simulated']} simulated, {result['unmatched_measured']} measured)",
        "",
        "Relative error = (simulated - measured) / measured. MAPE is the mean of its absolute value; "
        "bias is its mean (positive: the simulator predicts longer times).",
        "",
    ]
    if result["kind"] == "table":
        lines += ["| metric | rows | MAPE | bias | median APE | max APE |", "|---|---:|---:|---:|---:|---:|"]
        for k in TABLE_METRICS:
            e = result["metrics"][k]
            lines.append(
                f"| {k} | {e['n']} | {_abs_pct(e['mape_pct'])} | {_pct(e['bias_pct'])} | "
                f"{_abs_pct(e['median_ape_pct'])} | {_abs_pct(e['max_ape_pct'])} |"
            )
    else:
        lines += [
            "## Per request",
            "",
            "| metric | requests | MAPE | bias | mean abs error | mean error |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k in REQUEST_METRICS:
            e = result["metrics"][k]
            lines.append(
                f"| {_label(k)} | {e['n']} | {_abs_pct(e['mape_pct'])} | {_pct(e['bias_pct'])} | "
                f"{_ms(e['mae_s'])} | {_ms(e['bias_s'])} |"
            )
        lines += [
            "",
            "## Aggregates",
            "",
            "| metric | statistic | simulated | measured | error |",
            "|---|---|---:|---:|---:|",
        ]
        for k in REQUEST_METRICS:
            for st in STATS:
                d = result["metrics"][k]["stats"][st]
                lines.append(
                    f"| {_label(k)} | {st} | {_ms(d['simulated'])} | {_ms(d['measured'])} | {_pct(d['error_pct'])} |"
                )
        lines += ["", "| throughput | simulated | measured | error |", "|---|---:|---:|---:|"]

        def f(v):
            return "n/a" if v is None else f"{v:.2f}"

        for k, d in result["throughput"].items():
            lines.append(f"| {k} | {f(d['simulated'])} | {f(d['measured'])} | {_pct(d['error_pct'])} |")
        if result.get("token_count_mismatches"):
            lines += [
                "",
                f"Note: {result['token_count_mismatches']} matched requests have different token "
                "counts on the two sides (the server produced other lengths than the trace asked).",
            ]
    lines += ["", "## Plots", ""] + ([f"![{p}]({p})" for p in plots] or [result.get("plots_note", "none")]) + [""]
    return "\n".join(lines)


def compare_paths(sim_path: Path, meas_path: Path, out: Path, simulate=None) -> dict:
    """Compare, then write compare.json, report.md, per_request.csv and the plots into ``out``."""
    sim = load_side(sim_path, "simulated", prefer_table=bool(simulate))
    meas = load_side(meas_path, "measured", prefer_table=bool(simulate))
    if sim.kind != meas.kind:  # a sweep's directory next to a table: compare the tables
        sim = load_side(sim_path, "simulated", prefer_table=True)
        meas = load_side(meas_path, "measured", prefer_table=True)
    if sim.kind != meas.kind:
        raise KavierInputError(
            f"cannot compare a {sim.kind} input ({sim.path}) with a {meas.kind} input ({meas.path})",
            location="SIM_DIR/MEASURED_DIR",
            expected="two request directories or two A10-layout tables",
        )
    if simulate and sim.kind != "table":
        raise KavierInputError("--model/--gpu apply to A10-layout tables only", location="--model")
    if sim.kind == "table":
        result, per = compare_tables(sim, meas, simulate)
    else:
        result, per = compare_requests(sim, meas)
    with staged_output(Path(out)) as stage:
        try:
            plots = plot_table(per, stage) if sim.kind == "table" else plot_requests(per, stage)
        except ImportError:  # matplotlib is the 'plots' extra
            plots = []
            result["plots_note"] = "matplotlib is not installed: no plots"
        result["plots"] = plots
        atomic_write_text(stage / "per_request.csv", per.to_csv(index=False))
        atomic_write_text(stage / "report.md", report_markdown(result, plots))
        write_json_atomic(stage / "compare.json", result)
    return result


def format_result(result: dict, out: Path) -> str:
    if result["kind"] == "table":
        body = [
            f"{k:<8} MAPE {_abs_pct(result['metrics'][k]['mape_pct'])}, bias {_pct(result['metrics'][k]['bias_pct'])}"
            for k in TABLE_METRICS
        ]
        head = f"{result['matched']} rows; simulated values from {result['simulated_values']}"
    else:
        body = [
            f"{_label(k):<10} MAPE {_abs_pct(result['metrics'][k]['mape_pct'])}, "
            f"bias {_pct(result['metrics'][k]['bias_pct'])}"
            for k in REQUEST_METRICS
        ]
        tp = result["throughput"]["output_tokens_per_s"]
        body.append(f"throughput output tok/s error {_pct(tp['error_pct'])}")
        head = f"{result['matched']} matched requests"
    return "\n".join(
        [
            head,
            *body,
            f"wrote {out}/report.md, compare.json, per_request.csv" + "".join(f", {p}" for p in result["plots"]),
        ]
    )
