"""LLM (input A) and GPU (input B) specifications and their catalogues.

The built-in numbers live in ``models.yaml`` and ``gpus.yaml`` next to this
module, each entry naming its public source. Users extend the catalogue with
their own JSON/YAML file validated against ``schemas/catalog.schema.json``.
Names are case-insensitive keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import explain_schema_error, json_path, load_schema, non_finite, schema_validator
from kavier_opendc.specs.frameworks import BUILTIN_FILE as BUILTIN_FRAMEWORKS_FILE
from kavier_opendc.specs.frameworks import (
    FrameworkProfile,
    builtin_frameworks,
    framework,
    framework_from_entry,
    framework_to_entry,
    parse_builtin_frameworks,
)
from kavier_opendc.specs.profiles import GPUProfile, assumed_profile, profile_from_entry, profile_to_entry
from kavier_opendc.specs.snapshot import SNAPSHOT_FILE, file_hash, snapshot_document  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # jsonschema only when a file is validated (the built-in snapshot is not)
    from jsonschema import Draft202012Validator


def parse_document(text: str, fmt: str, source: str) -> Any:
    """``base.documents.parse_document``, imported when a file is parsed: PyYAML stays unloaded when the
    built-in snapshot is read."""
    from kavier_opendc.base.documents import parse_document as parse

    return parse(text, fmt, source)


DTYPE_BYTES = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    # the 4-bit floats with their block scales: MXFP4 one 8-bit scale per 32 values (4.25 bits),
    # NVFP4 one FP8 scale per 16 values (4.5 bits); int4 (GPTQ/AWQ) is counted without its scales
    "mxfp4": 4.25 / 8,
    "nvfp4": 4.5 / 8,
}
#: the datatypes activations are held in; a model stored in another (fp8, int8, int4, fp4) computes in bf16
ACTIVATION_DTYPES = ("fp32", "fp16", "bf16")
#: weight datatypes whose GEMMs run in that datatype on a GPU with its peak (W8A8 FP8, W4A4 FP4), and the
#: GPUSpec field of that peak; int8/int4 (GPTQ/AWQ) are weight-only (W8A16/W4A16) and compute in FP16
GEMM_PEAK_FIELDS = {"fp8": "peak_fp8_tflops", "mxfp4": "peak_fp4_tflops", "nvfp4": "peak_fp4_tflops"}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture numbers of one LLM (decoder-only transformer)."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int  # < num_attention_heads for GQA/MQA
    ffn_size: int  # intermediate size of one (expert) MLP
    vocab_size: int
    total_params: float  # all weights, counted once
    active_params: float  # weights touched per token (MoE: shared + top-k experts)
    dtype: str = "fp16"  # default serving precision
    head_dim: int | None = None  # defaults to hidden_size / num_attention_heads
    num_experts: int = 1  # MoE: experts per layer (1 = dense)
    experts_per_token: int = 1  # MoE: top-k
    max_context: int = 4096
    source: str = ""
    # Added by the catalogue: lookup aliases and the architecture details that
    # the exact parameter count depends on (defaults = Llama-style decoder).
    aliases: tuple[str, ...] = field(default=(), compare=False)
    tie_word_embeddings: bool = False  # lm_head shares the input embedding
    gated_mlp: bool = True  # SwiGLU (3 matrices); False = 2-matrix MLP (OPT)
    qkv_bias: bool = False  # bias on q/k/v projections only (Qwen2)
    linear_bias: bool = False  # bias on every linear layer (OPT)
    norm: str = "rmsnorm"  # "rmsnorm" or "layernorm" (with bias)
    learned_pos_embeddings: int = 0  # rows of a learned position table (OPT)
    # Architecture features of the models imported from HuggingFace configs (issue 22). The defaults are
    # "none of them", so the models above are unchanged; the parameter count (count_params) uses them all,
    # the engine's cost model not yet (see each entry's notes).
    dense_layers: int = 0  # MoE: layers with one dense MLP instead of experts (DeepSeek's first 3)
    dense_ffn_size: int | None = None  # intermediate size of those dense layers (default ffn_size)
    shared_experts: int = 0  # MoE: experts every token uses besides its top-k (DeepSeek: 1)
    router_bias: bool = False  # one bias per expert on the router (gpt-oss; DeepSeek's score correction)
    qk_norm: bool = False  # RMSNorm over each query and key head (Qwen3)
    attention_sinks: bool = False  # one learned sink logit per head and layer (gpt-oss)
    q_lora_rank: int = 0  # MLA: rank of the query down-projection (0: one full q projection)
    kv_lora_rank: int = 0  # MLA: rank of the compressed KV latent (0: not MLA)
    qk_rope_head_dim: int = 0  # MLA: rotary part of each q/k head (head_dim = non-rotary + rotary)
    v_head_dim: int | None = None  # MLA: value head size (default head_dim)
    sliding_window: int = 0  # tokens a sliding-window layer attends to (0: none)
    sliding_window_layers: int = 0  # how many layers use that window
    expert_dtype: str | None = None  # precision of the expert weights when not dtype (gpt-oss: mxfp4)
    # A serving setting, not a catalogue field (engine knob kv_cache_dtype): the KV cache's datatype;
    # None = the activations' (vLLM's kv_cache_dtype "auto": bf16 also for an FP8 checkpoint)
    kv_dtype: str | None = None
    # Serving settings too (engine knobs expert_parallel, data_parallel_size, expert_imbalance; see
    # specs/iteration_time.py): the experts split whole over the replica's GPUs (EP) instead of each expert
    # TP-sharded; attention data parallelism over that many ranks; the busiest GPU's share of expert work
    # over the mean (1.0: uniform routing)
    expert_parallel: bool = False
    attn_dp: int = 1
    expert_imbalance: float = 1.0
    notes: str = field(default="", compare=False)  # what the engine does not model of this model yet

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3): K and V come from one compressed latent."""
        return self.kv_lora_rank > 0

    @property
    def attention_kind(self) -> str:
        """'mla', 'mha' (as many KV heads as query heads), 'mqa' (one KV head) or 'gqa'."""
        if self.is_mla:
            return "mla"
        if self.num_kv_heads == self.num_attention_heads:
            return "mha"
        return "mqa" if self.num_kv_heads == 1 else "gqa"

    @property
    def bytes_per_param(self) -> float:
        """Bytes of one weight, in the weights' datatype ``dtype``."""
        return DTYPE_BYTES[self.dtype]

    @property
    def activation_dtype(self) -> str:
        """The activations' datatype: ``dtype`` when it is a float of 16 bits or more, else bf16 (the
        activations of an FP8/INT8/INT4/FP4 checkpoint are 16-bit, as vLLM serves them)."""
        return self.dtype if self.dtype in ACTIVATION_DTYPES else "bf16"

    @property
    def bytes_per_activation(self) -> float:
        return DTYPE_BYTES[self.activation_dtype]

    @property
    def kv_cache_dtype(self) -> str:
        """The KV cache's datatype: ``kv_dtype``, else the activations'."""
        return self.kv_dtype or self.activation_dtype

    @property
    def bytes_per_kv_value(self) -> float:
        return DTYPE_BYTES[self.kv_cache_dtype]

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def routed_expert_params(self) -> float:
        """Weights of the routed experts of every MoE layer (no biases; 0 for a dense model)."""
        if self.num_experts <= 1:
            return 0.0
        per_expert = (3.0 if self.gated_mlp else 2.0) * self.hidden_size * self.ffn_size
        return per_expert * (self.num_layers - self.dense_layers) * self.num_experts

    @property
    def bytes_per_expert_param(self) -> float:
        """Bytes of one routed-expert weight: ``expert_dtype`` (gpt-oss: MXFP4, 4.25 bits), else ``dtype``'s."""
        return DTYPE_BYTES[self.expert_dtype] if self.expert_dtype else self.bytes_per_param

    @property
    def weight_bytes(self) -> float:
        if self.expert_dtype and self.expert_dtype != self.dtype:  # the experts in their own datatype
            experts = self.routed_expert_params
            return (self.total_params - experts) * self.bytes_per_param + experts * self.bytes_per_expert_param
        return self.total_params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """The KV cache of one token over every layer (bytes, in the KV cache's dtype), as one GPU holds it."""
        return self.kv_bytes_per_token_gpu(1)

    def kv_bytes_per_token_gpu(self, tp: int) -> float:
        """The KV cache of one token on one GPU of a TP group of ``tp`` (bytes, every layer).

        K and V of the GPU's share of the KV heads, never less than one head (a head is not split; with
        fewer KV heads than GPUs they are replicated). MLA caches one compressed latent per token and layer,
        ``kv_lora_rank`` values plus the shared rotary key (``qk_rope_head_dim``), not K and V per head;
        every GPU of the group holds it whole (DeepSeek-V3: 61 x 576 values, 70 KiB in bf16, where K and V
        of its 128 heads would be 5.7 MiB). Each value takes ``bytes_per_kv_value`` bytes (the KV cache's
        dtype, :attr:`kv_cache_dtype`)."""
        if self.is_mla:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.bytes_per_kv_value
        kv_heads = max(1, -(-self.num_kv_heads // tp))
        return 2.0 * self.num_layers * kv_heads * self.dim_head * self.bytes_per_kv_value


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet numbers of one GPU (per device)."""

    name: str
    vendor: str
    peak_fp16_tflops: float  # dense FP16/BF16 tensor throughput, TFLOP/s
    mem_bandwidth_gbs: float  # HBM/GDDR bandwidth, GB/s (1e9 B/s)
    memory_gib: float  # device memory, GiB
    idle_power_w: float
    max_power_w: float  # board power / TDP
    price_per_hour: float  # USD per GPU-hour, default on-demand price
    interconnect_gbs: float  # GPU-GPU bandwidth per direction (NVLink/xGMI or PCIe), GB/s
    pcie_gbs: float  # host link bandwidth per direction, GB/s
    boost_clock_mhz: float  # OpenDC coreSpeed
    num_sms: int  # streaming multiprocessors / compute units: OpenDC coreCount
    source: str = ""
    # dense (no sparsity) tensor peaks of the lower-precision datatypes; None: the GPU has no such tensor cores
    peak_fp8_tflops: float | None = None  # FP8 (E4M3/E5M2): Ada, Hopper, Blackwell, CDNA 3
    peak_fp4_tflops: float | None = None  # FP4 (NVFP4/MXFP4): Blackwell
    peak_int8_tops: float | None = None  # INT8 tensor TOPS (catalogue data; INT8 weights run weight-only)
    # embodied carbon of one device (cradle to gate, kgCO2e) and the lifetime it is amortised over (years);
    # None: unknown (a run that asks for embodied carbon then says so); embodied_source names where from
    embodied_kgco2e: float | None = None
    lifetime_years: float | None = None
    embodied_source: str = ""
    extra: dict = field(default_factory=dict, compare=False)
    aliases: tuple[str, ...] = field(default=(), compare=False)
    # The efficiency profile (specs/profiles.py) the catalogue attaches on lookup.
    profile: Any = field(default=None, compare=False, repr=False)

    @property
    def peak_flops(self) -> float:
        """The dense FP16/BF16 tensor peak, FLOP/s."""
        return self.peak_fp16_tflops * 1e12

    def has_gemm_peak(self, weight_dtype: str) -> bool:
        """Whether GEMMs of weights in ``weight_dtype`` run in that datatype here (FP8/FP4 tensor cores)."""
        name = GEMM_PEAK_FIELDS.get(weight_dtype)
        return name is not None and getattr(self, name) is not None

    def gemm_dtype(self, weight_dtype: str) -> str:
        """The datatype the linear layers compute in for weights stored in ``weight_dtype``: fp8 (W8A8) or
        fp4 (W4A4) where this GPU has that peak, else fp16 (weight-only: FP16/BF16 compute over the stored
        weights, as vLLM's Marlin kernels run FP8 on Ampere and GPTQ/AWQ INT4/INT8 everywhere)."""
        if self.has_gemm_peak(weight_dtype):
            return "fp4" if weight_dtype in ("mxfp4", "nvfp4") else weight_dtype
        return "fp16"

    def gemm_peak_flops(self, weight_dtype: str) -> float:
        """The dense tensor peak (FLOP/s) of the GEMMs of weights in ``weight_dtype`` (:meth:`gemm_dtype`)."""
        if self.has_gemm_peak(weight_dtype):
            return float(getattr(self, GEMM_PEAK_FIELDS[weight_dtype])) * 1e12
        return self.peak_flops

    @property
    def mem_bandwidth(self) -> float:
        return self.mem_bandwidth_gbs * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30


def count_params(m: ModelSpec) -> tuple[int, int]:
    """(total, active) weights of ``m`` counted from its architecture numbers alone.

    Embeddings (+ learned positions) + LM head unless tied + every layer's attention, MLP or experts
    (+ router, shared experts), norms and biases + the final norm. Active: total less the routed
    experts a token does not use (the input embedding is counted, as in the catalogue's active_params).
    """
    h, hd, heads = m.hidden_size, m.dim_head, m.num_attention_heads
    if m.is_mla:
        rope = m.qk_rope_head_dim
        v = m.v_head_dim or hd
        if m.q_lora_rank:  # down-projection, its RMSNorm, up-projection to every head's q
            q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * heads * hd
        else:
            q = h * heads * hd
        # the latent and the shared rotary key, the latent's RMSNorm, then per head the non-rotary k and v
        kv = h * (m.kv_lora_rank + rope) + m.kv_lora_rank + m.kv_lora_rank * heads * (hd - rope + v)
        attention = q + kv + heads * v * h
        if m.linear_bias:
            attention += h
    else:
        q_out, kv_out = heads * hd, m.num_kv_heads * hd
        attention = h * q_out + 2 * h * kv_out + q_out * h  # q, k, v, o
        if m.qkv_bias or m.linear_bias:
            attention += q_out + 2 * kv_out
        if m.linear_bias:
            attention += h  # o bias
        if m.qk_norm:
            attention += 2 * hd
    if m.attention_sinks:
        attention += heads
    matrices = 3 if m.gated_mlp else 2

    def mlp(ffn: int) -> int:
        return matrices * h * ffn + (((matrices - 1) * ffn + h) if m.linear_bias else 0)

    norm = h * (2 if m.norm == "layernorm" else 1)  # LayerNorm has a bias
    expert = mlp(m.ffn_size)
    moe_layers = m.num_layers - m.dense_layers if m.is_moe else 0
    router = h * m.num_experts + (m.num_experts if m.router_bias else 0)
    moe_layer = attention + (m.num_experts + m.shared_experts) * expert + router + 2 * norm
    dense_layer = attention + mlp(m.dense_ffn_size or m.ffn_size) + 2 * norm
    embeddings = m.vocab_size * h + m.learned_pos_embeddings * h
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * h
    total = embeddings + lm_head + moe_layers * moe_layer + (m.num_layers - moe_layers) * dense_layer + norm
    active = total - moe_layers * (m.num_experts - m.experts_per_token) * expert
    return total, active


# ---------------------------------------------------------------------------
# Catalogue loading: built-in YAML files, user JSON/YAML files, lookups.
# ---------------------------------------------------------------------------


SCHEMA_FILE = "catalog.schema.json"
BUILTIN_FILES = ("models.yaml", "gpus.yaml", "profiles.yaml")
CATALOG_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}

_MODEL_INT_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "ffn_size",
    "vocab_size",
    "head_dim",
    "num_experts",
    "experts_per_token",
    "max_context",
    "learned_pos_embeddings",
    "dense_layers",
    "dense_ffn_size",
    "shared_experts",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "v_head_dim",
    "sliding_window",
    "sliding_window_layers",
)
# Fields added after the first catalogue: written only when not at their default, so the catalogue
# documents of the models that do not use them stay as they were.
_MODEL_OPTIONAL_FIELDS = (
    "dense_layers",
    "dense_ffn_size",
    "shared_experts",
    "router_bias",
    "qk_norm",
    "attention_sinks",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "v_head_dim",
    "sliding_window",
    "sliding_window_layers",
    "expert_dtype",
    "notes",
)
_MODEL_FLOAT_FIELDS = ("total_params", "active_params")
_GPU_FLOAT_FIELDS = (
    "peak_fp16_tflops",
    "mem_bandwidth_gbs",
    "memory_gib",
    "idle_power_w",
    "max_power_w",
    "price_per_hour",
    "interconnect_gbs",
    "pcie_gbs",
    "boost_clock_mhz",
)
_GPU_OPTIONAL_FLOAT_FIELDS = (
    "peak_fp8_tflops",
    "peak_fp4_tflops",
    "peak_int8_tops",
    "embodied_kgco2e",
    "lifetime_years",
)
_GPU_INT_FIELDS = ("num_sms",)
_NUMERIC_FIELDS = {
    "models": set(_MODEL_INT_FIELDS) | set(_MODEL_FLOAT_FIELDS),
    "gpus": set(_GPU_FLOAT_FIELDS) | set(_GPU_OPTIONAL_FLOAT_FIELDS) | set(_GPU_INT_FIELDS),
}
# YAML 1.1 (PyYAML) reads "8.03e9" or "1e9" as strings; in numeric fields we
# accept them as the numbers a user obviously meant (YAML 1.2 / JSON syntax).
_YAML12_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$")


# --------------------------------------------------------------- schema ----


def catalog_schema() -> dict:
    """The JSON Schema (Draft 2020-12) of these files, as a fresh dict."""
    return copy.deepcopy(load_schema(SCHEMA_FILE))


def _validator() -> Draft202012Validator:
    return schema_validator(SCHEMA_FILE)


# -------------------------------------------------------------- parsing ----


def _read_document(path: Path) -> tuple[Any, str]:
    source = str(path)
    fmt = CATALOG_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise KavierInputError(
            f"unsupported catalogue file extension {path.suffix or '(none)'!r}",
            source=source,
            expected="a .json, .yaml or .yml file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KavierInputError("catalogue file not found", source=source) from None
    except IsADirectoryError:
        raise KavierInputError("is a directory, not a catalogue file", source=source) from None
    except UnicodeDecodeError as exc:
        raise KavierInputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    except OSError as exc:
        raise KavierInputError(f"cannot read catalogue file: {exc.strerror or exc}", source=source) from None
    return parse_document(text, fmt, source), fmt


# ----------------------------------------------------------- validation ----


def _path_sort_key(parts: tuple, top_order: Mapping[Any, int]) -> tuple:
    """Order problems as they appear in the file: top-level keys in file order,
    list items by index, other keys alphabetically."""
    key = []
    for depth, p in enumerate(parts):
        if isinstance(p, int) and not isinstance(p, bool):
            key.append((0, p, ""))
        elif depth == 0:
            key.append((1, top_order.get(p, len(top_order)), str(p)))
        else:
            key.append((1, 0, str(p)))
    return tuple(key)


def _coerce_yaml_numbers(data: Any) -> Any:
    """In numeric fields, turn YAML-1.2 number strings like '8.03e9' into numbers."""
    if not isinstance(data, dict):
        return data
    for section, fields in _NUMERIC_FIELDS.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for key in fields & set(k for k in entry if isinstance(k, str)):
                value = entry[key]
                if isinstance(value, str) and _YAML12_FLOAT.match(value.strip()):
                    number = float(value.replace("_", ""))
                    entry[key] = int(number) if number.is_integer() else number
    return data


def _schema_problems(data: Any) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    for err in _validator().iter_errors(data):
        if err.validator == "pattern" and err.validator_value == r"^\S(.*\S)?$":
            problems.append((tuple(err.absolute_path), f"{err.instance!r} must not start or end with whitespace"))
        else:
            problems.extend(explain_schema_error(err))
    # A negative value violates both minimum and exclusiveMinimum: keep one message.
    with_minimum = {p for p, m in problems if "is less than the minimum of" in m}
    problems = [(p, m) for p, m in problems if not (p in with_minimum and "less than or equal to the minimum" in m)]
    return problems


def _is_num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _semantic_problems(data: Any) -> list[tuple[tuple, str]]:
    """Cross-field checks that JSON Schema cannot express."""
    problems = non_finite(data)
    if not isinstance(data, dict):
        return problems
    for section in ("models", "gpus"):
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        owners: dict[str, tuple] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            keys: list[tuple[str | tuple[str, int], Any]] = [("name", entry.get("name"))]
            aliases = entry.get("aliases")
            if isinstance(aliases, list):
                keys += [(("aliases", j), a) for j, a in enumerate(aliases)]
            for field_path, value in keys:
                if not isinstance(value, str):
                    continue
                key = _key(value)
                fp = field_path if isinstance(field_path, tuple) else (field_path,)
                if key in owners and owners[key][0] != i:
                    problems.append(
                        (
                            (section, i) + fp,
                            f"name or alias {value!r} is already used by {json_path((section,) + owners[key])}",
                        )
                    )
                else:
                    owners.setdefault(key, (i,) + fp)
            g = entry.get
            if section == "models":
                heads, kv = g("num_attention_heads"), g("num_kv_heads")
                if _is_num(heads) and _is_num(kv) and kv > 0 and heads % kv:
                    problems.append(
                        ((section, i, "num_kv_heads"), f"{kv} does not divide num_attention_heads ({heads})")
                    )
                hidden = g("hidden_size")
                if g("head_dim") is None and _is_num(hidden) and _is_num(heads) and heads > 0 and hidden % heads:
                    problems.append(
                        (
                            (section, i, "head_dim"),
                            f"required because hidden_size ({hidden}) is not a "
                            f"multiple of num_attention_heads ({heads})",
                        )
                    )
                ne, k = g("num_experts", 1), g("experts_per_token", 1)
                if _is_num(ne) and _is_num(k) and k > ne:
                    problems.append(((section, i, "experts_per_token"), f"{k} is more than num_experts ({ne})"))
                dense = g("dense_layers", 0)
                layers = g("num_layers")
                if _is_num(dense) and _is_num(layers) and dense >= layers and dense > 0:
                    problems.append(
                        ((section, i, "dense_layers"), f"{dense} leaves no MoE layer of num_layers ({layers})")
                    )
                if _is_num(dense) and dense > 0 and _is_num(ne) and ne < 2:
                    problems.append(((section, i, "dense_layers"), "only for MoE models (num_experts >= 2)"))
                shared = g("shared_experts", 0)
                if _is_num(shared) and shared > 0 and _is_num(ne) and ne < 2:
                    problems.append(((section, i, "shared_experts"), "only for MoE models (num_experts >= 2)"))
                sw, swl = g("sliding_window", 0), g("sliding_window_layers", 0)
                if _is_num(swl) and _is_num(layers) and swl > layers:
                    problems.append(
                        ((section, i, "sliding_window_layers"), f"{swl} is more than num_layers ({layers})")
                    )
                if _is_num(swl) and swl > 0 and _is_num(sw) and sw == 0:
                    problems.append(((section, i, "sliding_window_layers"), "needs sliding_window"))
                kvr, rope, hdim = g("kv_lora_rank", 0), g("qk_rope_head_dim", 0), g("head_dim")
                mla_only = [k for k in ("q_lora_rank", "qk_rope_head_dim", "v_head_dim") if g(k)]
                if _is_num(kvr) and kvr == 0 and mla_only:
                    problems.append(((section, i, mla_only[0]), "an MLA field: needs kv_lora_rank (MLA)"))
                if _is_num(kvr) and kvr > 0:
                    if hdim is None:
                        problems.append(
                            (
                                (section, i, "head_dim"),
                                "required with MLA (kv_lora_rank): the q/k head size, rotary part included",
                            )
                        )
                    elif _is_num(rope) and _is_num(hdim) and rope >= hdim:
                        problems.append(
                            ((section, i, "qk_rope_head_dim"), f"{rope} leaves no non-rotary part of head_dim ({hdim})")
                        )
                tot, act = g("total_params"), g("active_params")
                if _is_num(tot) and _is_num(act) and act > tot:
                    problems.append(((section, i, "active_params"), f"{act} is more than total_params ({tot})"))
            else:
                idle, peak = g("idle_power_w"), g("max_power_w")
                if _is_num(idle) and _is_num(peak) and idle > peak:
                    problems.append(((section, i, "idle_power_w"), f"{idle} is more than max_power_w ({peak})"))
    return problems


def _profile_problems(data: Any) -> list[tuple[tuple, str]]:
    """Physical checks of the ``profiles`` entries (efficiencies <= 1, overheads >= 0, ...)."""
    problems: list[tuple[tuple, str]] = []
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return problems
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("gpu"), str):
            continue
        key = _key(entry["gpu"])
        if key in seen:
            problems.append(
                (
                    ("profiles", i, "gpu"),
                    f"{entry['gpu']!r} already has a profile at {json_path(('profiles', seen[key]))}",
                )
            )
        seen.setdefault(key, i)
        try:
            prof = profile_from_entry(entry)
        except (TypeError, ValueError, KeyError):
            continue  # the schema check reports the shape problem
        problems.extend((("profiles", i, name), msg) for name, msg in prof.problems())
    return problems


def validate_catalog_data(data: Any, source: str = "<catalogue>") -> None:
    """Raise one KavierInputError listing every problem of a parsed catalogue document."""
    problems = _schema_problems(data) + _semantic_problems(data)
    if not _schema_problems(data):
        problems += _profile_problems(data)
    if not problems:
        return
    unique: dict[tuple[tuple, str], None] = {}
    for path, msg in problems:
        unique.setdefault((tuple(path), msg), None)
    top_order = {k: i for i, k in enumerate(data)} if isinstance(data, dict) else {}
    ordered = sorted(unique, key=lambda pm: (_path_sort_key(pm[0], top_order), pm[1]))
    lines = [f"{json_path(p)}: {m}" for p, m in ordered]
    n = len(lines)
    exc = KavierInputError(
        f"invalid catalogue, {n} problem{'s' if n != 1 else ''}: " + "; ".join(lines),
        source=source,
        expected="an object with optional 'models', 'gpus', 'profiles' and 'frameworks' lists as described by "
        "schemas/catalog.schema.json",
    )
    exc.problems = lines  # type: ignore[attr-defined]
    raise exc


# -------------------------------------------------------- spec building ----


def _model_from_entry(entry: Mapping[str, Any]) -> ModelSpec:
    kw = dict(entry)
    for name in _MODEL_INT_FIELDS:
        if kw.get(name) is not None:
            kw[name] = int(kw[name])
    kw.setdefault("active_params", kw["total_params"])
    for name in _MODEL_FLOAT_FIELDS:
        kw[name] = float(kw[name])
    kw["aliases"] = tuple(kw.get("aliases", ()))
    return ModelSpec(**kw)


def model_from_entry(entry: Mapping[str, Any]) -> ModelSpec:
    """The ModelSpec of one validated ``models`` entry (a plain dict)."""
    return _model_from_entry(entry)


def read_catalog_document(path: Path) -> tuple[Any, str]:
    """A catalogue file's parsed document and its format ("json" or "yaml"); KavierInputError naming the
    file when it cannot be read or parsed."""
    return _read_document(path)


def _gpu_from_entry(entry: Mapping[str, Any]) -> GPUSpec:
    kw = dict(entry)
    for name in _GPU_FLOAT_FIELDS:
        kw[name] = float(kw[name])
    for name in _GPU_OPTIONAL_FLOAT_FIELDS:
        if kw.get(name) is not None:
            kw[name] = float(kw[name])
    for name in _GPU_INT_FIELDS:
        kw[name] = int(kw[name])
    kw["aliases"] = tuple(kw.get("aliases", ()))
    kw["extra"] = dict(kw.get("extra", {}))
    return GPUSpec(**kw)


def spec_to_entry(spec: ModelSpec | GPUSpec) -> dict[str, Any]:
    """A catalogue-file entry (plain dict) for one spec; inverse of loading."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name == "aliases":
            if value:
                out["aliases"] = list(value)
            continue
        if f.name == "extra":
            if value:
                out["extra"] = copy.deepcopy(value)
            continue
        if f.name == "head_dim" and value is None:
            continue
        if f.name in _MODEL_OPTIONAL_FIELDS and value == f.default:
            continue
        if f.name in _GPU_OPTIONAL_FLOAT_FIELDS and value is None:
            continue
        if f.name == "embodied_source" and not value:
            continue
        if f.name in ("profile", "kv_dtype", "expert_parallel", "attn_dp", "expert_imbalance"):  # serving settings
            continue
        out[f.name] = value
    return out


def catalog_from_data(
    data: Any,
    source: str = "<catalogue>",
    frameworks: Mapping[str, FrameworkProfile] | None = None,
    *,
    validated: bool = False,
) -> Catalog:
    """Validate a parsed catalogue document and build a Catalog of just its entries.

    ``frameworks``: the ones a ``frameworks`` entry may name as its ``base`` (default: the built-in ones).
    ``validated``: the document passed :func:`validate_catalog_data` already (the built-in snapshot).
    """
    if data is None:  # an empty file adds nothing
        data = {}
    if not validated:
        validate_catalog_data(data, source)
    bases = dict(frameworks if frameworks is not None else builtin_frameworks())
    fws = []
    for e in data.get("frameworks", []):
        fw = framework_from_entry(e, source, bases)
        bases[fw.name] = fw
        fws.append(fw)
    return Catalog(
        models=[_model_from_entry(e) for e in data.get("models", [])],
        gpus=[_gpu_from_entry(e) for e in data.get("gpus", [])],
        profiles=[profile_from_entry(e) for e in data.get("profiles", [])],
        frameworks=fws,
        sources=[source],
    )


# --------------------------------------------------------------- lookups ----


def _key(name: str) -> str:
    return name.strip().lower()


def _loose(key: str) -> str:
    return re.sub(r"[\s_\-]+", "", key)


_Spec = TypeVar("_Spec", ModelSpec, GPUSpec)  # a catalogue table's entry type


class Catalog:
    """Model and GPU specs keyed by lower-cased name, with aliases.

    ``model(name)`` / ``gpu(name)`` look a name up case-insensitively: first the
    canonical names, then the aliases, then a match ignoring spaces, '-' and '_'.
    """

    def __init__(
        self,
        models: Iterable[ModelSpec] = (),
        gpus: Iterable[GPUSpec] = (),
        *,
        profiles: Iterable[GPUProfile] = (),
        frameworks: Iterable[FrameworkProfile] = (),
        sources: Iterable[str] = (),
    ):
        self.model_specs: dict[str, ModelSpec] = {}
        self.gpu_specs: dict[str, GPUSpec] = {}
        self.model_aliases: dict[str, str] = {}  # alias key -> canonical key
        self.gpu_aliases: dict[str, str] = {}
        # profiles given by catalogue files, keyed by the GPU name they name (lower-cased);
        # a GPU without one gets a derived profile on lookup (cached in _derived)
        self.profile_specs: dict[str, GPUProfile] = {_key(p.gpu): p for p in profiles}
        self._derived: dict[str, GPUProfile] = {}
        # serving frameworks of catalogue files (the built-in ones come from specs/frameworks.yaml)
        self.framework_specs: dict[str, FrameworkProfile] = {f.name: f for f in frameworks}
        self._attached: dict[str, GPUSpec] = {}  # GPU key -> its spec with the profile attached
        self.sources: tuple[str, ...] = tuple(sources)
        for m in models:
            self._add(self.model_specs, self.model_aliases, m)
        for g in gpus:
            self._add(self.gpu_specs, self.gpu_aliases, g)

    @staticmethod
    def _add(table: dict, aliases: dict, spec) -> None:
        key = _key(spec.name)
        table[key] = spec
        for alias in spec.aliases:
            aliases[_key(alias)] = key

    # -- lookups ----------------------------------------------------------
    def model(self, name: str | ModelSpec) -> ModelSpec:
        if isinstance(name, ModelSpec):
            return name
        return self._resolve(self.model_specs, self.model_aliases, name, "model")

    def gpu(self, name: str | GPUSpec) -> GPUSpec:
        """The GPU's spec with its efficiency profile attached (``spec.profile``)."""
        spec = name if isinstance(name, GPUSpec) else self._resolve(self.gpu_specs, self.gpu_aliases, name, "GPU")
        if spec.profile is not None:
            return spec
        key = _key(spec.name)
        if self.gpu_specs.get(key) is spec:  # one object per catalogue GPU, whatever name it is looked up by
            if key not in self._attached:
                self._attached[key] = dataclasses.replace(spec, profile=self.profile_for(spec))
            return self._attached[key]
        return dataclasses.replace(spec, profile=self.profile_for(spec))

    # -- efficiency profiles ---------------------------------------------
    def _profile_key(self, name: str) -> str | None:
        spec = self._find(self.gpu_specs, self.gpu_aliases, name)
        return _key(spec.name) if spec is not None else None

    def measured_profiles(self) -> dict[str, tuple[GPUSpec, GPUProfile]]:
        """GPU key -> (spec, profile) for every catalogue GPU with a measured profile."""
        out = {}
        for key, prof in self.profile_specs.items():
            gkey = self._profile_key(prof.gpu) or key
            if prof.status == "measured" and gkey in self.gpu_specs:
                out[gkey] = (self.gpu_specs[gkey], prof)
        return out

    def own_profile(self, gpu: str | GPUSpec) -> GPUProfile | None:
        """The GPU's own profile from a catalogue file (the built-in profiles.yaml or a --catalog file);
        None if it has none (or the catalogue has no such GPU)."""
        spec = gpu if isinstance(gpu, GPUSpec) else self._find(self.gpu_specs, self.gpu_aliases, gpu)
        if spec is None:
            return None
        key = _key(spec.name)
        own = self.profile_specs.get(key)
        if own is None:  # a profile may name the GPU by an alias
            own = next((p for p in self.profile_specs.values() if self._profile_key(p.gpu) == key), None)
        return own

    def profile_for(self, gpu: str | GPUSpec) -> GPUProfile:
        """The profile of a GPU: its own from a catalogue file, else derived from the nearest measured GPU."""
        spec = gpu if isinstance(gpu, GPUSpec) else self._resolve(self.gpu_specs, self.gpu_aliases, gpu, "GPU")
        key = _key(spec.name)
        own = self.own_profile(spec)
        if own is not None:
            return own
        if key not in self._derived:
            self._derived[key] = derive_profile(spec, self.measured_profiles())
        return self._derived[key]

    def resolution_note(self, name: str, kind: str = "gpu") -> str | None:
        """A note when a short name stands for one entry while others share its stem (``a100`` is the
        A100-80GB, yet the A100-40GB exists); None when the name is the entry's own or is unambiguous."""
        table: Mapping[str, ModelSpec | GPUSpec] = self.gpu_specs if kind == "gpu" else self.model_specs
        spec = (
            self._find(self.gpu_specs, self.gpu_aliases, name)
            if kind == "gpu"
            else self._find(self.model_specs, self.model_aliases, name)
        )
        if spec is None or not isinstance(name, str) or _key(name) == _key(spec.name):
            return None
        stem = _loose(_key(name))
        others = sorted(s.name for k, s in table.items() if s is not spec and _loose(k).startswith(stem))
        if not others:
            return None
        return (
            f"{kind.replace('gpu', 'GPU')} '{name}' is the {spec.name}; the catalogue also has "
            f"{', '.join(others)} (give the full name to choose)"
        )

    def has_model(self, name: str) -> bool:
        return self._find(self.model_specs, self.model_aliases, name) is not None

    def has_gpu(self, name: str) -> bool:
        return self._find(self.gpu_specs, self.gpu_aliases, name) is not None

    @staticmethod
    def _find(table: dict[str, _Spec], aliases: dict[str, str], name: Any) -> _Spec | None:
        if not isinstance(name, str):
            return None
        key = _key(name)
        if key in table:
            return table[key]
        if aliases.get(key) in table:
            return table[aliases[key]]
        loose = _loose(key)
        hits = {k for k in table if _loose(k) == loose}
        hits |= {t for a, t in aliases.items() if _loose(a) == loose and t in table}
        if len(hits) == 1:
            return table[hits.pop()]
        return None

    def _resolve(self, table: dict[str, _Spec], aliases: dict[str, str], name: Any, kind: str) -> _Spec:
        spec = self._find(table, aliases, name)
        if spec is not None:
            return spec
        known = [s.name for s in table.values()]
        if not isinstance(name, str):
            raise KavierInputError(
                f"{kind} name must be a string, got {name!r}", expected=f"one of: {', '.join(known)}"
            )
        candidates = {
            **{k: table[k].name for k in table},
            **{a: table[t].name for a, t in aliases.items() if t in table},
        }
        close = difflib.get_close_matches(_key(name), list(candidates), n=3, cutoff=0.6)
        hint = ""
        if close:
            hint = " Did you mean " + " or ".join(dict.fromkeys(repr(candidates[c]) for c in close)) + "?"
        raise KavierInputError(
            f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}. "
            f"Add your own with a catalogue file (schemas/catalog.schema.json)"
        )

    # -- listing ----------------------------------------------------------
    def models(self) -> list[ModelSpec]:
        return list(self.model_specs.values())

    def gpus(self) -> list[GPUSpec]:
        """Every GPU, with its efficiency profile attached."""
        return [self.gpu(g) for g in self.gpu_specs.values()]

    def frameworks(self) -> dict[str, FrameworkProfile]:
        """Every serving framework by name: the built-in ones, then (overriding) the catalogue files'."""
        return {**builtin_frameworks(), **self.framework_specs}

    def framework(self, name: str | FrameworkProfile | None, usage: str | None = None) -> FrameworkProfile:
        """A serving framework by name (case-insensitive; None: the default), or by ``ENGINE@VERSION[:PATH]``
        (the serving path from ``usage`` unless given)."""
        if isinstance(name, FrameworkProfile):
            return name
        return framework(name, self.framework_specs, usage)

    def model_names(self) -> list[str]:
        return [m.name for m in self.model_specs.values()]

    def gpu_names(self) -> list[str]:
        return [g.name for g in self.gpu_specs.values()]

    # -- combining --------------------------------------------------------
    def merged(self, other: Catalog) -> Catalog:
        """A new catalogue: this one plus ``other``; ``other`` wins on equal names."""
        out = Catalog(sources=self.sources + tuple(s for s in other.sources if s not in self.sources))
        out.model_specs = {**self.model_specs, **other.model_specs}
        out.gpu_specs = {**self.gpu_specs, **other.gpu_specs}
        out.model_aliases = {**self.model_aliases, **other.model_aliases}
        out.gpu_aliases = {**self.gpu_aliases, **other.gpu_aliases}
        out.profile_specs = {**self.profile_specs, **other.profile_specs}
        out.framework_specs = {**self.framework_specs, **other.framework_specs}
        return out

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """The catalogue as a document that ``catalog_from_data`` accepts."""
        out = {"models": [spec_to_entry(m) for m in self.models()], "gpus": [spec_to_entry(g) for g in self.gpus()]}
        if self.profile_specs:
            out["profiles"] = [profile_to_entry(p) for p in self.profile_specs.values()]
        if self.framework_specs:
            out["frameworks"] = [framework_to_entry(f) for f in self.framework_specs.values()]
        return out

    def __len__(self) -> int:
        return len(self.model_specs) + len(self.gpu_specs)

    def __repr__(self) -> str:
        return f"Catalog({len(self.model_specs)} models, {len(self.gpu_specs)} GPUs)"


# ---------------------------------------------------------- entry points ----


def builtin_snapshot() -> dict[str, Any]:
    """The snapshot of the built-in specification files (specs/snapshot.py): per file its SHA-256 and the
    document as parsed; the catalogue files also validated (YAML numbers coerced as for any catalogue
    file), frameworks.yaml as its reader parses it (its entries are checked when they are built)."""
    here = resources.files("kavier_opendc.specs")
    out: dict[str, Any] = {}
    for fname in BUILTIN_FILES:
        source = f"kavier_opendc/specs/{fname}"
        text = here.joinpath(fname).read_text(encoding="utf-8")
        data = _coerce_yaml_numbers(parse_document(text, "yaml", source))
        validate_catalog_data(data, source)
        out[fname] = {"sha256": file_hash(text), "document": data}
    text = BUILTIN_FRAMEWORKS_FILE.read_text(encoding="utf-8")
    out[BUILTIN_FRAMEWORKS_FILE.name] = {"sha256": file_hash(text), "document": parse_builtin_frameworks(text)}
    return out


def _builtin_documents() -> list[tuple[str, Any, bool]]:
    """(file, document, validated) of each built-in file: the snapshot's where it matches the file byte for
    byte, else the file parsed now (an edited YAML never reads a stale snapshot)."""
    here = resources.files("kavier_opendc.specs")
    out = []
    for fname in BUILTIN_FILES:
        source = f"kavier_opendc/specs/{fname}"
        text = here.joinpath(fname).read_text(encoding="utf-8")
        found, data = snapshot_document(fname, text)
        if found:
            out.append((fname, data, True))
        else:
            out.append((fname, _coerce_yaml_numbers(parse_document(text, "yaml", source)), False))
    return out


@functools.lru_cache(maxsize=1)
def _builtin_catalog() -> Catalog:
    cat = Catalog()
    for fname, data, validated in _builtin_documents():
        cat = cat.merged(catalog_from_data(data, f"kavier_opendc/specs/{fname}", validated=validated))
    return cat


def default_catalog() -> Catalog:
    """The built-in catalogue (cached; copy-on-merge, so callers cannot change it)."""
    return _builtin_catalog()


def load_catalog_file(path: str | Path, base: Catalog | None = None) -> Catalog:
    """Read a JSON/YAML catalogue file, validate it, and return ``base`` merged with it.

    ``base`` defaults to the built-in catalogue. Every problem in the file is
    reported in one :class:`KavierInputError` naming the file and the JSON path.
    """
    path = Path(path)
    data, fmt = _read_document(path)
    if fmt == "yaml":
        data = _coerce_yaml_numbers(data)
    start = base if base is not None else default_catalog()
    user = catalog_from_data(data, source=str(path), frameworks=start.frameworks())
    merged = start.merged(user)
    for i, prof in enumerate(user.profile_specs.values()):
        if not merged.has_gpu(prof.gpu):
            raise KavierInputError(
                f"profiles[{i}].gpu: no GPU named {prof.gpu!r} in the catalogue",
                source=str(path),
                expected="the name of a built-in GPU or of one in this or an earlier catalogue file",
            )
    return merged


def load_catalog_files(paths: Iterable[str | Path], base: Catalog | None = None) -> Catalog:
    """Apply several catalogue files in order (later files override earlier ones)."""
    cat = base if base is not None else default_catalog()
    for p in paths:
        cat = load_catalog_file(p, base=cat)
    return cat


# -- profiles of GPUs without measurements ----------------------------------


def architecture(gpu: GPUSpec) -> str:
    """The GPU's architecture family (first word of ``extra.architecture``), '' if unknown."""
    arch = str((gpu.extra or {}).get("architecture", "")).strip()
    return arch.split()[0].lower() if arch else ""


def derive_profile(gpu: GPUSpec, measured: Mapping[str, tuple[GPUSpec, GPUProfile]]) -> GPUProfile:
    """A profile for ``gpu`` from the nearest measured GPU (same architecture first).

    "Nearest" is the measured GPU of the same architecture family whose
    datasheet (peak FLOP/s, bandwidth, interconnect, form factor) is closest
    in log distance; without one, the closest measured GPU of any family. The
    efficiencies are fractions of the datasheet peaks and are kept; the
    all-reduce curve is rescaled to this GPU's interconnect when it is used.
    """
    if not measured:
        return assumed_profile(gpu.name)
    arch = architecture(gpu)
    same = {k: v for k, v in measured.items() if arch and architecture(v[0]) == arch}
    pool = same or measured

    def distance(spec: GPUSpec) -> float:
        return (
            abs(math.log(spec.peak_flops / gpu.peak_flops))
            + abs(math.log(spec.mem_bandwidth / gpu.mem_bandwidth))
            + 0.5 * abs(math.log(spec.interconnect_gbs / gpu.interconnect_gbs))
        )

    src_spec, src = min(pool.values(), key=lambda v: (distance(v[0]), v[0].name))
    how = "same architecture" if same else f"no measured {arch or 'same-architecture'} GPU; nearest datasheet"
    note = (
        f"derived from {src_spec.name} ({how}): efficiencies are fractions of {gpu.name}'s own datasheet "
        f"peaks; all-reduce curve rescaled from {src.allreduce_link_gbs or src_spec.interconnect_gbs:g} to "
        f"{gpu.interconnect_gbs:g} GB/s"
    )
    return dataclasses.replace(
        src, gpu=gpu.name, status="derived", derived_from=src_spec.name, provenance={"all": note}
    )
