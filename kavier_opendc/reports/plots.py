"""PNG plots of a run and of a sweep (matplotlib, Agg canvas, no pyplot state).

Every function takes plain data (DataFrames / dicts), writes one PNG and
returns its path. Axes carry units; time axes switch between s, min and h
with the run length.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kavier_opendc.base.atomic import make_dirs, write_errors  # noqa: E402
from kavier_opendc.reports.efficiency import LatencyTargets  # noqa: E402

DPI = 110
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _figure(w: float = 8.0, h: float = 4.5, nrows: int = 1, ncols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    with write_errors(path):
        make_dirs(path.parent)
        try:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    return path


def time_unit(span_s: float) -> tuple[str, float]:
    """('s'|'min'|'h', divisor) for a time span in seconds."""
    if span_s > 3 * 3600:
        return "h", 3600.0
    if span_s > 180:
        return "min", 60.0
    return "s", 1.0


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


def latency_cdfs(
    requests: pd.DataFrame, path: Path, slo: LatencyTargets | None = None, title: str | None = None
) -> Path:
    """CDFs of TTFT, TPOT and end-to-end latency (finished requests), with
    p50/p99 marks and the SLO targets."""
    slo = slo or LatencyTargets()
    fig, axes = _figure(13.0, 4.0, 1, 3)
    fin = requests[requests["status"] == "finished"] if "status" in requests else requests
    specs = [
        ("ttft_s", "Time to first token", slo.ttft_s),
        ("tpot_s", "Time per output token", slo.tpot_s),
        ("e2e_s", "End-to-end latency", None),
    ]
    for ax, (col, label, target) in zip(axes[0], specs, strict=True):
        v = fin[col].to_numpy(np.float64)
        v = np.sort(v[np.isfinite(v)])
        if v.size == 0:
            _empty(ax, f"no {label.lower()} values")
            ax.set_title(label)
            continue
        scale = 1000.0 if np.median(v) < 1.0 else 1.0
        unit = "ms" if scale == 1000.0 else "s"
        x = v * scale
        y = np.arange(1, v.size + 1) / v.size
        ax.plot(x, y, color=COLORS[0], lw=1.8)
        pos = x[x > 0]
        if pos.size and pos.max() / max(pos.min(), 1e-12) > 200:
            ax.set_xscale("log")
        marks = []
        for q, ls in ((50, ":"), (99, "--")):
            xq = float(np.percentile(x, q))
            ax.axvline(xq, color="0.35", ls=ls, lw=1)
            marks.append((xq, 0.03 if q == 50 else 0.12, f"p{q} {xq:.3g} {unit}", "0.25"))
        if target is not None:
            xt = target * scale
            ax.axvline(xt, color=COLORS[3], lw=1.5, ls="-.")
            met = float(np.mean(v <= target))
            lo, hi = ax.get_xlim()
            if xt * 1.3 > hi and ax.get_xscale() == "linear":
                ax.set_xlim(lo, xt * 1.3)
            marks.append((xt, 0.5, f"SLO {xt:g} {unit}\n({met:.1%} met)", COLORS[3]))
        for xm, ym, label_text, color in marks:
            _label_inside(ax, xm, ym, label_text, color)
        ax.set_xlabel(f"{label} ({unit})")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
        ax.set_title(label)
    fig.suptitle(title or f"Latency CDFs ({len(fin)} finished requests)")
    return _save(fig, path)


def _label_inside(ax, x: float, y: float, text: str, color) -> None:
    """A label beside the vertical line at data ``x``, on the side that keeps it inside the axes
    (a p99 near the right edge would otherwise spill into the next panel)."""
    frac = ax.transAxes.inverted().transform(ax.transData.transform((x, 0.0)))[0]
    right_half = frac > 0.55
    ax.text(
        x,
        y,
        (text + " ") if right_half else (" " + text),
        fontsize=8,
        color=color,
        ha="right" if right_half else "left",
        clip_on=True,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
    )


def _binned_mean(start: np.ndarray, end: np.ndarray, value: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-weighted mean of a piecewise-constant signal (non-overlapping
    segments; 0 in gaps) over each bin [edges[k], edges[k+1])."""
    if start.size == 0:
        return np.zeros(edges.size - 1)
    order = np.argsort(start, kind="stable")
    s, e, v = start[order], end[order], value[order]
    area = (e - s) * v
    a_end = np.cumsum(area)
    a_start = a_end - area
    t = np.empty(2 * s.size)
    a = np.empty(2 * s.size)
    t[0::2], t[1::2] = s, e
    a[0::2], a[1::2] = a_start, a_end
    integ = np.interp(edges, t, a, left=0.0, right=a[-1])  # the integral is linear inside a segment
    width = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(width > 0, np.diff(integ) / width, 0.0)


#: up to this many replicas, one line each; beyond, the mean with a min-max band
MAX_REPLICA_LINES = 4


def gpu_utilization(timeline: pd.DataFrame, path: Path, bins: int = 300, title: str | None = None) -> Path:
    """Two panels over time (time-weighted means over ``bins`` bins):

    - the GPUs' power-relevant activity (the timeline's ``gpu_utilization``, what OpenDC's power model
      gets), one line per replica up to :data:`MAX_REPLICA_LINES`, beyond that the mean over replicas
      with a min-max band;
    - the KV cache as stacked areas, mean over replicas: blocks used by running requests, blocks free
      but holding cached prefixes (evicted first when memory is needed), and free blocks.
    """
    fig, axes = _figure(11.0, 6.0, 2, 1, sharex=True)
    ax_u, ax_kv = axes[0][0], axes[1][0]
    if timeline.empty:
        _empty(ax_u, "empty timeline")
        return _save(fig, path)
    t_end = float(timeline["end_s"].max())
    unit, div = time_unit(t_end)
    edges = np.linspace(0.0, t_end, bins + 1)
    mid = (edges[:-1] + edges[1:]) / 2 / div
    reps = sorted(timeline["replica"].unique())
    util, used, cached = {}, {}, {}
    for r in reps:
        seg = timeline[timeline["replica"] == r]
        s = seg["start_s"].to_numpy(np.float64)
        e = seg["end_s"].to_numpy(np.float64)
        util[r] = _binned_mean(s, e, seg["gpu_utilization"].to_numpy(np.float64), edges)
        used[r] = (
            _binned_mean(s, e, seg["kv_utilization"].to_numpy(np.float64), edges)
            if "kv_utilization" in seg
            else np.zeros(bins)
        )
        cached[r] = (
            _binned_mean(s, e, seg["kv_cached"].to_numpy(np.float64), edges) if "kv_cached" in seg else np.zeros(bins)
        )
    gpu_of = {}
    if "gpu" in timeline:
        gpu_of = timeline.groupby("replica")["gpu"].first().to_dict()
    if len(reps) <= MAX_REPLICA_LINES:
        for i, r in enumerate(reps):
            lab = f"replica {r}" + (f" ({gpu_of[r]})" if r in gpu_of else "")
            ax_u.plot(mid, util[r], lw=1.2, color=COLORS[i % len(COLORS)], label=lab)
    else:
        m = np.vstack([util[r] for r in reps])
        ax_u.fill_between(
            mid, m.min(0), m.max(0), color=COLORS[0], alpha=0.25, lw=0, label=f"min-max over {len(reps)} replicas"
        )
        ax_u.plot(mid, m.mean(0), color=COLORS[0], lw=1.5, label="mean over replicas")
    ax_u.set_ylabel("GPU activity, power-relevant (0-1)")
    ax_u.set_ylim(0, 1.05)
    ax_u.grid(alpha=0.3)
    # the legend sits outside the axes, so it never hides data
    ax_u.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    u = np.clip(np.vstack([used[r] for r in reps]).mean(0), 0.0, 1.0)
    c = np.clip(np.vstack([cached[r] for r in reps]).mean(0), 0.0, 1.0 - u)
    ax_kv.stackplot(
        mid,
        u,
        c,
        1.0 - u - c,
        colors=[COLORS[3], COLORS[1], "#dddddd"],
        lw=0,
        labels=["used by running requests", "cached prefixes (free, evictable)", "free"],
    )
    ax_kv.set_ylabel("KV-cache blocks (fraction)")
    ax_kv.set_ylim(0, 1.0)
    ax_kv.grid(alpha=0.3)
    ax_kv.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        title=f"mean of {len(reps)} replica{'s' if len(reps) != 1 else ''}",
        title_fontsize=8,
    )
    ax_kv.set_xlabel(f"simulated time ({unit})")
    fig.suptitle(title or f"GPU activity and KV-cache memory per replica (mean over {t_end / bins:.3g} s bins)")
    return _save(fig, path)


def host_power(host: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """Power draw over time per OpenDC host (W) and their total, from
    OpenDC's host.parquet (``host_name``, ``timestamp`` ms, ``power_draw`` W)."""
    fig, axes = _figure(11.0, 4.8)
    ax = axes[0][0]
    if host is None or host.empty:
        _empty(ax, "no OpenDC host output")
        return _save(fig, path)
    t_end = float(host["timestamp"].max()) / 1000.0
    unit, div = time_unit(t_end)
    names = list(dict.fromkeys(host["host_name"]))
    for i, name in enumerate(names):
        g = host[host["host_name"] == name].sort_values("timestamp")
        ax.plot(
            g["timestamp"].to_numpy() / 1000.0 / div,
            g["power_draw"].to_numpy(np.float64),
            lw=1.0,
            color=COLORS[i % len(COLORS)],
            label=str(name),
        )
    if len(names) > 1:
        tot = host.groupby("timestamp")["power_draw"].sum().sort_index()
        ax.plot(
            tot.index.to_numpy() / 1000.0 / div, tot.to_numpy(np.float64), color="k", lw=1.4, ls="--", label="all hosts"
        )
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("power draw (W)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=min(4, len(names) + 1))
    fig.suptitle(title or "Host power over time (OpenDC; GPUs + CPU, idle included)")
    return _save(fig, path)


def carbon(
    power: pd.DataFrame,
    path: Path,
    start_epoch_ms: int | None = None,
    carbon_trace: pd.DataFrame | None = None,
    title: str | None = None,
) -> Path:
    """Grid carbon intensity (gCO2/kWh) against the emission rate (gCO2/h)
    over the run, from OpenDC's power-source output. With the carbon trace
    (``timestamp``, ``carbon_intensity``) and the start time, a first panel
    shows the trace over the day(s) around the run with the run shaded."""
    context = carbon_trace is not None and start_epoch_ms is not None and len(carbon_trace) > 0
    fig, axes = _figure(11.0, 8.0 if context else 4.8, 2 if context else 1, 1)
    ax = axes[-1][0]
    if power is None or power.empty or "carbon_intensity" not in power:
        _empty(ax, "no carbon output (the power source has no carbon trace)")
        return _save(fig, path)
    p = power.sort_values("timestamp_s")
    t = p["timestamp_s"].to_numpy(np.float64)
    unit, div = time_unit(float(t.max()) if t.size else 0.0)
    ci = p["carbon_intensity"].to_numpy(np.float64)
    dt = p["interval_s"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(dt > 0, p["carbon_g"].to_numpy(np.float64) / dt * 3600.0, np.nan)
    x = t / div
    ax.step(x, ci, where="post", color=COLORS[2], lw=1.6, label="carbon intensity")
    ax.set_ylabel("grid carbon intensity (gCO2/kWh)", color=COLORS[2])
    lo, hi = np.nanmin(ci), np.nanmax(ci)
    pad = max((hi - lo) * 0.1, 0.05 * max(hi, 1.0))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax2 = ax.twinx()
    ax2.plot(x, rate, color=COLORS[3], lw=1.0, label="emission rate")
    ax2.set_ylabel("emissions (gCO2/h)", color=COLORS[3])
    ax2.set_ylim(bottom=0)
    total = float(np.nansum(p["carbon_g"].to_numpy(np.float64)))
    ax.grid(alpha=0.3)
    xl = f"simulated time ({unit})"
    if start_epoch_ms is not None:
        start = pd.Timestamp(int(start_epoch_ms), unit="ms")
        xl += f" from {start:%Y-%m-%d %H:%M} UTC"
    ax.set_xlabel(xl)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    ax.set_title("During the run", fontsize=10)
    if context:
        top = axes[0][0]
        start = pd.Timestamp(int(start_epoch_ms), unit="ms")
        end = start + pd.Timedelta(seconds=float(t.max()) if t.size else 0.0)
        ct = carbon_trace.copy()
        ct["timestamp"] = pd.to_datetime(ct["timestamp"])
        if getattr(ct["timestamp"].dt, "tz", None) is not None:
            ct["timestamp"] = ct["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        lo_t = max(ct["timestamp"].min(), start.floor("D") - pd.Timedelta(hours=0))
        hi_t = min(ct["timestamp"].max(), max(end.ceil("D"), lo_t + pd.Timedelta(days=1)))
        w = ct[(ct["timestamp"] >= lo_t) & (ct["timestamp"] <= hi_t)]
        if len(w):
            hours = (w["timestamp"] - lo_t).dt.total_seconds().to_numpy() / 3600.0
            top.step(hours, w["carbon_intensity"].to_numpy(np.float64), where="post", color=COLORS[2], lw=1.5)
            s_h = (start - lo_t).total_seconds() / 3600.0
            e_h = max((end - lo_t).total_seconds() / 3600.0, s_h + 0.05)
            top.axvspan(s_h, e_h, color=COLORS[3], alpha=0.25, label="simulated run")
            top.set_xlabel(f"hours from {lo_t:%Y-%m-%d %H:%M} UTC")
            top.set_ylabel("carbon intensity (gCO2/kWh)")
            top.set_ylim(bottom=0)
            top.grid(alpha=0.3)
            top.legend(fontsize=8, loc="lower right")
            top.set_title("Grid carbon intensity around the run (the power source's trace)", fontsize=10)
        else:
            _empty(top, "carbon trace does not cover the run")
    fig.suptitle(title or f"Carbon intensity vs emissions (total {total:.4g} gCO2)")
    fig.tight_layout()
    return _save(fig, path)


def energy_breakdown(sustainability: Mapping[str, Any], path: Path, title: str | None = None) -> Path:
    """Energy per host split into GPU dynamic, GPU idle, CPU dynamic and CPU
    idle (Wh), from the sustainability summary's per-host/per-GPU records."""
    fig, axes = _figure(10.0, 1.6 + 0.55 * max(2, len(sustainability.get("per_host") or []) + 1))
    ax = axes[0][0]
    hosts = sustainability.get("per_host") or []
    if not hosts:
        _empty(ax, "no per-host energy")
        return _save(fig, path)
    gpu_idle_by_host: dict[str, float] = {}
    for g in sustainability.get("per_gpu") or []:
        gpu_idle_by_host[g["host_name"]] = gpu_idle_by_host.get(g["host_name"], 0.0) + (g.get("idle_energy_wh") or 0.0)
    rows = []
    for h in hosts:
        gi = gpu_idle_by_host.get(h["host_name"], 0.0)
        idle = h.get("idle_energy_wh")
        gd = max(0.0, (h.get("gpu_energy_wh") or 0.0) - gi)
        if idle is None:
            rows.append((h["host_name"], gd, gi, h.get("cpu_energy_wh") or 0.0, 0.0))
        else:
            ci = max(0.0, idle - gi)
            cd = max(0.0, (h.get("cpu_energy_wh") or 0.0) - ci)
            rows.append((h["host_name"], gd, gi, cd, ci))
    if len(rows) > 1:
        rows.append(("all hosts", *[sum(r[k] for r in rows) for k in range(1, 5)]))
    labels = ["GPU dynamic", "GPU idle", "CPU dynamic", "CPU idle"]
    colors = [COLORS[0], "#9ecae1", COLORS[1], "#fdd0a2"]
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for k in range(4):
        vals = np.array([r[k + 1] for r in rows])
        ax.barh(y, vals, left=left, color=colors[k], label=labels[k], height=0.6)
        left += vals
    for yi, tot in zip(y, left, strict=True):
        ax.text(tot, yi, f" {tot:.4g} Wh", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows])
    ax.set_xlabel("energy (Wh)")
    ax.set_xlim(0, left.max() * 1.18 if left.max() > 0 else 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=4, bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title or f"Energy breakdown (total {sustainability.get('energy_wh', 0):.4g} Wh)", y=1.06)
    return _save(fig, path)


def cache_hit_ratio(requests: pd.DataFrame, path: Path, bins: int = 60, title: str | None = None) -> Path:
    """Prefix-cache hit ratio over time: cached prompt tokens / prompt tokens
    of the requests arriving in each bin, with the overall ratio."""
    fig, axes = _figure(11.0, 4.2)
    ax = axes[0][0]
    if requests.empty:
        _empty(ax, "no requests")
        return _save(fig, path)
    t = requests["arrival_s"].to_numpy(np.float64)
    cached = requests["cached_tokens"].to_numpy(np.float64)
    prompt = requests["num_input_tokens"].to_numpy(np.float64)
    t_end = float(t.max()) if t.size else 0.0
    unit, div = time_unit(t_end)
    edges = np.linspace(0.0, max(t_end, 1e-9), bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    c = np.bincount(idx, weights=cached, minlength=bins)
    p = np.bincount(idx, weights=prompt, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(p > 0, c / p, np.nan)
    overall = float(cached.sum() / prompt.sum()) if prompt.sum() > 0 else 0.0
    ax.stairs(ratio, edges / div, baseline=None, color=COLORS[4], lw=1.5, label="per bin")
    ax.set_xlim(0, edges[-1] / div)
    ax.axhline(overall, color="0.3", ls="--", lw=1, label=f"overall {overall:.1%}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"arrival time ({unit})")
    ax.set_ylabel("prefix-cache hit ratio\n(cached / prompt tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if cached.sum() == 0:
        ax.text(
            0.5,
            0.5,
            "no prompt tokens were served from the prefix cache",
            transform=ax.transAxes,
            ha="center",
            color="0.4",
        )
    fig.suptitle(title or f"Prefix-cache hit ratio over time ({t_end / bins:.3g} s bins by arrival)")
    return _save(fig, path)


# --------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------


def _fmt_label(s: str, width: int = 28) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def sweep_tradeoff(
    table: pd.DataFrame,
    path: Path,
    x: str = "ttft_p99_s",
    y: str = "wh_per_mtoken",
    xlabel: str = "p99 TTFT (s)",
    ylabel: str = "energy per million tokens (Wh/Mtoken)",
    title: str | None = None,
) -> Path:
    """One point per configuration: ``y`` against ``x``; the legend names the
    configurations (lower left is better for both)."""
    fig, axes = _figure(11.0, 6.0)
    ax = axes[0][0]
    t = table[table["status"] == "done"] if "status" in table else table
    if x in t and y in t:
        xs_all = pd.to_numeric(t[x], errors="coerce")
        ys_all = pd.to_numeric(t[y], errors="coerce")
        t = t[np.isfinite(xs_all) & np.isfinite(ys_all)]
    else:
        t = t.iloc[0:0]
    if t.empty:
        _empty(ax, f"no finished runs with {x} and {y}")
        return _save(fig, path)
    xs, ys = t[x].to_numpy(np.float64), t[y].to_numpy(np.float64)
    for i, (xi, yi, lab) in enumerate(zip(xs, ys, t["label"], strict=True)):
        ax.scatter(
            [xi],
            [yi],
            s=70,
            color=COLORS[i % len(COLORS)],
            marker=MARKERS[(i // len(COLORS)) % len(MARKERS)],
            zorder=3,
            label=_fmt_label(str(lab), 60),
            edgecolor="k",
            linewidth=0.5,
        )
    if xs.min() > 0 and xs.max() / xs.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        title="configuration",
        title_fontsize=8,
    )
    fig.suptitle(title or f"{ylabel} vs {xlabel} (lower left is better)")
    return _save(fig, path)


def sweep_bars(table: pd.DataFrame, metrics: Sequence[tuple[str, str]], path: Path, title: str | None = None) -> Path:
    """Horizontal bars of several metrics (column, axis label) per configuration."""
    t = table[table["status"] == "done"] if "status" in table else table
    n = max(1, len(t))
    fig, axes = _figure(4.2 * len(metrics), 1.2 + 0.35 * n, 1, len(metrics), sharey=True)
    y = np.arange(n)[::-1]
    for k, (ax, (col, label)) in enumerate(zip(axes[0], metrics, strict=True)):
        vals = pd.to_numeric(t[col], errors="coerce").to_numpy(np.float64) if col in t and len(t) else np.zeros(0)
        if vals.size == 0 or not np.isfinite(vals).any():
            _empty(ax, f"no {col}")
            ax.set_title(label, fontsize=9)
            continue
        ax.barh(y, np.nan_to_num(vals), color=COLORS[k % len(COLORS)], height=0.6)
        for yi, v in zip(y, vals, strict=True):
            if math.isfinite(v):
                ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, np.nanmax(vals) * 1.3 if np.nanmax(vals) > 0 else 1)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([_fmt_label(str(s), 48) for s in t["label"]] if len(t) else [], fontsize=7)
    fig.suptitle(title or "Comparison of configurations")
    return _save(fig, path)
