"""Iteration cost model: how long one batched forward pass of a replica takes.

One *iteration* of a replica processes a batch made of prefill chunks (``c``
new prompt tokens on top of ``p`` tokens already in the KV cache) and decode
sequences (one new token on top of ``c`` cached tokens). Its time is the sum
of the kernel times of :class:`kavier_opendc.specs.profiles.IterationTimer`,
per replica (a TP group of ``T`` GPUs, peaks and bandwidths summed over it):

    t_iter = t_gemm(n_tokens, n_seqs) + t_attn(A, R + n_tokens) + t_comm(n_tokens) + t_over(n_seqs)

             A = sum over prefill chunks of (c*p + c*(c+1)/2)
               + sum over decode sequences of (c + 1)      (attended pairs)
             R = tokens whose KV is read (p of each chunk, c of each decode)

with the GEMMs on a smooth memory/compute roofline, attention FLOPs at the
prefill attention efficiency, KV traffic at the decode attention bandwidth,
the TP all-reduces on the GPU's measured NCCL curve and the framework's
per-iteration and per-sequence overhead. Every efficiency comes from the
GPU's *profile* in the catalogue (``specs/profiles.yaml``, fitted by
``kavier calibrate`` from measurements; derived from the nearest measured GPU
of the same architecture when a GPU has none); see ``specs/profiles.py``.

The *power-relevant activity* of an iteration, used as ``gpu_utilization`` in
the timeline that OpenDC turns into watts, is

    u = min(1, (w_c * F / (T * peak_flops) + (w_m * B_w + w_kv * B_kv) / (T * mem_bandwidth)) / t_iter)

with F its FLOPs (2 x active parameters per token + 4 L H_q d_head per
attended pair), B_w the weight bytes it reads and B_kv the KV-cache bytes it
reads and writes: achieved FLOP/s and achieved bytes/s, each relative to the
datasheet peak, weighted by how much power each draws. The framework's CPU
time per step is part of t_iter with no work in it, so it counts as GPU idle.
The weights are the profile's ``power_compute_weight``, ``power_memory_weight``
(weight bytes) and ``power_kv_weight`` (KV bytes), fitted on measured GPU
power of vLLM 0.5-0.6 run offline (Argonne LLM-Inference-Bench: A100-40GB
and H100, Llama-2-7B and Llama-3-8B, batch 1-64), each row simulated under
that engine's framework (``vllm-0.5-offline``), per GPU where measured and
over all rows for the other GPUs (``bench/build_profiles.py`` with
``bench/calibrate_power.py``): 1.6 % mean absolute error on those 16
measurements with a linear power model between idle and maximum power.

Why a KV byte weighs more than a weight byte (1.33 on the A100-40GB and 1.37
on the H100, against 0.71 and 0.80: fitted apart, alike): Llama-2-7B (32 KV
heads, 4 x the KV bytes per token of Llama-3-8B's 8) draws up to 140 W more
than Llama-3-8B at the same batch. With one weight for all bytes
(``calibrate_power.py --tied``) the fit can follow the rise of power with the
batch only through the compute weight (2.5-3.3: a GEMM would reach the power
limit at a third of its peak FLOP/s) and still leaves the Llama-2-7B rows at
batch 16-64 12-22 % low. A plausible reason: weights are streamed in bulk
tile copies into GEMMs shared by the whole batch, while decode attention
gathers the KV cache block by block through the block table, with its dot
products, softmax and rescaling on every byte read. With these weights a
compute-bound GEMM (0.8 of peak) or a KV-bound decode reaches the power
limit, as GPUs do, and weight streaming alone (batch 1) about half of it.
"""

from __future__ import annotations

import dataclasses
import math

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.clock import ClockKnob, check_knob, clock_ladder, power_scale
from kavier_opendc.engine.kv_manager import BLOCK_SIZE
from kavier_opendc.specs.catalog import GPUSpec, ModelSpec
from kavier_opendc.specs.frameworks import FrameworkProfile
from kavier_opendc.specs.iteration_time import IterationTimer
from kavier_opendc.specs.profiles import GPUProfile

# The efficiency profile of a cost model; ``None`` (the default) means the
# GPU's own profile from the catalogue.
Efficiency = GPUProfile
DEFAULT_EFFICIENCY = None


def profile_of(gpu: GPUSpec) -> GPUProfile:
    """The catalogue's profile of ``gpu`` (measured, or derived for GPUs without measurements)."""
    if gpu.profile is not None:
        return gpu.profile
    from kavier_opendc.specs.catalog import default_catalog

    return default_catalog().profile_for(gpu)


class CostModel:
    """Iteration times for one model served on one GPU type with TP degree ``tp``.

    ``efficiency`` overrides the GPU's catalogue profile (tests pass a profile
    with round numbers to check times by hand).
    """

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        tp: int = 1,
        efficiency: GPUProfile | None = DEFAULT_EFFICIENCY,
        framework: FrameworkProfile | None = None,
        clock_ratio: float = 1.0,
    ):
        """``framework`` (default: vLLM v1, whose step overhead is the GPU profile's) sets the CPU time per
        step and the all-reduce implementation; ``clock_ratio`` (SM clock / boost clock, engine/clock.py)
        scales the compute peaks and the activity's power."""
        if tp < 1:
            raise KavierInputError(f"tensor parallelism must be >= 1, got {tp}", location="tp")
        dp = model.attn_dp if model.attn_dp > 1 else 1
        if tp % dp != 0:
            raise KavierInputError(
                f"attention data parallelism over {dp} ranks cannot split a replica of {tp} GPUs evenly",
                location="data_parallel_size",
                expected="a data-parallel size that divides the replica's GPUs (--tp)",
            )
        attn_tp = tp // dp
        if model.num_attention_heads % attn_tp != 0:
            raise KavierInputError(
                f"{model.name} has {model.num_attention_heads} attention heads, which cannot be "
                f"split evenly over {attn_tp} GPUs",
                location="tp",
                expected="a TP degree that divides the number of attention heads",
            )
        profile = efficiency if efficiency is not None else profile_of(gpu)
        self.model, self.gpu, self.tp, self.eff = model, gpu, tp, profile
        overhead = framework.overhead_for(gpu.name, tp) if framework is not None else None
        timed = profile
        if overhead is not None:  # the framework's step overhead in place of the GPU profile's
            timed = dataclasses.replace(
                profile, overhead_fixed_s=overhead.fixed_s, overhead_per_seq_s=overhead.per_seq_s
            )
        self.overhead = overhead
        self.clock_ratio = clock_ratio
        self.clocked = clock_ratio != 1.0
        self._power_scale = power_scale(clock_ratio) if self.clocked else 1.0
        timed_gpu = gpu
        if self.clocked:  # the SMs compute at r x the datasheet peaks; the HBM keeps its clock
            timed_gpu = dataclasses.replace(
                gpu,
                peak_fp16_tflops=gpu.peak_fp16_tflops * clock_ratio,
                peak_fp8_tflops=gpu.peak_fp8_tflops * clock_ratio if gpu.peak_fp8_tflops else gpu.peak_fp8_tflops,
                peak_fp4_tflops=gpu.peak_fp4_tflops * clock_ratio if gpu.peak_fp4_tflops else gpu.peak_fp4_tflops,
                peak_int8_tops=gpu.peak_int8_tops * clock_ratio if gpu.peak_int8_tops else gpu.peak_int8_tops,
            )
        self.timer = timer = IterationTimer(
            model, timed_gpu, tp, timed, vllm_allreduce=framework is None or framework.allreduce == "vllm-custom"
        )
        a = timer.attn_tp  # GPUs holding one token's KV (the TP group, or one attention-DP rank)
        self.kv_bytes_per_token_gpu = model.kv_bytes_per_token_gpu(a)
        self.kv_bytes_per_token = self.kv_bytes_per_token_gpu * a  # over the whole group
        self.weight_bytes = model.weight_bytes
        self._peak, self._bw = timer.peak, timer.bw
        # power-relevant activity per FLOP, per weight byte and per KV byte (see the module doc)
        # (FLOPs against the GEMMs' peak: the FP8 peak for W8A8, else the FP16 peak, as before)
        self._u_flop = profile.power_compute_weight / timer.replica_gemm_peak
        self._u_wbyte = profile.power_memory_weight / timer.replica_bw
        self._u_kvbyte = profile.power_kv_weight / timer.replica_bw
        # Seconds per unit of attention work, per replica (all TP GPUs together).
        self.s_per_attn_pair = timer.s_per_attn_pair
        self.s_per_kv_byte = timer.s_per_kv_byte
        self.s_per_kv_token = self.kv_bytes_per_token * timer.s_per_kv_byte  # per replica (DP ranks at once)
        self.flops_per_lin_token = 2.0 * model.active_params
        self.flops_per_attn_pair = timer.flops_per_attn_pair
        # Times that depend on the token count / sequence count only, memoised:
        # a simulation sees a few thousand distinct values at most.
        self._body: dict[int, float] = {}
        self._seq: dict[int, float] = {}
        # dense models read the same weight bytes whatever the batch
        self._dense_weight_bytes = (timer.body_bytes + timer.head_bytes) if timer.expert_bytes == 0.0 else None
        # weights held by one GPU: the TP group's share; split MoE layouts (EP / attention DP): the
        # non-expert weights over one attention rank, the experts over all the replica's GPUs
        if timer.split:
            experts = timer.expert_bytes
            self.weight_bytes_per_gpu = (model.weight_bytes - experts) / a + experts / tp
        else:
            self.weight_bytes_per_gpu = model.weight_bytes / tp
        self._s_per_attn_token = self.s_per_attn_pair + self.s_per_kv_token  # a decode step's pair reads a KV token

    # ----------------------------------------------------------------- memory
    def weight_read_bytes(self, n_tokens: int) -> float:
        """Weight bytes read by one iteration over ``n_tokens`` tokens (MoE: experts touched)."""
        if self._dense_weight_bytes is not None:
            return self._dense_weight_bytes
        t = self.timer
        return t.body_read_bytes(n_tokens) + t.head_read_bytes

    def kv_capacity_blocks(
        self, gpu_memory_utilization: float = 0.9, max_batched_tokens: int = 8192, max_num_seqs: int = 256
    ) -> int:
        """KV blocks that fit on a replica (vLLM's memory profiling, approximated).

        Per GPU: memory x gpu_memory_utilization - weights/T - activation peak
        - non-torch memory (CUDA context, NCCL buffers, CUDA graphs), divided by
        the bytes of one 16-token block. The activation peak is that of the
        largest batch (max_batched_tokens tokens through attention and MLP) plus
        the sampler's fp32 logits for max_num_seqs sequences.
        """
        m = self.model
        bpe = m.bytes_per_activation  # activations are 16-bit also for FP8/INT4 weights
        a = self.timer.attn_tp
        activation = (
            max_batched_tokens * (4 * m.hidden_size + 2 * m.ffn_size / a) * bpe + max_num_seqs * m.vocab_size * 4.0
        )
        non_torch = 1.0 * 2**30
        free = self.gpu.memory_bytes * gpu_memory_utilization - self.weight_bytes_per_gpu - activation - non_torch
        blocks = max(0, int(free // (BLOCK_SIZE * self.kv_bytes_per_token_gpu)))
        dp = self.timer.dp
        return blocks * dp if dp > 1 else blocks  # attention DP: each rank its own KV cache

    # ----------------------------------------------------------------- timing
    def body_time(self, n_tokens: int) -> float:
        """Linear layers and TP all-reduces of ``n_tokens`` tokens (memoised)."""
        t = self._body.get(n_tokens)
        if t is None:
            t = self.timer.body_time(n_tokens)
            o = self.overhead
            if o is not None and (o.per_token_s or o.per_token_sq_s):  # framework time that grows with tokens
                t += o.per_token_s * n_tokens + o.per_token_sq_s * n_tokens * n_tokens
            self._body[n_tokens] = t
        return t

    def seq_time(self, n_seqs: int) -> float:
        """LM head and framework overhead of ``n_seqs`` sampled sequences (memoised)."""
        t = self._seq.get(n_seqs)
        if t is None:
            t = self._seq[n_seqs] = self.timer.seq_time(n_seqs)
        return t

    def iteration(
        self, n_tokens: int, attn_pairs: float, kv_read_tokens: float, n_seqs: int | None = None
    ) -> tuple[float, float, float, float]:
        """Time (s), FLOPs, weight bytes and KV-cache bytes of one iteration (whole replica).

        ``n_seqs`` is the number of sequences in the batch (decodes plus
        prefill chunks); unknown (None) counts every token as one.
        """
        kv_tokens = kv_read_tokens + n_tokens
        if n_seqs is None:
            n_seqs = n_tokens
        body = self._body.get(n_tokens)
        if body is None:
            body = self.body_time(n_tokens)
        seq = self._seq.get(n_seqs)
        if seq is None:
            seq = self.seq_time(n_seqs)
        t = body + seq + attn_pairs * self.s_per_attn_pair + kv_tokens * self.s_per_kv_token
        flops = n_tokens * self.flops_per_lin_token + attn_pairs * self.flops_per_attn_pair
        wb = self._dense_weight_bytes
        return (
            t,
            flops,
            wb if wb is not None else self.weight_read_bytes(n_tokens),
            self.kv_bytes_per_token * kv_tokens,
        )

    def activity(self, duration: float, flops: float, weight_bytes: float, kv_bytes: float) -> float:
        """Power-relevant GPU activity in 0..1 over ``duration`` seconds (see module doc)."""
        if duration <= 0.0:
            return 0.0
        u = (self._u_flop * flops + self._u_wbyte * weight_bytes + self._u_kvbyte * kv_bytes) / duration
        u = 1.0 if u > 1.0 else u
        return u * self._power_scale if self.clocked else u

    def decode_run(self, d: int, ctx_sum: int) -> "DecodeRun":
        """Closed-form times of consecutive decode-only iterations.

        ``d`` sequences whose cached contexts sum to ``ctx_sum`` before the
        first iteration; iteration k (1-based) attends ``ctx_sum + d*k`` pairs
        and reads ``ctx_sum + d*(k-1)`` cached tokens.
        """
        return DecodeRun(self, d, ctx_sum)


class CappedCostModel(CostModel):
    """A cost model under a power cap: each iteration at the highest clock whose power fits (engine/clock.py).

    Itself the full-clock model (attributes other code reads); the clocked
    models of the ladder are built when first needed. The clock chosen for an
    iteration is remembered by its work (FLOPs, weight and KV bytes, which do
    not depend on the clock) for the activity the replica asks next.
    """

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        power_cap_w: float,
        tp: int = 1,
        efficiency: GPUProfile | None = DEFAULT_EFFICIENCY,
        framework: FrameworkProfile | None = None,
    ):
        super().__init__(model, gpu, tp, efficiency, framework)
        self.clocked = True
        self.power_cap_w = power_cap_w
        self._args = (model, gpu, tp, efficiency, framework)
        self._ladder = clock_ladder(gpu)
        self._models: dict[int, CostModel] = {0: self}
        self._chosen: dict[tuple[float, float, float], CostModel] = {}
        # dynamic power budget as a fraction of (max - idle)
        self._budget = (power_cap_w - gpu.idle_power_w) / (gpu.max_power_w - gpu.idle_power_w)

    def level(self, i: int) -> CostModel:
        m = self._models.get(i)
        if m is None:
            model, gpu, tp, eff, fw = self._args
            m = self._models[i] = CostModel(model, gpu, tp, eff, fw, clock_ratio=self._ladder[i])
        return m

    def _solve(self, n_tokens: int, attn_pairs: float, kv_read_tokens: float, n_seqs: int | None) -> CostModel:
        """The highest clock of the ladder at which this iteration's power fits the cap (bisection)."""

        def fits(i: int) -> bool:
            m = self.level(i)
            t, f, wb, kvb = CostModel.iteration(m, n_tokens, attn_pairs, kv_read_tokens, n_seqs)
            return CostModel.activity(m, t, f, wb, kvb) <= self._budget

        if fits(0):
            return self
        lo, hi = 0, len(self._ladder) - 1  # fits(lo) is False; the lowest clock is taken if nothing fits
        if not fits(hi):
            return self.level(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
        return self.level(hi)

    def iteration(
        self, n_tokens: int, attn_pairs: float, kv_read_tokens: float, n_seqs: int | None = None
    ) -> tuple[float, float, float, float]:
        m = self._solve(n_tokens, attn_pairs, kv_read_tokens, n_seqs)
        out = CostModel.iteration(m, n_tokens, attn_pairs, kv_read_tokens, n_seqs)
        if len(self._chosen) > 100_000:
            self._chosen.clear()
        self._chosen[(out[1], out[2], out[3])] = m
        return out

    def activity(self, duration: float, flops: float, weight_bytes: float, kv_bytes: float) -> float:
        m = self._chosen.get((flops, weight_bytes, kv_bytes), self)
        return CostModel.activity(m, duration, flops, weight_bytes, kv_bytes)

    def clock_of(self, n_tokens: int, attn_pairs: float, kv_read_tokens: float, n_seqs: int | None = None) -> float:
        """The clock ratio this iteration runs at (tests, reports)."""
        return self._solve(n_tokens, attn_pairs, kv_read_tokens, n_seqs).clock_ratio

    def decode_run(self, d: int, ctx_sum: int) -> "DecodeRun":
        """A closed-form decode run at the clock solved for its first iteration."""
        m = self._solve(d, ctx_sum + d, ctx_sum, d)
        return CostModel.decode_run(m, d, ctx_sum)


def make_cost_model(
    model: ModelSpec,
    gpu: GPUSpec,
    tp: int = 1,
    efficiency: GPUProfile | None = DEFAULT_EFFICIENCY,
    framework: FrameworkProfile | None = None,
    knob: ClockKnob | None = None,
    cap_field: str = "power_cap_w",
) -> CostModel:
    """The cost model of a GPU group under its clock knob (none: the plain model, unchanged)."""
    if knob is None or not knob.active:
        return CostModel(model, gpu, tp, efficiency, framework)
    check_knob(knob, gpu, cap_field)
    if knob.sm_clock_mhz is not None:
        return CostModel(model, gpu, tp, efficiency, framework, clock_ratio=knob.sm_clock_mhz / gpu.boost_clock_mhz)
    assert knob.power_cap_w is not None
    return CappedCostModel(model, gpu, knob.power_cap_w, tp, efficiency, framework)


class DecodeRun:
    """t(k) = a + b k for consecutive decode iterations of the same ``d`` sequences, summed in closed form.

    The linear layers, all-reduces and overheads depend on ``d`` only; the
    attention work of iteration k is ``ctx_sum + d k`` pairs and KV tokens.
    """

    __slots__ = ("a", "b", "d", "ctx_sum", "cm", "wb")

    def __init__(self, cm: CostModel, d: int, ctx_sum: int):
        self.cm, self.d, self.ctx_sum = cm, d, ctx_sum
        wb = cm._dense_weight_bytes
        self.wb = wb if wb is not None else cm.weight_read_bytes(d)
        body = cm._body.get(d)
        if body is None:
            body = cm.body_time(d)
        seq = cm._seq.get(d)
        if seq is None:
            seq = cm.seq_time(d)
        per_token = cm._s_per_attn_token
        self.a = body + seq + per_token * ctx_sum
        self.b = per_token * d

    def time_of(self, k: int) -> float:
        """Duration of iteration k (1-based), exactly as CostModel.iteration computes it."""
        d = self.d
        return self.cm.iteration(d, self.ctx_sum + d * k, self.ctx_sum + d * (k - 1), d)[0]

    def total_time(self, n: int) -> float:
        """Sum of the durations of iterations 1..n."""
        if n <= 0:
            return 0.0
        return self.a * n + self.b * (n * (n + 1) / 2.0)

    def totals(self, n: int) -> tuple[float, float, float]:
        """Total FLOPs, weight bytes and KV-cache bytes of iterations 1..n."""
        cm, d = self.cm, self.d
        pairs = n * self.ctx_sum + d * n * (n + 1) / 2.0
        flops = n * d * cm.flops_per_lin_token + pairs * cm.flops_per_attn_pair
        return flops, n * self.wb, cm.kv_bytes_per_token * pairs

    def iterations_until(self, dt: float, n_max: int) -> int:
        """Smallest n in 1..n_max with total_time(n) >= dt (n_max if none).

        total_time is a quadratic in n: solve it, then step by one where
        rounding put the root on the wrong side.
        """
        a, b = self.a, self.b
        if a * n_max + b * (n_max * (n_max + 1) / 2.0) < dt:
            return n_max
        if b > 0.0:
            lin = a + b / 2.0
            n = math.ceil((2.0 * dt) / (lin + math.sqrt(lin * lin + 2.0 * b * dt)))
        else:
            n = math.ceil(dt / a) if a > 0.0 else 1
        if n < 1:
            n = 1
        elif n > n_max:
            n = n_max
        while n > 1 and self.total_time(n - 1) >= dt:
            n -= 1
        while n < n_max and self.total_time(n) < dt:
            n += 1
        return n
