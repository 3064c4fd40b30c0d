"""Inter-token latency (ITL): the gaps between the chunks of tokens a request streams to its client.

Definition (vLLM v0.6.0 ``benchmarks/backend_request_func.py``: one entry per
received streamed chunk after the first, the time since the previous chunk; the
benchmark pools every request's entries for its mean/median/p99 ITL): a
request's gaps are the times between consecutive deliveries of its tokens, on
the engine's clock (a server's constant client latency shifts every delivery
alike, so the gaps are the same on the client's clock). A token is delivered
when the iteration that samples it ends; under multi-step scheduling
(``scheduler_steps`` N) the tokens of an N-step block are streamed together
when the block ends, so a block is one gap. A decoder that sits out an
iteration (a prompt-only iteration under vLLM v0, SGLang's extend batches) gets
no token then, so its next gap holds the stall. With one token per chunk the
gaps of a request number out - 1 and sum to finish - first token (e2e - TTFT):
their mean is the TPOT. Samples of a prompt (``n`` > 1) pool their gaps.

How it stays O(iterations applied), not O(tokens): the decode state
(decode_state.py) logs one *segment* per advance of the decode counter, an
iteration or a closed-form run of n iterations whose k-th takes a + b k (so
its gaps are an arithmetic sequence), with the number of decoders in it; and
one *stint* per stay of a request among the decoders. A request's gaps are
its stints' segments, except its first gap of each stint, which runs from its
own previous token (the stint's start time). Everything is reduced here with
numpy once the simulation ends: per request the number, sum and maximum of its
gaps; pooled over all requests the exact mean and percentiles of the multiset
(each segment's gaps weighted by its decoders, corrected for each stint's
first gap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: numbers per segment in DecodeState.segs, per stint in DecodeState.stints, per extra gap in DecodeState.extra
SEG, STINT, EXTRA = 4, 4, 2
#: low bits of the sort key that carry a weight (_sorted_weighted)
WBITS = 16
#: values a window of pooled_stats may hold before they are expanded and sorted
WINDOW = 1 << 15


@dataclass
class ItlStats:
    """Per request (indexed by trace row): gaps, their sum and maximum; ``pooled``: stats over all gaps."""

    count: np.ndarray  # int64, gaps of the request (0 when it streamed one chunk or did not finish)
    total: np.ndarray  # sum of the gaps, s
    max: np.ndarray  # largest gap, s (NaN without gaps)
    pooled: dict  # mean/p50/p90/p99/max over every gap of every request (nulls without gaps)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


QUANTILES = (0.5, 0.9, 0.99)
NONE = {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}


def _sorted_weighted(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``v`` sorted, with its (positive) weights alongside."""
    off = 1 << WBITS
    if v.size and v.min() >= 0 and w.max() < off:
        # one int64 key: a non-negative float's bits order as the float does, and the lowest WBITS bits
        # (2^-36 relative at most) carry the weight; np.sort is ~10x argsort
        mask = np.int64(off - 1)
        key = np.sort((v.view(np.int64) & ~mask) | w)
        return (key & ~mask).view(np.float64), key & mask
    order = np.argsort(v, kind="stable")
    return v[order], w[order]


def _select(v: np.ndarray, cum: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Values of 0-based ``ranks`` in sorted ``v`` whose weights' cumulative sum is ``cum``."""
    return v[np.minimum(np.searchsorted(cum, ranks + 1, side="left"), v.size - 1)]


def expand(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values a + b j for j = lo..hi of each piece, and the piece of each (pieces with hi < lo give none)."""
    cnt = np.maximum(hi - lo + 1, 0)
    ends = np.cumsum(cnt)
    piece = np.repeat(np.arange(cnt.size), cnt)
    j = np.arange(int(ends[-1]) if cnt.size else 0, dtype=np.float64)
    j += np.repeat((lo - ends + cnt).astype(np.float64), cnt)
    return a[piece] + b[piece] * j, piece


def pooled_stats(sv: np.ndarray, sw: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray, w: np.ndarray) -> dict:
    """mean/p50/p90/p99/max of a multiset, as np.percentile gives them (linear interpolation) on it expanded.

    The multiset: each value ``sv`` ``sw`` times, and for each piece k the values a + b j, j = 2..m, ``w``
    times each (b > 0: a run's gaps). Exact without expanding every run: with each piece at its midpoint the
    order statistics move by at most the largest half-spread ``h``; the true ones lie within h of those, so
    only the values in those windows are expanded and sorted (counting those below in closed form).
    """
    keep = sw > 0
    sv, sw = sv[keep], sw[keep]
    keep = (m >= 2) & (w > 0)
    a, b, m, w = a[keep], b[keep], m[keep], w[keep]
    cnt = w * (m - 1)
    total = int(sw.sum() + cnt.sum())
    if total <= 0:
        return dict(NONE)
    fsw = sw.astype(np.float64)
    # numpy's pairwise sums, not BLAS dot products: the same bits whatever the machine's BLAS threads
    runs = w.astype(np.float64) * ((m - 1) * a + b * ((m * (m + 1)) / 2.0 - 1.0))
    mean = float((np.sum(sv * fsw) + np.sum(runs)) / total)
    top = max(float(sv.max()) if sv.size else -np.inf, float((a + b * m).max()) if a.size else -np.inf)
    h = (total - 1) * np.asarray(QUANTILES)
    lo = np.floor(h).astype(np.int64)
    ranks = np.stack((lo, np.minimum(lo + 1, total - 1)), axis=1).ravel()  # each quantile's two neighbours
    # step 1: the order statistics with each piece at its midpoint, by bisection on the value (two sorted
    # lists and their cumulative weights: O(log) a count)
    s_v, s_w = _sorted_weighted(sv, sw)
    s_cum = np.cumsum(s_w)
    mid = a + b * ((m + 2) / 2.0)
    mo = np.argsort(mid)
    m_v, m_cum = mid[mo], np.cumsum(cnt[mo])

    def approx_count(v: float) -> int:  # values <= v with each piece at its midpoint
        i, k = int(np.searchsorted(s_v, v, side="right")), int(np.searchsorted(m_v, v, side="right"))
        return (int(s_cum[i - 1]) if i else 0) + (int(m_cum[k - 1]) if k else 0)

    v_lo = min(float(s_v[0]) if s_v.size else np.inf, float(m_v[0]) if m_v.size else np.inf)
    v_hi = max(float(s_v[-1]) if s_v.size else -np.inf, float(m_v[-1]) if m_v.size else -np.inf)
    approx = np.empty(ranks.size)
    for i, r in enumerate(ranks):
        lo_v, hi_v = v_lo, v_hi
        for _ in range(200):  # smallest v counting more than r values
            mv = (lo_v + hi_v) / 2.0
            if not lo_v < mv < hi_v:
                break
            if approx_count(mv) > r:
                hi_v = mv
            else:
                lo_v = mv
        approx[i] = hi_v
    half = float((b * (m - 2)).max()) / 2.0 if b.size else 0.0
    margin = half * (1 + 1e-9) + 1e-12 * max(abs(v_lo), abs(v_hi))
    # step 2: exact. Halve each window (counting the values below its middle in closed form) until few
    # values are left in it, then expand and sort those only. Pieces wholly below or above a window leave
    # it for good (the window only shrinks): counted once, they drop out of the passes.
    bf = np.where(b > 0, b, 1.0)
    out = np.empty(ranks.size)
    wv = cum = np.zeros(0)
    below = 0
    for i, r in enumerate(ranks):
        local = int(r) - below
        if 0 <= local < (int(cum[-1]) if cum.size else 0):  # in the window of the previous rank
            out[i] = _select(wv, cum, np.array([local]))[0]
            continue
        lo_v, hi_v = approx[i] - margin, approx[i] + margin
        pa, pb, pbf, pm, pw = a, b, bf, m, w
        fixed = 0  # values of the pieces dropped for lying wholly below the window
        for _ in range(64):
            j0 = np.clip(np.ceil((lo_v - pa) / pbf), 2, pm + 1).astype(np.int64)
            j1 = np.clip(np.floor((hi_v - pa) / pbf), j0 - 1, pm).astype(np.int64)
            gone_below = j0 > pm
            keep = ~gone_below & ~((j0 == 2) & (j1 < 2))
            if not keep.all():
                fixed += int(np.dot(pw[gone_below], pm[gone_below] - 1))
                pa, pb, pbf, pm, pw, j0, j1 = (x[keep] for x in (pa, pb, pbf, pm, pw, j0, j1))
            i0 = int(np.searchsorted(s_v, lo_v, side="left"))
            i1 = int(np.searchsorted(s_v, hi_v, side="right"))
            if int((j1 - j0 + 1).sum()) + i1 - i0 <= WINDOW:
                break
            mid_v = (lo_v + hi_v) / 2.0
            jm = np.clip(np.ceil((mid_v - pa) / pbf), 2, pm + 1).astype(np.int64)
            im = int(np.searchsorted(s_v, mid_v, side="left"))
            if (int(s_cum[im - 1]) if im else 0) + fixed + int(np.dot(pw, jm - 2)) <= r:
                lo_v = mid_v
            else:
                hi_v = mid_v
        below = (int(s_cum[i0 - 1]) if i0 else 0) + fixed + int(np.dot(pw, j0 - 2))
        ev, piece = expand(pa, pb, j0, j1)
        wv, ww = _sorted_weighted(np.concatenate((s_v[i0:i1], ev)), np.concatenate((s_w[i0:i1], pw[piece])))
        local = int(r) - below
        cum = np.cumsum(ww)
        if 0 <= local < (int(cum[-1]) if cum.size else 0):
            out[i] = _select(wv, cum, np.array([local]))[0]
        else:  # the bound failed (cannot by the argument above): expand everything
            return pooled_stats_expanded(sv, sw, a, b, m, w)
    p = out[0::2] + (h - lo) * (out[1::2] - out[0::2])
    return {"mean": mean, "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "max": top}


def pooled_stats_expanded(sv, sw, a, b, m, w) -> dict:
    """pooled_stats by expanding every piece (the reference: O(values))."""
    ev, piece = expand(a, b, np.full(a.size, 2, dtype=np.int64), m.astype(np.int64))
    v = np.repeat(np.concatenate((sv, ev)), np.concatenate((sw, w[piece])).astype(np.int64))
    if not v.size:
        return dict(NONE)
    p = np.percentile(v, [100 * q for q in QUANTILES])
    return {"mean": float(v.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "max": float(v.max())}


def collect(replicas, n: int) -> ItlStats:
    """The gaps of the ``n`` requests from the replicas' decode-state logs (see the module doc)."""
    count = np.zeros(n, dtype=np.int64)
    total = np.zeros(n)
    mx = np.full(n, -np.inf)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("sv", "sw", "a", "b", "m", "w")}
    for rep in replicas:
        seg, st, ex = rep.dec.logs()
        seg, st, ex = seg.reshape(-1, SEG), st.reshape(-1, STINT), ex.reshape(-1, EXTRA)
        if ex.size:
            i = ex[:, 0].astype(np.int64)
            count += np.bincount(i, minlength=n)
            total += np.bincount(i, ex[:, 1], minlength=n)
            np.maximum.at(mx, i, ex[:, 1])
            parts["sv"].append(ex[:, 1])
            parts["sw"].append(np.ones(len(ex), dtype=np.int64))
        if not seg.size:
            continue
        first, a, b, m = (seg[:, k] for k in range(SEG))
        m = m.astype(np.int64)
        end = first + a * (m - 1) + b * (m * (m + 1) / 2.0 - 1.0)  # time of the segment's last delivery
        f = first - np.concatenate(([0.0], end[:-1]))  # the first gap, for a decoder in the segment before
        # decoders in each segment: the stints covering it (every decoder leaves by the end, in a stint)
        s0 = (st[:, 1] // SEG).astype(np.int64)
        s1 = (st[:, 2] // SEG).astype(np.int64)
        p = np.cumsum(np.bincount(s0, minlength=m.size + 1) - np.bincount(s1, minlength=m.size + 1))[: m.size]
        rmax = np.where(m >= 2, a + b * m, -np.inf)  # gaps after the first: a + b j, j = 2..m (b >= 0)
        pmax = np.maximum(f, rmax)
        pf = p
        if st.size:
            idx = st[:, 0].astype(np.int64)
            last = st[:, 3]
            own = first[s0] - last  # the stint's first gap, from the request's own previous token
            cm = np.concatenate(([0], np.cumsum(m)))
            count += np.bincount(idx, cm[s1] - cm[s0], minlength=n).astype(np.int64)
            total += np.bincount(idx, end[s1 - 1] - last, minlength=n)
            # the largest gap of segments s0+1..s1-1: max over [l, r) by reduceat on the interleaved bounds
            # (-inf appended so that r may be the end; an empty range gives the sentinel)
            ext = np.append(pmax, -np.inf)
            lo = s0 + 1
            bounds = np.empty(2 * lo.size, dtype=np.int64)
            bounds[0::2] = np.minimum(lo, s1)
            bounds[1::2] = s1
            inner = np.where(lo < s1, np.maximum.reduceat(ext, bounds)[0::2], -np.inf)
            np.maximum.at(mx, idx, np.maximum(np.maximum(own, rmax[s0]), inner))
            # pooled: a stint's first gap replaces, for its request, the segment's gap from T
            pf = p - np.bincount(s0, minlength=p.size)
            parts["sv"].append(own)
            parts["sw"].append(np.ones(own.size, dtype=np.int64))
        # pooled: every segment's gaps, once per decoder in it (b = 0 runs are single values too)
        flat = (m >= 2) & (b <= 0)
        parts["sv"] += [f, a[flat]]
        parts["sw"] += [pf, p[flat] * (m[flat] - 1)]
        run = (m >= 2) & (b > 0)
        parts["a"].append(a[run])
        parts["b"].append(b[run])
        parts["m"].append(m[run])
        parts["w"].append(p[run])
    cat = {
        k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64 if k in ("sw", "m", "w") else np.float64)
        for k, v in parts.items()
    }
    pooled = pooled_stats(
        cat["sv"], cat["sw"].astype(np.int64), cat["a"], cat["b"], cat["m"].astype(np.int64), cat["w"].astype(np.int64)
    )
    mx[count == 0] = np.nan
    return ItlStats(count, total, mx, pooled)


def itl_of(result) -> ItlStats:
    """The ITL statistics of a simulation result (computed once, kept in ``result.extra``)."""
    got = result.extra.get("itl")
    if got is None:
        got = result.extra["itl"] = collect(result.replicas, len(result.trace))
    return got
