"""Serving engine: hand-computed cases, invariants, fast-vs-exact equivalence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_BODY, TOY_EFF, TOY_GPU, TOY_HEAD, TOY_MODEL, make_trace, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.frameworks import framework


def toy(**kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=10_000)
    base.update(kw)
    return SimConfig(**base)


def run(arrivals, prompts, outputs, **kw):
    return simulate(make_trace(arrivals, prompts, outputs), toy(**kw), progress=False)


# ------------------------------------------------------------------ by hand
def test_toy_formula_by_hand():
    # prefill 100 tokens: the body GEMM is exactly at the ridge (100 FLOP/byte): 2e9 B / 1e12 = 2e-3 s;
    # LM head for 1 sequence: 256 kB / 1e12; attention: 512 * 5050 / 1e14 + 512 * 100 / 1e12; overhead 1 ms
    assert toy_time(100, 1, 5050, 100) == pytest.approx(
        (2e9 - 256_000) / 1e12 + 256_000 / 1e12 + 512 * 5050 / 1e14 + 512 * 100 / 1e12 + 1e-3, rel=1e-15
    )
    assert toy_time(100, 1, 5050, 100) == pytest.approx(0.003000077056, rel=1e-12)
    cm = CostModel(TOY_MODEL, TOY_GPU, 1, TOY_EFF)
    for shape in [(100, 1, 5050, 0), (1, 1, 101, 100), (200, 2, 10100, 0), (1000, 3, 1e5, 500)]:
        n, s, pairs, kv = shape
        assert cm.iteration(n, pairs, kv, s)[0] == pytest.approx(toy_time(n, s, pairs, kv + n), rel=1e-12)


def test_one_request_alone_by_hand():
    t1 = toy_time(100, 1, 5050, 100)  # prefill: 100 tokens written to the KV cache
    t2 = toy_time(1, 1, 101, 101)  # decode with 100 cached tokens (+1 written)
    t3 = toy_time(1, 1, 102, 102)
    res = run([0.0], [100], [3]).results
    assert res.first_sched[0] == 0.0
    assert res.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert res.finish[0] == pytest.approx(t1 + t2 + t3, rel=1e-12)
    assert res.finish[0] == pytest.approx(0.00900018203136, rel=1e-12)


def test_two_requests_batched_by_hand():
    # one prefill iteration of 200 tokens, compute-bound body GEMM: 2 * (1e9 - 128000) * 200 / 1e14
    t1 = toy_time(200, 2, 2 * 5050, 200)
    assert t1 == pytest.approx(
        2 * TOY_BODY * 200 / 1e14 + 2 * TOY_HEAD / 1e12 + 512 * 10100 / 1e14 + 512 * 200 / 1e12 + 1e-3, rel=1e-15
    )
    # one decode iteration of 2 sequences with 100 cached tokens each
    t2 = toy_time(2, 2, 202, 202)
    res = run([0.0, 0.0], [100, 100], [2, 2]).results
    assert np.allclose(res.first_token, t1, rtol=1e-12)
    assert np.allclose(res.finish, t1 + t2, rtol=1e-12)


def test_token_budget_chunks_prefill_by_hand():
    # budget 64: a 100-token prompt is prefilled in chunks of 64 and 36; the second chunk attends 64 cached
    t1 = toy_time(64, 1, 64 * 65 / 2, 64)
    t2 = toy_time(36, 1, 36 * 64 + 36 * 37 / 2, 64 + 36)  # reads 64 cached tokens, writes 36
    res = run([0.0], [100], [1], max_batched_tokens=64).results
    assert res.first_token[0] == pytest.approx(t1 + t2, rel=1e-12)
    assert res.finish[0] == res.first_token[0]


@pytest.mark.parametrize(
    "gpu, server, offline",
    [
        ("A10", (2048, 256), (8192, 256)),
        ("L40S", (2048, 256), (8192, 256)),
        ("A100-40GB", (2048, 256), (8192, 256)),
        ("A100-80GB", (2048, 256), (8192, 256)),  # A100s: never the large
        ("H100-SXM", (8192, 1024), (16384, 1024)),
        ("H200", (8192, 1024), (16384, 1024)),
        ("MI300X", (8192, 1024), (16384, 1024)),
    ],
)
def test_vllm_v1_batch_limits_by_gpu_and_usage(gpu, server, offline):
    spec = default_catalog().gpu(gpu)
    assert framework("vllm-v1").batch_limits(spec, "server", 8192) == server
    assert framework("vllm-v1").batch_limits(spec, "offline", 8192) == offline


def test_unset_limits_are_vllm_v1_defaults_for_the_usage():
    """A 3,000-token prompt on an A100: chunked at 2,048 tokens as a server, one iteration offline."""
    a100 = dataclasses.replace(TOY_GPU, name="A100-toy")
    t_server = toy_time(2048, 1, 2048 * 2049 / 2, 2048) + toy_time(952, 1, 952 * 2048 + 952 * 953 / 2, 3000)
    t_offline = toy_time(3000, 1, 3000 * 3001 / 2, 3000)
    # arrivals spread in time: a server (auto); the second request arrives long after the first finished
    res = run([0.0, 100.0], [3000, 10], [1, 1], gpu=a100)
    assert res.usage == "server" and res.replicas[0].budget == 2048 and res.replicas[0].max_num_seqs == 256
    assert res.results.first_token[0] == pytest.approx(t_server, rel=1e-12)
    # everything at once: an offline batch (the LLM class)
    res = run([0.0, 0.0], [3000, 3000], [1, 1], gpu=a100, max_num_seqs=1)
    assert res.usage == "offline" and res.replicas[0].budget == 8192 and res.replicas[0].max_num_seqs == 1
    assert res.results.first_token[0] == pytest.approx(t_offline, rel=1e-12)
    # usage given explicitly wins over the trace; given limits win over both
    assert run([0.0], [3000], [1], gpu=a100, usage="server").replicas[0].budget == 2048
    assert run([0.0, 50.0], [3000, 1], [1, 1], gpu=a100, max_batched_tokens=512).replicas[0].budget == 512
    big = run([0.0, 100.0], [3000, 10], [1, 1], gpu=dataclasses.replace(TOY_GPU, name="H100-toy"))
    assert (big.replicas[0].budget, big.replicas[0].max_num_seqs) == (8192, 1024)


def test_each_replica_group_gets_the_vllm_limits_of_its_gpu():
    from kavier_opendc.engine.simulator import ReplicaGroup

    cat = default_catalog()
    m = cat.model("Llama-3-8B")
    groups = [ReplicaGroup(m, cat.gpu("A100-80GB"), 1, 1), ReplicaGroup(m, cat.gpu("H100-SXM"), 2, 1)]
    cfg = SimConfig(model=m, gpu=cat.gpu("A100-80GB"), replicas=3, groups=groups)
    res = simulate(make_trace([0.0, 1.0, 2.0], [100, 100, 100], [5, 5, 5]), cfg, progress=False)
    assert [(r.cm.gpu.name, r.budget, r.max_num_seqs) for r in res.replicas] == [
        ("A100-80GB", 2048, 256),
        ("H100-SXM", 8192, 1024),
        ("H100-SXM", 8192, 1024),
    ]


def test_kv_cache_off_recomputes_context_by_hand():
    t1 = toy_time(100, 1, 5050, 100)  # prefill as with KV on
    # decode without KV cache: recompute all 101 tokens (compute-bound)
    t2 = toy_time(101, 1, 101 * 102 / 2, 101)
    t3 = toy_time(102, 1, 102 * 103 / 2, 102)
    on = run([0.0], [100], [3]).results
    off = run([0.0], [100], [3], kv_cache=False).results
    assert off.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert off.finish[0] == pytest.approx(t1 + t2 + t3, rel=1e-12)
    assert off.finish[0] > on.finish[0]


def test_preemption_by_recomputation():
    # 13 blocks of 16 tokens. A and B (96-token prompts) take 6 blocks each. Their first decode step
    # needs a 7th block each: A gets the last free block, B (the newest running) is preempted,
    # goes back to the waiting queue and is recomputed (96 prompt + 1 generated token) after A ends.
    cfg = dict(num_kv_blocks=13)
    r = run([0.0, 0.0], [96, 96], [20, 20], **cfg)
    res = r.results
    assert list(res.preemptions) == [0, 1]
    assert res.finish[0] < res.finish[1]
    cm = CostModel(TOY_MODEL, TOY_GPU, 1, TOY_EFF)
    t_prefill = cm.iteration(192, 2 * (96 * 97 // 2), 0, 2)[0]
    assert res.first_token[0] == pytest.approx(t_prefill, rel=1e-12)
    assert res.first_token[1] == pytest.approx(t_prefill, rel=1e-12)  # its first token stays
    # A then decodes alone: 19 iterations with 96..114 cached tokens
    t = t_prefill + sum(cm.iteration(1, c + 1, c, 1)[0] for c in range(96, 115))
    assert res.finish[0] == pytest.approx(t, rel=1e-12)
    # B is recomputed (97 tokens) when A has freed its blocks, then decodes 18 more tokens
    t += cm.iteration(97, 97 * 98 // 2, 0, 1)[0]
    t += sum(cm.iteration(1, c + 1, c, 1)[0] for c in range(97, 115))
    assert res.finish[1] == pytest.approx(t, rel=1e-12)
    assert all(rep.peak_used <= 13 for rep in r.replicas)


def test_request_that_can_never_fit_is_rejected_not_lost():
    r = run([0.0, 0.0], [100, 10_000], [5, 5], num_kv_blocks=100)
    assert list(r.results.status) == [1, 2]
    assert np.isnan(r.results.finish[1])


def test_waiting_request_arrives_during_decode_run():
    # the second request arrives while the first decodes: it is scheduled at the first boundary after it
    r = run([0.0, 0.0105], [100, 100], [50, 5])
    cm = CostModel(TOY_MODEL, TOY_GPU, 1, TOY_EFF)
    t = cm.iteration(100, 5050, 0, 1)[0]
    c = 100
    while t < 0.0105:
        t += cm.iteration(1, c + 1, c, 1)[0]
        c += 1
    assert r.results.first_sched[1] == pytest.approx(t, rel=1e-12)


def test_tensor_parallel_adds_allreduce_and_splits_work():
    cat = default_catalog()
    m, g = cat.model("Llama-3-70B"), cat.gpu("H100-SXM")
    one = CostModel(m, g, 4)
    two = CostModel(m, g, 8)
    t4 = one.iteration(1, 1000, 999)[0]
    t8 = two.iteration(1, 1000, 999)[0]
    assert t8 < t4  # more GPUs share the weights
    assert one.timer.allreduces == two.timer.allreduces == 2 * m.num_layers
    prof = g.profile
    assert (
        0
        < prof.allreduce_time(2**20, 4, g.interconnect_gbs, True)
        < prof.allreduce_time(2**26, 4, g.interconnect_gbs, True)
    )
    assert CostModel(m, g, 1).timer.allreduces == 0
    with pytest.raises(KavierInputError):
        CostModel(m, g, 3)  # 64 heads cannot be split over 3 GPUs


def test_kv_capacity_from_memory():
    cat = default_catalog()
    cm = CostModel(cat.model("Llama-3-8B"), cat.gpu("A100-80GB"), 1)
    blocks = cm.kv_capacity_blocks(0.9)
    # 72 GiB usable - 14.96 GiB weights - ~2 GiB activations/runtime, 2 MiB per block: 27k-28.5k blocks
    assert 27_000 < blocks < 28_500
    assert cm.kv_capacity_blocks(0.5) < blocks
    too_small = CostModel(cat.model("Llama-3-70B"), cat.gpu("A10"), 1)
    assert too_small.kv_capacity_blocks() == 0
    with pytest.raises(KavierInputError, match="no room for a KV cache"):
        simulate(make_trace([0.0], [10], [10]), SimConfig(model=cat.model("Llama-3-70B"), gpu=cat.gpu("A10")))


# ------------------------------------------------------------------ invariants
def _random_trace(seed, n_max=120):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, n_max))
    gaps = rng.exponential(float(rng.uniform(0.001, 0.05)), n)
    gaps[0] = 0.0
    return make_trace(np.cumsum(gaps), rng.integers(1, 600, n), rng.integers(1, 200, n))


def check_invariants(result, capacity=None):
    tr, res = result.trace, result.results
    assert (res.status != 0).all()  # no request lost
    done = res.status == 1
    a = tr.arrival_s[done]
    assert (res.first_sched[done] >= a).all()
    assert (res.first_token[done] >= res.first_sched[done]).all()
    assert (res.finish[done] >= res.first_token[done]).all()  # ttft <= e2e
    prefill = decode = 0
    for rep in result.replicas:
        assert rep.used == 0 and rep.D == 0 and not rep.running and not rep.waiting
        assert rep.peak_used <= rep.capacity  # memory never over capacity
        tl = rep.timeline
        st_, en = np.asarray(tl.start), np.asarray(tl.end)
        assert (en > st_).all() and np.allclose(st_[1:], en[:-1], rtol=0, atol=1e-12)  # contiguous, forward
        # from t = 0; a replica whose every request was refused at once has seen no time pass: no segment
        assert st_[0] == 0.0 if len(st_) else not (res.replica[done] == result.replicas.index(rep)).any()
        u = np.asarray(tl.util)
        assert ((u >= 0) & (u <= 1)).all()
        prefill += sum(tl.prefill)
        decode += sum(tl.decode)
    # token conservation: every prompt token is prefilled, every output token after the first decoded;
    # recomputation after preemption only adds prefill work
    need_prefill = int(tr.num_input_tokens[done].sum())
    need_decode = int((tr.num_output_tokens[done] - 1).sum())
    if res.preemptions.sum() == 0:
        assert prefill == need_prefill and decode == need_decode
    else:
        assert prefill + decode >= need_prefill + need_decode


def fast_and_exact(trace, fast_cfg: SimConfig, exact_cfg: SimConfig):
    """Both runs keep the invariants and give the same per-request times, statuses and preemptions."""
    fast = simulate(trace, fast_cfg, progress=False)
    exact = simulate(trace, exact_cfg, progress=False)
    check_invariants(fast)
    check_invariants(exact)
    for name in ("first_sched", "first_token", "finish"):
        x, y = getattr(fast.results, name), getattr(exact.results, name)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        ok = ~np.isnan(y)
        assert np.allclose(x[ok], y[ok], rtol=1e-9, atol=0)
    assert np.array_equal(fast.results.status, exact.results.status)
    assert np.array_equal(fast.results.preemptions, exact.results.preemptions)
    return fast, exact


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(40, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(8, 1024),
    router=st.sampled_from(["round-robin", "least-outstanding", "least-kv", "random"]),
)
def test_invariants_and_fast_equals_exact(seed, replicas, blocks, seqs, budget, router):
    kw = dict(
        replicas=replicas, num_kv_blocks=blocks, max_num_seqs=seqs, max_batched_tokens=budget, router=router, seed=seed
    )
    fast, exact = fast_and_exact(_random_trace(seed), toy(**kw), toy(exact=True, **kw))
    assert np.array_equal(fast.results.replica, exact.results.replica)
    assert sum(r.iterations for r in fast.replicas) == sum(r.iterations for r in exact.replicas)


@pytest.mark.parametrize("gpu", ["A10", "A100-80GB", "H100-SXM"])
def test_fast_equals_exact_real_catalogue(gpu):
    cat = default_catalog()
    rng = np.random.default_rng(7)
    n = 400
    trace = make_trace(np.cumsum(rng.exponential(0.05, n)) - 0.0, rng.integers(1, 4000, n), rng.integers(1, 1000, n))
    trace.arrival_s -= trace.arrival_s[0]
    kw = dict(model=cat.model("Llama-3-8B"), gpu=cat.gpu(gpu), replicas=2, router="least-kv")
    fast = simulate(trace, SimConfig(**kw), progress=False)
    exact = simulate(trace, SimConfig(exact=True, **kw), progress=False)
    check_invariants(fast)
    for name in ("first_sched", "first_token", "finish"):
        assert np.allclose(getattr(fast.results, name), getattr(exact.results, name), rtol=1e-9, atol=0)


def test_deterministic():
    trace = _random_trace(3)
    a = simulate(trace, toy(replicas=2, router="random", seed=5), progress=False).results
    b = simulate(trace, toy(replicas=2, router="random", seed=5), progress=False).results
    assert np.array_equal(a.finish, b.finish) and np.array_equal(a.replica, b.replica)


def test_routers_balance():
    trace = make_trace(np.zeros(8), [50] * 8, [10] * 8)
    rr = simulate(trace, toy(replicas=4), progress=False).results
    assert list(rr.replica) == [0, 1, 2, 3, 0, 1, 2, 3]
    lo = simulate(trace, toy(replicas=4, router="least-outstanding"), progress=False).results
    assert sorted(np.bincount(lo.replica)) == [2, 2, 2, 2]
    with pytest.raises(KavierInputError, match="unknown router"):
        simulate(trace, toy(router="magic-router"), progress=False)


def test_max_model_len_rejects_long_requests():
    r = run([0.0, 0.0, 0.0], [100, 900, 1000], [10, 100, 1], max_model_len=1000)
    assert list(r.results.status) == [1, 1, 2]  # 900 + 100 fits exactly; 1000 + 1 does not
    with pytest.raises(KavierInputError, match="max_model_len"):
        run([0.0], [10], [1], max_model_len=1)
