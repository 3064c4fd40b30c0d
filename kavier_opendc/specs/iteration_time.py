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


#: GPUs of one node (HGX/DGX): an expert-parallel group larger than this spans nodes
NODE_GPUS = 8
#: the inter-node link per GPU when an EP group spans nodes: one 400 Gb/s NDR InfiniBand / ConnectX-7 port
#: per GPU (NVIDIA DGX H100/H200 datasheet: 8 x 400 Gb/s ConnectX-7 for 8 GPUs), 50 GB/s per direction
INTER_NODE_GBS = 50.0
#: one all-to-all's fixed cost: one synchronisation, as the custom all-reduce's (assumed; no all-to-all
#: measurement in the shared data)
ALL_TO_ALL_LATENCY_S = 10e-6


class IterationTimer:
    """Iteration times of one model on one GPU type with ``tp`` GPUs per replica under ``profile``.

    A dense model, or a MoE model served as before (no ``expert_parallel``, ``attn_dp`` 1), is a TP group of
    ``tp`` GPUs: every weight matrix, the experts' too, is split over all of them. A MoE model served with
    expert parallelism and/or attention data parallelism (the ModelSpec's serving settings, from the engine
    knobs) splits the replica's ``tp`` GPUs into ``attn_dp`` attention ranks of ``tp / attn_dp`` GPUs each
    (SGLang's --tp/--dp-size with --enable-dp-attention; vLLM's --tensor-parallel-size tp/dp with
    --data-parallel-size dp), each holding the non-expert weights TP-sharded, its own KV cache and an even
    share of the batch; the experts are either split whole over all ``tp`` GPUs (EP = tp, E/EP experts each;
    vLLM's EP size = TP x DP) or, without EP, TP-sharded over all ``tp`` GPUs (vLLM's default expert TP
    group of size DP x TP). See :meth:`expert_time` and :meth:`moe_comm_time`.
    """

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int, profile: GPUProfile, vllm_allreduce: bool = True):
        """``vllm_allreduce``: the software uses vLLM's custom all-reduce where it applies (else NCCL always)."""
        self.model, self.gpu, self.tp, self.profile = model, gpu, tp, profile
        dp = model.attn_dp if model.attn_dp > 1 else 1
        # split: the MoE layout of expert/attention-data parallelism; else the plain TP group as before
        self.split = model.num_experts > 1 and (model.expert_parallel or dp > 1)
        self.dp = dp if self.split else 1
        a = tp // self.dp if self.split else tp  # GPUs of one attention rank
        self.attn_tp = a
        bpe = model.bytes_per_param  # the weights' datatype
        act = model.bytes_per_activation  # the activations' (16-bit for an FP8/INT4/FP4 checkpoint)
        self.peak = gpu.peak_flops * a  # FP16/BF16: attention (FlashAttention runs in 16 bits)
        # the linear layers' GEMMs: at the FP8/FP4 peak where the GPU has one for the weights' datatype
        # (W8A8/W4A4), else at the FP16 peak (weight-only: FP8 Marlin on Ampere, GPTQ/AWQ INT4/INT8)
        self.gemm_dtype = gpu.gemm_dtype(model.dtype)
        self.gemm_peak = gpu.gemm_peak_flops(model.dtype) * a
        self.bw = gpu.mem_bandwidth * a
        # the whole replica's peaks (power activity): every rank's GPUs
        self.replica_gemm_peak = self.gemm_peak * self.dp if self.dp > 1 else self.gemm_peak
        self.replica_bw = self.bw * self.dp if self.dp > 1 else self.bw
        body, head = model_weight_split(model)
        self.head_bytes = head * bpe
        self.head_read_bytes = self.head_bytes * self.dp if self.dp > 1 else self.head_bytes
        if model.expert_dtype and model.expert_dtype != model.dtype and model.num_experts > 1:
            # the routed experts in their own datatype (gpt-oss: MXFP4), the rest in the model's
            experts = model.routed_expert_params
            self.expert_bytes = experts * model.bytes_per_expert_param
            self.shared_bytes = max(0.0, body - experts) * bpe
            self.body_bytes = self.shared_bytes + self.expert_bytes
        else:
            self.body_bytes = body * bpe
            if model.num_experts > 1:
                # the routed experts of the MoE layers (dense first layers and shared experts are always read)
                self.expert_bytes = model.routed_expert_params * bpe
                self.shared_bytes = max(0.0, self.body_bytes - self.expert_bytes)
            else:
                self.expert_bytes = 0.0
                self.shared_bytes = self.body_bytes
        active_body = max(0.0, model.active_params - (model.total_params - body))
        self.flops_per_body_token = 2.0 * active_body
        self.flops_per_head_token = 2.0 * head
        # the routed experts' GEMMs: at the expert datatype's peak where the GPU has it (W4A4 MXFP4 on
        # Blackwell), else weight-only at the FP16 peak (vLLM's Marlin/Triton MXFP4 kernels on Hopper)
        self.expert_dtype = model.expert_dtype or model.dtype
        self.expert_peak_gpu = gpu.gemm_peak_flops(self.expert_dtype)
        moe_layers = model.num_layers - model.dense_layers
        self.flops_per_expert_token = (
            2.0 * model.routed_expert_params / model.num_experts * model.experts_per_token
            if model.num_experts > 1
            else 0.0
        )  # the k routed experts of one token, every MoE layer
        self.flops_per_shared_token = max(0.0, self.flops_per_body_token - self.flops_per_expert_token)
        # one time scale for the body's GEMMs (one roofline): expert FLOPs counted at the GEMM peak's rate
        self.expert_flop_scale = (
            gpu.gemm_peak_flops(model.dtype) / self.expert_peak_gpu if self.expert_dtype != model.dtype else 1.0
        )
        self.flops_per_attn_pair = 4.0 * model.num_layers * model.num_attention_heads * model.dim_head
        self.kv_bytes_per_token = model.kv_bytes_per_token_gpu(a) * a
        self.s_per_attn_pair = self.flops_per_attn_pair / (profile.attn_prefill_eff * self.peak)
        self.s_per_kv_byte = 1.0 / (profile.attn_decode_mbu * self.bw)
        self.attn_fixed = model.num_layers * profile.attn_fixed_s  # one attention kernel per layer and iteration
        if self.dp > 1:  # the batch split evenly over the attention ranks, which run at once
            self.s_per_attn_pair /= self.dp
            self.s_per_kv_byte /= self.dp
        self.allreduce_bytes_per_token = model.hidden_size * act
        if not self.split:
            self.allreduces = 2 * model.num_layers if tp > 1 else 0
        else:  # within an attention rank: attention's output projection, the dense layers' MLP
            self.allreduces = model.num_layers + model.dense_layers if a > 1 else 0
        # an NVLink-class link (faster than the GPU's PCIe) lets vLLM use its custom all-reduce
        self.nvlink = vllm_allreduce and gpu.interconnect_gbs > gpu.pcie_gbs
        # an all-reduce over more GPUs than a node's runs at the inter-node port's speed (NCCL's ring
        # crosses it), without vLLM's custom all-reduce (one node only): (link GB/s, custom) per group size
        self.ar_link_gbs, self.ar_nvlink = self._allreduce_link(tp)
        self.attn_ar_link_gbs, self.attn_ar_nvlink = self._allreduce_link(self.attn_tp)
        # elementwise kernels: a floor per layer, and activation traffic per token on each GPU
        ffn_active = model.ffn_size * (model.experts_per_token if model.num_experts > 1 else 1)
        self.layer_fixed = model.num_layers * profile.layer_fixed_s
        self.s_per_token_elementwise = (
            model.num_layers
            * profile.act_passes
            * (model.hidden_size + ffn_active / a)
            * act
            / (profile.gemm_mbu * gpu.mem_bandwidth)
        )
        # expert parallelism: the all-to-all's link (NVLink within a node, the inter-node port beyond)
        self.moe_layers = moe_layers
        self.ep = tp if self.split and model.expert_parallel else 1
        self.imbalance = max(1.0, model.expert_imbalance)
        self.a2a_link_gbs = gpu.interconnect_gbs if tp <= NODE_GPUS else min(gpu.interconnect_gbs, INTER_NODE_GBS)
        self.a2a_bytes_per_token = model.hidden_size * model.experts_per_token * act

    def _allreduce_link(self, gpus: int) -> tuple[float, bool]:
        """(link GB/s, vLLM custom all-reduce) of an all-reduce over ``gpus`` GPUs: NVLink within a node,
        the inter-node port beyond it."""
        if gpus <= NODE_GPUS:
            return self.gpu.interconnect_gbs, self.nvlink
        return min(self.gpu.interconnect_gbs, INTER_NODE_GBS), False

    def touched_fraction(self, n_tokens: float) -> float:
        """Expected fraction of a layer's routed experts that at least one of ``n_tokens`` tokens hits."""
        e, k = self.model.num_experts, self.model.experts_per_token
        return 1.0 - (1.0 - k / e) ** n_tokens

    def touched_experts_per_gpu(self, n_tokens: float) -> float:
        """Under EP, experts per layer the busiest GPU reads: its E/EP experts receive imbalance x the mean
        share of the tokens, so each is hit as by imbalance x T tokens: E/EP x (1 - (1 - k/E)^(imbalance x T))
        (at most E/EP; the uniform share at imbalance 1)."""
        return self.model.num_experts / self.ep * self.touched_fraction(n_tokens * self.imbalance)

    def body_read_bytes(self, n_tokens: float) -> float:
        """Linear-layer weight bytes read for ``n_tokens`` tokens (MoE: only experts some token hits)."""
        if self.expert_bytes == 0.0:
            return self.body_bytes
        touched = self.touched_fraction(n_tokens)
        shared = self.shared_bytes * self.dp if self.dp > 1 else self.shared_bytes  # each rank reads its own
        return shared + self.expert_bytes * touched

    def expert_time(self, n_tokens: float) -> float:
        """The routed experts' GEMMs of ``n_tokens`` tokens under the split layout.

        EP: the busiest GPU reads its touched experts (:meth:`touched_experts_per_gpu`) and does its share of
        the T x k expert MLPs times the imbalance; the step waits for it. Without EP: each expert TP-sharded
        over all the replica's GPUs, which together read every touched expert once.
        """
        p = self.profile
        flops = n_tokens * self.flops_per_expert_token
        if self.ep > 1:
            per_expert = self.expert_bytes / self.model.num_experts
            return p.gemm_time(
                per_expert * self.touched_experts_per_gpu(n_tokens),
                flops / self.ep * self.imbalance,
                self.expert_peak_gpu,
                self.gpu.mem_bandwidth,
            )
        return p.gemm_time(
            self.expert_bytes * self.touched_fraction(n_tokens),
            flops,
            self.expert_peak_gpu * self.tp,
            self.gpu.mem_bandwidth * self.tp,
        )

    def all_to_all_bytes(self, n_tokens: float) -> float:
        """Bytes one GPU sends in one dispatch (or one combine) under EP: its share of the tokens
        (n / EP) x hidden x k x activation bytes, the (EP-1)/EP of it bound for other GPUs; the busiest GPU
        (imbalance) moves that much more."""
        ep = self.ep
        return n_tokens / ep * self.a2a_bytes_per_token * (ep - 1) / ep * self.imbalance

    def all_to_all_time(self, n_tokens: float) -> float:
        """One all-to-all (dispatch or combine) under EP: latency + bytes / link bandwidth (datasheet,
        uncalibrated)."""
        return ALL_TO_ALL_LATENCY_S + self.all_to_all_bytes(n_tokens) / (self.a2a_link_gbs * 1e9)

    def moe_comm_time(self, n_tokens: float) -> float:
        """The MoE layers' communication under the split layout: EP, a dispatch and a combine all-to-all per
        MoE layer; expert TP over the DP ranks, vLLM's all-gather + reduce-scatter of the ranks' tokens per
        MoE layer, timed as one all-reduce of all of them over the replica's GPUs (the same traffic)."""
        if self.ep > 1:
            return 2 * self.moe_layers * self.all_to_all_time(n_tokens)
        if self.tp > 1:
            size = n_tokens * self.allreduce_bytes_per_token
            return self.moe_layers * self.profile.allreduce_time(size, self.tp, self.ar_link_gbs, self.ar_nvlink)
        return 0.0

    def body_time(self, n_tokens: float) -> float:
        """Linear layers plus the TP all-reduces: depends on the token count only."""
        p = self.profile
        if self.split:
            return self._split_body_time(n_tokens)
        flops = n_tokens * self.flops_per_body_token
        if self.expert_flop_scale != 1.0:  # expert FLOPs at their own peak, on the GEMM peak's time scale
            flops += n_tokens * self.flops_per_expert_token * (self.expert_flop_scale - 1.0)
        t = p.gemm_time(self.body_read_bytes(n_tokens), flops, self.gemm_peak, self.bw)
        t += self.layer_fixed + n_tokens * self.s_per_token_elementwise
        if self.allreduces:
            t += self.allreduces * p.allreduce_time(
                n_tokens * self.allreduce_bytes_per_token, self.tp, self.ar_link_gbs, self.ar_nvlink
            )
        return t

    def _split_body_time(self, n_tokens: float) -> float:
        p = self.profile
        nr = n_tokens / self.dp  # one attention rank's tokens
        t = p.gemm_time(self.shared_bytes, nr * self.flops_per_shared_token, self.gemm_peak, self.bw)
        t += self.expert_time(n_tokens)
        t += self.layer_fixed + nr * self.s_per_token_elementwise
        if self.allreduces:
            t += self.allreduces * p.allreduce_time(
                nr * self.allreduce_bytes_per_token, self.attn_tp, self.attn_ar_link_gbs, self.attn_ar_nvlink
            )
        return t + self.moe_comm_time(n_tokens)

    def seq_time(self, n_seqs: float) -> float:
        """LM head, framework overhead and the attention kernels' floor: depends on the sampled sequences
        only (per attention rank)."""
        p = self.profile
        if self.dp > 1:
            n_seqs = n_seqs / self.dp
        t = p.overhead_fixed_s + p.overhead_per_seq_s * n_seqs
        if n_seqs > 0:
            t += p.gemm_time(self.head_bytes, n_seqs * self.flops_per_head_token, self.gemm_peak, self.bw)
            if self.attn_fixed:
                t += self.attn_fixed
        return t

    def attn_time(self, attn_pairs: float, kv_tokens: float) -> float:
        return attn_pairs * self.s_per_attn_pair + kv_tokens * self.kv_bytes_per_token * self.s_per_kv_byte

    def time(self, shape: IterationShape) -> float:
        return (
            self.body_time(shape.n_tokens)
            + self.seq_time(shape.n_seqs)
            + self.attn_time(shape.attn_pairs, shape.kv_read_tokens + shape.n_tokens)
        )
