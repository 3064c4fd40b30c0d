"""A catalogue entry from a HuggingFace ``config.json`` (``kavier catalog import``; no network).

The architecture numbers are read field by field for the architectures named in
:data:`ARCHITECTURES`; the parameter count is then recomputed from them
(:func:`~kavier_opendc.specs.catalog.count_params`), with the exact weight shapes of
each architecture: multi-head latent attention (MLA), shared experts and dense first
layers (DeepSeek-V3), per-head q/k norms (Qwen3), biases, router biases and attention
sinks (gpt-oss). A field that is missing or not a number is named in one error listing
every such problem; absurd sizes are refused with the limits of ``base/limits.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kavier_opendc.base import limits
from kavier_opendc.base.documents import parse_document
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import (
    ModelSpec,
    count_params,
    model_from_entry,
    validate_catalog_data,
)

#: HuggingFace ``architectures`` name -> the reader of its config
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "dense",
    "MistralForCausalLM": "dense",
    "Qwen2ForCausalLM": "dense",
    "Qwen3ForCausalLM": "dense",
    "MixtralForCausalLM": "mixtral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "GptOssForCausalLM": "gpt_oss",
    "MiniMaxM2ForCausalLM": "minimax_m2",
}
#: ``model_type`` -> architecture, for configs without an ``architectures`` list
MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
}
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
#: widths, vocabularies, layer and expert counts above this are not a model (a hundred times the largest)
DIMENSION = limits.Limit(
    100_000_000, "", "a hundred times the widest layer, largest vocabulary or deepest stack of any published model"
)
#: how far the recomputed count may be from a count the config states before a warning
CONFIG_COUNT_TOLERANCE = 0.01

_REQUIRED = object()


def supported() -> str:
    return ", ".join(ARCHITECTURES)


class _Fields:
    """Typed reads of config fields that collect every problem instead of stopping at the first."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.problems: list[str] = []

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
        value = self.cfg.get(key)
        if value is None:
            if default is _REQUIRED:
                self.problems.append(f"'{key}' is missing")
                return max(minimum, 1)
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"'{key}' must be an integer, got {value!r}")
            return max(minimum, 1)
        if value < minimum:
            self.problems.append(f"'{key}' must be at least {minimum}, got {value}")
            return max(minimum, 1)
        limit = limits.CONTEXT_TOKENS if key == "max_position_embeddings" else DIMENSION
        if value > limit.value:
            self.problems.append(f"'{key}': {limit.above(value)}")
            return max(minimum, 1)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problems.append(f"'{key}' must be true or false, got {value!r}")
            return default
        return value

    def layer_list(self, key: str) -> list[int]:
        value = self.cfg.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            self.problems.append(f"'{key}' must be a list of layer numbers, got {value!r}")
            return []
        return value


def read_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The parsed ``config.json`` at ``path`` (the file, or a folder holding it) and the file's path."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise KavierInputError(
                "no config.json in this folder",
                source=str(p),
                expected="a HuggingFace model folder holding config.json, or the file itself",
            )
        p = p / "config.json"
    if not p.exists():
        raise KavierInputError("config file not found", source=str(p))
    size = p.stat().st_size
    if size > limits.DOCUMENT_BYTES.value:
        raise KavierInputError(
            f"file size: {limits.DOCUMENT_BYTES.above(size)}",
            source=str(p),
            expected="a HuggingFace config.json (a few kilobytes)",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KavierInputError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(p), expected="a HuggingFace config.json"
        ) from None
    except OSError as exc:
        raise KavierInputError(f"cannot read config file: {exc.strerror or exc}", source=str(p)) from None
    data = parse_document(text, "json", str(p))
    if not isinstance(data, dict):
        raise KavierInputError(
            f"the top level is a {type(data).__name__}, not an object",
            source=str(p),
            expected="a HuggingFace config.json: one JSON object of architecture fields",
        )
    return data, p


def architecture_of(cfg: Mapping[str, Any], source: str) -> str:
    """The config's architecture (its ``architectures`` list, else its ``model_type``), if supported."""
    archs = cfg.get("architectures")
    if archs is None and isinstance(cfg.get("model_type"), str) and cfg["model_type"] in MODEL_TYPES:
        return MODEL_TYPES[cfg["model_type"]]
    if archs is None:
        raise KavierInputError(
            "'architectures' is missing (and 'model_type' names no supported one)",
            source=source,
            expected=f"one of: {supported()}",
        )
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise KavierInputError(
            f"'architectures' must be a list of names, got {archs!r}", source=source, expected=f"one of: {supported()}"
        )
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    raise KavierInputError(
        f"unsupported architecture {', '.join(archs)} ('architectures')",
        source=source,
        expected=f"one of: {supported()}",
    )


def _dtype(cfg: Mapping[str, Any], problems: list[str]) -> str:
    key = "torch_dtype" if "torch_dtype" in cfg else "dtype"
    value = cfg.get(key)
    if value is None:
        return "bf16"
    if value not in TORCH_DTYPES:
        problems.append(f"'{key}' must be one of {', '.join(TORCH_DTYPES)}, got {value!r}")
        return "bf16"
    return TORCH_DTYPES[value]


def _quant_method(cfg: Mapping[str, Any]) -> str | None:
    q = cfg.get("quantization_config")
    if isinstance(q, Mapping) and isinstance(q.get("quant_method"), str):
        return q["quant_method"].lower()
    return None


def _refuse(arch: str, what: str, source: str) -> KavierInputError:
    return KavierInputError(
        f"{arch}: {what} cannot be expressed in a catalogue entry yet",
        source=source,
        expected="the published configuration of this architecture",
    )


def entry_from_config(cfg: Mapping[str, Any], name: str, source: str, *, origin: str | None = None) -> dict[str, Any]:
    """The catalogue entry (a ``models`` item) of one HuggingFace config, parameters recomputed.

    ``source``: the entry's ``source`` text; ``origin``: the config file, named in errors (default ``source``).
    """
    where = origin or source
    arch = architecture_of(cfg, where)
    kind = ARCHITECTURES[arch]
    f = _Fields(cfg)
    heads = f.integer("num_attention_heads")
    hidden = f.integer("hidden_size")
    entry: dict[str, Any] = {
        "name": name,
        "num_layers": f.integer("num_hidden_layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": f.integer("num_key_value_heads", heads),
    }
    head_dim = f.integer("head_dim", None)
    extra: dict[str, Any] = {}
    dense_ffn = 0
    tie = f.flag("tie_word_embeddings", False)
    if kind == "dense":
        ffn = f.integer("intermediate_size")
        if arch == "Qwen2ForCausalLM":
            extra["qkv_bias"] = True  # Qwen2 always biases q, k and v (not o, not the MLP)
        elif f.flag("attention_bias", False) or f.flag("mlp_bias", False):
            if not (f.flag("attention_bias", False) and f.flag("mlp_bias", False)):
                raise _refuse(arch, "'attention_bias' without 'mlp_bias' (or the other way round)", where)
            extra["linear_bias"] = True
        if arch == "Qwen3ForCausalLM":
            extra["qk_norm"] = True
    elif kind == "mixtral":
        ffn = f.integer("intermediate_size")
        extra["num_experts"] = f.integer("num_local_experts", minimum=2)
        extra["experts_per_token"] = f.integer("num_experts_per_tok")
    elif kind == "qwen3_moe":
        ffn = f.integer("moe_intermediate_size")
        experts = f.integer("num_experts", minimum=2)
        extra["num_experts"] = experts
        extra["experts_per_token"] = f.integer("num_experts_per_tok")
        extra["qk_norm"] = True
        if f.flag("attention_bias", False):
            raise _refuse(arch, "'attention_bias': true", where)
        step = f.integer("decoder_sparse_step", 1)
        layers = entry["num_layers"]
        # layer i has experts when (i + 1) is a multiple of decoder_sparse_step and i is not in mlp_only_layers
        only_mlp = {i for i in f.layer_list("mlp_only_layers") if 0 <= i < layers and (i + 1) % step == 0}
        dense = layers - (layers // step - len(only_mlp))
        if dense:
            extra["dense_layers"] = dense
            dense_ffn = f.integer("intermediate_size")
    elif kind == "deepseek_v3":
        ffn = f.integer("moe_intermediate_size")
        extra["num_experts"] = f.integer("n_routed_experts", minimum=2)
        extra["experts_per_token"] = f.integer("num_experts_per_tok")
        shared = f.integer("n_shared_experts", 0, minimum=0)
        if shared:
            extra["shared_experts"] = shared
        first_dense = f.integer("first_k_dense_replace", 0, minimum=0)
        freq = f.integer("moe_layer_freq", 1)
        layers = entry["num_layers"]
        # layer i has experts when i >= first_k_dense_replace and i is a multiple of moe_layer_freq
        start = min(first_dense, layers)
        dense = layers - ((layers - 1) // freq - (start - 1) // freq) if start < layers else layers
        if dense:
            extra["dense_layers"] = dense
            dense_ffn = f.integer("intermediate_size")
        if cfg.get("topk_method") == "noaux_tc":
            extra["router_bias"] = True  # the e_score_correction_bias of the aux-loss-free router
        q_rank = f.integer("q_lora_rank", 0, minimum=0)
        if q_rank:
            extra["q_lora_rank"] = q_rank
        extra["kv_lora_rank"] = f.integer("kv_lora_rank")
        rope = f.integer("qk_rope_head_dim")
        head_dim = f.integer("qk_nope_head_dim") + rope  # the q/k head: non-rotary + rotary parts
        extra["qk_rope_head_dim"] = rope
        extra["v_head_dim"] = f.integer("v_head_dim")
        if f.flag("attention_bias", False):
            raise _refuse(arch, "'attention_bias': true", where)
    elif kind == "minimax_m2":
        # every layer MoE (Mixtral-style names, intermediate_size the expert's), sigmoid router with a bias
        ffn = f.integer("intermediate_size")
        extra["num_experts"] = f.integer("num_local_experts", minimum=2)
        extra["experts_per_token"] = f.integer("num_experts_per_tok")
        if f.integer("shared_intermediate_size", 0, minimum=0):
            raise _refuse(arch, "a shared expert ('shared_intermediate_size' above 0)", where)
        kinds = cfg.get("attn_type_list")
        if isinstance(kinds, list) and any(k != 1 for k in kinds):  # 0: MiniMax-01's lightning attention
            raise _refuse(arch, "linear (lightning) attention layers ('attn_type_list' other than 1)", where)
        if f.flag("use_routing_bias", False):
            extra["router_bias"] = True
        if f.flag("use_qk_norm", False):
            extra["qk_norm"] = True
        if f.flag("attention_bias", False):
            raise _refuse(arch, "'attention_bias': true", where)
        if head_dim is None:
            f.problems.append("'head_dim' is missing")
    else:  # gpt_oss
        ffn = f.integer("intermediate_size")
        extra["num_experts"] = f.integer("num_local_experts", minimum=2)
        per_token = "experts_per_token" if "experts_per_token" in cfg else "num_experts_per_tok"
        extra["experts_per_token"] = f.integer(per_token)
        if not f.flag("attention_bias", True):
            raise _refuse(arch, "'attention_bias': false (its experts and router keep their biases)", where)
        extra["linear_bias"] = True  # q, k, v, o, the experts' projections
        extra["router_bias"] = True
        extra["attention_sinks"] = True
        if head_dim is None:
            f.problems.append("'head_dim' is missing")
    window = cfg.get("sliding_window")
    if window is not None and kind == "minimax_m2":
        raise _refuse(arch, "'sliding_window'", where)
    if window is not None and kind not in ("deepseek_v3", "minimax_m2"):
        layers = entry["num_layers"]
        if kind == "gpt_oss":
            types = cfg.get("layer_types")
            n = sum(1 for t in types if t == "sliding_attention") if isinstance(types, list) else layers // 2
        elif arch.startswith("Qwen"):  # Qwen: only with use_sliding_window, from layer max_window_layers on
            sliding = f.flag("use_sliding_window", False)
            n = max(0, layers - f.integer("max_window_layers", 0, minimum=0)) if sliding else 0
        else:  # Mistral v0.1, Mixtral: every layer
            n = layers
        if n:
            extra["sliding_window"] = f.integer("sliding_window")
            extra["sliding_window_layers"] = n
    entry["ffn_size"] = ffn
    entry["vocab_size"] = f.integer("vocab_size")
    max_context = f.integer("max_position_embeddings")
    dtype = _dtype(cfg, f.problems)
    if f.problems:
        n = len(f.problems)
        raise KavierInputError(
            f"{arch} config, {n} problem{'s' if n != 1 else ''}: " + "; ".join(f.problems),
            source=where,
            expected="the fields of a HuggingFace config.json of this architecture",
        )
    quant = _quant_method(cfg)
    quant_note = None
    if quant == "fp8":
        dtype = "fp8"
    elif quant == "mxfp4":
        extra["expert_dtype"] = "mxfp4"
    elif quant in ("awq", "gptq") and cfg["quantization_config"].get("bits") in (4, 8):
        dtype = f"int{cfg['quantization_config']['bits']}"
    elif quant is not None:
        quant_note = (
            f"quantization_config's quant_method {quant!r} is not read: the weights are counted at "
            f"the config's {dtype}."
        )
    if head_dim is not None and (head_dim * heads != hidden or "kv_lora_rank" in extra):
        entry["head_dim"] = head_dim
    if dense_ffn and dense_ffn != ffn:
        extra["dense_ffn_size"] = dense_ffn
    entry.update({"total_params": 1, "active_params": 1, "dtype": dtype, "max_context": max_context})
    if tie:
        entry["tie_word_embeddings"] = True
    entry.update(extra)
    entry["source"] = source
    validate_catalog_data({"models": [entry]}, where)
    spec = model_from_entry(entry)
    total, active = count_params(spec)
    if total > limits.PARAMS.value:
        raise KavierInputError(
            f"parameter count: {limits.PARAMS.above(total)}",
            source=where,
            expected="the architecture numbers of a real model",
        )
    entry["total_params"], entry["active_params"] = total, active
    notes = engine_notes(model_from_entry(entry), cfg) + ([quant_note] if quant_note else [])
    stated = cfg.get("num_parameters")
    if isinstance(stated, (int, float)) and not isinstance(stated, bool) and stated > 0:
        off = abs(total - stated) / stated
        if off > CONFIG_COUNT_TOLERANCE:
            notes.insert(
                0,
                f"the config states num_parameters {stated:,.0f}; the architecture numbers give "
                f"{total:,} ({off:.1%} apart): check the entry",
            )
    if notes:
        entry["notes"] = " ".join(notes)
    validate_catalog_data({"models": [entry]}, where)
    return entry


def engine_notes(spec: ModelSpec, cfg: Mapping[str, Any]) -> list[str]:
    """What the simulator's cost model does not model of this model yet, one sentence each."""
    notes = []
    if spec.is_mla:
        latent = spec.kv_lora_rank + spec.qk_rope_head_dim
        notes.append(
            f"MLA: the KV cache is the compressed latent ({latent} values per layer and token, held "
            "whole by every GPU of a TP group), in the KV cache's dtype (by default the activations': "
            "bf16 for an FP8 checkpoint, as vLLM's kv-cache dtype auto; fp8 with --kv-cache-dtype "
            "fp8); attention FLOPs are those of the "
            "expanded form."
        )
    if spec.expert_dtype:
        notes.append(
            f"The routed experts are held and read at {spec.expert_dtype} (the rest at {spec.dtype}), "
            f"computed at the GPU's {spec.expert_dtype} peak where it has one, else weight-only."
        )
    if spec.sliding_window_layers:
        notes.append(
            f"{spec.sliding_window_layers} of {spec.num_layers} layers attend a "
            f"{spec.sliding_window}-token sliding window; the engine simulates full attention."
        )
    if spec.attention_sinks:
        notes.append("Attention sinks are counted, not simulated.")
    for key in ("num_nextn_predict_layers", "num_mtp_modules"):
        mtp = cfg.get(key)
        if isinstance(mtp, int) and not isinstance(mtp, bool) and mtp > 0:
            notes.append(f"The multi-token-prediction layers ({key}: {mtp}) are neither counted nor simulated.")
    if cfg.get("qk_norm_type") == "per_layer" and spec.qk_norm:
        whole = (spec.num_attention_heads + spec.num_kv_heads) * spec.dim_head
        notes.append(
            "Its q/k RMSNorms span all heads (qk_norm_type per_layer); they are counted per head, "
            f"{2 * spec.dim_head} weights a layer instead of {whole} (a negligible share)."
        )
    return notes


def describe(entry: Mapping[str, Any]) -> str:
    """One line on what was detected: MoE, attention kind, parameters."""
    spec = model_from_entry(entry)
    if spec.is_moe:
        moe = f"MoE, {spec.num_experts} experts, {spec.experts_per_token} per token"
        if spec.shared_experts:
            moe += f", {spec.shared_experts} shared"
        if spec.dense_layers:
            moe += f", {spec.dense_layers} dense layers"
    else:
        moe = "dense"
    attention = {
        "mla": "MLA (multi-head latent attention)",
        "mha": "MHA",
        "mqa": "MQA",
        "gqa": f"GQA ({spec.num_attention_heads} query / {spec.num_kv_heads} KV heads)",
    }
    return (
        f"{spec.name}: {spec.num_layers} layers, {moe}; attention {attention[spec.attention_kind]}; "
        f"{spec.total_params / 1e9:.2f}B parameters, {spec.active_params / 1e9:.2f}B active; {spec.dtype}"
        + (f" (experts {spec.expert_dtype})" if spec.expert_dtype else "")
    )


def default_name(cfg: Mapping[str, Any], path: Path, given: Path) -> str | None:
    """The model's name when --name is not given: the config's ``_name_or_path``, else the folder's name."""
    named = cfg.get("_name_or_path")
    if isinstance(named, str) and named.strip() and not Path(named).is_absolute():
        return named.strip().rstrip("/").split("/")[-1]
    if given.is_dir():
        return given.resolve().name
    return None


def to_yaml(entries: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"models": entries}, sort_keys=False, width=100, allow_unicode=True)


def write_entry(entry: dict[str, Any], out: Path, *, overwrite: bool) -> str:
    """Add ``entry`` to the catalogue file ``out`` (created if missing), atomically; 'added' or 'replaced'.

    An entry of the same name (or one of whose names it is) is refused unless ``overwrite``.
    """
    from kavier_opendc.base.atomic import atomic_write_text
    from kavier_opendc.specs.catalog import CATALOG_EXTENSIONS, read_catalog_document

    fmt = CATALOG_EXTENSIONS.get(out.suffix.lower())
    if fmt is None:
        raise KavierInputError(
            f"unsupported catalogue file extension {out.suffix or '(none)'!r}",
            source=str(out),
            expected="a .yaml, .yml or .json file",
        )
    data: Any = {}
    if out.exists():
        data, _ = read_catalog_document(out)
        data = {} if data is None else copy.deepcopy(data)
        if not isinstance(data, dict):
            raise KavierInputError("not a catalogue document (the top level is not an object)", source=str(out))
        validate_catalog_data(data, str(out))
    models = data.setdefault("models", [])
    key = entry["name"].strip().lower()
    action = "added"
    for i, old in enumerate(models):
        names = [old.get("name", "")] + list(old.get("aliases", []))
        if key in (n.strip().lower() for n in names if isinstance(n, str)):
            if not overwrite:
                raise KavierInputError(
                    f"the catalogue already has a model named {entry['name']!r} (models[{i}])",
                    source=str(out),
                    expected="another --name, or --overwrite to replace that entry",
                )
            models[i] = entry
            action = "replaced"
            break
    else:
        models.append(entry)
    validate_catalog_data(data, str(out))
    if fmt == "json":
        import json

        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True)
        if not out.exists():
            text = "# Catalogue file (schemas/catalog.schema.json) written by `kavier catalog import`.\n" + text
    atomic_write_text(out, text)
    return action
