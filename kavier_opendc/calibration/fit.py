"""Fit a GPU's efficiency profile to observations, and measure how well it predicts them.

Each kind of measurement fits what it measures:

* operator times (one layer's GEMMs vs tokens) -> ``gemm_mbu``, ``gemm_mfu``,
  ``gemm_knee``: for a fixed knee p the smooth roofline
  t^p = (W / BW)^p mbu^-p + (F / PEAK)^p mfu^-p is linear in (mbu^-p, mfu^-p),
  so each p is a weighted linear least-squares problem and p is searched;
* all-reduce times -> one monotone curve per group size (a larger message
  never takes less time), the non-decreasing curve with the least mean
  relative error over every measured time;
* end-to-end times (single requests, step times, serving TPOT) -> attention
  efficiencies and per-framework overheads: with the GEMM and all-reduce
  terms known, an end-to-end time is linear in (1/attn_prefill_eff,
  1/attn_decode_mbu, overhead_fixed_s, overhead_per_seq_s), solved by
  bounded linear least squares on relative errors, every source weighted
  equally. A GPU without operator times gets its GEMM efficiencies from the
  end-to-end times too (Nelder-Mead over mbu and mfu around that linear fit).

Rows that are physically impossible (faster than the datasheet peaks allow at
100 % efficiency) are left out and listed in ``rejected``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from kavier_opendc.calibration.layouts import KERNEL_KINDS, Observation
from kavier_opendc.specs.catalog import Catalog, GPUSpec, default_catalog
from kavier_opendc.specs.iteration_time import IterationTimer
from kavier_opendc.specs.profiles import ASSUMED_OVERHEAD, AllReduceCurve, GPUProfile

E2E_KINDS = ("prefill", "decode", "tpot", "batch")
#: single kernels fit what they time; the short ones carry launch and tile costs the cost model has not
KERNEL_PREFILL_MIN_TOKENS = 2048
KERNEL_GEMM_MIN_S = 20e-6
KERNEL_DECODE_MIN_BYTES = 2**30  # decode attention reaches its bandwidth only past about 1 GiB of KV
DEFAULT_FRAMEWORK = "default"
#: the framework's CPU time per step: a GPU's own (fitted or assumed), never another GPU's harness's
OVERHEAD_FIELDS = ("overhead_fixed_s", "overhead_per_seq_s")
NOT_IDENTIFIABLE = "not identifiable from these files"
#: every number of a profile (profiles.NUMERIC_FIELDS and the all-reduce curves), in the order their
#: provenance is written
UNFITTED_ORDER = (
    "gemm_mbu",
    "gemm_mfu",
    "gemm_knee",
    "layer_fixed_s",
    "act_passes",
    "attn_prefill_eff",
    "attn_decode_mbu",
    "attn_fixed_s",
    "overhead_fixed_s",
    "overhead_per_seq_s",
    "allreduce",
    "custom_allreduce_latency_s",
    "power_compute_weight",
    "power_memory_weight",
    "power_kv_weight",
)


@dataclass
class Overheads:
    """Software time of one framework: per iteration, per sequence, per token and per token² in the batch.

    vLLM's overhead does not grow with the tokens (its kernels are what the
    profile times), so the default framework's ``per_token_s`` and
    ``per_token_sq_s`` stay 0. Other harnesses (Splitwise's, unnamed) prefill
    well below the GEMM speed that Vidur measures on the same GPUs, and their
    time per prompt token grows with the tokens in the iteration (at TP 4-8,
    about twice as much per token beyond 2,048 tokens), equally for one long
    prompt and for many short ones: an attention or kernel cost would depend
    on each prompt's own length, so that extra time is the harness's.
    """

    fixed_s: float = 0.0
    per_seq_s: float = 0.0
    per_token_s: float = 0.0
    per_token_sq_s: float = 0.0


@dataclass
class Fit:
    """A fitted profile, the overheads of each framework seen, and what was left out."""

    profile: GPUProfile
    frameworks: dict[str, Overheads] = field(default_factory=dict)
    rejected: list[tuple[Observation, str]] = field(default_factory=list)


# ------------------------------------------------------------- prediction --


def predict(obs: Observation, profile: GPUProfile, gpu: GPUSpec, overheads: Overheads | None = None) -> float:
    """The profile's prediction (s) of one observation."""
    if obs.kind == "gemm":
        return (
            profile.gemm_time(obs.weight_bytes, obs.flops, gpu.peak_flops, gpu.mem_bandwidth)
            + profile.layer_fixed_s
            + obs.tokens * profile.act_passes * obs.act_bytes_per_token / (profile.gemm_mbu * gpu.mem_bandwidth)
        )
    if obs.kind == "allreduce":
        return profile.nccl_allreduce_time(obs.size_bytes, obs.gpus, gpu.interconnect_gbs)  # what was measured
    if obs.kind == "gemm_kernel":
        return profile.gemm_time(obs.weight_bytes, obs.flops, gpu.peak_flops, gpu.mem_bandwidth)
    if obs.kind == "attn_prefill":
        return obs.flops / (profile.attn_prefill_eff * gpu.peak_flops)
    if obs.kind == "attn_decode":
        return obs.size_bytes / (profile.attn_decode_mbu * gpu.mem_bandwidth) + profile.attn_fixed_s
    if obs.kind == "custom_allreduce":
        return profile.allreduce_time(obs.size_bytes, obs.gpus, gpu.interconnect_gbs, nvlink=True)
    extra = 0.0
    if overheads is not None:
        profile = dataclasses.replace(
            profile, overhead_fixed_s=overheads.fixed_s, overhead_per_seq_s=overheads.per_seq_s
        )
        extra = sum(
            w * (overheads.per_token_s * s.n_tokens + overheads.per_token_sq_s * s.n_tokens**2)
            for w, s in obs.iterations
        )
    timer = IterationTimer(obs.model, gpu, obs.tp, profile, obs.vllm_allreduce)
    return extra + sum(w * timer.time(s) for w, s in obs.iterations)


def ideal_time(obs: Observation, gpu: GPUSpec) -> float:
    """A lower bound: the observation's FLOPs at 100 % of the datasheet peak."""
    if obs.kind in ("gemm", "gemm_kernel", "attn_prefill"):
        return obs.flops / gpu.peak_flops
    if obs.kind in ("allreduce", "custom_allreduce", "attn_decode") or obs.model is None:
        # a small KV cache is read from L2 (tens of MB), faster than HBM: no HBM bound for decode kernels
        return 0.0
    timer = IterationTimer(obs.model, gpu, obs.tp, GPUProfile(gpu.name))
    return sum(w * s.n_tokens * timer.flops_per_body_token / timer.gemm_peak for w, s in obs.iterations)


def mape(obs: list[Observation], fit: Fit, gpu: GPUSpec) -> float:
    errs = [
        abs(predict(o, fit.profile, gpu, fit.frameworks.get(o.framework)) - o.measured_s) / o.measured_s for o in obs
    ]
    return 100.0 * float(np.mean(errs)) if errs else float("nan")


# ------------------------------------------------------------------- GEMMs --


def fit_gemm(
    obs: list[Observation], gpu: GPUSpec, elementwise: bool = True
) -> tuple[float, float, float, float, float]:
    """(mbu, mfu, knee, layer_fixed_s, act_passes) minimising the relative squared error of layer times.

    Nelder-Mead over (log mbu, log mfu, log(knee - 1)); for each trial the
    elementwise floor and traffic are a non-negative linear least-squares fit.
    Single GEMM kernels (``elementwise=False``) get a floor per kernel (its
    launch and tail) and no traffic term; the floor is returned as
    ``layer_fixed_s`` but is one kernel's, not a layer's.
    """
    w = np.array([o.weight_bytes / gpu.mem_bandwidth for o in obs])
    f = np.array([o.flops / gpu.peak_flops for o in obs])
    act = np.array([o.tokens * o.act_bytes_per_token / gpu.mem_bandwidth for o in obs])
    t = np.array([o.measured_s for o in obs])

    def solve(x: np.ndarray) -> tuple[float, float, float, float, float, float]:
        mbu, mfu, p = math.exp(x[0]), math.exp(x[1]), 1.0 + math.exp(x[2])
        tm, tc = w / mbu, f / mfu
        hi, lo = np.maximum(tm, tc), np.minimum(tm, tc)
        g = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
        a = np.column_stack([np.ones_like(t), act / mbu]) / t[:, None]
        c = bounded_lstsq(a, 1.0 - g / t, np.zeros(2), np.array([True, elementwise]))
        err = (g + c[0] + c[1] * act / mbu) / t - 1.0
        penalty = 1e3 * (max(0.0, mbu - 1.0) + max(0.0, mfu - 1.0))
        return float(np.mean(err**2)) + penalty, mbu, mfu, p, float(c[0]), float(c[1])

    # start: bandwidth of the fewest tokens, FLOP/s of the most
    small, large = np.argmin(f), np.argmax(f)
    x0 = np.log([min(0.95, w[small] / t[small]), min(0.95, f[large] / t[large]), 1.0])
    best = None
    for start in (x0, x0 + np.array([0.0, 0.0, 1.5])):
        x = nelder_mead(lambda v: solve(v)[0], start, iters=600)
        x = nelder_mead(lambda v: solve(v)[0], x, step=0.02, iters=600)
        r = solve(x)
        if best is None or r[0] < best[0]:
            best = r
    _, mbu, mfu, p, fixed, passes = best
    return mbu, mfu, p, fixed, passes


def fit_attention_floor(obs: list[Observation], bandwidth: float, mbu: float) -> float:
    """attn_fixed_s of decode attention kernels, given their saturated bandwidth ``mbu`` x ``bandwidth``.

    What the KV bytes leave of each measured time is the kernel's floor: the non-negative constant with the
    least relative squared error over all rows (small ones included: that is where the floor shows).
    """
    y = np.array([o.measured_s for o in obs])
    r = y - np.array([o.size_bytes for o in obs]) / (mbu * bandwidth)
    return max(0.0, float((r / y**2).sum() / (1.0 / y**2).sum()))


def _efficiency(obs: list[Observation], peak: float, work: str) -> float:
    """The fraction of ``peak`` whose times t = work / (eff * peak) have the least relative squared error."""
    a = np.array([getattr(o, work) / peak / o.measured_s for o in obs])
    return float(min(1.0, (a * a).sum() / a.sum()))


# -------------------------------------------------------------- all-reduce --


def fit_allreduce(obs: list[Observation]) -> tuple[AllReduceCurve, ...]:
    """One curve per group size: the non-decreasing curve closest to every measured time.

    A larger message never takes less time. Small-message times are noisy and
    bimodal (a 2-GPU 264 kB all-reduce measured faster than a 10 kB one), so
    the curve minimises the mean relative error (what MAPE counts) over all
    measurements rather than fitting a mean per size: a weighted-L1 isotonic
    regression, whose values are among the measured ones.
    """
    by_gpus: dict[int, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for o in obs:
        by_gpus[o.gpus][o.size_bytes].append(o.measured_s)
    curves = []
    for g in sorted(by_gpus):
        sizes = sorted(by_gpus[g])
        times = _isotonic_relative_l1([by_gpus[g][s] for s in sizes])
        curves.append(AllReduceCurve(g, tuple(float(s) for s in sizes), tuple(times)))
    return tuple(curves)


def _isotonic_relative_l1(groups: list[list[float]]) -> list[float]:
    """Non-decreasing values v_i minimising sum_i sum_{y in groups[i]} |v_i - y| / y.

    Dynamic programming over the candidate values (every measured time: an
    optimal weighted-L1 isotonic fit takes its values among the data); ties
    go to the smaller value, so the result is deterministic.
    """
    cand = np.array(sorted({y for ys in groups for y in ys}))
    best = np.zeros(len(cand))
    choice: list[np.ndarray] = []
    for ys in groups:
        y = np.array(ys)
        cost = np.abs(cand[:, None] - y[None, :]).dot(1.0 / y)
        arg = np.zeros(len(cand), dtype=int)  # index of the best previous value <= this one
        run, run_at = math.inf, 0
        for j in range(len(cand)):
            if best[j] < run:
                run, run_at = best[j], j
            arg[j] = run_at
        best = best[arg] + cost
        choice.append(arg)
    j = int(np.argmin(best))
    out = [0.0] * len(groups)
    for i in range(len(groups) - 1, -1, -1):
        out[i] = float(cand[j])
        j = int(choice[i][j])
    return out


# -------------------------------------------------------------- end to end --

# the per-token² column is fitted in s per (1,000 tokens)², so that its numbers are of the others' size
SQ_SCALE = 1e-6
N_OVERHEADS = 4  # fixed, per sequence, per token, per token²


def _features(obs: Observation, gpu: GPUSpec, profile: GPUProfile) -> tuple[float, np.ndarray]:
    """(known time, coefficients of [1/attn_prefill_eff, 1/attn_decode_mbu, fixed, per_seq, per_token,
    per_token² (scaled by SQ_SCALE)])."""
    timer = IterationTimer(
        obs.model,
        gpu,
        obs.tp,
        dataclasses.replace(profile, overhead_fixed_s=0.0, overhead_per_seq_s=0.0),
        obs.vllm_allreduce,
    )
    known = 0.0
    coef = np.zeros(2 + N_OVERHEADS)
    for w, s in obs.iterations:
        known += w * (timer.body_time(s.n_tokens) + timer.seq_time(s.n_seqs))
        coef += w * np.array(
            [
                s.attn_pairs * timer.flops_per_attn_pair / timer.peak,
                (s.kv_read_tokens + s.n_tokens) * timer.kv_bytes_per_token / timer.bw,
                1.0,
                s.n_seqs,
                s.n_tokens,
                s.n_tokens**2 * SQ_SCALE,
            ]
        )
    return known, coef


def bounded_lstsq(a: np.ndarray, b: np.ndarray, lower: np.ndarray, free: np.ndarray) -> np.ndarray:
    """min ||a x - b|| with x >= lower, only ``free`` columns fitted (others at their lower bound)."""
    x = lower.copy()
    active = free.copy()
    for _ in range(a.shape[1] + 1):
        if not active.any():
            break
        rhs = b - a[:, ~active] @ x[~active]
        sol, *_ = np.linalg.lstsq(a[:, active], rhs, rcond=None)
        x[active] = sol
        bad = active & (x < lower)
        if not bad.any():
            return x
        worst = np.argmin(np.where(bad, x - lower, np.inf))
        x[worst] = lower[worst]
        active[worst] = False
        x[~active] = lower[~active]
    return np.maximum(x, lower)


PRIOR_WEIGHT = 0.02  # pulls parameters the data cannot determine to the inherited values


def fit_end_to_end(
    obs: list[Observation], gpu: GPUSpec, profile: GPUProfile, fit_attention: bool = True, per_step_only: bool = False
) -> tuple[GPUProfile, dict[str, Overheads]]:
    """Attention efficiencies (unless ``fit_attention`` is False) and each framework's overheads.

    Parameters x = [1/attn_prefill_eff, 1/attn_decode_mbu, then per framework
    fixed, per-sequence, per-token, per-token²]; every row is a relative error, every
    source weighs the same, and a weak prior row keeps the inherited prefill
    attention efficiency where the data says little. ``attn_decode_mbu`` is
    set to ``gemm_mbu``: KV traffic streams HBM like weight reads, and
    end-to-end times cannot separate it from per-sequence overhead.
    ``per_step_only``: every framework gets CPU time per step and per running
    sequence only (an engine's scheduler, input preparation and sampler),
    as the default framework always does.
    """
    frameworks = sorted({o.framework for o in obs})
    nf = len(frameworks)
    m = N_OVERHEADS
    npar = 2 + m * nf
    per_source = defaultdict(int)
    for o in obs:
        per_source[o.source] += 1
    rows, rhs = [], []
    for o in obs:
        known, c = _features(o, gpu, profile)
        weight = 1.0 / math.sqrt(per_source[o.source])
        row = np.zeros(npar)
        row[:2] = c[:2]
        k = 2 + m * frameworks.index(o.framework)
        row[k : k + m] = c[2:]
        rows.append(row * weight / o.measured_s)
        rhs.append((o.measured_s - known) * weight / o.measured_s)
    x0 = np.array([1.0 / profile.attn_prefill_eff, 1.0 / profile.gemm_mbu] + [0.0] * (m * nf))
    if fit_attention:
        for j in range(1):
            row = np.zeros(npar)
            row[j] = PRIOR_WEIGHT / x0[j]
            rows.append(row)
            rhs.append(PRIOR_WEIGHT)
    a, b = np.array(rows), np.array(rhs)
    lower = np.array([1.0, 1.0] + [0.0] * (m * nf))
    free = np.ones(npar, dtype=bool)
    # KV reads and writes stream HBM as the GEMMs' weight reads do: the decode attention bandwidth is
    # the measured GEMM bandwidth (end-to-end times cannot tell KV time from per-sequence overhead)
    free[1], lower[1] = False, x0[1]
    if not fit_attention:
        free[0] = False
        lower[0] = x0[0]
    for k, fw in enumerate(frameworks):
        # a per-sequence overhead is only identifiable with batches of several sizes
        seqs = {round(s.n_seqs, 6) for o in obs if o.framework == fw for _, s in o.iterations}
        if len(seqs) < 3:
            free[3 + m * k] = False
        if fw == DEFAULT_FRAMEWORK or per_step_only:
            free[4 + m * k] = free[5 + m * k] = False
    x = bounded_lstsq(a, b, lower, free)
    prof = dataclasses.replace(profile, attn_prefill_eff=1.0 / x[0], attn_decode_mbu=1.0 / x[1])
    fws = {}
    for k, fw in enumerate(frameworks):
        fixed, per_seq, per_token, per_token_sq = (float(v) for v in x[2 + m * k : 2 + m * (k + 1)])
        fws[fw] = Overheads(fixed, per_seq, per_token, per_token_sq * SQ_SCALE)
    return prof, fws


def nelder_mead(f, x0: np.ndarray, step: float = 0.15, iters: int = 300) -> np.ndarray:
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[-1] - values[0]) < 1e-12:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2.0 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                simplex = [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex]
                values = [f(x) for x in simplex]
    return simplex[int(np.argmin(values))]


# --------------------------------------------------------------- one GPU ----


def calibrate_gpu(
    obs: list[Observation], gpu: GPUSpec, base: GPUProfile, *, kernels_from_e2e: bool = True, own: str = ""
) -> Fit:
    """Fit ``gpu``'s profile to its observations, starting from (and inheriting from) ``base``.

    ``base`` provides every number the observations cannot determine. ``own``
    names it when it is this GPU's own profile ("the built-in H100-SXM
    profile"): every such number is kept exactly, the framework overheads
    included, and its provenance says so. Otherwise ``base`` is another GPU's
    (derived from the nearest measured one) and gives the kernel numbers, but
    not its framework overheads: those belong to the harness that measured
    that GPU (the A10 table's 9.3 ms per iteration), so unless these
    observations fit them they are the assumed vLLM v1 ones.
    """
    rejected = []
    kept = []
    for o in obs:
        ideal = ideal_time(o, gpu)
        if o.measured_s < ideal:
            rejected.append(
                (
                    o,
                    f"{o.measured_s * 1e3:.3g} ms is faster than the datasheet peak allows "
                    f"({ideal * 1e3:.3g} ms at 100 % of {gpu.peak_fp16_tflops:g} TFLOP/s per GPU)",
                )
            )
        else:
            kept.append(o)
    gemm = [o for o in kept if o.kind == "gemm"]
    kern = {k: [o for o in kept if o.kind == k] for k in KERNEL_KINDS}
    ar = [o for o in kept if o.kind == "allreduce"]
    e2e = [o for o in kept if o.kind in E2E_KINDS]
    prof = dataclasses.replace(base, gpu=gpu.name, derived_from="", provenance={})
    if not own:
        prof = dataclasses.replace(
            prof, overhead_fixed_s=GPUProfile.overhead_fixed_s, overhead_per_seq_s=GPUProfile.overhead_per_seq_s
        )
    prov: dict[str, str] = {}
    sources = lambda rows: ", ".join(sorted({o.source.rsplit("/", 1)[-1] for o in rows}))  # noqa: E731
    if gemm:
        mbu, mfu, knee, fixed, passes = fit_gemm(gemm, gpu)
        prof = dataclasses.replace(
            prof, gemm_mbu=mbu, gemm_mfu=mfu, gemm_knee=knee, layer_fixed_s=fixed, act_passes=passes
        )
        for k in ("gemm_mbu", "gemm_mfu", "gemm_knee", "layer_fixed_s", "act_passes"):
            prov[k] = f"fitted on {len(gemm)} operator times ({sources(gemm)})"
    # GEMM kernels of at least KERNEL_GEMM_MIN_S at the datasheet peaks: the smaller ones are launch-bound
    big_gemms = [
        o
        for o in kern["gemm_kernel"]
        if max(o.weight_bytes / gpu.mem_bandwidth, o.flops / gpu.peak_flops) >= KERNEL_GEMM_MIN_S
    ]
    if big_gemms and not gemm:
        mbu, mfu, knee, _, _ = fit_gemm(big_gemms, gpu, elementwise=False)
        prof = dataclasses.replace(prof, gemm_mbu=mbu, gemm_mfu=mfu, gemm_knee=knee)
        for k in ("gemm_mbu", "gemm_mfu", "gemm_knee"):
            prov[k] = (
                f"fitted on {len(big_gemms)} GEMM kernel times of >= {KERNEL_GEMM_MIN_S * 1e6:.0f} us at "
                f"the datasheet peaks ({sources(big_gemms)})"
            )
    long_prompts = [o for o in kern["attn_prefill"] if o.tokens >= KERNEL_PREFILL_MIN_TOKENS]
    if long_prompts:
        prof = dataclasses.replace(prof, attn_prefill_eff=_efficiency(long_prompts, gpu.peak_flops, "flops"))
        prov["attn_prefill_eff"] = (
            f"fitted on {len(long_prompts)} prefill attention kernel times of prompts >= "
            f"{KERNEL_PREFILL_MIN_TOKENS} tokens ({sources(long_prompts)})"
        )
    big_kv = [o for o in kern["attn_decode"] if o.size_bytes >= KERNEL_DECODE_MIN_BYTES]
    if big_kv:
        prof = dataclasses.replace(prof, attn_decode_mbu=_efficiency(big_kv, gpu.mem_bandwidth, "size_bytes"))
        prov["attn_decode_mbu"] = (
            f"fitted on {len(big_kv)} decode attention kernel times reading >= 1 GiB of KV "
            f"per layer ({sources(big_kv)}): the saturated bandwidth, as gemm_mbu is for "
            "GPUs fitted end to end"
        )
    if kern["attn_decode"]:
        # the floor at the kernels' own saturated bandwidth (the big-KV rows'), so an end-to-end fit of the
        # bandwidth below leaves it as the kernel times measured it
        mbu_k = _efficiency(big_kv, gpu.mem_bandwidth, "size_bytes") if big_kv else prof.attn_decode_mbu
        prof = dataclasses.replace(
            prof, attn_fixed_s=fit_attention_floor(kern["attn_decode"], gpu.mem_bandwidth, mbu_k)
        )
        prov["attn_fixed_s"] = (
            f"fitted on all {len(kern['attn_decode'])} decode attention kernel times "
            f"({sources(kern['attn_decode'])}) beside their KV bytes at {mbu_k:.3f} of the bandwidth"
        )
    if kern["custom_allreduce"] and not ar:
        fastest = min(kern["custom_allreduce"], key=lambda o: (o.measured_s, o.gpus, o.size_bytes))
        prof = dataclasses.replace(prof, custom_allreduce_latency_s=fastest.measured_s)
        prov["custom_allreduce_latency_s"] = (
            f"the least custom all-reduce time measured in CUDA graphs ({sources(kern['custom_allreduce'])}: "
            f"{fastest.gpus} GPUs, {fastest.size_bytes:.0f} B)"
        )
    if ar:
        fastest = min(ar, key=lambda o: (o.measured_s, o.gpus, o.size_bytes))
        prof = dataclasses.replace(
            prof,
            allreduce=fit_allreduce(ar),
            allreduce_link_gbs=gpu.interconnect_gbs,
            custom_allreduce_latency_s=fastest.measured_s,
        )
        prov["allreduce"] = f"measured NCCL curves ({sources(ar)}), monotone, least relative error"
        prov["custom_allreduce_latency_s"] = (
            f"the least all-reduce time measured ({sources(ar)}: {fastest.gpus} GPUs, {fastest.size_bytes:.0f} B): "
            "no synchronisation over these links took less"
        )
    frameworks: dict[str, Overheads] = {}
    default_seen = any(o.framework == DEFAULT_FRAMEWORK for o in e2e)
    # end-to-end sources of other frameworks alone cannot separate kernels from software overhead
    fit_kernels = bool(e2e) and (default_seen or bool(gemm))
    if e2e:
        if not gemm and fit_kernels and kernels_from_e2e:

            def loss(x: np.ndarray) -> float:
                mbu, mfu = math.exp(x[0]), math.exp(x[1])
                if mbu > 1.0 or mfu > 1.0:
                    return 1e6 + mbu + mfu
                trial = dataclasses.replace(prof, gemm_mbu=mbu, gemm_mfu=mfu)
                p2, fws = fit_end_to_end(e2e, gpu, trial)
                return _weighted_sq_error(e2e, p2, fws, gpu)

            x = nelder_mead(loss, np.log([prof.gemm_mbu, prof.gemm_mfu]))
            prof = dataclasses.replace(prof, gemm_mbu=math.exp(x[0]), gemm_mfu=math.exp(x[1]))
            for k in ("gemm_mbu", "gemm_mfu"):
                prov[k] = f"fitted on {len(e2e)} end-to-end times ({sources(e2e)})"
        prof, frameworks = fit_end_to_end(e2e, gpu, prof, fit_attention=fit_kernels)
        if fit_kernels:
            prov["attn_prefill_eff"] = f"fitted on {len(e2e)} end-to-end times ({sources(e2e)})"
            prov["attn_decode_mbu"] = (
                "= gemm_mbu: KV reads stream HBM like weight reads (end-to-end times "
                "cannot separate KV time from per-sequence overhead)"
            )
        if DEFAULT_FRAMEWORK in frameworks:
            d = frameworks[DEFAULT_FRAMEWORK]
            prof = dataclasses.replace(prof, overhead_fixed_s=d.fixed_s, overhead_per_seq_s=d.per_seq_s)
            dsrc = [o for o in e2e if o.framework == DEFAULT_FRAMEWORK]
            for k in ("overhead_fixed_s", "overhead_per_seq_s"):
                prov[k] = f"fitted on {sources(dsrc)} (marked as the default framework)"
    for name in UNFITTED_ORDER:
        if name not in prov:
            prov[name] = _unfitted_provenance(name, base, own)
    measured = bool(gemm or ar or fit_kernels or any(kern.values()))
    if measured:
        status, derived_from = "measured", ""
    elif own:
        status, derived_from = base.status, base.derived_from
    else:
        status, derived_from = "derived", base.derived_from or base.gpu
    prof = dataclasses.replace(prof, status=status, derived_from=derived_from, provenance=prov)
    return Fit(prof, frameworks, rejected)


def _unfitted_provenance(name: str, base: GPUProfile, own: str) -> str:
    """Where a number the observations do not determine comes from (``calibrate_gpu``'s ``base``)."""
    there = base.provenance.get(name) or base.provenance.get("all") or ""
    if own:
        return f"kept from {own} ({NOT_IDENTIFIABLE})" + (f"; there: {there}" if there else "")
    if name in OVERHEAD_FIELDS:
        return ASSUMED_OVERHEAD
    return there or f"inherited from {base.gpu}"


def _weighted_sq_error(obs: list[Observation], prof: GPUProfile, fws: dict[str, Overheads], gpu: GPUSpec) -> float:
    per_source = defaultdict(list)
    for o in obs:
        per_source[o.source].append((predict(o, prof, gpu, fws.get(o.framework)) - o.measured_s) / o.measured_s)
    return float(np.mean([np.mean(np.square(v)) for v in per_source.values()]))


# ----------------------------------------------------------- many GPUs ----


def calibrate_all(obs: list[Observation], catalog: Catalog) -> dict[str, Fit]:
    """Fit every GPU that has observations.

    Every number a GPU's observations cannot determine is kept from that
    GPU's own profile in ``catalog`` (the built-in one, or a --catalog
    file's). A GPU without one inherits them from the nearest measured GPU
    (of the same architecture first, as the catalogue derives profiles):
    those of the catalogue that these observations do not refit, and the
    GPUs fitted before it (GPUs whose observations fit kernels come first),
    except for the framework overheads (``calibrate_gpu``).
    """
    by_gpu: dict[str, list[Observation]] = defaultdict(list)
    for o in obs:
        by_gpu[o.gpu].append(o)
    fits: dict[str, Fit] = {}
    # what a GPU inherits: the catalogue's measured profiles of GPUs these observations do not refit
    keep = [
        p
        for p in catalog.profile_specs.values()
        if p.status == "measured" and catalog.has_gpu(p.gpu) and catalog.gpu(p.gpu).name not in by_gpu
    ]
    work = Catalog(
        models=catalog.models(), gpus=[dataclasses.replace(g, profile=None) for g in catalog.gpus()], profiles=keep
    )
    # order: GPUs with operator times first, then the others (they may inherit)
    order = sorted(by_gpu, key=lambda g: (not any(o.kind in ("gemm", "allreduce") for o in by_gpu[g]), g))
    for name in order:
        gpu = dataclasses.replace(catalog.gpu(name), profile=None)
        own = catalog.own_profile(gpu)
        if own is not None:
            fit = calibrate_gpu(by_gpu[name], gpu, own, own=_own_name(own, gpu))
        else:
            fit = calibrate_gpu(by_gpu[name], gpu, work.profile_for(gpu))
        fits[name] = fit
        if fit.profile.status == "measured":
            work = work.merged(Catalog(profiles=[fit.profile]))
    return fits


def _own_name(own: GPUProfile, gpu: GPUSpec) -> str:
    """How a provenance names a GPU's own profile: the built-in one (profiles.yaml) or a catalogue file's."""
    builtin = default_catalog().own_profile(gpu.name)
    return f"the built-in {gpu.name} profile" if builtin == own else f"the catalogue's {gpu.name} profile"
