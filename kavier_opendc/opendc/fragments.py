"""The export's algorithms, pure functions on arrays: timeline segments -> OpenDC fragments.

How one replica's piecewise-constant utilisation becomes fragments (merged
within a tolerance, merged up to a minimum length, or binned at fixed
intervals), with durations rounded on cumulative millisecond boundaries; and,
for the per-request export, how a replica's GPU time is shared among its
requests. No file is read or written here (``opendc/export.py`` does that).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kavier_opendc.base.errors import KavierInputError

# --------------------------------------------------------------------------
# Pure functions on one replica's timeline
# --------------------------------------------------------------------------


def to_ms(seconds) -> np.ndarray:
    """Seconds -> integer milliseconds, rounding half up (deterministic)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) * 1000.0 + 0.5).astype(np.int64)


def merge_adaptive(
    durations_ms: np.ndarray, util: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Greedy merge of adjacent pieces while max - min utilisation <= tolerance.

    ``durations_ms`` (int64) and ``util`` describe consecutive pieces; pieces
    of zero duration are dropped. Returns (durations_ms, duration-weighted
    mean utilisation, largest |piece utilisation - its fragment's|).
    """
    d = np.asarray(durations_ms, dtype=np.int64)
    u = np.asarray(util, dtype=np.float64)
    keep = d > 0
    d, u = d[keep], u[keep]
    if d.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), 0.0
    tol = float(tolerance) + 1e-12
    starts = [0]
    lo = hi = u[0]
    for i in range(1, u.size):
        x = u[i]
        nlo, nhi = (x if x < lo else lo), (x if x > hi else hi)
        if nhi - nlo <= tol:
            lo, hi = nlo, nhi
        else:
            starts.append(i)
            lo = hi = x
    idx = np.asarray(starts, dtype=np.int64)
    dur = np.add.reduceat(d, idx)
    energy = np.add.reduceat(u * d, idx)
    mean = energy / dur
    group = np.repeat(np.arange(idx.size), np.diff(np.append(idx, u.size)))
    err = float(np.max(np.abs(u - mean[group]))) if u.size else 0.0
    return dur.astype(np.int64), mean, err


def merge_short(durations_ms: np.ndarray, util: np.ndarray, min_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of consecutive pieces shorter than ``min_ms`` into pieces of at least ``min_ms``.

    Pieces already ``min_ms`` long stay as they are; short pieces between them are grouped greedily
    (a group closes once it reaches ``min_ms``, or when a long piece follows). Utilisation is the
    duration-weighted mean, so the utilisation integral (and linear-model energy) is unchanged.
    """
    d = np.asarray(durations_ms, dtype=np.int64)
    u = np.asarray(util, dtype=np.float64)
    if min_ms <= 1 or d.size < 2:
        return d, u
    starts = []
    acc = 0  # duration of the open group of short pieces (0: none open)
    for i, x in enumerate(d.tolist()):
        if x >= min_ms:
            starts.append(i)  # a long piece stands alone (closing any open group)
            acc = 0
        elif acc == 0:
            starts.append(i)  # a short piece opens a group
            acc = x
        else:
            acc += x
        if acc >= min_ms:
            acc = 0
        elif acc and i + 1 < d.size and d[i + 1] >= min_ms:
            acc = 0
    idx = np.asarray(starts, dtype=np.int64)
    dur = np.add.reduceat(d, idx)
    return dur.astype(np.int64), np.add.reduceat(u * d, idx) / dur


def interval_bins(bounds_s: np.ndarray, util: np.ndarray, interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed bins of ``interval_s`` over [bounds_s[0], bounds_s[-1]] with the
    time-weighted mean utilisation of each bin (the last bin may be shorter).
    Returns (durations_ms, mean utilisation); zero-millisecond bins dropped."""
    b = np.asarray(bounds_s, dtype=np.float64)
    u = np.asarray(util, dtype=np.float64)
    t0, t1 = float(b[0]), float(b[-1])
    if t1 <= t0:
        return np.zeros(0, np.int64), np.zeros(0)
    n = max(1, int(math.ceil((t1 - t0) / interval_s - 1e-9)))
    edges = t0 + np.arange(n + 1, dtype=np.float64) * interval_s
    edges[-1] = t1
    edges = edges[edges <= t1]
    if edges[-1] < t1:
        edges = np.append(edges, t1)
    cum = np.concatenate([[0.0], np.cumsum(u * np.diff(b))])
    at = np.interp(edges, b, cum)
    width = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(width > 0, np.diff(at) / width, 0.0)
    ms = to_ms(edges)
    dur = np.diff(ms)
    keep = dur > 0
    return dur[keep].astype(np.int64), np.clip(mean[keep], 0.0, 1.0)


def replica_pieces(
    seg: pd.DataFrame, end_s: float, *, source: str = "timeline.parquet", replica: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A replica's segments as (bounds_s [n+1], util [n]) covering [0, end_s]:
    gaps (and time after the last segment) are idle (utilisation 0)."""
    s = seg["start_s"].to_numpy(np.float64)
    e = seg["end_s"].to_numpy(np.float64)
    u = seg["gpu_utilization"].to_numpy(np.float64)
    order = np.argsort(s, kind="stable")
    s, e, u = s[order], e[order], u[order]
    bounds: list[float] = [0.0]
    utils: list[float] = []
    t = 0.0
    eps = 1e-9
    for k in range(s.size):
        a, z = s[k], min(e[k], end_s)
        if a < t - eps:
            raise KavierInputError(
                f"segment [{a}, {e[k]}] overlaps the previous one (which ends at {t})",
                source=source,
                location=f"replica {replica}, columns start_s/end_s",
                expected="non-overlapping segments sorted by start_s",
            )
        if a >= end_s:
            break
        if a > t + eps:
            bounds.append(a)
            utils.append(0.0)
        if z > max(a, t):
            bounds.append(z)
            utils.append(u[k])
            t = z
    if t < end_s:
        bounds.append(end_s)
        utils.append(0.0)
    return np.asarray(bounds), np.asarray(utils)


def linear_gpu_energy_j(durations_ms, util, gpus: int, idle_w: float, max_w: float) -> float:
    """GPU energy (J) of fragments under a linear power model."""
    d = np.asarray(durations_ms, dtype=np.float64) / 1000.0
    u = np.asarray(util, dtype=np.float64)
    return float(np.sum((idle_w + (max_w - idle_w) * u) * d) * gpus)


#: OpenDC's power curves that are plain functions of the utilisation: power = idle + (max - idle) * f(u)
PLAIN_CURVES = {"linear": lambda u: u, "square": np.square, "cubic": lambda u: u**3, "sqrt": np.sqrt}


def curve_gpu_energy_j(durations_ms, util, gpus: int, model: str, idle_w: float, max_w: float) -> float:
    """GPU energy (J) of pieces under one of OpenDC's :data:`PLAIN_CURVES`."""
    d = np.asarray(durations_ms, dtype=np.float64) / 1000.0
    u = np.clip(np.asarray(util, dtype=np.float64), 0.0, 1.0)
    return float(np.sum((idle_w + (max_w - idle_w) * PLAIN_CURVES[model](u)) * d) * gpus)


def attribute_gpu_time(bounds_s, util, start_s, end_s, weight) -> tuple[np.ndarray, np.ndarray, float]:
    """Share one replica's GPU time among its requests in proportion to their tokens.

    ``bounds_s``/``util`` are the replica's piecewise-constant utilisation
    (:func:`replica_pieces`); request ``i`` is in flight during
    [``start_s[i]``, ``end_s[i]``) with ``weight[i]`` tokens. At every
    instant the replica's utilisation is divided among the requests then in
    flight in proportion to their weights, so request ``i`` gets::

        busy[i]  = integral over its lifetime of u(t) * w_i / W(t) dt
        share[i] = integral over its lifetime of        w_i / W(t) dt

    (W(t): summed weight of the requests in flight at t; in seconds of one
    GPU of the replica). Returns (busy, share, unattributed), where
    ``unattributed`` is the integral of u(t) over times with no request in
    flight. sum(busy) + unattributed equals the integral of u(t): the
    replica's busy GPU time is conserved.
    """
    b = np.asarray(bounds_s, dtype=np.float64)
    u = np.asarray(util, dtype=np.float64)
    a = np.clip(np.asarray(start_s, dtype=np.float64), b[0], b[-1])
    z = np.clip(np.asarray(end_s, dtype=np.float64), b[0], b[-1])
    z = np.maximum(z, a)
    w = np.asarray(weight, dtype=np.float64)
    edges = np.unique(np.concatenate([b, a, z]))
    if edges.size < 2:
        return np.zeros(a.size), np.zeros(a.size), 0.0
    mid = 0.5 * (edges[:-1] + edges[1:])
    uj = u[np.clip(np.searchsorted(b, mid, side="right") - 1, 0, u.size - 1)]
    dt = np.diff(edges)
    ia = np.searchsorted(edges, a)
    iz = np.searchsorted(edges, z)
    delta = np.zeros(edges.size)
    np.add.at(delta, ia, w)
    np.add.at(delta, iz, -w)
    W = np.cumsum(delta)[:-1]
    scale = max(float(w.max()) if w.size else 1.0, 1.0)
    active = W > 1e-9 * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        g_busy = np.where(active, uj * dt / np.where(active, W, 1.0), 0.0)
        g_share = np.where(active, dt / np.where(active, W, 1.0), 0.0)
    G = np.concatenate([[0.0], np.cumsum(g_busy)])
    H = np.concatenate([[0.0], np.cumsum(g_share)])
    busy = w * (G[iz] - G[ia])
    share = w * (H[iz] - H[ia])
    unattributed = float(np.sum(uj * dt * ~active))
    return busy, share, unattributed


def peak_concurrency(start_s, end_s) -> int:
    """Most requests in flight at once (half-open lifetimes [start, end))."""
    a = np.asarray(start_s, dtype=np.float64)
    z = np.maximum(np.asarray(end_s, dtype=np.float64), a)
    if a.size == 0:
        return 0
    t = np.concatenate([a, z])
    d = np.concatenate([np.ones(a.size), -np.ones(a.size)])
    live = a < z
    d[: a.size][~live] = 0.0
    d[a.size :][~live] = 0.0
    order = np.lexsort((d, t))  # ends before starts at the same instant
    return max(int(np.max(np.cumsum(d[order]))), 1)
