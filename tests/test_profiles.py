"""Per-GPU efficiency profiles: catalogue, derivation, physical sanity of the times they give."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import yaml

from conftest import REPO, shared
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.specs.catalog import GPUSpec, default_catalog, load_catalog_file
from kavier_opendc.specs.iteration_time import IterationShape, IterationTimer
from kavier_opendc.specs.profiles import profile_to_entry

CAT = default_catalog()


def test_every_catalogue_gpu_has_a_profile_measured_or_derived():
    measured = {g.name for g in CAT.gpus() if g.profile.status == "measured"}
    assert {"A10", "A100-80GB", "H100-SXM", "L40S", "H200"} <= measured
    for g in CAT.gpus():
        p = g.profile
        assert p.gpu == g.name
        assert not p.problems(), (g.name, p.problems())
        assert p.provenance, g.name
        if p.status == "derived":
            assert p.derived_from in measured
    # same architecture first
    assert CAT.gpu("L4").profile.derived_from == "L40S"
    assert CAT.gpu("H100-PCIe").profile.derived_from == "H100-SXM"
    assert CAT.gpu("A100-40GB").profile.derived_from == "A100-80GB"


def test_builtin_profiles_file_is_generated_from_shared_data():
    shared("calibration/vidur_linear_ops_a100_h100.csv")
    spec = importlib.util.spec_from_file_location("build_profiles", REPO / "bench" / "build_profiles.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0


def test_user_gpu_inherits_from_its_architecture(tmp_path):
    entry = {
        "name": "MyHopper",
        "vendor": "NVIDIA",
        "peak_fp16_tflops": 500,
        "mem_bandwidth_gbs": 2000,
        "memory_gib": 80,
        "idle_power_w": 50,
        "max_power_w": 400,
        "price_per_hour": 1,
        "interconnect_gbs": 100,
        "pcie_gbs": 64,
        "boost_clock_mhz": 1700,
        "num_sms": 100,
        "extra": {"architecture": "Hopper GH100"},
    }
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump({"gpus": [entry]}), encoding="utf-8")
    g = load_catalog_file(path).gpu("MyHopper")
    assert g.profile.status == "derived" and g.profile.derived_from == "H100-SXM"
    # efficiencies carry over as fractions of this GPU's own datasheet
    assert g.profile.gemm_mbu == CAT.gpu("H100-SXM").profile.gemm_mbu


def test_catalogue_file_overrides_a_profile_and_is_validated(tmp_path):
    base = profile_to_entry(CAT.gpu("A100-80GB").profile)
    faster = dict(base, overhead_fixed_s=0.0)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"profiles": [faster]}), encoding="utf-8")
    cat = load_catalog_file(path)
    m = cat.model("Llama-3-8B")
    t_new = CostModel(m, cat.gpu("A100-80GB")).iteration(1, 100, 99, 1)[0]
    t_old = CostModel(m, CAT.gpu("A100-80GB")).iteration(1, 100, 99, 1)[0]
    assert t_old - t_new == pytest.approx(base["overhead_fixed_s"], rel=1e-6)
    bad = dict(base, gemm_mfu=1.3)
    path.write_text(yaml.safe_dump({"profiles": [bad]}), encoding="utf-8")
    with pytest.raises(KavierInputError, match=r"profiles\[0\]\.gemm_mfu"):
        load_catalog_file(path)
    path.write_text(yaml.safe_dump({"profiles": [dict(base, gpu="NoSuchGPU")]}), encoding="utf-8")
    with pytest.raises(KavierInputError, match="NoSuchGPU"):
        load_catalog_file(path)


# --------------------------------------------------------------- physics ----

CASES = [
    (g.name, m, tp)
    for g in CAT.gpus()
    for m, tp in [("Llama-3-8B", 1), ("Llama-3-8B", 2), ("Llama-3-70B", 4), ("Llama-3-70B", 8), ("Mixtral-8x7B", 2)]
]


@pytest.mark.parametrize("gpu,model,tp", CASES)
def test_achieved_never_above_peak(gpu, model, tp):
    g, m = CAT.gpu(gpu), CAT.model(model)
    cm = CostModel(m, g, tp)
    for n, s, pairs, kv in [
        (1, 1, 100, 99),
        (64, 64, 64 * 2000, 64 * 1999),
        (512, 1, 512 * 513 / 2, 0),
        (8192, 1, 8192 * 8193 / 2, 0),
        (8192, 256, 8192 * 4096, 8192 * 4000),
    ]:
        t, flops, wbytes, kvbytes = cm.iteration(n, pairs, kv, s)
        assert flops / t <= g.peak_flops * tp * (1 + 1e-9)
        assert (wbytes + kvbytes) / t <= g.mem_bandwidth * tp * (1 + 1e-9)
        assert 0.0 <= cm.activity(t, flops, wbytes, kvbytes) <= 1.0


@pytest.mark.parametrize("gpu,model,tp", CASES)
def test_step_time_monotone_in_batch_and_context(gpu, model, tp):
    cm = CostModel(CAT.model(model), CAT.gpu(gpu), tp)
    prev = 0.0
    for d in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]:
        t = cm.iteration(d, d * 1001, d * 1000, d)[0]
        assert t >= prev
        prev = t
    prev = 0.0
    for ctx in [0, 10, 100, 1000, 10_000, 100_000]:
        t = cm.iteration(8, 8 * (ctx + 1), 8 * ctx, 8)[0]
        assert t >= prev
        prev = t
    prev = 0.0
    for chunk in [1, 16, 128, 1024, 4096, 8192]:
        t = cm.iteration(chunk, chunk * (chunk + 1) / 2, 0, 1)[0]
        assert t >= prev
        prev = t


@pytest.mark.parametrize("gpu", [g.name for g in CAT.gpus()])
def test_tensor_parallel_never_faster_than_the_ideal_split(gpu):
    g, m = CAT.gpu(gpu), CAT.model("Llama-3-70B")
    for n, s in [(1, 1), (64, 64), (2048, 1), (8192, 4)]:
        pairs, kv = n * 1000, n * 999
        t1 = CostModel(m, g, 1).iteration(n, pairs, kv, s)[0]
        for tp in (2, 4, 8):
            assert CostModel(m, g, tp).iteration(n, pairs, kv, s)[0] >= t1 / tp


@pytest.mark.parametrize("gpu", [g.name for g in CAT.gpus()])
def test_overheads_and_kernel_times_non_negative(gpu):
    p = CAT.gpu(gpu).profile
    assert p.overhead_fixed_s >= 0 and p.overhead_per_seq_s >= 0 and p.layer_fixed_s >= 0 and p.act_passes >= 0
    assert p.attn_fixed_s >= 0
    assert p.custom_allreduce_latency_s >= 0
    for size in [0, 1, 2048, 2**20, 2**30]:
        for tp in (2, 4, 8):
            for nvlink in (True, False):
                assert p.allreduce_time(size, tp, CAT.gpu(gpu).interconnect_gbs, nvlink) >= 0
    assert all(c.seconds == tuple(sorted(c.seconds)) for c in p.allreduce)


def test_vllm_custom_allreduce_by_hand():
    """TP 2/4/6/8 over NVLink up to 8 MiB: one synchronisation plus the peers' data over the links."""
    g = CAT.gpu("H100-SXM")
    p = g.profile
    lat, bw = p.custom_allreduce_latency_s, g.interconnect_gbs * 1e9
    # a decode step's 16 KiB message over 4 GPUs: one-shot, each GPU reads 3 x 16 KiB
    assert p.allreduce_time(16384, 4, g.interconnect_gbs, True) == pytest.approx(lat + 3 * 16384 / bw, rel=1e-12)
    # 8 MiB over 8 GPUs: two-shot (two synchronisations, 2 x 7/8 of the message) is the shorter
    assert p.allreduce_time(2**23, 8, g.interconnect_gbs, True) == pytest.approx(
        2 * lat + 2 * 7 / 8 * 2**23 / bw, rel=1e-12
    )
    # beyond vLLM's 8 MiB buffer, over 3 GPUs (no custom all-reduce) or without NVLink: NCCL's measured curve
    for size, tp, nvlink in [(2**24, 4, True), (16384, 3, True), (16384, 4, False)]:
        assert p.allreduce_time(size, tp, g.interconnect_gbs, nvlink) == p.nccl_allreduce_time(
            size, tp, g.interconnect_gbs
        )
    # never shorter for a larger message, across the switch to NCCL too
    for gpu in CAT.gpus():
        for tp in (2, 4, 8):
            sizes = [2**k for k in range(8, 31)] + [2**23 - 1, 2**23 + 1]
            times = [gpu.profile.allreduce_time(s, tp, gpu.interconnect_gbs, True) for s in sorted(sizes)]
            assert times == sorted(times), (gpu.name, tp)


def test_cost_model_and_calibration_share_one_formula():
    g, m = CAT.gpu("H100-SXM"), CAT.model("Llama-3-70B")
    timer = IterationTimer(m, g, 4, g.profile)
    cm = CostModel(m, g, 4)
    for n, s, pairs, kv in [(1, 1, 3000, 2999), (300, 2, 50_000, 1000), (64, 64, 64 * 513, 64 * 512)]:
        assert cm.iteration(n, pairs, kv, s)[0] == pytest.approx(timer.time(IterationShape(n, s, pairs, kv)), rel=1e-12)


def test_attention_floor_by_hand():
    # one attention kernel per layer and iteration: Llama-3-8B's 32 layers at 10 us add 0.32 ms to every
    # iteration that has a sequence, whatever its size, and nothing to an empty one
    g, m = CAT.gpu("H100-SXM"), CAT.model("Llama-3-8B")
    bare = dataclasses.replace(g.profile, attn_fixed_s=0.0)
    floored = dataclasses.replace(g.profile, attn_fixed_s=10e-6)
    for tp in (1, 2):
        a, b = IterationTimer(m, g, tp, bare), IterationTimer(m, g, tp, floored)
        for shape in [
            IterationShape(1, 1, 500, 499),
            IterationShape(4096, 3, 10**6, 2000),
            IterationShape(64, 64, 0, 0),
        ]:
            assert b.time(shape) - a.time(shape) == pytest.approx(32 * 10e-6, rel=1e-9)
        assert b.seq_time(0) == a.seq_time(0)
    # in a decode run's closed form too: k iterations of d sequences gain k x the floor
    cm_a = CostModel(m, dataclasses.replace(g, profile=bare), 1)
    cm_b = CostModel(m, dataclasses.replace(g, profile=floored), 1)
    ra, rb = cm_a.decode_run(16, 16 * 700), cm_b.decode_run(16, 16 * 700)
    assert rb.total_time(50) - ra.total_time(50) == pytest.approx(50 * 32 * 10e-6, rel=1e-9)
    assert rb.time_of(7) == pytest.approx(cm_b.iteration(16, 16 * 700 + 16 * 7, 16 * 700 + 16 * 6, 16)[0], rel=1e-12)


def test_unknown_gpu_spec_gets_a_derived_profile():
    g = dataclasses.replace(CAT.gpu("A100-80GB"), name="A100-clone", profile=None)
    cm = CostModel(CAT.model("Llama-3-8B"), g, 1)
    assert cm.eff.status == "derived" and cm.eff.derived_from == "A100-80GB"
    odd = GPUSpec(
        name="odd",
        vendor="x",
        peak_fp16_tflops=10,
        mem_bandwidth_gbs=100,
        memory_gib=16,
        idle_power_w=1,
        max_power_w=10,
        price_per_hour=0,
        interconnect_gbs=10,
        pcie_gbs=10,
        boost_clock_mhz=1000,
        num_sms=1,
    )
    assert CostModel(CAT.model("Llama-3-8B"), odd, 1).eff.status == "derived"
