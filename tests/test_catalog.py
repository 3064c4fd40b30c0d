"""Tests of the built-in model/GPU catalogue and the catalogue-file loader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import (
    Catalog,
    GPUSpec,
    ModelSpec,
    catalog_from_data,
    catalog_schema,
    default_catalog,
    load_catalog_file,
    spec_to_entry,
)

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "kavier_opendc" / "specs"

CONTRACT_MODELS = [
    "Llama-3-8B",
    "Llama-3-70B",
    "Llama-2-7B",
    "Llama-2-13B",
    "Llama-2-70B",
    "OPT-13B",
    "Mistral-7B",
    "Mixtral-8x7B",
    "Qwen2.5-7B",
]
CONTRACT_GPUS = ["A10", "L4", "L40S", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "B200", "MI300X"]


# ------------------------------------------------------------ built-ins ----


@pytest.mark.parametrize("name", CONTRACT_MODELS)
def test_contract_models_resolve_case_insensitively(name):
    cat = default_catalog()
    for variant in (name, name.lower(), name.upper(), f"  {name.swapcase()} "):
        assert cat.model(variant).name == name


@pytest.mark.parametrize("name", CONTRACT_GPUS)
def test_contract_gpus_resolve_case_insensitively(name):
    cat = default_catalog()
    for variant in (name, name.lower(), name.upper(), name.swapcase()):
        assert cat.gpu(variant).name == name


def test_aliases():
    cat = default_catalog()
    assert cat.model("llama3-8b").name == "Llama-3-8B"
    assert cat.model("meta-llama/Meta-Llama-3-8B").name == "Llama-3-8B"
    assert cat.model("META-LLAMA/META-LLAMA-3-8B").name == "Llama-3-8B"
    assert cat.model("llama_3_8b").name == "Llama-3-8B"  # loose match
    assert cat.model("mistralai/Mixtral-8x7B-v0.1").name == "Mixtral-8x7B"
    assert cat.gpu("h100").name == "H100-SXM"
    assert cat.gpu("a100").name == "A100-80GB"
    assert cat.gpu("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert cat.gpu("mi300").name == "MI300X"


def test_spec_objects_pass_through():
    cat = default_catalog()
    m = cat.model("Llama-2-7B")
    g = cat.gpu("A10")
    assert cat.model(m) is m and cat.gpu(g) is g


def test_unknown_names_list_known_ones():
    cat = default_catalog()
    with pytest.raises(KavierInputError) as info:
        cat.model("Llama-9-1T")
    msg = str(info.value)
    assert "Llama-9-1T" in msg
    for name in CONTRACT_MODELS:
        assert name in msg
    with pytest.raises(KavierInputError) as info:
        cat.gpu("H1000")
    msg = str(info.value)
    assert "H1000" in msg and "H100-SXM" in msg and "MI300X" in msg
    assert not cat.has_gpu("H1000") and cat.has_gpu("h100")


def test_listing():
    cat = default_catalog()
    assert all(isinstance(m, ModelSpec) for m in cat.models())
    assert all(isinstance(g, GPUSpec) for g in cat.gpus())
    assert set(CONTRACT_MODELS) <= set(cat.model_names())
    assert set(CONTRACT_GPUS) <= set(cat.gpu_names())
    assert set(cat.model_specs) == {n.lower() for n in cat.model_names()}
    assert set(cat.gpu_specs) == {n.lower() for n in cat.gpu_names()}


def test_default_catalog_is_cached():
    assert default_catalog() is default_catalog()


def test_kv_bytes_per_token():
    cat = default_catalog()
    assert cat.model("Llama-3-8B").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    assert cat.model("Llama-2-7B").kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524288
    assert cat.model("Llama-2-70B").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert cat.model("Qwen2.5-7B").kv_bytes_per_token == 2 * 28 * 4 * 128 * 2
    # MLA caches one latent per layer: kv_lora_rank + the rotary key, in the KV cache's dtype: by default the
    # activations' (bf16 for this FP8 checkpoint, vLLM's kv_cache_dtype auto), 1 byte with an FP8 KV cache
    ds = cat.model("DeepSeek-V3")
    assert ds.dtype == "fp8" and ds.kv_cache_dtype == "bf16"
    assert ds.kv_bytes_per_token == 61 * (512 + 64) * 2 == 70272
    assert dataclasses.replace(ds, kv_dtype="fp8").kv_bytes_per_token == 61 * (512 + 64) * 1 == 35136
    assert ds.kv_bytes_per_token_gpu(8) == ds.kv_bytes_per_token  # every GPU holds the whole latent
    # GQA: KV heads split over the group, never below one head per GPU
    l70 = cat.model("Llama-2-70B")
    assert l70.kv_bytes_per_token_gpu(4) == 2 * 80 * 2 * 128 * 2 and l70.kv_bytes_per_token_gpu(16) == 2 * 80 * 128 * 2
    assert cat.model("Mistral-Small-24B").dim_head == 128  # explicit head_dim


def architecture_param_count(m: ModelSpec) -> tuple[float, float]:
    """(total, active) weights from the architecture numbers alone.

    embeddings (+ learned positions) + lm_head unless tied
    + layers x (attention + experts x MLP + router + 2 norms) + final norm;
    MLA attention (low-rank q, compressed KV latent), shared experts and dense layers
    of MoE models, per-head q/k norms, router biases and attention sinks where set.
    """
    h, hd, nh = m.hidden_size, m.dim_head, m.num_attention_heads
    if m.kv_lora_rank:
        v, rope, qr, kvr = m.v_head_dim or hd, m.qk_rope_head_dim, m.q_lora_rank, m.kv_lora_rank
        q_proj = (h * qr + qr + qr * nh * hd) if qr else h * nh * hd  # down, norm, up (or one matrix)
        kv_proj = h * kvr + h * rope + kvr + kvr * nh * (hd - rope) + kvr * nh * v
        attention = q_proj + kv_proj + nh * v * h
    else:
        q_out, kv_out = nh * hd, m.num_kv_heads * hd
        attention = h * q_out + 2 * h * kv_out + q_out * h  # q, k, v, o
        if m.qkv_bias or m.linear_bias:
            attention += q_out + 2 * kv_out
        if m.qk_norm:
            attention += 2 * hd
    if m.linear_bias:
        attention += h  # o bias
    attention += nh if m.attention_sinks else 0
    matrices = 3 if m.gated_mlp else 2

    def mlp(ffn):
        return matrices * h * ffn + ((matrices - 1) * ffn + h if m.linear_bias else 0)

    norm = h * (2 if m.norm == "layernorm" else 1)  # LayerNorm has a bias
    router = (h + m.router_bias) * m.num_experts if m.num_experts > 1 else 0
    moe_layers = m.num_layers - m.dense_layers
    moe_layer = attention + (m.num_experts + m.shared_experts) * mlp(m.ffn_size) + router + 2 * norm
    dense_layer = attention + mlp(m.dense_ffn_size or m.ffn_size) + 2 * norm
    embeddings = m.vocab_size * h + m.learned_pos_embeddings * h
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * h
    total = embeddings + lm_head + moe_layers * moe_layer + m.dense_layers * dense_layer + norm
    active = total - moe_layers * (m.num_experts - m.experts_per_token) * mlp(m.ffn_size)
    return float(total), float(active)


@pytest.mark.parametrize("name", default_catalog().model_names())
def test_param_count_matches_architecture(name):
    m = default_catalog().model(name)
    total, active = architecture_param_count(m)
    assert m.total_params == pytest.approx(total, rel=0.02)
    assert m.active_params == pytest.approx(active, rel=0.02)
    if m.num_experts == 1:
        assert m.active_params == m.total_params


def test_published_param_counts():
    cat = default_catalog()
    assert cat.model("Llama-3-8B").total_params == pytest.approx(8.03e9, rel=0.002)
    assert cat.model("Llama-2-7B").total_params == pytest.approx(6.74e9, rel=0.002)
    mixtral = cat.model("Mixtral-8x7B")
    assert (mixtral.num_experts, mixtral.experts_per_token) == (8, 2)
    assert mixtral.total_params == pytest.approx(46.7e9, rel=0.005)
    assert mixtral.active_params == pytest.approx(12.9e9, rel=0.005)


def test_gpu_datasheet_numbers():
    cat = default_catalog()
    expected = {  # name: (dense fp16 TFLOPS, GB/s, TDP W)
        "A10": (125, 600, 150),
        "L4": (121, 300, 72),
        "L40S": (362.05, 864, 350),
        "A100-40GB": (312, 1555, 400),
        "A100-80GB": (312, 2039, 400),
        "H100-SXM": (989.4, 3350, 700),
        "H100-PCIe": (756, 2000, 350),
        "H200": (989.4, 4800, 700),
        "B200": (2250, 8000, 1000),
        "MI300X": (1307.4, 5300, 750),
    }
    for name, (tflops, bw, tdp) in expected.items():
        g = cat.gpu(name)
        assert (g.peak_fp16_tflops, g.mem_bandwidth_gbs, g.max_power_w) == (tflops, bw, tdp)
        assert 0 < g.idle_power_w < g.max_power_w
        assert g.price_per_hour > 0 and g.num_sms > 0 and g.boost_clock_mhz > 0
        assert "http" in g.source
    assert cat.gpu("H100-SXM").peak_flops == 989.4e12
    assert cat.gpu("H200").memory_bytes == 141 * 2**30


def test_builtin_files_validate_against_schema():
    schema = json.loads((REPO / "schemas" / "catalog.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for fname in ("models.yaml", "gpus.yaml"):
        data = yaml.safe_load((SPECS / fname).read_text())
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], f"{fname}: {errors}"
        for entry in next(iter(data.values())):
            assert entry.get("source"), f"{fname}: {entry['name']} has no source"


def test_catalog_schema_is_the_schemas_file():
    assert catalog_schema() == json.loads((REPO / "schemas" / "catalog.schema.json").read_text())


# ------------------------------------------------------------ user files ----


def _gpu_entry(**over):
    entry = {
        "name": "MyGPU",
        "vendor": "ACME",
        "peak_fp16_tflops": 100.0,
        "mem_bandwidth_gbs": 1000.0,
        "memory_gib": 32.0,
        "idle_power_w": 30.0,
        "max_power_w": 300.0,
        "price_per_hour": 1.5,
        "interconnect_gbs": 32.0,
        "pcie_gbs": 32.0,
        "boost_clock_mhz": 1500.0,
        "num_sms": 64,
    }
    entry.update(over)
    return entry


def _model_entry(**over):
    entry = {
        "name": "Tiny-1B",
        "num_layers": 16,
        "hidden_size": 2048,
        "num_attention_heads": 32,
        "num_kv_heads": 8,
        "ffn_size": 8192,
        "vocab_size": 128256,
        "total_params": 1.24e9,
    }
    entry.update(over)
    return entry


def test_user_file_adds_model_and_overrides_gpu(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "models:\n"
        "  - name: Tiny-1B\n"
        "    aliases: [tiny]\n"
        "    num_layers: 16\n    hidden_size: 2048\n    num_attention_heads: 32\n"
        "    num_kv_heads: 8\n    ffn_size: 8192\n    vocab_size: 128256\n"
        "    total_params: 1.24e9\n"  # YAML-1.2 float syntax accepted
        "gpus:\n"
        "  - name: h100-sxm\n"  # overrides the built-in, any case
        "    vendor: NVIDIA\n    peak_fp16_tflops: 989.4\n    mem_bandwidth_gbs: 3350\n"
        "    memory_gib: 80\n    idle_power_w: 80\n    max_power_w: 700\n"
        "    price_per_hour: 1.99\n    interconnect_gbs: 450\n    pcie_gbs: 64\n"
        "    boost_clock_mhz: 1980\n    num_sms: 132\n"
    )
    cat = load_catalog_file(path)
    tiny = cat.model("TINY-1b")
    assert tiny.total_params == 1.24e9 and tiny.active_params == 1.24e9
    assert cat.model("tiny") is tiny
    assert tiny.kv_bytes_per_token == 2 * 16 * 8 * 64 * 2
    assert cat.gpu("H100-SXM").price_per_hour == 1.99
    assert cat.gpu("h100").price_per_hour == 1.99  # built-in alias follows the override
    assert cat.gpu("A10") == default_catalog().gpu("A10")
    assert default_catalog().gpu("H100-SXM").price_per_hour == 2.99  # built-ins untouched
    assert not default_catalog().has_model("Tiny-1B")
    assert str(path) in cat.sources


def test_user_json_file_and_explicit_base(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"gpus": [_gpu_entry()]}))
    base = Catalog(gpus=[default_catalog().gpu("A10")])
    cat = load_catalog_file(path, base=base)
    assert cat.gpu_names() == ["A10", "MyGPU"]
    assert cat.models() == []


def test_empty_yaml_file_adds_nothing(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("# nothing here\n")
    cat = load_catalog_file(path)
    assert cat.model_names() == default_catalog().model_names()


def test_merged_prefers_other():
    a = Catalog(gpus=[GPUSpec(**{**_gpu_entry(), "name": "X"})])
    b = Catalog(gpus=[GPUSpec(**{**_gpu_entry(price_per_hour=9.0), "name": "x"})])
    assert a.merged(b).gpu("X").price_per_hour == 9.0
    assert b.merged(a).gpu("X").price_per_hour == 1.5


def _load_error(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(KavierInputError) as info:
        load_catalog_file(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg.strip()  # one paragraph
    return msg


def test_invalid_yaml_syntax(tmp_path):
    msg = _load_error(tmp_path, "bad.yaml", "gpus:\n  - name: X\n    vendor: [unclosed\n")
    assert "YAML" in msg and "line" in msg


def test_invalid_json_syntax(tmp_path):
    msg = _load_error(tmp_path, "bad.json", '{"gpus": [\n  {"name": "X",}\n]}')
    assert "JSON" in msg and "line 2" in msg


def test_duplicate_yaml_key(tmp_path):
    msg = _load_error(tmp_path, "dup.yaml", "gpus: []\ngpus: []\n")
    assert "duplicate key 'gpus'" in msg and "line 2" in msg


def test_missing_required_field(tmp_path):
    entry = _gpu_entry()
    del entry["vendor"]
    msg = _load_error(tmp_path, "m.json", json.dumps({"gpus": [entry]}))
    assert "gpus[0].vendor" in msg and "required" in msg


def test_negative_number(tmp_path):
    data = {"gpus": [_gpu_entry(), _gpu_entry(name="Other", mem_bandwidth_gbs=-3)]}
    msg = _load_error(tmp_path, "n.json", json.dumps(data))
    assert "gpus[1].mem_bandwidth_gbs: -3 is less than the minimum of 0" in msg


def test_unknown_key(tmp_path):
    data = {"models": [_model_entry(num_layer=3)]}
    msg = _load_error(tmp_path, "u.yaml", yaml.safe_dump(data))
    assert "models[0].num_layer" in msg and "num_layers" in msg
    msg = _load_error(tmp_path, "top.yaml", "gpu: []\n")
    assert "gpu" in msg and "unknown key" in msg


def test_wrong_type(tmp_path):
    data = {"models": [_model_entry(num_layers="many")]}
    msg = _load_error(tmp_path, "t.yaml", yaml.safe_dump(data))
    assert "models[0].num_layers" in msg and "integer" in msg
    msg = _load_error(tmp_path, "t2.yaml", "models: {name: x}\n")
    assert "models" in msg and "array" in msg


def test_every_problem_reported_at_once(tmp_path):
    bad_gpu = _gpu_entry(name="Other", mem_bandwidth_gbs=-3, colour="red")
    del bad_gpu["vendor"]
    data = {"models": [_model_entry(num_kv_heads="8", dtype="fp64")], "gpus": [_gpu_entry(), bad_gpu]}
    msg = _load_error(tmp_path, "many.json", json.dumps(data))
    for fragment in (
        "models[0].num_kv_heads",
        "models[0].dtype",
        "gpus[1].mem_bandwidth_gbs",
        "gpus[1].colour",
        "gpus[1].vendor",
        "5 problems",
    ):
        assert fragment in msg, fragment


def test_semantic_checks(tmp_path):
    data = {
        "models": [_model_entry(num_kv_heads=5), _model_entry(name="Moe", num_experts=4)],  # MoE without active_params
        "gpus": [_gpu_entry(idle_power_w=500), _gpu_entry(name="mygpu")],
    }
    msg = _load_error(tmp_path, "s.json", json.dumps(data))
    assert "models[0].num_kv_heads" in msg
    assert "models[1].active_params" in msg
    assert "gpus[0].idle_power_w" in msg
    assert "gpus[1].name" in msg and "already used" in msg


def test_wrong_extension_and_missing_file(tmp_path):
    msg = _load_error(tmp_path, "cat.toml", "x = 1\n")
    assert ".toml" in msg
    with pytest.raises(KavierInputError, match="not found"):
        load_catalog_file(tmp_path / "absent.yaml")


def test_to_dict_round_trip():
    cat = default_catalog()
    again = catalog_from_data(json.loads(json.dumps(cat.to_dict())))
    assert again.models() == cat.models() and again.gpus() == cat.gpus()
    assert [m.aliases for m in again.models()] == [m.aliases for m in cat.models()]


# ----------------------------------------------------- property testing ----

_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._ /-]{0,18}[A-Za-z0-9])?", fullmatch=True)
_pos = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False)


@st.composite
def gpu_entries(draw):
    max_power = draw(st.floats(min_value=1.0, max_value=5000.0))
    entry = {
        "name": draw(_names),
        "vendor": draw(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)),
        "peak_fp16_tflops": draw(_pos),
        "mem_bandwidth_gbs": draw(_pos),
        "memory_gib": draw(st.floats(min_value=1e-3, max_value=limits.MEMORY_GB.value)),  # within the limit
        "idle_power_w": draw(st.floats(min_value=0.0, max_value=1.0)) * max_power,
        "max_power_w": max_power,
        "price_per_hour": draw(st.floats(min_value=0.0, max_value=1000.0)),
        "interconnect_gbs": draw(_pos),
        "pcie_gbs": draw(_pos),
        "boost_clock_mhz": draw(_pos),
        "num_sms": draw(st.integers(min_value=1, max_value=100_000)),
    }
    if draw(st.booleans()):
        entry["source"] = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
    if draw(st.booleans()):
        entry["aliases"] = draw(st.lists(_names, max_size=3, unique_by=lambda s: s.lower()))
        entry["aliases"] = [a for a in entry["aliases"] if a.lower() != entry["name"].lower()]
    return entry


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=gpu_entries())
def test_random_gpu_entries_round_trip_through_yaml(tmp_path, entry):
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({"gpus": [entry]}), encoding="utf-8")
    cat = load_catalog_file(path, base=Catalog())
    spec = cat.gpu(entry["name"])
    expected = {"source": "", **entry}
    if not expected.get("aliases"):
        expected.pop("aliases", None)
    assert spec_to_entry(spec) == expected
    for key, value in entry.items():
        if key == "aliases":
            assert list(spec.aliases) == value
        else:
            assert getattr(spec, key) == value, key
    for alias in entry.get("aliases", []):
        assert cat.gpu(alias) is spec


def test_moe_weight_reads_count_routed_experts_of_moe_layers_only():
    """DeepSeek-V3: 58 of 61 layers are MoE with 256 routed experts of 3 x 7168 x 2048 (FP8, 1 byte); the 3
    dense layers and the shared expert are read every iteration. Touched experts for T tokens with k = 8:
    E (1 - (1 - k/E)^T): 8 for T = 1, 101.9 for T = 16, all 256 (to 1e-12) for T = 1024."""
    from kavier_opendc.specs.iteration_time import IterationTimer

    cat = default_catalog()
    m, g = cat.model("DeepSeek-V3"), cat.gpu("H200")
    t = IterationTimer(m, g, 8, g.profile)
    assert t.expert_bytes == 3 * 7168 * 2048 * 58 * 256
    assert t.shared_bytes == pytest.approx(t.body_bytes - t.expert_bytes)
    for n, touched in ((1, 8.0), (16, 256 * (1 - (1 - 8 / 256) ** 16)), (1024, 256 * (1 - (1 - 8 / 256) ** 1024))):
        assert t.body_read_bytes(n) == pytest.approx(t.shared_bytes + t.expert_bytes * touched / 256)
    assert 256 * (1 - (1 - 8 / 256) ** 16) == pytest.approx(101.9, abs=0.1)


# ----------------------------------------------------------------- the pre-validated snapshot (issue 20)
def test_the_committed_snapshot_is_a_rebuild_of_the_builtin_files():
    """kavier_opendc/specs/builtin_catalog.json holds models/gpus/profiles.yaml parsed and validated, and
    frameworks.yaml parsed; `python bench/build_catalog.py` rewrites it after any of them changes."""
    import json
    from importlib import resources

    from kavier_opendc.specs.catalog import SNAPSHOT_FILE, builtin_snapshot

    committed = json.loads(resources.files("kavier_opendc.specs").joinpath(SNAPSHOT_FILE).read_text())
    assert committed == json.loads(json.dumps(builtin_snapshot())), "run python bench/build_catalog.py"


def test_the_snapshot_gives_the_catalogue_the_yaml_gives(monkeypatch):
    from kavier_opendc.specs import catalog as C
    from kavier_opendc.specs import frameworks as F
    from kavier_opendc.specs import snapshot as S

    docs = C._builtin_documents()
    assert [v for _, _, v in docs] == [True, True, True]  # the snapshot matches every file
    text = F.BUILTIN_FILE.read_text(encoding="utf-8")
    assert S.snapshot_document(F.BUILTIN_FILE.name, text) == (True, F.parse_builtin_frameworks(text))
    assert S.snapshot_document(F.BUILTIN_FILE.name, text + "# edited\n") == (False, None)  # a stale hash
    fast = C._builtin_catalog.__wrapped__()
    monkeypatch.setattr(F, "_BUILTIN", None)
    fast_fws = F.builtin_frameworks()
    monkeypatch.setattr(S, "_snapshot", dict)  # no snapshot: as for a YAML edited after the build
    assert [v for _, _, v in C._builtin_documents()] == [False, False, False]
    monkeypatch.setattr(F, "_BUILTIN", None)
    slow_fws = F.builtin_frameworks()  # parsed from the YAML now
    assert fast_fws == slow_fws and fast_fws is not slow_fws
    assert {k: f.provenance for k, f in fast_fws.items()} == {k: f.provenance for k, f in slow_fws.items()}
    slow = C._builtin_catalog.__wrapped__()
    assert fast.model_specs == slow.model_specs and fast.gpu_specs == slow.gpu_specs
    assert fast.profile_specs == slow.profile_specs
    assert {k: s.aliases for k, s in fast.model_specs.items()} == {k: s.aliases for k, s in slow.model_specs.items()}
