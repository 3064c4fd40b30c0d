"""Iteration cost model: how long one batched forward pass of a replica takes.

One *iteration* of a replica processes a batch made of prefill chunks (``c``
new prompt tokens on top of ``p`` tokens already in the KV cache) and decode
sequences (one new token on top of ``c`` cached tokens). Its time is computed
from first principles, per GPU of a tensor-parallel group of ``T`` GPUs:

    F_lin  = 2 * P_active * n_tokens                      (linear layers, FLOPs)
    F_attn = 4 * L * H_q * d_head * A                     (QK^T and PV, FLOPs)
             A = sum over prefill chunks of (c*p + c*(c+1)/2)
               + sum over decode sequences of (c + 1)      (attended pairs)
    B      = W_iter + kv * (R + n_tokens)                  (HBM bytes)
             W_iter = weight bytes read once per iteration (MoE: the shared
                      weights plus the experts the batch's tokens touch)
             R      = tokens whose KV is read (p of each chunk, c of each decode)
             kv     = 2 * L * H_kv * d_head * bytes/elt     (KV bytes per token)

    t_compute = (F_lin / mfu + F_attn / attn_eff) / (T * peak_flops)
    t_memory  = B / (T * mem_bandwidth * mbu)
    t_comm    = 2 * L * (2 (T-1)/T * n_tokens * hidden * bytes / link_bw + link_latency)   (T > 1)
    t_iter    = max(t_compute, t_memory) + overlap * min(t_compute, t_memory) + t_comm + overhead

This is a roofline with imperfect overlap: an iteration is bound by either its
arithmetic or its memory traffic, and the other one hides behind it only
partly (``overlap`` = 0 is the ideal roofline, 1 no overlap at all: small
batches stream weights and run their GEMMs in the same kernels, but not
perfectly concurrently). ``mfu``, ``attn_eff``, ``mbu``, ``overlap`` and
``overhead`` are the only calibrated constants (see ``DEFAULT_EFFICIENCY``); every other number comes
from the model and GPU catalogues.

The *power-relevant activity* of an iteration, used as ``gpu_utilization`` in
the timeline that OpenDC turns into watts, is

    u = min(1, w_c * (F_lin + F_attn) / (T * peak_flops * t_iter) + w_m * B / (T * mem_bandwidth * t_iter))

i.e. achieved FLOP/s and achieved bytes/s, each relative to the datasheet
peak, weighted by how much power each draws: a compute-bound prefill and a
memory-bound decode both keep the GPU busy, an idle gap or a launch-bound
tiny batch does not. The weights w_c = 1.8 and w_m = 1.2 come from measured
GPU power of vLLM serving (Argonne LLM-Inference-Bench: A100-40GB and H100,
Llama-2-7B and Llama-3-8B, batch 1-64; ``bench/calibrate_power.py``): with a
linear power model between each GPU's idle and maximum power they give a mean
absolute error of 7 % on those 16 measurements, against 19 % with unit weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import GPUSpec, ModelSpec

BLOCK_SIZE = 16  # tokens per KV block, vLLM's default


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of datasheet peaks, and fixed per-iteration costs.

    Calibrated once on the A10 measurements (Llama-3-8B, vLLM, single requests;
    ``bench/calibrate_a10.py``) by minimising the mean absolute percentage
    error over all prefill and decode rows together, and used unchanged for
    every GPU: a GPU differs only through its own datasheet numbers.
    """

    # Values from ``python bench/calibrate_a10.py --fit`` (prefill MAPE 2.98 %,
    # decode MAPE 3.66 % on the A10 table).
    mfu: float = 0.331           # linear layers: achieved / peak dense FLOP/s
    attn_eff: float = 0.595      # attention kernels: achieved / peak FLOP/s
    mbu: float = 0.691           # achieved / peak memory bandwidth
    overlap: float = 0.4375      # share of the shorter of compute/memory time not hidden
    overhead_s: float = 0.00533  # scheduler, sampling, kernel launches per iteration
    # power-relevant activity weights (``bench/calibrate_power.py``)
    power_compute_weight: float = 1.8
    power_memory_weight: float = 1.2
    link_latency_s: float = 8e-6  # per all-reduce call (NCCL small-message latency)


DEFAULT_EFFICIENCY = Efficiency()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class CostModel:
    """Iteration times for one model served on one GPU type with TP degree ``tp``."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1,
                 efficiency: Efficiency = DEFAULT_EFFICIENCY):
        if tp < 1:
            raise KavierInputError(f"tensor parallelism must be >= 1, got {tp}", location="--tp")
        if model.num_attention_heads % tp != 0:
            raise KavierInputError(
                f"{model.name} has {model.num_attention_heads} attention heads, which cannot be "
                f"split evenly over {tp} GPUs", location="--tp",
                expected="a TP degree that divides the number of attention heads")
        self.model, self.gpu, self.tp, self.eff = model, gpu, tp, efficiency
        bpe = model.bytes_per_param
        # KV heads are split over the TP group, but never below one per GPU (replicated).
        kv_heads_per_gpu = max(1, _ceil_div(model.num_kv_heads, tp))
        self.kv_bytes_per_token_gpu = 2.0 * model.num_layers * kv_heads_per_gpu * model.dim_head * bpe
        self.kv_bytes_per_token = self.kv_bytes_per_token_gpu * tp  # over the whole group
        self.weight_bytes = model.weight_bytes
        # MoE: expert weights are only read for the experts some token is routed to.
        if model.num_experts > 1:
            self.expert_bytes = ((3.0 if model.gated_mlp else 2.0) * model.hidden_size * model.ffn_size * model.num_layers
                                 * model.num_experts * bpe)
            self.shared_bytes = max(0.0, self.weight_bytes - self.expert_bytes)
        else:
            self.expert_bytes = 0.0
            self.shared_bytes = self.weight_bytes
        peak = gpu.peak_flops * tp
        bw = gpu.mem_bandwidth * tp
        self._peak, self._bw = peak, bw
        self._w_c, self._w_m = efficiency.power_compute_weight, efficiency.power_memory_weight
        # Seconds per unit of work, per replica (all TP GPUs together).
        self.s_per_lin_token = 2.0 * model.active_params / (efficiency.mfu * peak)
        self.s_per_attn_pair = (4.0 * model.num_layers * model.num_attention_heads * model.dim_head
                                / (efficiency.attn_eff * peak))
        self.s_per_byte = 1.0 / (efficiency.mbu * bw)
        self.flops_per_lin_token = 2.0 * model.active_params
        self.flops_per_attn_pair = 4.0 * model.num_layers * model.num_attention_heads * model.dim_head
        if tp > 1:
            link = gpu.interconnect_gbs * 1e9
            self.s_comm_per_token = 2 * model.num_layers * 2.0 * (tp - 1) / tp * model.hidden_size * bpe / link
            self.s_comm_fixed = 2 * model.num_layers * efficiency.link_latency_s
        else:
            self.s_comm_per_token = 0.0
            self.s_comm_fixed = 0.0
        self.overhead = efficiency.overhead_s
        self.overlap = efficiency.overlap

    # ----------------------------------------------------------------- memory
    def weight_read_bytes(self, n_tokens: int) -> float:
        """Weight bytes read by one iteration over ``n_tokens`` tokens."""
        if self.expert_bytes == 0.0:
            return self.weight_bytes
        e, k = self.model.num_experts, self.model.experts_per_token
        touched = 1.0 - (1.0 - k / e) ** n_tokens  # expected fraction of experts hit
        return self.shared_bytes + self.expert_bytes * touched

    def kv_capacity_blocks(self, gpu_memory_utilization: float = 0.9,
                           max_batched_tokens: int = 8192, max_num_seqs: int = 256) -> int:
        """KV blocks that fit on a replica (vLLM's memory profiling, approximated).

        Per GPU: memory x gpu_memory_utilization - weights/T - activation peak
        - non-torch memory (CUDA context, NCCL buffers, CUDA graphs), divided by
        the bytes of one 16-token block. The activation peak is that of the
        largest batch (max_batched_tokens tokens through attention and MLP) plus
        the sampler's fp32 logits for max_num_seqs sequences.
        """
        m = self.model
        bpe = m.bytes_per_param
        activation = (max_batched_tokens * (4 * m.hidden_size + 2 * m.ffn_size / self.tp) * bpe
                      + max_num_seqs * m.vocab_size * 4.0)
        non_torch = 1.0 * 2**30
        free = (self.gpu.memory_bytes * gpu_memory_utilization - self.weight_bytes / self.tp
                - activation - non_torch)
        return max(0, int(free // (BLOCK_SIZE * self.kv_bytes_per_token_gpu)))

    # ----------------------------------------------------------------- timing
    def iteration(self, n_tokens: int, attn_pairs: float, kv_read_tokens: float) -> tuple[float, float, float]:
        """Time (s), FLOPs and bytes of one iteration (whole replica)."""
        wb = self.weight_read_bytes(n_tokens)
        byts = wb + self.kv_bytes_per_token * (kv_read_tokens + n_tokens)
        t_c = n_tokens * self.s_per_lin_token + attn_pairs * self.s_per_attn_pair
        t_m = byts * self.s_per_byte
        if t_c > t_m:
            t = t_c + self.overlap * t_m
        else:
            t = t_m + self.overlap * t_c
        t += self.overhead + self.s_comm_fixed + n_tokens * self.s_comm_per_token
        flops = n_tokens * self.flops_per_lin_token + attn_pairs * self.flops_per_attn_pair
        return t, flops, byts

    def activity(self, duration: float, flops: float, byts: float) -> float:
        """Power-relevant GPU activity in 0..1 over ``duration`` seconds (see module doc)."""
        if duration <= 0.0:
            return 0.0
        u = (self._w_c * flops / self._peak + self._w_m * byts / self._bw) / duration
        return 1.0 if u > 1.0 else u

    def decode_run(self, d: int, ctx_sum: int) -> "DecodeRun":
        """Closed-form times of consecutive decode-only iterations.

        ``d`` sequences whose cached contexts sum to ``ctx_sum`` before the
        first iteration; iteration k (1-based) attends ``ctx_sum + d*k`` pairs
        and reads ``ctx_sum + d*(k-1)`` cached tokens.
        """
        return DecodeRun(self, d, ctx_sum)


class DecodeRun:
    """t(k) = max(c_k, m_k) + overlap * min(c_k, m_k) + fixed with c_k, m_k affine in k, summed in closed form."""

    __slots__ = ("a_c", "b_c", "a_m", "b_m", "fixed", "overlap", "d", "ctx_sum", "cm", "wb")

    def __init__(self, cm: CostModel, d: int, ctx_sum: int):
        self.cm, self.d, self.ctx_sum = cm, d, ctx_sum
        kvb = cm.kv_bytes_per_token
        self.wb = cm.weight_read_bytes(d)
        # compute: d * s_lin + s_attn * (ctx_sum + d k)
        self.a_c = d * cm.s_per_lin_token + cm.s_per_attn_pair * ctx_sum
        self.b_c = cm.s_per_attn_pair * d
        # memory: (wb + kvb * (ctx_sum + d (k-1) + d)) * s_byte = (wb + kvb*(ctx_sum + d k)) * s_byte
        self.a_m = (self.wb + kvb * ctx_sum) * cm.s_per_byte
        self.b_m = kvb * d * cm.s_per_byte
        self.fixed = cm.overhead + cm.s_comm_fixed + d * cm.s_comm_per_token
        self.overlap = cm.overlap

    def time_of(self, k: int) -> float:
        """Duration of iteration k (1-based), exactly as CostModel.iteration computes it."""
        d, cm = self.d, self.cm
        return cm.iteration(d, self.ctx_sum + d * k, self.ctx_sum + d * (k - 1))[0]

    def total_time(self, n: int) -> float:
        """Sum of the durations of iterations 1..n."""
        if n <= 0:
            return 0.0
        a_c, b_c, a_m, b_m = self.a_c, self.b_c, self.a_m, self.b_m
        # k <= k_star: one side dominates, k > k_star: the other (one crossover at most)
        if b_c == b_m:
            k_star = n if a_m >= a_c else 0
        else:
            k_star = min(n, max(0, math.floor((a_m - a_c) / (b_c - b_m))))
        mem_first = (b_c > b_m) if b_c != b_m else True
        if not mem_first:  # compute dominates first (b_c < b_m)
            hi = _arith(a_c, b_c, 1, k_star) + _arith(a_m, b_m, k_star + 1, n)
            lo = _arith(a_m, b_m, 1, k_star) + _arith(a_c, b_c, k_star + 1, n)
        else:
            hi = _arith(a_m, b_m, 1, k_star) + _arith(a_c, b_c, k_star + 1, n)
            lo = _arith(a_c, b_c, 1, k_star) + _arith(a_m, b_m, k_star + 1, n)
        return hi + self.overlap * lo + n * self.fixed

    def totals(self, n: int) -> tuple[float, float]:
        """Total FLOPs and bytes of iterations 1..n."""
        cm, d = self.cm, self.d
        pairs = n * self.ctx_sum + d * n * (n + 1) / 2.0
        flops = n * d * cm.flops_per_lin_token + pairs * cm.flops_per_attn_pair
        byts = n * self.wb + cm.kv_bytes_per_token * pairs
        return flops, byts

    def iterations_until(self, dt: float, n_max: int) -> int:
        """Smallest n in 1..n_max with total_time(n) >= dt (n_max if none)."""
        if self.total_time(n_max) < dt:
            return n_max
        lo, hi = 1, n_max
        while lo < hi:
            mid = (lo + hi) // 2
            if self.total_time(mid) >= dt:
                hi = mid
            else:
                lo = mid + 1
        return lo


def _arith(a: float, b: float, k0: int, k1: int) -> float:
    """sum_{k=k0}^{k1} (a + b k)."""
    if k1 < k0:
        return 0.0
    cnt = k1 - k0 + 1
    return a * cnt + b * (k0 + k1) * cnt / 2.0
