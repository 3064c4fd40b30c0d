"""Per-GPU efficiency profiles: how close each GPU's kernels come to its datasheet.

A :class:`GPUProfile` holds the few measured numbers that turn datasheet peaks
into achieved speed on one GPU type, and the kernel-time formulas that use
them. The serving engine's cost model (``engine/cost_model.py``) and the
calibration (``kavier_opendc/calibration``) both time an iteration with these
formulas (``specs/iteration_time.py``), so what is fitted is exactly what is
simulated.

One iteration of ``n`` tokens for ``s`` sequences on a TP group of ``T`` GPUs
runs, in this order, kernels whose times add up (they run one after another
on the stream; each kernel is its own roofline):

    t_gemm  = ||( W_body(n) / (mbu * BW),  F_body(n) / (mfu * PEAK) )||_p      linear layers
            + L * (layer_fixed_s + n * act_passes * (hidden + ffn/T) * bytes / (mbu * BW_gpu))
                                                                             norms, activation, rope, adds
            + ||( W_head / (mbu * BW),     F_head(s) / (mfu * PEAK) )||_p      LM head, sampled tokens only
    t_attn  = F_attn / (attn_prefill_eff * PEAK)                             FlashAttention FLOPs
            + KV_bytes / (attn_decode_mbu * BW)                              paged-attention KV traffic
            + L * attn_fixed_s                                               the kernel's floor, per layer
    t_comm  = 2 * L * allreduce(n * hidden * bytes, T)                       vLLM's custom all-reduce over
                                                                             NVLink up to 8 MiB, else the
                                                                             measured NCCL curve
    t_over  = overhead_fixed_s + overhead_per_seq_s * s                      framework (vLLM v1, CUDA graphs)

``||(a, b)||_p = (a^p + b^p)^(1/p)`` is a smooth roofline: a GEMM that streams
its weights once is memory-bound for few tokens (arithmetic intensity = n
FLOP/byte in fp16, whatever the layer's shape) and compute-bound for many, and
``p`` (``gemm_knee``) says how sharp the measured transition is (p = inf is
the ideal roofline max). PEAK and BW are the whole TP group's datasheet
numbers (T x per GPU), so tensor parallelism is never faster than the ideal
split. Efficiencies are fractions of the GPU's own datasheet peaks, so a GPU
without measurements inherits them from the nearest measured GPU of the same
architecture and is "scaled by its datasheet" automatically; its all-reduce
curve is rescaled by the ratio of interconnect bandwidths.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Mapping

STATUSES = ("measured", "derived", "assumed")
# Fields of GPUProfile that are numbers with a provenance entry each.
NUMERIC_FIELDS = (
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
    "custom_allreduce_latency_s",
    "power_compute_weight",
    "power_memory_weight",
    "power_kv_weight",
)
KNEE_MAX = 1e3  # p above this is the ideal roofline max(a, b)
# vLLM's custom all-reduce (vllm/distributed/device_communicators/custom_all_reduce.py): TP groups of these
# sizes whose GPUs are all NVLink-connected, messages up to its buffer size; larger ones go to NCCL
CUSTOM_ALLREDUCE_GPUS = (2, 4, 6, 8)
CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 2**20


@dataclass(frozen=True)
class AllReduceCurve:
    """Measured all-reduce time vs message size for one group size, inside one node.

    ``sizes`` ascending bytes, ``seconds`` the time of one all-reduce at each
    size, non-decreasing (a larger message never takes less time; measurement
    noise at small sizes is removed when the curve is fitted). Between points
    the time is interpolated linearly; below the smallest size it is the
    smallest size's time (latency floor), above the largest it grows with the
    last segment's slope (bandwidth-bound).
    """

    gpus: int
    sizes: tuple[float, ...]
    seconds: tuple[float, ...]

    def time(self, size_bytes: float) -> float:
        xs, ys = self.sizes, self.seconds
        if size_bytes <= xs[0]:
            return ys[0]
        if size_bytes >= xs[-1]:
            if len(xs) == 1:
                return ys[0]
            slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
            return ys[-1] + slope * (size_bytes - xs[-1])
        i = bisect.bisect_right(xs, size_bytes)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (size_bytes - x0) / (x1 - x0)


@dataclass(frozen=True)
class GPUProfile:
    """Achieved efficiencies of one GPU type (see the module doc for the formulas).

    ``status`` is ``measured`` (fitted on measurements of this GPU),
    ``derived`` (inherited from ``derived_from``, a measured GPU, scaled by
    datasheet numbers) or ``assumed`` (no measured GPU to inherit from).
    ``provenance`` maps each number to where it comes from.
    """

    gpu: str
    status: str = "assumed"
    gemm_mbu: float = 0.75  # GEMM weight streaming: achieved / peak HBM bandwidth
    gemm_mfu: float = 0.70  # large GEMMs: achieved / peak dense FP16 FLOP/s
    gemm_knee: float = 2.0  # p of the smooth roofline (memory -> compute transition)
    layer_fixed_s: float = 0.0  # per decoder layer: the small elementwise kernels' floor (s)
    act_passes: float = 0.0  # elementwise traffic per token and layer, in (hidden + ffn/T) activations
    attn_prefill_eff: float = 0.5  # prefill attention (FlashAttention): achieved / peak FLOP/s
    attn_decode_mbu: float = 0.6  # decode attention (paged KV reads): achieved / peak bandwidth
    # the attention kernel's floor per decoder layer and iteration (launch, first KV blocks, tail): a small
    # decode step reaches only a fraction of attn_decode_mbu (vLLM 0.14 on an H100: 13 us); 0 where unmeasured
    attn_fixed_s: float = 0.0
    overhead_fixed_s: float = 0.001  # framework time per iteration (scheduler, sampler, launches)
    overhead_per_seq_s: float = 0.0  # framework time per running sequence per iteration
    custom_allreduce_latency_s: float = 10e-6  # vLLM's custom all-reduce: one synchronisation over NVLink
    allreduce: tuple[AllReduceCurve, ...] = ()
    allreduce_link_gbs: float = 0.0  # interconnect (GB/s per direction) the curves were measured on
    # power-relevant activity weights (bench/calibrate_power.py), see engine/cost_model.py: per unit of
    # achieved / peak FLOP/s, of weight bytes / peak bandwidth, of KV-cache bytes / peak bandwidth
    power_compute_weight: float = 1.2
    power_memory_weight: float = 0.75
    power_kv_weight: float = 1.41
    derived_from: str = ""
    provenance: Mapping[str, str] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------ kernels ----
    def gemm_time(self, weight_bytes: float, flops: float, peak_flops: float, bandwidth: float) -> float:
        """Time of GEMMs that read ``weight_bytes`` once and do ``flops`` (smooth roofline)."""
        t_m = weight_bytes / (self.gemm_mbu * bandwidth)
        t_c = flops / (self.gemm_mfu * peak_flops)
        p = self.gemm_knee
        if p >= KNEE_MAX:
            return t_m if t_m > t_c else t_c
        hi, lo = (t_m, t_c) if t_m > t_c else (t_c, t_m)
        if hi <= 0.0:
            return 0.0
        return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)

    def allreduce_time(self, size_bytes: float, gpus: int, link_gbs: float, nvlink: bool) -> float:
        """One all-reduce as vLLM runs it: its custom all-reduce where it applies, else NCCL.

        vLLM replaces NCCL by its own all-reduce for TP groups of 2, 4, 6 or 8
        fully NVLink-connected GPUs and messages up to 8 MiB (every decode
        step's and most chunks'): one synchronisation (``custom_allreduce_latency_s``)
        and each GPU reading its peers' data over NVLink, all of it at once
        (one-shot) or reduce-scatter then all-gather (two-shot, two
        synchronisations), whichever is shorter.
        """
        if gpus <= 1:
            return 0.0
        if nvlink and gpus in CUSTOM_ALLREDUCE_GPUS and size_bytes <= CUSTOM_ALLREDUCE_MAX_BYTES and link_gbs > 0:
            bw = link_gbs * 1e9
            lat = self.custom_allreduce_latency_s
            one_shot = lat + (gpus - 1) * size_bytes / bw
            two_shot = 2.0 * lat + 2.0 * (gpus - 1) / gpus * size_bytes / bw
            return one_shot if one_shot < two_shot else two_shot
        t = self.nccl_allreduce_time(size_bytes, gpus, link_gbs)
        if nvlink and gpus in CUSTOM_ALLREDUCE_GPUS and link_gbs > 0:
            # past vLLM's buffer NCCL takes over; never less than the custom all-reduce of a full buffer
            t = max(t, self.allreduce_time(CUSTOM_ALLREDUCE_MAX_BYTES, gpus, link_gbs, nvlink))
        return t

    def nccl_allreduce_time(self, size_bytes: float, gpus: int, link_gbs: float) -> float:
        """One NCCL all-reduce of ``size_bytes`` over ``gpus`` GPUs whose links give ``link_gbs``.

        Uses the measured curve of the same group size (else the nearest one,
        at the size that moves the same bytes per link: ring all-reduce sends
        2 (T-1)/T of the message), evaluated at the size that takes as long on
        the measured interconnect as ``size_bytes`` on this one.
        """
        if gpus <= 1:
            return 0.0
        if not self.allreduce:
            # no curve at all: latency + ring traffic at the link's datasheet bandwidth
            return 10e-6 + 2.0 * (gpus - 1) / gpus * size_bytes / (link_gbs * 1e9)
        curve = min(self.allreduce, key=lambda c: (abs(c.gpus - gpus), -c.gpus))
        size = size_bytes * ((gpus - 1) / gpus) / ((curve.gpus - 1) / curve.gpus)
        if self.allreduce_link_gbs > 0 and link_gbs > 0:
            size *= self.allreduce_link_gbs / link_gbs
        return curve.time(size)

    # ------------------------------------------------------------- checks ----
    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every physically impossible number."""
        out = []
        for name in ("gemm_mbu", "gemm_mfu", "attn_prefill_eff", "attn_decode_mbu"):
            v = getattr(self, name)
            if not (0.0 < v <= 1.0):
                out.append((name, f"{v} is not a fraction of the datasheet peak in (0, 1]"))
        if not self.gemm_knee >= 1.0:
            out.append(("gemm_knee", f"{self.gemm_knee} is below 1 (the transition cannot be slower than a sum)"))
        for name in (
            "overhead_fixed_s",
            "overhead_per_seq_s",
            "layer_fixed_s",
            "attn_fixed_s",
            "act_passes",
            "custom_allreduce_latency_s",
            "power_compute_weight",
            "power_memory_weight",
            "power_kv_weight",
        ):
            if getattr(self, name) < 0:
                out.append((name, f"{getattr(self, name)} is negative"))
        if self.status not in STATUSES:
            out.append(("status", f"{self.status!r} is not one of {', '.join(STATUSES)}"))
        for c in self.allreduce:
            if c.gpus < 2 or len(c.sizes) != len(c.seconds) or not c.sizes:
                out.append(("allreduce", f"curve for {c.gpus} GPUs is malformed"))
            elif (
                any(b <= a for a, b in zip(c.sizes, c.sizes[1:], strict=False))
                or any(b < a for a, b in zip(c.seconds, c.seconds[1:], strict=False))
                or c.seconds[0] < 0
            ):
                out.append(
                    (
                        "allreduce",
                        f"curve for {c.gpus} GPUs must have increasing sizes and non-decreasing, non-negative times",
                    )
                )
        return out


# ---------------------------------------------------------------------------
# Catalogue entries (the ``profiles`` list of a catalogue file) and derivation.
# ---------------------------------------------------------------------------


def profile_from_entry(entry: Mapping[str, Any]) -> GPUProfile:
    kw = {k: v for k, v in entry.items() if k not in ("allreduce", "provenance")}
    curves = tuple(
        AllReduceCurve(int(c["gpus"]), tuple(float(x) for x in c["sizes_bytes"]), tuple(float(x) for x in c["seconds"]))
        for c in entry.get("allreduce", ())
    )
    for name in NUMERIC_FIELDS + ("allreduce_link_gbs",):
        if name in kw:
            kw[name] = float(kw[name])
    return GPUProfile(allreduce=curves, provenance=dict(entry.get("provenance", {})), **kw)


def profile_to_entry(profile: GPUProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"gpu": profile.gpu, "status": profile.status}
    if profile.derived_from:
        out["derived_from"] = profile.derived_from
    for name in NUMERIC_FIELDS:
        out[name] = _round(getattr(profile, name))
    if profile.allreduce:
        out["allreduce_link_gbs"] = profile.allreduce_link_gbs
        out["allreduce"] = [
            {
                "gpus": c.gpus,
                "sizes_bytes": [int(x) if float(x).is_integer() else x for x in c.sizes],
                "seconds": [_round(x) for x in c.seconds],
            }
            for c in profile.allreduce
        ]
    if profile.provenance:
        out["provenance"] = dict(profile.provenance)
    return out


def profile_summary(profile: GPUProfile) -> dict[str, Any]:
    """The profile as a run summary shows it: every number and its provenance, the curves by group size."""
    out = profile_to_entry(profile)
    if "allreduce" in out:
        out["allreduce"] = {str(c["gpus"]): f"{len(c['sizes_bytes'])} measured sizes" for c in out["allreduce"]}
    return out


def _round(x: float) -> float:
    return float(f"{x:.6g}")


ASSUMED_OVERHEAD = (
    "assumed: vLLM v1 with CUDA graphs and asynchronous scheduling, 1 ms of unhidden CPU time per "
    "iteration and nothing per sequence "
    "(no vLLM v1 measurement in the calibration data)"
)


def assumed_profile(gpu: str) -> GPUProfile:
    """Round, typical numbers for a GPU nothing measured can be inherited from."""
    prov = {name: "assumed: typical value, no measurement" for name in NUMERIC_FIELDS}
    prov["overhead_fixed_s"] = prov["overhead_per_seq_s"] = ASSUMED_OVERHEAD
    prov["power_compute_weight"] = prov["power_memory_weight"] = prov["power_kv_weight"] = (
        "typical value of bench/calibrate_power.py's fits (Argonne A100/H100 power)"
    )
    prov["allreduce"] = "assumed: 10 us + ring traffic at the interconnect's datasheet bandwidth"
    return GPUProfile(gpu=gpu, status="assumed", provenance=prov)
