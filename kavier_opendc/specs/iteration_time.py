"""Iteration time, as one formula for the engine and the calibration.

:class:`IterationTimer` times one iteration of a model on a TP group of one GPU
type under a :class:`~kavier_opendc.specs.profiles.GPUProfile` (the formula is
in that module's docstring): the engine's cost model (``engine/cost_model.py``)
and the calibration (``kavier_opendc/calibration``) both use it, so what is
fitted is exactly what is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

from kavier_opendc.specs.catalog import GPUSpec, ModelSpec
from kavier_opendc.specs.profiles import GPUProfile


def model_weight_split(model: ModelSpec) -> tuple[float, float]:
    """(body parameters, LM-head parameters) that take part in matrix products.

    The input embedding is a lookup (no FLOPs, a few rows read), so it is left
    out unless it is tied to the LM head, which is a (vocab x hidden) GEMM run
    only for the tokens that are sampled.
    """
    head = float(model.vocab_size * model.hidden_size)
    embedding = 0.0 if model.tie_word_embeddings else head
    body = max(0.0, model.total_params - embedding - head)
    return body, head


@dataclass(frozen=True)
class IterationShape:
    """The work of one iteration on one replica (all TP GPUs together)."""

    n_tokens: float  # tokens through the linear layers
    n_seqs: float  # sequences that sample a token (LM head, per-sequence overhead)
    attn_pairs: float  # (query, key) pairs attended
    kv_read_tokens: float  # cached tokens whose K/V are read


class IterationTimer:
    """Iteration times of one model on one GPU type with TP degree ``tp`` under ``profile``."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int, profile: GPUProfile, vllm_allreduce: bool = True):
        """``vllm_allreduce``: the software uses vLLM's custom all-reduce where it applies (else NCCL always)."""
        self.model, self.gpu, self.tp, self.profile = model, gpu, tp, profile
        bpe = model.bytes_per_param  # the weights' datatype
        act = model.bytes_per_activation  # the activations' (16-bit for an FP8/INT4/FP4 checkpoint)
        self.peak = gpu.peak_flops * tp  # FP16/BF16: attention (FlashAttention runs in 16 bits)
        # the linear layers' GEMMs: at the FP8/FP4 peak where the GPU has one for the weights' datatype
        # (W8A8/W4A4), else at the FP16 peak (weight-only: FP8 Marlin on Ampere, GPTQ/AWQ INT4/INT8)
        self.gemm_dtype = gpu.gemm_dtype(model.dtype)
        self.gemm_peak = gpu.gemm_peak_flops(model.dtype) * tp
        self.bw = gpu.mem_bandwidth * tp
        body, head = model_weight_split(model)
        self.head_bytes = head * bpe
        self.body_bytes = body * bpe
        if model.num_experts > 1:
            # the routed experts of the MoE layers (dense first layers and shared experts are always read)
            self.expert_bytes = (
                (3.0 if model.gated_mlp else 2.0)
                * model.hidden_size
                * model.ffn_size
                * (model.num_layers - model.dense_layers)
                * model.num_experts
                * bpe
            )
            self.shared_bytes = max(0.0, self.body_bytes - self.expert_bytes)
        else:
            self.expert_bytes = 0.0
            self.shared_bytes = self.body_bytes
        active_body = max(0.0, model.active_params - (model.total_params - body))
        self.flops_per_body_token = 2.0 * active_body
        self.flops_per_head_token = 2.0 * head
        self.flops_per_attn_pair = 4.0 * model.num_layers * model.num_attention_heads * model.dim_head
        self.kv_bytes_per_token = model.kv_bytes_per_token_gpu(tp) * tp
        self.s_per_attn_pair = self.flops_per_attn_pair / (profile.attn_prefill_eff * self.peak)
        self.s_per_kv_byte = 1.0 / (profile.attn_decode_mbu * self.bw)
        self.allreduce_bytes_per_token = model.hidden_size * act
        self.allreduces = 2 * model.num_layers if tp > 1 else 0
        # an NVLink-class link (faster than the GPU's PCIe) lets vLLM use its custom all-reduce
        self.nvlink = vllm_allreduce and gpu.interconnect_gbs > gpu.pcie_gbs
        # elementwise kernels: a floor per layer, and activation traffic per token on each GPU
        ffn_active = model.ffn_size * (model.experts_per_token if model.num_experts > 1 else 1)
        self.layer_fixed = model.num_layers * profile.layer_fixed_s
        self.s_per_token_elementwise = (
            model.num_layers
            * profile.act_passes
            * (model.hidden_size + ffn_active / tp)
            * act
            / (profile.gemm_mbu * gpu.mem_bandwidth)
        )

    def body_read_bytes(self, n_tokens: float) -> float:
        """Linear-layer weight bytes read for ``n_tokens`` tokens (MoE: only experts some token hits)."""
        if self.expert_bytes == 0.0:
            return self.body_bytes
        e, k = self.model.num_experts, self.model.experts_per_token
        touched = 1.0 - (1.0 - k / e) ** n_tokens
        return self.shared_bytes + self.expert_bytes * touched

    def body_time(self, n_tokens: float) -> float:
        """Linear layers plus the TP all-reduces: depends on the token count only."""
        p = self.profile
        t = p.gemm_time(self.body_read_bytes(n_tokens), n_tokens * self.flops_per_body_token, self.gemm_peak, self.bw)
        t += self.layer_fixed + n_tokens * self.s_per_token_elementwise
        if self.allreduces:
            t += self.allreduces * p.allreduce_time(
                n_tokens * self.allreduce_bytes_per_token, self.tp, self.gpu.interconnect_gbs, self.nvlink
            )
        return t

    def seq_time(self, n_seqs: float) -> float:
        """LM head and framework overhead: depends on the sampled sequences only."""
        p = self.profile
        t = p.overhead_fixed_s + p.overhead_per_seq_s * n_seqs
        if n_seqs > 0:
            t += p.gemm_time(self.head_bytes, n_seqs * self.flops_per_head_token, self.gemm_peak, self.bw)
        return t

    def attn_time(self, attn_pairs: float, kv_tokens: float) -> float:
        return attn_pairs * self.s_per_attn_pair + kv_tokens * self.kv_bytes_per_token * self.s_per_kv_byte

    def time(self, shape: IterationShape) -> float:
        return (
            self.body_time(shape.n_tokens)
            + self.seq_time(shape.n_seqs)
            + self.attn_time(shape.attn_pairs, shape.kv_read_tokens + shape.n_tokens)
        )
