"""Inter-token latency (engine/itl.py): per-request gaps by hand, invariants, fast path = stepping, pooled stats."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import toy_time
from kavier_opendc.engine.itl import itl_of, pooled_stats, pooled_stats_expanded
from kavier_opendc.engine.outputs import SimulationOutput, write_simulation
from kavier_opendc.engine.simulator import simulate
from test_engine import _random_trace, run, toy
from test_frameworks_sglang import _BASE, SGL, decode, multistep

ITL_COLUMNS = ["itl_count", "itl_mean_s", "itl_max_s"]


def v0s_time(n_tokens, n_seqs, pairs, kv_tokens):
    """toy_time with vllm-0.5-server's step overhead for the toy GPU (9.644 ms + 260.8 us per sequence)."""
    return toy_time(n_tokens, n_seqs, pairs, kv_tokens) - 1e-3 + 0.009644 + 0.0002608 * n_seqs


def table(result):
    return SimulationOutput.from_result(result).requests.to_pydict()


def pooled_by_hand(gaps):
    g = np.asarray(gaps, dtype=float)
    p = np.percentile(g, [50, 90, 99])
    return {"mean": g.mean(), "p50": p[0], "p90": p[1], "p99": p[2], "max": g.max()}


def assert_pooled(got, gaps):
    want = pooled_by_hand(gaps)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k


# ------------------------------------------------------------------ by hand
def test_v1_one_request_alone_every_gap_is_an_iteration():
    # prefill, then 3 decode iterations with 100, 101, 102 cached tokens: 3 gaps, one per iteration
    gaps = [toy_time(1, 1, 101 + k, 101 + k) for k in range(3)]
    for exact in (False, True):
        result = run([0.0], [100], [4], exact=exact)
        t = table(result)
        assert t["itl_count"] == [3]
        assert t["itl_max_s"][0] == pytest.approx(gaps[2], rel=1e-9)
        assert t["itl_mean_s"][0] == pytest.approx(np.mean(gaps), rel=1e-9)
        assert t["itl_mean_s"][0] == pytest.approx(t["tpot_s"][0], rel=1e-12)  # one token a chunk: mean = TPOT
        assert_pooled(itl_of(result).pooled, gaps)


def test_v0_server_prompt_only_iteration_stalls_the_decoder_by_hand():
    # vllm-0.5-server. A (100 prompt, 3 out) at 0, B (100, 2) at 1 ms: prefill A | prefill B alone (A gets no
    # token) | decode A+B | decode A. A's first gap is B's whole prompt iteration and the joint decode.
    t2 = v0s_time(100, 1, 5050, 100)
    t3 = v0s_time(2, 2, 202, 202)
    t4 = v0s_time(1, 1, 102, 102)
    result = run([0.0, 0.001], [100, 100], [3, 2], framework="vllm-0.5-server")
    t = table(result)
    assert t["itl_count"] == [2, 1]
    assert t["itl_max_s"][0] == pytest.approx(t2 + t3, rel=1e-9)  # the stall
    assert t["itl_mean_s"][0] == pytest.approx((t2 + t3 + t4) / 2, rel=1e-9)
    assert t["itl_max_s"][1] == pytest.approx(t3, rel=1e-9)
    assert_pooled(itl_of(result).pooled, [t2 + t3, t4, t3])
    # vLLM v1 puts B's prompt beside A's decode: no gap of A holds a whole prompt iteration alone
    v1 = table(run([0.0, 0.001], [100, 100], [3, 2]))
    assert v1["itl_max_s"][0] < t["itl_max_s"][0]


def test_multistep_a_block_is_one_gap():
    # one request alone, 10 steps a block, 21 tokens: the first at the prefill, 10 at each block's end
    b1 = sum(decode(100 + k) for k in range(10))
    b2 = sum(decode(100 + k) for k in range(10, 20))
    for exact in (False, True):
        result = run([0.0], [100], [21], framework=multistep(10), exact=exact)
        t = table(result)
        assert t["itl_count"] == [2]
        assert t["itl_max_s"][0] == pytest.approx(b2, rel=1e-9)
        assert t["itl_mean_s"][0] == pytest.approx((b1 + b2) / 2, rel=1e-9)
        assert t["itl_mean_s"][0] == pytest.approx(10 * t["tpot_s"][0], rel=1e-9)  # 10 tokens a chunk
        assert_pooled(itl_of(result).pooled, [b1, b2])
    # 12 tokens: the second block still runs its 10 steps and streams the last 2 tokens at its end
    assert table(run([0.0], [100], [12], framework=multistep(10)))["itl_count"] == [2]


def test_multistep_prompts_between_blocks_stall_by_hand():
    # test_frameworks_sglang.test_multistep_blocks_by_hand, 3 steps a block: A (100, 5) at 0; B (50, 3) and
    # C (20, 2) during A's prefill; D (10, 2) during block 1. A waits for B+C's prefill, then block 1, then
    # D's prefill, then block 2; B and C stream block 1 only (their last tokens in it), D block 2.
    from test_frameworks import v0_time

    t1 = v0_time(100, 1, 5050, 100)
    t2 = v0_time(70, 2, 50 * 51 // 2 + 20 * 21 // 2, 70)
    b1 = decode(100, 50, 20) + decode(101, 51, 21) + decode(102, 52, 22)
    t3 = v0_time(10, 1, 55, 10)
    b2 = decode(103, 10) + decode(104, 11) + decode(105, 12)
    d_at = t1 + t2 + 0.5 * decode(100, 50, 20)
    result = run([0.0, 0.001, 0.002, d_at], [100, 50, 20, 10], [5, 3, 2, 2], framework=multistep(3))
    t = table(result)
    assert t["itl_count"] == [2, 1, 1, 1]
    assert t["itl_max_s"][0] == pytest.approx(max(t2 + b1, t3 + b2), rel=1e-9)
    assert t["itl_mean_s"][0] == pytest.approx((t2 + b1 + t3 + b2) / 2, rel=1e-9)
    assert t["itl_max_s"][1:] == pytest.approx([b1, b1, b2], rel=1e-9)
    assert_pooled(itl_of(result).pooled, [t2 + b1, t3 + b2, b1, b1, b2])


def test_one_token_requests_have_no_gaps():
    result = run([0.0, 0.0], [100, 50], [1, 1])
    t = table(result)
    assert t["itl_count"] == [0, 0]
    assert all(np.isnan(t["itl_max_s"])) and all(np.isnan(t["itl_mean_s"]))
    assert itl_of(result).pooled == {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}


def test_columns_come_last_and_the_summary_has_itl(tmp_path):
    result = run([0.0, 0.01, 0.02], [100, 200, 50], [10, 5, 20])
    write_simulation(result, tmp_path / "sim")
    cols = pq.read_table(tmp_path / "sim" / "requests.parquet").column_names
    assert cols[-3:] == ITL_COLUMNS
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert set(summary["itl_s"]) == {"mean", "p50", "p90", "p99", "max"}
    # pooled over every gap: the mean is the gaps' sum over their number
    t = table(result)
    n = np.asarray(t["itl_count"])
    total = np.nansum(np.asarray(t["itl_mean_s"]) * n)
    assert summary["itl_s"]["mean"] == pytest.approx(total / n.sum(), rel=1e-9)
    assert summary["itl_s"]["max"] == pytest.approx(np.nanmax(t["itl_max_s"]), rel=1e-9)


# ------------------------------------------------------------------ invariants, fast path = stepping
POLICIES = {
    "vllm-v1": None,
    "vllm-v0": "vllm-0.5-server",
    "multistep-3": multistep(3),
    "multistep-10": multistep(10),
    "sglang": SGL,
    "vllm-v0-offline": _BASE,
}


def check_itl(result, steps):
    tr, res = result.trace, result.results
    it = itl_of(result)
    done = res.status == 1
    out = tr.num_output_tokens[done]
    # the gaps of a request run from its first token to its last (engine clock)
    assert np.allclose(it.total[done], (res.finish - res.first_token)[done], rtol=1e-9, atol=1e-12)
    if steps == 1:
        assert (it.count[done] == out - 1).all()
    else:  # one chunk per block streamed: at least ceil((out - 1) / steps), at most out - 1
        assert (it.count[done] <= out - 1).all() and (it.count[done] >= -(-(out - 1) // steps)).all()
    with np.errstate(invalid="ignore"):
        tpot = (res.finish - res.first_token) / (tr.num_output_tokens - 1)
    many = done & (it.count > 0)
    if steps == 1:
        assert np.allclose(it.mean[many], tpot[many], rtol=1e-9)
    assert (it.max[many] >= it.mean[many] * (1 - 1e-12)).all()
    # (a request rejected after a preemption keeps the gaps it streamed before)
    assert np.isnan(it.max[it.count == 0]).all() and not np.isnan(it.max[it.count > 0]).any()
    return it


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(60, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(600, 2048),
    policy=st.sampled_from(sorted(POLICIES)),
)
def test_itl_invariants_and_fast_equals_exact(seed, replicas, blocks, seqs, budget, policy):
    fw = POLICIES[policy]
    kw = dict(replicas=replicas, num_kv_blocks=blocks, max_num_seqs=seqs, max_batched_tokens=budget, seed=seed)
    if fw is not None:
        kw["framework"] = fw
    steps = int(policy.split("-")[1]) if policy.startswith("multistep") else 1
    trace = _random_trace(seed)
    fast = check_itl(simulate(trace, toy(**kw), progress=False), steps)
    exact = check_itl(simulate(trace, toy(exact=True, **kw), progress=False), steps)
    assert np.array_equal(fast.count, exact.count)
    assert np.allclose(fast.max, exact.max, rtol=1e-9, equal_nan=True)
    assert np.allclose(fast.mean, exact.mean, rtol=1e-9, equal_nan=True)
    for k, v in fast.pooled.items():
        assert (v is None) == (exact.pooled[k] is None)
        if v is not None:
            assert v == pytest.approx(exact.pooled[k], rel=1e-9), k


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), decode=st.integers(1, 2))
def test_itl_of_disaggregated_runs(seed, decode):
    # a request's first token comes from the prefill replica, its other gaps from the decode replica's
    # (fast and exact disaggregated runs may route differently, so only the invariants are compared)
    trace = _random_trace(seed)
    for exact in (False, True):
        check_itl(simulate(trace, toy(prefill_replicas=1, decode_replicas=decode, exact=exact), progress=False), 1)


def test_preempted_requests_count_the_gap_over_their_recomputation():
    # a small pool: requests are preempted and recomputed; their gaps still sum to finish - first token
    trace = _random_trace(7)
    result = simulate(trace, toy(num_kv_blocks=60, max_num_seqs=32), progress=False)
    assert result.results.preemptions.sum() > 0
    check_itl(result, 1)


# ------------------------------------------------------------------ the pooled multiset
@settings(max_examples=200, deadline=None)
@given(
    singles=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.2, 0.25]) | st.floats(0, 1), st.integers(0, 4)), max_size=12
    ),
    runs=st.lists(
        st.tuples(st.floats(0, 1), st.floats(1e-9, 0.05), st.integers(2, 300), st.integers(0, 4)), max_size=8
    ),
)
def test_pooled_stats_equal_the_expanded_multiset(singles, runs):
    sv = np.array([s[0] for s in singles], dtype=float)
    sw = np.array([s[1] for s in singles], dtype=np.int64)
    a, b, m, w = (np.array([r[k] for r in runs], dtype=np.int64 if k >= 2 else float) for k in range(4))
    got, want = pooled_stats(sv, sw, a, b, m, w), pooled_stats_expanded(sv, sw, a, b, m, w)
    for k in want:
        assert (got[k] is None) == (want[k] is None)
        if got[k] is not None:
            assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
