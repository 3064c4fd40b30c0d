"""Precisions (issue 22 item 4): the weights' and the KV cache's datatypes, the GEMMs' peak, KV capacity.

Hand-computed numbers: Llama-3.1-8B (8,030,261,248 weights, vocabulary 128,256 x hidden 4096, 32 layers of
8 KV heads of 128) on one H100-SXM (80 GiB; FP16 989.4, FP8 1978.9 dense TFLOP/s).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine import knobs
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.catalog import catalog_from_data, spec_to_entry

PARAMS = 8_030_261_248
EMBEDDING = 128_256 * 4096  # the input embedding: a lookup, not read as a GEMM's weights
KV_BF16 = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 heads of 128, 2 bytes: 131,072 B per token


def served(weight_dtype="auto", kv_cache_dtype="auto", gpu="H100-SXM", **kw):
    cat = default_catalog()
    cfg = SimConfig(
        model=cat.model("Llama-3.1-8B"),
        gpu=cat.gpu(gpu),
        weight_dtype=weight_dtype,
        kv_cache_dtype=kv_cache_dtype,
        **kw,
    )
    cfg.validate()
    g = cfg.replica_groups()[0]
    return cfg, CostModel(g.model, g.gpu, g.tp)


def test_catalogue_peaks_per_datatype():
    cat = default_catalog()
    fp8 = {g.name: g.peak_fp8_tflops for g in cat.gpus()}
    assert fp8 == {
        "A10": None,
        "L4": 242.5,
        "L40S": 733.0,
        "A100-40GB": None,
        "A100-80GB": None,
        "H100-SXM": 1978.9,
        "H100-PCIe": 1513.0,
        "H200": 1978.9,
        "B200": 4500.0,
        "MI300X": 2614.9,
    }
    assert {g.name for g in cat.gpus() if g.peak_fp4_tflops} == {"B200"}
    assert cat.gpu("B200").peak_fp4_tflops == 9000.0
    assert cat.gpu("A100-80GB").peak_int8_tops == 624.0
    for g in cat.gpus():  # dense: FP8 twice the dense FP16 peak where there is one (L4: 121 -> 242.5 rounded)
        assert "precisions:" in g.source
        if g.peak_fp8_tflops:
            assert g.peak_fp8_tflops == pytest.approx(2 * g.peak_fp16_tflops, rel=0.015)


def test_fp8_decode_step_bytes_by_hand():
    _, bf16 = served()
    _, fp8 = served("fp8")
    _, fp8kv = served("fp8", "fp8")
    # weights held: 8.03e9 x 2 bytes, x 1 byte in FP8
    assert bf16.weight_bytes == PARAMS * 2 == 16_060_522_496
    assert fp8.weight_bytes == PARAMS * 1 == 8_030_261_248
    # weights read by a decode step (every weight but the input embedding)
    assert fp8.weight_read_bytes(1) == PARAMS - EMBEDDING == 7_504_924_672
    assert bf16.weight_read_bytes(1) == 2 * 7_504_924_672
    # KV bytes per token: auto keeps the activations' bf16 for an FP8 checkpoint; fp8 halves them
    assert bf16.kv_bytes_per_token == fp8.kv_bytes_per_token == KV_BF16 == 131_072
    assert fp8kv.kv_bytes_per_token == KV_BF16 // 2 == 65_536
    # a decode step reading 1000 cached tokens of one sequence: the KV bytes moved are 1001 x 65,536
    t = fp8kv.timer
    assert t.attn_time(0, 1001) == pytest.approx(1001 * 65_536 * t.s_per_kv_byte)
    assert t.attn_time(0, 1001) == pytest.approx(bf16.timer.attn_time(0, 1001) / 2)
    # the all-reduce and elementwise traffic stays 16-bit (activations)
    assert fp8.timer.allreduce_bytes_per_token == bf16.timer.allreduce_bytes_per_token == 4096 * 2


def test_compute_peak_of_the_gemm_datatype():
    _, bf16 = served()
    _, fp8 = served("fp8")
    assert bf16.timer.gemm_peak == pytest.approx(989.4e12) and bf16.timer.gemm_dtype == "fp16"
    assert fp8.timer.gemm_peak == pytest.approx(1978.9e12) and fp8.timer.gemm_dtype == "fp8"  # W8A8
    assert fp8.timer.peak == bf16.timer.peak == pytest.approx(989.4e12)  # attention stays 16-bit
    # a compute-bound prefill of 8192 tokens: the GEMMs' time halves (to the smooth roofline's 1e-4)
    p = fp8.timer.profile
    flops = 8192 * fp8.timer.flops_per_body_token
    assert p.gemm_time(0.0, flops, fp8.timer.gemm_peak, fp8.timer.bw) == pytest.approx(
        p.gemm_time(0.0, flops, bf16.timer.gemm_peak, bf16.timer.bw) / 2, rel=1e-3
    )
    # int8/int4 are weight-only (GPTQ/AWQ): their bytes, the FP16 peak
    _, int4 = served("int4")
    assert int4.weight_bytes == PARAMS / 2 and int4.timer.gemm_peak == pytest.approx(989.4e12)


def test_kv_capacity_doubles_with_fp8_kv_by_hand():
    """free = 80 GiB x 0.9 - 8.03e9 (FP8 weights) - activations (8192 x (4 x 4096 + 2 x 14336) x 2
    + 256 x 128256 x 4 = 869,531,648) - 1 GiB = 67,335,876,608 B; / (16 x 131,072) = 32,108 blocks,
    / (16 x 65,536) = 64,216."""
    free = 80 * 2**30 * 0.9 - PARAMS - (8192 * (4 * 4096 + 2 * 14336) * 2 + 256 * 128_256 * 4) - 2**30
    assert free == 67_335_876_608
    _, fp8 = served("fp8")
    _, fp8kv = served("fp8", "fp8")
    assert fp8.kv_capacity_blocks() == int(free // (16 * 131_072)) == 32_108
    assert fp8kv.kv_capacity_blocks() == int(free // (16 * 65_536)) == 64_216 == 2 * 32_108


def test_a100_fp8_refused_unless_weight_only_fallback():
    with pytest.raises(KavierInputError) as e:
        served("fp8", gpu="A100-80GB")
    assert e.value.location == "weight_dtype" and "no peak_fp8_tflops" in str(e.value)
    assert "--weight-only-fallback" in str(e.value)
    cfg, cm = served("fp8", gpu="A100-80GB", weight_only_fallback=True)
    assert cm.weight_bytes == PARAMS  # FP8 storage
    assert cm.timer.gemm_peak == pytest.approx(312e12) and cm.timer.gemm_dtype == "fp16"  # FP16 compute
    assert any("weight-only" in w and "A100-80GB" in w for w in cfg.warnings())
    # an FP8 KV cache needs no FP8 tensor cores (vLLM stores it on Ampere too)
    _, kv = served(kv_cache_dtype="fp8", gpu="A100-80GB")
    assert kv.kv_bytes_per_token == 65_536


def test_a_catalogue_fp8_model_on_a100_names_its_dtype():
    cat = default_catalog()
    with pytest.raises(KavierInputError) as e:
        SimConfig(model=cat.model("DeepSeek-V3"), gpu=cat.gpu("A100-80GB"), tp=8).validate()
    assert e.value.location == "weight_dtype" and "DeepSeek-V3's catalogue dtype" in str(e.value)


@pytest.mark.parametrize(
    "kw, location, words",
    [
        ({"weight_dtype": "fp5"}, "weight_dtype", "unknown weight dtype 'fp5'"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype", "unknown KV cache dtype 'int4'"),
        ({"weight_dtype": "nvfp4"}, "weight_dtype", "no peak_fp4_tflops"),
        ({"weight_dtype": "mxfp4"}, "weight_dtype", "H100-SXM, which has no FP4 tensor cores"),
    ],
)
def test_bad_precisions_name_the_field(kw, location, words):
    with pytest.raises(KavierInputError) as e:
        served(**kw)
    assert e.value.location == location and words in str(e.value)
    assert knobs.flag_of(location) == "--" + location.replace("_", "-")
    assert knobs.experiment_path(location) == ("serving", location)


def test_fp4_on_blackwell_and_aliases():
    _, cm = served("nvfp4", "fp8_e4m3", gpu="B200")
    assert cm.timer.gemm_peak == pytest.approx(9000e12) and cm.timer.gemm_dtype == "fp4"
    assert cm.weight_bytes == pytest.approx(PARAMS * 4.5 / 8)  # 4-bit values + an FP8 scale per 16
    assert cm.kv_bytes_per_token == 65_536
    cfg, _ = served("BFloat16", "auto")
    assert cfg.normalised().weight_dtype == "bf16"


def test_fp8_run_is_faster_and_holds_more():
    from conftest import make_trace

    trace = make_trace([0.0] * 8, [512] * 8, [64] * 8)
    cat = default_catalog()
    base = dict(model=cat.model("Llama-3.1-8B"), gpu=cat.gpu("H100-SXM"))
    r16 = simulate(trace, SimConfig(**base), progress=False)
    r8 = simulate(trace, SimConfig(**base, weight_dtype="fp8", kv_cache_dtype="fp8"), progress=False)
    assert r8.capacity_blocks > 2 * r16.capacity_blocks
    assert r8.makespan_s < r16.makespan_s


def test_gpu_fields_in_user_catalogues_and_round_trip():
    entry = spec_to_entry(default_catalog().gpu("B200"))
    assert (entry["peak_fp8_tflops"], entry["peak_fp4_tflops"]) == (4500.0, 9000.0)
    assert "peak_fp8_tflops" not in spec_to_entry(default_catalog().gpu("A100-80GB"))
    m = dataclasses.replace(default_catalog().model("Llama-3.1-8B"), kv_dtype="fp8")
    assert "kv_dtype" not in spec_to_entry(m)  # a serving setting, never a catalogue field
    mine = dict(entry, name="my-b200", aliases=[], peak_fp8_tflops=4500)
    assert catalog_from_data({"gpus": [mine]}).gpu("my-b200").peak_fp8_tflops == 4500.0
    with pytest.raises(KavierInputError, match="peak_fp8_tflops"):
        catalog_from_data({"gpus": [dict(entry, name="bad", aliases=[], peak_fp8_tflops=-1)]})


def test_cli_weight_only_fallback_warns(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,num_input_tokens,num_output_tokens\n0,100,10\n0.1,200,5\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "simulate",
            "--model",
            "Llama-3.1-8B",
            "--gpu",
            "A100-80GB",
            "--trace",
            str(trace),
            "--out",
            str(tmp_path / "out"),
            "--weight-dtype",
            "fp8",
            "--kv-cache-dtype",
            "fp8",
            "--weight-only-fallback",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "weight-only" in r.stderr


def test_experiment_serving_precisions(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment
    from test_experiment import tiny_doc

    doc = tiny_doc()
    doc["serving"].update(weight_dtype="fp8", kv_cache_dtype="fp8", weight_only_fallback=True)
    cfg = load_experiment(doc, base_dir=tmp_path).sim_config()
    assert (cfg.weight_dtype, cfg.kv_cache_dtype, cfg.weight_only_fallback) == ("fp8", "fp8", True)
    model = cfg.replica_groups()[0].model
    assert (model.dtype, model.kv_cache_dtype) == ("fp8", "fp8")
    doc["serving"].pop("weight_only_fallback")  # an A100: refused, naming the experiment's field
    with pytest.raises(KavierInputError, match="serving.weight_dtype: fp8 weights on A100-80GB"):
        load_experiment(doc, base_dir=tmp_path)
