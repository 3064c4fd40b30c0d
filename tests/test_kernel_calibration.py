"""Kernel tables (AIConfigurator layout): read by hand-made rows, fitted back from known efficiencies."""

from __future__ import annotations

import dataclasses

import pytest

from kavier_opendc.calibration.fit import calibrate_gpu, fit_attention_floor, predict
from kavier_opendc.calibration.layouts import Observation, ReadOptions, read_measurements
from kavier_opendc.specs import default_catalog

HEADER = (
    "system,device,framework,version,op,kernel_source,dtype,kv_cache_dtype,m,n,k,batch_size,isl,kv_len_step,"
    "num_heads,num_kv_heads,head_dim,num_gpus,message_size,latency_ms"
)


def row(
    op,
    src="vllm_default",
    dtype="bfloat16",
    m="",
    n="",
    k="",
    b="",
    isl="",
    kv="",
    h="",
    kvh="",
    d="",
    g="",
    size="",
    ms=1.0,
    system="l40s",
):
    shape = f"{m},{n},{k},{b},{isl},{kv},{h},{kvh},{d},{g},{size}"
    return f"{system},NVIDIA L40S,vLLM,0.14.0,{op},{src},{dtype},,{shape},{ms}"


def test_kernel_rows_become_observations_by_hand(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text(
        "\n".join(
            [
                HEADER,
                row("gemm", m=4, n=1024, k=2048, ms=0.01),
                row("gemm", dtype="fp8", m=4, n=1024, k=2048, ms=0.01),  # 8-bit weights: not this model's
                row("context_attention", src="vllm_flash_attn", b=2, isl=100, h=8, d=128, ms=0.02),
                row("generation_attention", src="vllm_flash_attn", b=4, kv=99, kvh=2, d=128, ms=0.03),
                row("all_reduce", src="vLLM_custom_graph", g=2, size=1024, ms=0.005),
                row("all_reduce", src="vLLM_custom_eager", g=2, size=1024, ms=0.02),  # eager: not how vLLM serves
            ]
        )
        + "\n"
    )
    layout, obs = read_measurements(p, default_catalog(), ReadOptions())
    assert layout == "kernels" and [o.kind for o in obs] == [
        "gemm_kernel",
        "attn_prefill",
        "attn_decode",
        "custom_allreduce",
    ]
    gemm, pre, dec, ar = obs
    assert (gemm.gpu, gemm.weight_bytes, gemm.flops, gemm.measured_s) == (
        "L40S",
        2 * 1024 * 2048,
        2 * 4 * 1024 * 2048,
        1e-5,
    )
    assert pre.flops == 4 * 8 * 128 * (2 * 100 * 101 / 2) and pre.tokens == 100
    assert dec.size_bytes == 4 * 100 * 2 * 128 * 2 * 2  # K and V, 2 bytes, kv_len_step + 1
    assert (ar.gpus, ar.size_bytes) == (2, 2048.0)
    only = read_measurements(p, default_catalog(), ReadOptions(only_gpus=("H200",)))[1]
    assert only == []
    ops = read_measurements(p, default_catalog(), ReadOptions(only_ops=("generation_attention",)))[1]
    assert [o.kind for o in ops] == ["attn_decode"]


def test_kernel_efficiencies_are_fitted_back(tmp_path):
    # kernel times made from a known profile (L40S with round efficiencies) are fitted back
    cat = default_catalog()
    gpu = dataclasses.replace(cat.gpu("L40S"), profile=None)
    truth = dataclasses.replace(
        cat.profile_for("L40S"),
        gemm_mbu=0.7,
        gemm_mfu=0.6,
        gemm_knee=3.0,
        attn_prefill_eff=0.5,
        attn_decode_mbu=0.8,
        attn_fixed_s=20e-6,
    )
    draft = tmp_path / "draft.csv"
    rows = [row("gemm", m=m, n=n, k=4096) for m in (1, 16, 256, 1024, 4096, 16384) for n in (4096, 8192, 16384)]
    rows += [
        row("context_attention", src="vllm_flash_attn", b=b, isl=isl, h=32, d=128)
        for b in (1, 4)
        for isl in (2048, 4096, 8192)
    ]
    rows += [
        row("generation_attention", src="vllm_flash_attn", b=b, kv=kv - 1, kvh=8, d=128)
        for b in (1, 8, 64, 128)
        for kv in (64, 4096, 65536, 131072)
    ]
    draft.write_text("\n".join([HEADER] + rows) + "\n")
    obs = read_measurements(draft, cat, ReadOptions())[1]
    timed = [dataclasses.replace(o, measured_s=predict(o, truth, gpu)) for o in obs]
    fit = calibrate_gpu(timed, gpu, cat.profile_for("A10"))
    p = fit.profile
    assert p.status == "measured"
    assert p.gemm_mbu == pytest.approx(0.7, rel=0.02) and p.gemm_mfu == pytest.approx(0.6, rel=0.02)
    assert p.attn_prefill_eff == pytest.approx(0.5, rel=1e-9)
    # the bandwidth from the rows of >= 1 GiB, as if they had no floor (20 us of their 3-150 ms: below 1 %),
    # then the floor from all rows at that bandwidth
    assert p.attn_decode_mbu == pytest.approx(0.8, rel=1e-2)
    assert p.attn_fixed_s == pytest.approx(20e-6, rel=0.05)
    assert "all 16 decode attention kernel times" in p.provenance["attn_fixed_s"]
    assert p.overhead_fixed_s == 0.001 and "assumed" in p.provenance["overhead_fixed_s"]


def test_kernel_measured_gpus_are_physical():
    cat = default_catalog()
    for name in ("L40S", "H200"):
        p = cat.gpu(name).profile
        assert p.status == "measured" and not p.problems()
        assert "aiconfigurator_vllm014_kernels.csv" in p.provenance["gemm_mbu"]
        assert 0.6 < p.gemm_mbu < 0.95 and 0.6 < p.gemm_mfu < 0.95  # near the datasheet, never above


def test_attention_floor_by_hand():
    # times = KV bytes at 0.8 of 1 TB/s + 12 us: the floor given the bandwidth is 12 us exactly
    kv_bytes = (1e6, 1e8, 4e9)
    obs = [
        Observation("k.csv", i, "attn_decode", "L40S", b / 0.8e12 + 12e-6, size_bytes=b) for i, b in enumerate(kv_bytes)
    ]
    assert fit_attention_floor(obs, 1e12, 0.8) == pytest.approx(12e-6, rel=1e-9)
    # kernels faster than the bandwidth allows (an L2-resident KV cache) never give a negative floor
    fast = [dataclasses.replace(o, measured_s=o.size_bytes / 2e12) for o in obs]
    assert fit_attention_floor(fast, 1e12, 0.8) == 0.0


def test_measured_gpus_have_an_attention_floor_from_the_kernels():
    cat = default_catalog()
    for name in ("A100-80GB", "H100-SXM", "L40S", "H200"):
        p = cat.gpu(name).profile
        assert 5e-6 < p.attn_fixed_s < 20e-6, name  # a kernel's launch-to-finish floor: microseconds
        assert "aiconfigurator_vllm014_kernels.csv" in p.provenance["attn_fixed_s"]
    # A100 and H100 keep the bandwidth fitted end to end (the kernels only give them the floor)
    assert "kernel" not in cat.gpu("H100-SXM").profile.provenance["attn_decode_mbu"]
