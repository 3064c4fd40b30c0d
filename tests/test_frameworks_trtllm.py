"""TensorRT-LLM's in-flight batching: capacity policies and context chunking by hand, fast = exact, profile, CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import shared
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.frameworks import builtin_frameworks, framework, framework_from_entry
from test_engine import _random_trace, fast_and_exact, run, toy
from test_frameworks import v0_time

# the toy GPU takes vllm-0.5-offline's '*' overhead (1.5 ms + 75 us per sequence per step): v0_time
_BASE = framework("vllm-0.5-offline")


def trt(capacity: str = "guaranteed_no_evict", chunked: bool = False):
    return dataclasses.replace(
        _BASE,
        name=f"trt-{capacity}-{chunked}",
        engine="tensorrt-llm",
        policy="trtllm",
        batch_defaults="trtllm",
        capacity_scheduler=capacity,
        chunked_prefill=chunked,
    )


NO_EVICT, MAX_UTIL = trt(), trt("max_utilization")


def decode(*cached: int) -> float:
    """One decode step of sequences with these cached tokens."""
    n, c = len(cached), sum(cached)
    return v0_time(n, n, c + n, c + n)


def _bench():
    spec = importlib.util.spec_from_file_location(
        "build_trtllm", Path(__file__).resolve().parents[1] / "bench" / "build_trtllm.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ capacity policies by hand
def test_guaranteed_no_evict_reserves_the_blocks_to_completion_by_hand():
    # 20 blocks (320 tokens). A (8, 200) reserves ceil(208 / 16) = 13 blocks at admission. B (16, 100)
    # needs ceil(116 / 16) = 8: 13 + 8 > 20, refused until A completes, although its prompt's one block
    # would fit at once; nothing is ever evicted
    t1 = v0_time(8, 1, 36, 8)
    a_done = t1 + sum(decode(8 + k) for k in range(199))
    for exact in (False, True):
        r = run([0.0, 0.001], [8, 16], [200, 100], framework=NO_EVICT, num_kv_blocks=20, exact=exact).results
        assert r.finish[0] == pytest.approx(a_done, rel=1e-12)
        assert r.first_sched[1] == pytest.approx(a_done, rel=1e-12)
        assert r.first_token[1] == pytest.approx(a_done + v0_time(16, 1, 136, 16), rel=1e-12)
        assert list(r.preemptions) == [0, 0] and (r.status == 1).all()
    # B of 88 output tokens needs ceil(104 / 16) = 7 blocks: 13 + 7 = 20 fits, so it joins A's first decode
    # step: its whole context and A's generation token in one iteration (17 tokens, 2 sequences)
    r = run([0.0, 0.001], [8, 16], [200, 88], framework=NO_EVICT, num_kv_blocks=20).results
    assert r.first_sched[1] == pytest.approx(t1, rel=1e-12)
    assert r.first_token[1] == pytest.approx(t1 + v0_time(17, 2, 9 + 136, 8 + 17), rel=1e-12)
    assert list(r.preemptions) == [0, 0]


def test_max_utilization_admits_more_and_pauses_the_newest_by_hand():
    # A (8, 200) and B (16, 200) under MAX_UTILIZATION: B's next step (one block) fits, so it joins A's first
    # decode step at once; A's 13 and B's ceil(215 / 16) = 14 blocks exceed the 20 as they decode (after
    # about 150 steps), and the last started request (B) is paused: its KV freed, recomputed later
    t1 = v0_time(8, 1, 36, 8)
    for exact in (False, True):
        r = run([0.0, 0.001], [8, 16], [200, 200], framework=MAX_UTIL, num_kv_blocks=20, exact=exact).results
        assert r.first_sched[1] == pytest.approx(t1, rel=1e-12)
        assert r.first_token[1] == pytest.approx(t1 + v0_time(17, 2, 9 + 136, 8 + 17), rel=1e-12)
        assert list(r.preemptions) == [0, 1] and (r.status == 1).all()
    no_evict = run([0.0, 0.001], [8, 16], [200, 200], framework=NO_EVICT, num_kv_blocks=20).results
    assert no_evict.first_sched[1] == pytest.approx(no_evict.finish[0], rel=1e-12)  # 13 + 14 > 20: after A
    assert list(no_evict.preemptions) == [0, 0]


def test_requests_that_can_never_fit_are_rejected():
    # prompt + output beyond the whole pool (10 blocks = 160 tokens): GUARANTEED_NO_EVICT can never admit it
    r = run([0.0, 0.0], [100, 20], [100, 5], framework=NO_EVICT, num_kv_blocks=10).results
    assert list(r.status) == [2, 1]
    # without context chunking a prompt longer than max_num_tokens can never run either
    r = run([0.0, 0.0], [100, 20], [2, 2], framework=NO_EVICT, max_batched_tokens=64).results
    assert list(r.status) == [2, 1]
    # with chunking it runs, in 64-token chunks
    r = run([0.0, 0.0], [100, 20], [2, 2], framework=trt(chunked=True), max_batched_tokens=64).results
    assert list(r.status) == [1, 1]


# ------------------------------------------------------------------ the micro-batch: chunked vs not
def test_unchunked_context_runs_whole_or_waits_by_hand():
    # 128 tokens per iteration. A (100, 3), B (40, 2) at 0: A's context takes 100, B's 40 do not fit in the
    # 28 left, so B waits; the next iteration holds A's generation token and B's whole context
    t1 = v0_time(100, 1, 5050, 100)
    t2 = v0_time(41, 2, 101 + 40 * 41 // 2, 100 + 41)
    t3 = decode(101, 40)
    r = run([0.0, 0.0], [100, 40], [3, 2], framework=NO_EVICT, max_batched_tokens=128).results
    assert r.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert r.first_sched[1] == pytest.approx(t1, rel=1e-12)
    assert r.first_token[1] == pytest.approx(t1 + t2, rel=1e-12)
    assert r.finish[0] == r.finish[1] == pytest.approx(t1 + t2 + t3, rel=1e-12)


def test_chunked_context_fills_the_budget_in_whole_blocks_by_hand():
    # the same with enable_chunked_context: B takes the 28 tokens left, rounded down to one 16-token block,
    # in A's context iteration; its other 24 tokens join A's generation token in the next
    t1 = v0_time(116, 2, 5050 + 16 * 17 // 2, 116)
    t2 = v0_time(25, 2, 101 + 24 * 16 + 24 * 25 // 2, 100 + 16 + 25)
    t3 = decode(101, 40)
    for exact in (False, True):
        r = run([0.0, 0.0], [100, 40], [3, 2], framework=trt(chunked=True), max_batched_tokens=128, exact=exact)
        res = r.results
        assert res.first_sched[1] == 0.0
        assert res.first_token[0] == pytest.approx(t1, rel=1e-12)
        assert res.first_token[1] == pytest.approx(t1 + t2, rel=1e-12)
        assert res.finish[0] == res.finish[1] == pytest.approx(t1 + t2 + t3, rel=1e-12)
        assert list(r.replicas[0].timeline.prefill[:2]) == [116, 24]


def test_max_batch_size_limits_the_running_requests():
    # max_batch_size 2: the third request waits for a completion
    r = run([0.0, 0.0, 0.0], [10, 10, 10], [3, 5, 2], framework=NO_EVICT, max_num_seqs=2).results
    assert r.first_sched[2] == pytest.approx(r.finish[0], rel=1e-12)


# ------------------------------------------------------------------ invariants, fast = exact
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(40, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(8, 2048),
    capacity=st.sampled_from(["guaranteed_no_evict", "max_utilization"]),
    chunked=st.booleans(),
)
# every prompt refused (529 tokens, an 8-token budget, no chunking): a replica that never ran has no timeline
@example(seed=528, replicas=2, blocks=40, seqs=1, budget=8, capacity="guaranteed_no_evict", chunked=False)
def test_trtllm_invariants_and_fast_equals_exact(seed, replicas, blocks, seqs, budget, capacity, chunked):
    kw = dict(
        replicas=replicas,
        num_kv_blocks=blocks,
        max_num_seqs=seqs,
        max_batched_tokens=budget,
        seed=seed,
        framework=trt(capacity, chunked),
    )
    fast, _ = fast_and_exact(_random_trace(seed), toy(**kw), toy(exact=True, **kw))
    if capacity == "guaranteed_no_evict":
        assert fast.results.preemptions.sum() == 0  # the reservation means nothing is ever evicted
        for rep in fast.replicas:
            assert rep.reserved_blocks == 0 and not rep.reservations


# ------------------------------------------------------------------ the built-in profile and its physics
@pytest.mark.parametrize("name, commit", [("trtllm-0.17", "258c7540c035"), ("trtllm-1.0", "00f37686aa85")])
def test_builtin_profiles(name, commit):
    fw = builtin_frameworks()[name]
    assert (fw.policy, fw.batch_defaults, fw.capacity_scheduler, fw.serving_path) == (
        "trtllm",
        "trtllm",
        "guaranteed_no_evict",
        "offline",
    )
    assert fw.chunked_prefill and not fw.prefix_caching
    policy = builtin_frameworks()["trtllm-0.17"].provenance["policy"]
    assert "02a10fed0dbf" in policy and "0a949d3128bf" in policy
    assert "trtllm_perf_overview.csv" in fw.provenance["step_overhead"] and commit in fw.provenance["step_overhead"]
    assert set(fw.step_overhead) == {("H100-SXM", 1)}
    assert all(min(o.fixed_s, o.per_seq_s) >= 0 and o.fixed_s < 0.002 for o in fw.step_overhead.values())
    h100 = default_catalog().gpu("H100-SXM")
    assert fw.batch_limits(h100, "offline", 131072) == (8192, 2048)
    assert fw.summary()["capacity_scheduler"] == "guaranteed_no_evict"
    assert "capacity_scheduler" not in framework("vllm-v1").summary()  # other engines' summaries unchanged


def test_step_time_grows_with_the_batch():
    cat = default_catalog()
    model = dataclasses.replace(cat.model("Llama-3.1-8B"), dtype="fp8")
    cm = CostModel(model, cat.gpu("H100-SXM"), 1, None, framework=framework("trtllm-0.17"))
    times = [cm.iteration(d, d * 1001, d * 1000, d)[0] for d in (1, 8, 64, 256, 1024)]
    assert all(b > a > 0 for a, b in zip(times, times[1:], strict=False))


@pytest.mark.parametrize("name", ["trtllm-0.17", "trtllm-1.0"])
def test_committed_overhead_is_the_fit(name):
    shared("calibration/trtllm_perf_overview.csv")
    mod = _bench()
    fixed, per_seq = mod.fitted_overhead(shared("calibration").parent, name)
    o = framework(name).overhead_for(*mod.FIT[::2])
    assert (o.fixed_s, o.per_seq_s) == (fixed, per_seq)
    assert fixed >= 0 and per_seq >= 0


def test_bench_engine_setting_is_trtllm_benchs_heuristic():
    # Llama-3.1-8B FP8 on one H100 at 128/128: (80 - 8.03) x 0.95 GB of KV / (2 x 32 x 8 x 128 B) = 4,383
    # requests of 256 tokens -> capped at 4,096; tokens 4,096 x 2 = 8,192
    cat = default_catalog()
    bs, tok, kv = _bench().engine_setting(cat.model("Llama-3.1-8B"), cat.gpu("H100-SXM"), 1, 128, 128, True)
    assert (bs, tok) == (4096, 8192) and kv == pytest.approx((80 - 8.03) * 0.95, rel=1e-3)


# ------------------------------------------------------------------ catalogue files and bad input
def test_catalogue_entries_and_their_errors(tmp_path):
    from kavier_opendc.specs.catalog import load_catalog_file

    good = tmp_path / "fw.yaml"
    good.write_text("frameworks:\n  - name: mine\n    base: trtllm-0.17\n    capacity_scheduler: max_utilization\n")
    assert load_catalog_file(good).framework("mine").capacity_scheduler == "max_utilization"
    for text in (
        "frameworks:\n  - name: x\n    base: vllm-v1\n    capacity_scheduler: max_utilization\n",
        "frameworks:\n  - name: x\n    base: trtllm-0.17\n    capacity_scheduler: static_batch\n",
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(KavierInputError, match="capacity_scheduler"):
            load_catalog_file(bad)
    with pytest.raises(KavierInputError, match="policy trtllm") as exc:
        framework_from_entry({"name": "x", "base": "sglang-0.3-server", "capacity_scheduler": "max_utilization"})
    assert "x.capacity_scheduler" in str(exc.value)


def test_prefix_caching_and_kv_cache_off_are_refused():
    with pytest.raises(KavierInputError, match="block reuse is not modelled"):
        run([0.0], [10], [2], framework="trtllm-0.17", prefix_cache="block")
    with pytest.raises(KavierInputError, match="kv-cache"):
        run([0.0], [10], [2], framework="trtllm-0.17", kv_cache=False)
    with pytest.raises(KavierInputError, match="contradicts"):
        run([0.0], [10], [2], framework="trtllm-0.17", usage="server")


def _cli(tmp_path, *extra):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,num_input_tokens,num_output_tokens\n0,100,5\n0.5,50,5\n0.6,3000,20\n")
    cmd = [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm"]
    return subprocess.run(
        [*cmd, "--trace", str(trace), "--framework", "trtllm-0.17", *extra], capture_output=True, text=True
    )


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "o"
    ok = _cli(tmp_path, "--weight-dtype", "fp8", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "framework    trtllm-0.17" in ok.stdout
    assert "8192 tokens, 2048 sequences per iteration (trtllm-0.17 defaults (offline))" in ok.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["framework"]["capacity_scheduler"] == "guaranteed_no_evict"
    assert summary["config"]["framework"]["policy"] == "trtllm"
    assert summary["num_finished"] == 3
    bad = _cli(tmp_path, "--prefix-cache", "block", "--out", str(tmp_path / "b"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "TensorRT-LLM's KV block reuse is not modelled" in bad.stderr + bad.stdout
