"""Per-request energy attribution: the rules, and the static share by residence (pure numpy).

Dynamic energy (GPU power above idle). The power model is linear in the
activity u of cost_model.py, and u x seconds of an iteration is the sum of
per-work terms (FLOPs, weight bytes, KV bytes, each weighted as in the
activity). So an iteration's busy time (u x s x tp, GPU-seconds) is split
over the sequences in it by their share of those terms:

* weight bytes: the pass reads the weights once whatever the batch, and
  every sequence in it needs that read equally: split equally *per sequence*
  (per token would put a whole pass's weight read on one prompt chunk that
  rides along with 100 decodes, which the decodes would have paid alone);
* linear-layer FLOPs: per token the sequence computes (prefill chunk tokens,
  one per decode);
* attention FLOPs: per attended (query, key) pair; KV bytes: per KV token the
  sequence reads and writes (a chunk of n on c cached tokens: n c + n(n+1)/2
  pairs, c + n KV tokens; a decode at context c: c + 1 of each).

The shares are scaled to the iteration's actual busy time (the activity is
capped at 1), so per replica the requests' busy times sum to the timeline's
sum of u x dt x tp exactly (a test). Decode runs are split in closed form
through the decode state's counters (decode_state.py): O(1) per run, no
per-token objects. A request's dynamic energy is its GPU-seconds busy
(``gpu_busy_s`` in requests.parquet) x (max_w - idle_w) of its GPU.

Static energy (GPU idle power; with OpenDC everything else the datacenter
draws: host CPUs, hosts without tasks, the rest of a non-linear GPU curve):
at each instant it is shared equally by the requests in flight then (arrival
to last token, on any replica): the fleet is up to serve them. Time with no
request in flight is spread over all requests of the run in proportion to
their residence (finish - arrival). With that, the static shares sum to the
static energy exactly. Rejected and unfinished requests get none.
"""

from __future__ import annotations

import numpy as np


def residence_shares(
    arrival: np.ndarray,
    finish: np.ndarray,
    span_s: float,
    ci_times: np.ndarray | None = None,
    ci_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each request's share of static power over [0, span_s] and the carbon intensity it sees.

    ``arrival``/``finish`` (s; NaN finish: the request gets nothing). Returns
    ``w`` (s: static energy_i = static power x w_i; the w sum to span_s when
    some request finished), ``w_ci`` (s x gCO2/kWh, the same weights times the
    intensity at each instant) and ``ci_res`` (mean intensity over the
    request's residence, for its dynamic energy). ``ci_times``/``ci_values``:
    a piecewise-constant intensity, value k holding from ci_times[k] (s) to
    the next; none: w_ci and ci_res are NaN.
    """
    n = arrival.size
    ok = np.isfinite(finish) & np.isfinite(arrival)
    a = np.clip(np.where(ok, arrival, 0.0), 0.0, span_s)
    f = np.clip(np.where(ok, finish, 0.0), 0.0, span_s)
    f = np.maximum(f, a)
    has_ci = ci_times is not None and ci_values is not None and len(ci_times) > 0
    pts = [np.array([0.0, span_s]), a[ok], f[ok]]
    if has_ci:
        ct = np.asarray(ci_times, dtype=np.float64)
        pts.append(ct[(ct > 0.0) & (ct < span_s)])
    bp = np.unique(np.concatenate(pts))
    dt = np.diff(bp)
    left = bp[:-1]
    # requests in flight on each elementary interval [bp_k, bp_k+1)
    n_in = np.searchsorted(np.sort(a[ok]), left, side="right") - np.searchsorted(np.sort(f[ok]), left, side="right")
    if has_ci:
        ct = np.asarray(ci_times, dtype=np.float64)
        cv = np.asarray(ci_values, dtype=np.float64)
        k = np.clip(np.searchsorted(ct, left, side="right") - 1, 0, cv.size - 1)
        ci = cv[k]
    else:
        ci = np.full(left.size, np.nan)
    busy = n_in > 0
    inv = np.where(busy, dt / np.maximum(n_in, 1), 0.0)
    c1 = np.concatenate([[0.0], np.cumsum(inv)])
    c2 = np.concatenate([[0.0], np.cumsum(inv * ci)])
    c3 = np.concatenate([[0.0], np.cumsum(dt * ci)])
    gap = float(np.sum(dt[~busy]))
    gap_ci = float(np.sum((dt * ci)[~busy]))
    ia = np.searchsorted(bp, a)
    iz = np.searchsorted(bp, f)
    res = np.where(ok, f - a, 0.0)
    total_res = float(res.sum())
    spread = res / total_res if total_res > 0 else np.zeros(n)
    w = np.where(ok, c1[iz] - c1[ia], 0.0) + gap * spread
    w_ci = np.where(ok, c2[iz] - c2[ia], 0.0) + gap_ci * spread
    with np.errstate(invalid="ignore", divide="ignore"):
        at_a = ci[np.clip(ia, 0, max(ci.size - 1, 0))] if ci.size else np.nan
        ci_res = np.where(res > 0, (c3[iz] - c3[ia]) / res, at_a)
    ci_res = np.where(ok, ci_res, np.nan)
    if not has_ci:
        w_ci = np.full(n, np.nan)
        ci_res = np.full(n, np.nan)
    return w, w_ci, ci_res


def request_energy(
    gpu_busy_s: np.ndarray,
    dyn_w: np.ndarray,
    arrival: np.ndarray,
    finish: np.ndarray,
    static_j: float,
    span_s: float,
    ci_times: np.ndarray | None = None,
    ci_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(energy_j, carbon_g, dynamic_j) per request under the module's rules.

    ``dyn_w``: per request, max_w - idle_w of one GPU of its replica;
    ``static_j``: the static energy of the run over [0, span_s]. Carbon:
    the dynamic part at the mean intensity over the request's residence, the
    static part at the intensity of each instant it was shared (NaN without
    an intensity)."""
    dyn = np.nan_to_num(gpu_busy_s) * dyn_w
    w, w_ci, ci_res = residence_shares(arrival, finish, span_s, ci_times, ci_values)
    p_static = static_j / span_s if span_s > 0 else 0.0
    energy = dyn + p_static * w
    carbon = (dyn * ci_res + p_static * w_ci) / 3.6e6
    return energy, carbon, dyn
