"""``kavier catalog import``: catalogue entries from HuggingFace config.json files (issue 22).

The configs below are the published config.json files of the models of the shared data sets, typed in
by hand (the architecture fields and some the importer must ignore; the numbers are facts, copied from
the files named in ``URL``). Each is written to a temporary file and imported with the command line; the
recomputed parameter counts must be within 1 % of the published totals and active parameters.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli import main
from kavier_opendc.specs.catalog import count_params, default_catalog, load_catalog_file, spec_to_entry

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

LLAMA_31_70B = {
    **LLAMA_31_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}

MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}

QWEN3_32B = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "intermediate_size": 25600,
    "max_position_embeddings": 40960,
    "max_window_layers": 64,
    "model_type": "qwen3",
    "num_attention_heads": 64,
    "num_hidden_layers": 64,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_235B_A22B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 40960,
    "max_window_layers": 94,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 1536,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 94,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 3,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 129280,
}

GPT_OSS_120B = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 18,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "num_local_experts": 128,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    },
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "transformers_version": "4.55.0.dev0",
    "use_cache": True,
    "vocab_size": 201088,
}

# MiniMax-M2.5's config.json (MiniMaxM2ForCausalLM; the numbers of MiniMax-M2's, which it shares)
MINIMAX_M25 = {
    "architectures": ["MiniMaxM2ForCausalLM"],
    "attn_type_list": [1] * 62,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 3072,
    "intermediate_size": 1536,
    "max_position_embeddings": 196608,
    "model_type": "minimax_m2",
    "mtp_transformer_layers": 1,
    "num_attention_heads": 48,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 62,
    "num_key_value_heads": 8,
    "num_local_experts": 256,
    "num_mtp_modules": 3,
    "qk_norm_type": "per_layer",
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "float8_e4m3fn",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
    },
    "rms_norm_eps": 1e-06,
    "rope_theta": 5000000,
    "rotary_dim": 64,
    "scoring_func": "sigmoid",
    "shared_intermediate_size": 0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_mtp": True,
    "use_qk_norm": True,
    "use_routing_bias": True,
    "vocab_size": 200064,
}

URL = {
    "Llama-3.1-8B": "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
    "Llama-3.1-70B": "https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json",
    "Mixtral-8x7B": "https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
    "Qwen3-32B": "https://huggingface.co/Qwen/Qwen3-32B/blob/main/config.json",
    "Qwen3-235B-A22B": "https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json",
    "DeepSeek-V3": "https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json",
    "gpt-oss-120b": "https://huggingface.co/openai/gpt-oss-120b/blob/main/config.json",
    "MiniMax-M2.5": "https://huggingface.co/MiniMaxAI/MiniMax-M2.5/blob/main/config.json",
}

CONFIGS = {
    "Llama-3.1-8B": LLAMA_31_8B,
    "Llama-3.1-70B": LLAMA_31_70B,
    "Mixtral-8x7B": MIXTRAL_8X7B,
    "Qwen3-32B": QWEN3_32B,
    "Qwen3-235B-A22B": QWEN3_235B_A22B,
    "DeepSeek-V3": DEEPSEEK_V3,
    "gpt-oss-120b": GPT_OSS_120B,
    "MiniMax-M2.5": MINIMAX_M25,
}

# Published totals and active parameters: (total, active, tolerance of active, what the active figure counts).
PUBLISHED = {
    # model card / HF page: 8.03B, 70.6B
    "Llama-3.1-8B": (8.03e9, 8.03e9, 0.01, "all"),
    "Llama-3.1-70B": (70.6e9, 70.6e9, 0.01, "all"),
    # Mistral AI, "Mixtral of experts": 46.7B total, 12.9B per token
    "Mixtral-8x7B": (46.7e9, 12.9e9, 0.01, "all"),
    # Qwen3 model cards: 32.8B; 235B total, 22B activated
    "Qwen3-32B": (32.8e9, 32.8e9, 0.01, "all"),
    "Qwen3-235B-A22B": (235e9, 22e9, 0.01, "all"),
    # OpenAI's model card: 116.83B total, 5.13B active, a count that leaves out the input embedding
    "gpt-oss-120b": (116.83e9, 5.13e9, 0.01, "no input embedding"),
    # DeepSeek-V3 report: 671B total, 37B activated. "37B" is rounded to two figures: the exact count is
    # 37.55B with the input embedding and 36.63B without, so it is checked to 2 % only.
    "DeepSeek-V3": (671e9, 37e9, 0.02, "all"),
    # MiniMax-M2 model card: 230B total, 10B active. "10B" has one or two figures: the count without the
    # input embedding and the untied LM head is 9.80B, so it is checked to 3 % only.
    "MiniMax-M2.5": (230e9, 10e9, 0.03, "no embeddings"),
}
ACCEPTANCE = ["Llama-3.1-8B", "Mixtral-8x7B", "Qwen3-32B", "Qwen3-235B-A22B", "gpt-oss-120b"]
KINDS = {  # what the import must detect: (MoE, attention)
    "Llama-3.1-8B": (False, "gqa"),
    "Llama-3.1-70B": (False, "gqa"),
    "Mixtral-8x7B": (True, "gqa"),
    "Qwen3-32B": (False, "gqa"),
    "Qwen3-235B-A22B": (True, "gqa"),
    "gpt-oss-120b": (True, "gqa"),
    "DeepSeek-V3": (True, "mla"),
    "MiniMax-M2.5": (True, "gqa"),
}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write_config(folder: Path, cfg: object, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return path


def active_as_published(spec, convention: str) -> float:
    embeddings = {"all": 0, "no input embedding": 1, "no embeddings": 2}[convention]
    return spec.active_params - embeddings * spec.vocab_size * spec.hidden_size


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_import_matches_published_counts(name, tmp_path, capsys):
    path = write_config(tmp_path / "hf", CONFIGS[name])
    out = tmp_path / "mine.yaml"
    rc, _, err = run_cli(
        capsys, "catalog", "import", str(path), "--name", name, "--out", str(out), "--source", URL[name]
    )
    assert rc == 0, err
    assert f"added model '{name}'" in err
    spec = load_catalog_file(out).model(name)
    total, active, tol, convention = PUBLISHED[name]
    assert spec.total_params == pytest.approx(total, rel=0.01)
    assert active_as_published(spec, convention) == pytest.approx(active, rel=tol)
    assert (spec.is_moe, spec.attention_kind) == KINDS[name]
    assert spec.source == URL[name]
    assert (spec.total_params, spec.active_params) == tuple(float(x) for x in count_params(spec))


def test_five_models_within_one_percent(tmp_path, capsys):
    """The acceptance: five published configs give totals and active parameters within 1 %."""
    for name in ACCEPTANCE:
        path = write_config(tmp_path / name, CONFIGS[name])
        rc, out, err = run_cli(capsys, "catalog", "import", str(path), "--name", name)
        assert rc == 0, err
        entry = yaml.safe_load(out)["models"][0]
        total, active, tol, convention = PUBLISHED[name]
        assert tol == 0.01
        assert abs(entry["total_params"] / total - 1) < 0.01, name
        embedding = entry["vocab_size"] * entry["hidden_size"] if convention != "all" else 0
        assert abs((entry["active_params"] - embedding) / active - 1) < 0.01, name


def test_exact_counts_and_fields():
    """Exact weight counts from the transformers modules' shapes, for the architectures with new features."""
    from kavier_opendc.specs.hf_import import entry_from_config

    ds = entry_from_config(DEEPSEEK_V3, "ds", "x")
    assert (ds["kv_lora_rank"], ds["q_lora_rank"], ds["qk_rope_head_dim"], ds["v_head_dim"]) == (512, 1536, 64, 128)
    assert (ds["head_dim"], ds["dense_layers"], ds["dense_ffn_size"], ds["shared_experts"]) == (192, 3, 18432, 1)
    assert ds["dtype"] == "fp8" and ds["router_bias"] is True
    attention = (7168 * 1536 + 1536 + 1536 * 128 * 192) + (7168 * 576 + 512 + 512 * 128 * 256) + 128 * 128 * 7168
    expert = 3 * 7168 * 2048
    moe_layer = attention + 257 * expert + 256 * 7168 + 256 + 2 * 7168
    dense_layer = attention + 3 * 7168 * 18432 + 2 * 7168
    assert ds["total_params"] == 2 * 129280 * 7168 + 58 * moe_layer + 3 * dense_layer + 7168
    assert ds["active_params"] == ds["total_params"] - 58 * 248 * expert
    assert "MLA" in ds["notes"] and "multi-token-prediction" in ds["notes"]

    oss = entry_from_config(GPT_OSS_120B, "oss", "x")
    assert oss["expert_dtype"] == "mxfp4" and oss["dtype"] == "bf16"
    assert (oss["sliding_window"], oss["sliding_window_layers"]) == (128, 18)
    attention = 2880 * 4096 * 2 + 2 * 2880 * 512 + 4096 + 2 * 512 + 2880 + 64
    expert = 3 * 2880 * 2880 + 2 * 2880 + 2880
    layer = attention + 128 * expert + 128 * 2880 + 128 + 2 * 2880
    assert oss["total_params"] == 2 * 201088 * 2880 + 36 * layer + 2880 == 116_829_156_672

    qwen = entry_from_config(QWEN3_235B_A22B, "q", "x")
    assert qwen["qk_norm"] is True and "dense_layers" not in qwen and "sliding_window" not in qwen
    sparse = entry_from_config({**QWEN3_235B_A22B, "decoder_sparse_step": 2, "mlp_only_layers": [1]}, "q2", "x")
    assert (sparse["dense_layers"], sparse["dense_ffn_size"]) == (48, 12288)  # 47 odd layers + layer 1

    mm = entry_from_config(MINIMAX_M25, "mm", "x")
    assert (mm["dtype"], mm["router_bias"], mm["qk_norm"], mm["head_dim"]) == ("fp8", True, True, 128)
    assert "dense_layers" not in mm and "shared_experts" not in mm and "sliding_window" not in mm
    attention = 3072 * 6144 + 2 * 3072 * 1024 + 6144 * 3072 + 2 * 128  # q, k, v, o, q/k norms (per head)
    expert = 3 * 3072 * 1536
    layer = attention + 256 * expert + 256 * 3072 + 256 + 2 * 3072  # + router and its correction bias
    assert mm["total_params"] == 2 * 200064 * 3072 + 62 * layer + 3072 == 228_689_336_320
    assert mm["active_params"] == mm["total_params"] - 62 * 248 * expert == 11_030_124_544
    assert "num_mtp_modules: 3" in mm["notes"] and "per_layer" in mm["notes"]
    for bad, words in (
        ({"shared_intermediate_size": 1536}, "shared expert"),
        ({"attn_type_list": [0] + [1] * 61}, "lightning"),
        ({"sliding_window": 4096}, "sliding_window"),
    ):
        with pytest.raises(KavierInputError, match=words):
            entry_from_config({**MINIMAX_M25, **bad}, "mm", "x")

    llama = entry_from_config(LLAMA_31_8B, "l", "x")
    assert llama["total_params"] == default_catalog().model("Llama-3.1-8B").total_params == 8_030_261_248
    mixtral = entry_from_config(MIXTRAL_8X7B, "m", "x")
    assert mixtral["total_params"] == default_catalog().model("Mixtral-8x7B").total_params
    assert "sliding_window" not in mixtral  # null in the config


@pytest.mark.parametrize(
    "name,gpu,tp",
    [
        ("Qwen3-32B", "H100-SXM", "2"),
        ("Qwen3-235B-A22B", "H100-SXM", "8"),
        ("gpt-oss-120b", "H100-SXM", "4"),
        ("DeepSeek-V3", "H200", "8"),
        ("MiniMax-M2.5", "H100-SXM", "4"),
    ],
)
def test_imported_model_simulates(name, gpu, tp, tmp_path, capsys):
    path = write_config(tmp_path / "hf", CONFIGS[name])
    cat = tmp_path / "mine.yaml"
    assert run_cli(capsys, "catalog", "import", str(path), "--name", f"my-{name}", "--out", str(cat))[0] == 0
    trace = tmp_path / "tiny.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0.0,200,20\n0.5,300,30\n1.0,100,10\n")
    rc, _, err = run_cli(
        capsys,
        "simulate",
        "--model",
        f"my-{name}",
        "--gpu",
        gpu,
        "--tp",
        tp,
        "--trace",
        str(trace),
        "--out",
        str(tmp_path / "out"),
        "--catalog",
        str(cat),
        "--quiet",
    )
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "my-" + name in json.dumps(summary)


def test_671b_model_on_h100_is_a_clear_error(tmp_path, capsys):
    trace = tmp_path / "tiny.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0.0,200,20\n")
    rc, _, err = run_cli(
        capsys,
        "simulate",
        "--model",
        "DeepSeek-V3",
        "--gpu",
        "H100-SXM",
        "--tp",
        "8",
        "--trace",
        str(trace),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert rc == 2
    assert "DeepSeek-V3" in err and "leaves no room for a KV cache on 8 x H100-SXM" in err


def test_stdout_folder_and_default_name(tmp_path, capsys):
    folder = tmp_path / "Qwen3-32B"
    write_config(folder, CONFIGS["Qwen3-32B"])
    rc, out, err = run_cli(capsys, "catalog", "import", str(folder))
    assert rc == 0, err
    entry = yaml.safe_load(out)["models"][0]
    assert entry["name"] == "Qwen3-32B" and entry["source"] == str((folder / "config.json").resolve())
    assert "Qwen3-32B: 64 layers, dense; attention GQA (64 query / 8 KV heads); 32.76B parameters" in err
    named = write_config(tmp_path / "x", {**CONFIGS["Mixtral-8x7B"], "_name_or_path": "mistralai/Mixtral-8x7B-v0.1"})
    rc, out, _ = run_cli(capsys, "catalog", "import", str(named))
    assert yaml.safe_load(out)["models"][0]["name"] == "Mixtral-8x7B-v0.1"
    rc, _, err = run_cli(capsys, "catalog", "import", str(write_config(tmp_path / "y", CONFIGS["Qwen3-32B"])))
    assert rc == 2 and "--name NAME" in err


def test_out_appends_refuses_and_overwrites(tmp_path, capsys):
    out = tmp_path / "cat.yaml"
    a = write_config(tmp_path / "a", CONFIGS["Qwen3-32B"])
    b = write_config(tmp_path / "b", CONFIGS["Mixtral-8x7B"])
    assert run_cli(capsys, "catalog", "import", str(a), "--name", "A", "--out", str(out))[0] == 0
    assert run_cli(capsys, "catalog", "import", str(b), "--name", "B", "--out", str(out))[0] == 0
    before = out.read_text()
    rc, _, err = run_cli(capsys, "catalog", "import", str(b), "--name", "a", "--out", str(out))
    assert rc == 2 and "already has a model named 'a'" in err and "--overwrite" in err
    assert out.read_text() == before
    rc, _, err = run_cli(capsys, "catalog", "import", str(b), "--name", "A", "--out", str(out), "--overwrite")
    assert rc == 0 and "replaced model 'A'" in err
    cat = load_catalog_file(out)
    assert cat.model("A").num_experts == 8 and cat.model("B").num_experts == 8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    js = tmp_path / "cat.json"
    assert run_cli(capsys, "catalog", "import", str(a), "--name", "A", "--out", str(js))[0] == 0
    assert load_catalog_file(js).model("A").qk_norm is True
    rc, _, err = run_cli(capsys, "catalog", "models", "--catalog", str(out))
    assert rc == 0


def test_builtin_entries_match_published_counts():
    cat = default_catalog()
    for name, (total, active, tol, convention) in PUBLISHED.items():
        spec = cat.model(name)
        # (the older Mixtral entry's active count is one 4096-vector norm below the exact count)
        assert (spec.total_params, spec.active_params) == pytest.approx(count_params(spec), rel=1e-6), name
        assert spec.total_params == pytest.approx(total, rel=0.01), name
        assert active_as_published(spec, convention) == pytest.approx(active, rel=tol), name
        assert "huggingface.co" in spec.source and "config.json" in spec.source
    r1, v3 = cat.model("DeepSeek-R1"), cat.model("deepseek-ai/DeepSeek-V3")
    assert (r1.total_params, r1.kv_lora_rank, r1.dense_layers) == (v3.total_params, 512, 3)
    assert "deepseek-ai/DeepSeek-R1/" in r1.source


def test_builtin_entries_as_imported():
    """The built-in entries are what `kavier catalog import` writes for their configs (source, aliases aside)."""
    from kavier_opendc.specs.hf_import import entry_from_config

    cat = default_catalog()
    for name in ("Qwen3-32B", "Qwen3-235B-A22B", "DeepSeek-V3", "gpt-oss-120b", "MiniMax-M2.5"):
        built = spec_to_entry(cat.model(name))
        fresh = entry_from_config(CONFIGS[name], name, built["source"])
        assert built.pop("aliases")
        assert {k: v for k, v in fresh.items()} == {k: built[k] for k in fresh}, name
        assert set(built) - set(fresh) <= {
            "dtype",
            "head_dim",
            "num_experts",
            "experts_per_token",
            "tie_word_embeddings",
            "gated_mlp",
            "qkv_bias",
            "linear_bias",
            "norm",
            "learned_pos_embeddings",
        }  # written with their defaults


def test_old_entries_unchanged_by_new_fields():
    entry = spec_to_entry(default_catalog().model("Llama-3-8B"))
    for key in ("dense_layers", "kv_lora_rank", "shared_experts", "notes", "expert_dtype", "qk_norm"):
        assert key not in entry


# ------------------------------------------------------------------------------------------ bad input


def _import_error(tmp_path, capsys, cfg, name="X") -> str:
    path = write_config(tmp_path / "bad", cfg) if not isinstance(cfg, Path) else cfg
    rc, out, err = run_cli(capsys, "catalog", "import", str(path), "--name", name)
    assert rc == 2 and out == "", err
    assert "Traceback" not in err
    return err


def test_missing_fields_are_named(tmp_path, capsys):
    cfg = copy.deepcopy(DEEPSEEK_V3)
    for key in ("hidden_size", "kv_lora_rank", "n_routed_experts"):
        del cfg[key]
    err = _import_error(tmp_path, capsys, cfg)
    assert "DeepseekV3ForCausalLM config, 3 problems" in err
    for key in ("hidden_size", "kv_lora_rank", "n_routed_experts"):
        assert f"'{key}' is missing" in err
    err = _import_error(tmp_path, capsys, {k: v for k, v in GPT_OSS_120B.items() if k != "head_dim"})
    assert "'head_dim' is missing" in err
    err = _import_error(tmp_path, capsys, {**QWEN3_32B, "num_hidden_layers": "64", "hidden_size": True})
    assert "'num_hidden_layers' must be an integer, got '64'" in err and "'hidden_size' must be an integer" in err
    err = _import_error(tmp_path, capsys, {**QWEN3_32B, "torch_dtype": "float8"})
    assert "'torch_dtype' must be one of bfloat16, float16, float32" in err


def test_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _import_error(tmp_path, capsys, tmp_path / "empty")
    assert "no config.json in this folder" in err
    err = _import_error(tmp_path, capsys, tmp_path / "nothere.json")
    assert "config file not found" in err


def test_not_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{ 'hidden_size': 4096 ")
    assert "invalid JSON syntax" in _import_error(tmp_path, capsys, path)
    path.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in _import_error(tmp_path, capsys, path)
    path.write_text("[1, 2]")
    assert "not an object" in _import_error(tmp_path, capsys, path)


def test_unknown_architecture(tmp_path, capsys):
    err = _import_error(tmp_path, capsys, {**LLAMA_31_8B, "architectures": ["MambaForCausalLM"]})
    assert "unsupported architecture MambaForCausalLM" in err
    assert "LlamaForCausalLM" in err and "DeepseekV3ForCausalLM" in err and "GptOssForCausalLM" in err
    cfg = {k: v for k, v in LLAMA_31_8B.items() if k not in ("architectures", "model_type")}
    assert "'architectures' is missing" in _import_error(tmp_path, capsys, cfg)
    cfg = {k: v for k, v in LLAMA_31_8B.items() if k != "architectures"}  # model_type is enough
    assert run_cli(capsys, "catalog", "import", str(write_config(tmp_path / "mt", cfg)), "--name", "m")[0] == 0


def test_hostile_sizes(tmp_path, capsys):
    err = _import_error(tmp_path, capsys, {**LLAMA_31_8B, "num_hidden_layers": 10**30})
    assert "'num_hidden_layers'" in err and "is above the limit of 100,000,000" in err
    err = _import_error(
        tmp_path,
        capsys,
        {**LLAMA_31_8B, "hidden_size": 8_000_000, "intermediate_size": 90_000_000, "num_attention_heads": 64},
    )
    assert "parameter count" in err and "is above the limit of 100,000,000,000,000 parameters" in err
    err = _import_error(tmp_path, capsys, {**LLAMA_31_8B, "max_position_embeddings": 10**9})
    assert "'max_position_embeddings'" in err and "10,000,000 tokens" in err
    err = _import_error(tmp_path, capsys, {**LLAMA_31_8B, "num_key_value_heads": 0})
    assert "'num_key_value_heads' must be at least 1, got 0" in err
    big = tmp_path / "big.json"
    big.write_text(json.dumps({**LLAMA_31_8B, "pad": "x" * (9 * 2**20)}))
    assert "file size" in _import_error(tmp_path, capsys, big)


def test_catalog_arguments(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "catalog", "import")
    assert rc == 2 and "needs a config.json" in err
    rc, _, err = run_cli(capsys, "catalog", "models", "extra")
    assert rc == 2 and "unexpected argument 'extra'" in err
    rc, out, _ = run_cli(capsys, "catalog", "models")
    assert rc == 0 and "DeepSeek-V3" in out and "gpt-oss-120b" in out


def test_config_count_is_checked(tmp_path, capsys):
    from kavier_opendc.specs.hf_import import entry_from_config

    same = entry_from_config({**LLAMA_31_8B, "num_parameters": 8_030_261_248}, "a", "x")
    assert "notes" not in same
    off = entry_from_config({**LLAMA_31_8B, "num_parameters": 9_000_000_000}, "b", "x")
    assert "the config states num_parameters 9,000,000,000" in off["notes"] and "10.8% apart" in off["notes"]
    path = write_config(tmp_path / "c", {**LLAMA_31_8B, "num_parameters": 9_000_000_000})
    rc, _, err = run_cli(capsys, "catalog", "import", str(path), "--name", "c")
    assert rc == 0 and "kavier: warning: the config states num_parameters 9,000,000,000" in err


def test_quantized_configs():
    from kavier_opendc.specs.hf_import import entry_from_config

    awq = entry_from_config({**QWEN3_32B, "quantization_config": {"quant_method": "awq", "bits": 4}}, "a", "x")
    assert awq["dtype"] == "int4"
    other = entry_from_config({**QWEN3_32B, "quantization_config": {"quant_method": "bitsandbytes"}}, "b", "x")
    assert other["dtype"] == "bf16" and "'bitsandbytes' is not read" in other["notes"]


def test_new_fields_checked_in_catalogue_files(tmp_path):
    from kavier_opendc.base.errors import KavierInputError
    from kavier_opendc.specs.hf_import import entry_from_config

    entry = entry_from_config(DEEPSEEK_V3, "ds", "x")
    bad = tmp_path / "bad.yaml"
    broken = {**entry, "dense_layers": 61, "q_lora_rank": 1536}
    del broken["head_dim"]
    bad.write_text(yaml.safe_dump({"models": [broken]}))
    with pytest.raises(KavierInputError) as info:
        load_catalog_file(bad)
    assert "models[0].dense_layers: 61 leaves no MoE layer" in str(info.value)
    assert "models[0].head_dim: required with MLA" in str(info.value)
    dense = {k: v for k, v in entry_from_config(QWEN3_32B, "q", "x").items()}
    bad.write_text(
        yaml.safe_dump({"models": [{**dense, "shared_experts": 1, "qk_rope_head_dim": 64, "expert_dtype": "fp4"}]})
    )
    with pytest.raises(KavierInputError) as info:
        load_catalog_file(bad)
    text = str(info.value)
    assert "shared_experts: only for MoE models" in text and "qk_rope_head_dim: an MLA field" in text
    assert "expert_dtype" in text
