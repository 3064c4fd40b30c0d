"""Cache-aware simulation: block prefix caching, sessions, prompt-level policies, tiers, routing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, shared, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine import kv_manager as kv_manager_mod
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace, load_trace


def toy(**kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=10_000)
    base.update(kw)
    return SimConfig(**base)


def trace(arrivals, prompts, outputs, **extra) -> Trace:
    return Trace(
        np.asarray(arrivals, float),
        np.asarray(prompts, np.int64),
        np.asarray(outputs, np.int64),
        source="test",
        format="kavier",
        **extra,
    )


def ideal_hit_ratio(path) -> float:
    """Longest previously seen prefix of hash ids, per request, computed straight from the file."""
    seen: set = set()
    cached = total = 0
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            ids, p = row["hash_ids"], row["input_length"]
            k = 0
            while k < len(ids) and ids[k] in seen:
                k += 1
            cached += min(k * 512, p, (p - 1) // 16 * 16)  # whole blocks, the last token is recomputed
            total += p
            seen.update(ids)
    return cached / total


# ------------------------------------------------------------------ acceptance: the ideal
@pytest.mark.parametrize("name", ["mooncake_conversation.jsonl", "mooncake_synthetic.jsonl"])
def test_unbounded_global_cache_matches_ideal(name):
    path = shared(f"traces/{name}")
    tr = load_trace(path)
    cat = default_catalog()
    res = simulate(
        tr,
        SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("H100-SXM"), prefix_capacity_tokens=float("inf")),
        progress=False,
    )
    hit = res.results.cached.sum() / tr.num_input_tokens.sum()
    ideal = ideal_hit_ratio(path)
    assert hit <= ideal + 1e-12  # the engine can only lose reuse (a block is reused once computed)
    assert ideal - hit < 0.01  # ... and loses less than one percentage point
    assert (res.results.status == 1).all()


def test_hit_ratio_rises_with_kv_memory_and_lower_min_prefix():
    tr = load_trace(shared("traces/mooncake_synthetic.jsonl"))
    cat = default_catalog()

    def hit(gpu, min_tokens=0):
        r = simulate(
            tr, SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu(gpu), prefix_min_tokens=min_tokens), progress=False
        )
        return r.results.cached.sum() / tr.num_input_tokens.sum()

    a10, a100, h200 = hit("A10"), hit("A100-80GB"), hit("H200")
    assert a10 < a100 < h200
    assert hit("H200", 32768) < hit("H200", 4096) < h200


# ------------------------------------------------------------------ by hand
def test_two_turns_of_a_session_by_hand():
    # turn 1: 100-token prompt, 50-token answer -> 149 tokens get KV (the last token is never computed),
    # 9 whole blocks. Turn 2 carries the conversation (150 tokens) plus 30 new ones.
    tr = trace([0.0, 10.0], [100, 180], [50, 10], session_id=np.array([7, 7]))
    res = simulate(tr, toy(), progress=False)
    assert list(res.results.cached) == [0, (100 + 50) // 16 * 16]
    assert res.results.cached[1] == 144
    # the cached prefix is not prefilled again: 36 prompt tokens are computed on top of 144 cached
    none = simulate(tr, toy(prefix_cache="none"), progress=False)
    ttft_hit = res.results.first_token[1] - 10.0
    ttft_miss = none.results.first_token[1] - 10.0
    assert ttft_hit < ttft_miss
    prefill = sum(res.replicas[0].timeline.prefill)
    assert prefill == 100 + 36


def test_session_restart_shares_nothing():
    # turn 2 is shorter than turn 1's prompt + answer: a new conversation, no reuse
    tr = trace([0.0, 10.0], [100, 120], [50, 10], session_id=np.array([1, 1]))
    assert list(simulate(tr, toy(), progress=False).results.cached) == [0, 0]


def test_session_scope_confines_reuse():
    ids = [[1, 2, 3], [1, 2, 4]]  # same first 1024 tokens
    tr = trace([0.0, 5.0], [1536, 1536], [5, 5], hash_ids=ids, session_id=np.array([0, 1]))
    glob = simulate(tr, toy(), progress=False).results.cached
    sess = simulate(tr, toy(prefix_scope="session"), progress=False).results.cached
    assert list(glob) == [0, 1024] and list(sess) == [0, 0]


def test_reuse_only_after_computed():
    # the second request arrives while the first is still being prefilled (chunks of 512 tokens):
    # it can reuse only the hash blocks already computed when it is scheduled
    ids = [[1, 2, 3, 4], [1, 2, 3, 5]]
    tr = trace([0.0, 0.0], [2048, 2048], [2, 2], hash_ids=ids)
    res = simulate(tr, toy(max_batched_tokens=512), progress=False).results
    assert res.cached[1] == 1536  # admitted once the first's four chunks are done: three shared blocks
    res2 = simulate(tr, toy(max_batched_tokens=4096), progress=False).results
    assert res2.cached[1] == 0  # admitted in the same iteration: nothing computed yet


def test_prompt_policies_prefill_and_full():
    tr = trace([0.0, 10.0, 20.0], [500, 500, 500], [20, 20, 20], hash_ids=[[1], [1], [2]])
    none = simulate(tr, toy(prefix_cache="none"), progress=False).results
    pre = simulate(tr, toy(prefix_cache="prefill"), progress=False).results
    full = simulate(tr, toy(prefix_cache="full"), progress=False).results
    assert list(pre.cached) == [0, 499, 0]
    assert pre.first_token[1] - 10.0 < none.first_token[1] - 10.0  # prefill skipped
    assert pre.finish[1] - pre.first_token[1] == pytest.approx(none.finish[1] - none.first_token[1], rel=0.01)
    assert full.finish[1] == 10.0 and full.first_token[1] == 10.0  # served from the cache
    assert full.cached[1] == 500 and full.cached[2] == 0
    cap0 = simulate(tr, toy(prefix_cache="prefill", prefix_min_tokens=501), progress=False).results
    assert list(cap0.cached) == [0, 0, 0]


def test_prompt_cache_capacity_lru():
    # capacity one prompt: A, B, A -> the second A misses because B evicted it
    tr = trace([0.0, 10.0, 20.0], [300, 300, 300], [2, 2, 2], hash_ids=[[1], [2], [1]])
    res = simulate(tr, toy(prefix_cache="full", prefix_capacity_prompts=1), progress=False).results
    assert list(res.cached) == [0, 0, 0]
    res = simulate(tr, toy(prefix_cache="full", prefix_capacity_prompts=2), progress=False).results
    assert list(res.cached) == [0, 0, 300]


def test_lru_eviction_under_gpu_memory():
    # 80 blocks of KV; a 512-token hash unit is 32 blocks. A (units 1, 2) finishes and stays cached,
    # released tail first, so the LRU order is [2, 1].
    # B needs 64 blocks: only 16 are free, so both of A's units are evicted; A again finds nothing.
    tr = trace([0.0, 10.0, 20.0], [1024, 1024, 1024], [1, 1, 1], hash_ids=[[1, 2], [3, 4], [1, 2]])
    res = simulate(tr, toy(num_kv_blocks=80), progress=False)
    assert list(res.results.cached) == [0, 0, 0]
    assert res.replicas[0].pc.evictions == 4  # A's two units, then B's two for A's second visit
    # B needs 32 blocks: evicting A's tail unit is enough, A's head survives and is hit
    tr2 = trace([0.0, 10.0, 20.0], [1024, 512, 1024], [1, 1, 1], hash_ids=[[1, 2], [3], [1, 2]])
    res2 = simulate(tr2, toy(num_kv_blocks=80), progress=False)
    assert list(res2.results.cached) == [0, 0, 512]
    assert res2.replicas[0].pc.evictions == 2  # unit 2, then unit 3 (to fit A's second visit)


def test_host_tier_turns_evictions_into_hits():
    rng = np.random.default_rng(3)
    n = 60
    ids = [[int(x) for x in rng.integers(0, 4, 1)] + [1000 + i] for i in range(n)]  # 4 shared heads
    tr = trace(np.arange(n) * 2.0, [1000] * n, [4] * n, hash_ids=ids)
    small = dict(num_kv_blocks=70)
    gpu_only = simulate(tr, toy(**small), progress=False)
    tiered = simulate(tr, toy(host_memory_gb=1.0, **small), progress=False)
    assert tiered.replicas[0].pc.hits_host_blocks > 0
    assert tiered.results.cached.sum() > gpu_only.results.cached.sum()


def test_policy_block_needs_identities():
    with pytest.raises(KavierInputError, match="needs prompt identities"):
        simulate(trace([0.0], [10], [2]), toy(prefix_cache="block"), progress=False)


def test_prefix_affinity_routes_to_the_cache():
    ids = [[1, 2, 3]] * 6
    tr = trace(np.arange(6) * 5.0, [1500] * 6, [3] * 6, hash_ids=ids)
    rr = simulate(tr, toy(replicas=3), progress=False).results
    pa = simulate(tr, toy(replicas=3, router="prefix-affinity"), progress=False).results
    assert pa.cached.sum() > rr.cached.sum()
    assert set(pa.replica) == {0}  # light load: every request goes where its prefix is


def test_session_affinity_sticks():
    tr = trace(np.arange(8) * 1.0, [50] * 8, [2] * 8, session_id=np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    res = simulate(tr, toy(replicas=3, router="session-affinity"), progress=False).results
    for s in range(3):
        assert len(set(res.replica[tr.session_id == s])) == 1


# ------------------------------------------------------------------ properties
def _check_cache_invariants(result):
    for rep in result.replicas:
        pc = rep.pc
        assert rep.used == 0 and rep.peak_used <= rep.capacity
        if pc is None:
            continue
        assert not pc.ref  # nothing referenced once every request has left
        assert set(pc.lru) == set(pc.size)  # every cached unit is evictable
        assert pc.lru_blocks == sum(pc.lru.values())
        if not pc.separate:
            assert pc.lru_blocks <= rep.capacity


@settings(
    max_examples=int(os.environ.get("KAVIER_PROP_EXAMPLES", 30)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 100_000),
    blocks=st.integers(60, 600),
    replicas=st.integers(1, 3),
    router=st.sampled_from(["round-robin", "prefix-affinity", "session-affinity", "least-kv"]),
    kind=st.sampled_from(["hash", "sessions"]),
    host=st.sampled_from([0.0, 0.001]),
)
def test_cache_invariants_and_fast_equals_exact(seed, blocks, replicas, router, kind, host):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    arr = np.cumsum(rng.exponential(0.05, n))
    arr -= arr[0]
    out = rng.integers(1, 60, n)
    if kind == "hash":
        heads = rng.integers(0, 3, n)
        prompts = rng.integers(40, 1200, n)
        ids = [
            [int(heads[i]), 100 + int(heads[i]) * 10 + int(rng.integers(0, 2))]
            + [10_000 + i * 10 + j for j in range(3)]
            for i in range(n)
        ]
        ids = [x[: (p + 511) // 512] for x, p in zip(ids, prompts, strict=True)]
        tr = trace(arr, prompts, out, hash_ids=ids, hash_block_size=512)
    else:
        sess = rng.integers(0, 5, n)
        prompts = np.zeros(n, dtype=np.int64)
        last: dict = {}
        for i in range(n):
            s = int(sess[i])
            prompts[i] = last.get(s, 0) + int(rng.integers(1, 200))
            last[s] = prompts[i] + out[i]
        tr = trace(arr, prompts, out, session_id=sess)

    # the GPU never holds more blocks than it has, referenced plus cached, after every allocating door
    # (kv_manager.CHECK_INVARIANTS)
    kw = dict(
        num_kv_blocks=blocks,
        replicas=replicas,
        router=router,
        host_memory_gb=host,
        max_batched_tokens=int(rng.integers(64, 2048)),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv_manager_mod, "CHECK_INVARIANTS", True)
        fast = simulate(tr, toy(**kw), progress=False)
        exact = simulate(tr, toy(exact=True, **kw), progress=False)
    for res in (fast, exact):
        _check_cache_invariants(res)
        done = res.results.status == 1
        assert (res.results.cached[done] < tr.num_input_tokens[done] + tr.num_output_tokens[done]).all()
    for name in ("first_token", "finish"):
        x, y = getattr(fast.results, name), getattr(exact.results, name)
        ok = ~np.isnan(y)
        assert np.array_equal(ok, ~np.isnan(x))
        assert np.allclose(x[ok], y[ok], rtol=1e-9, atol=0)
    assert np.array_equal(fast.results.cached, exact.results.cached)
    assert np.array_equal(fast.results.replica, exact.results.replica)


# ------------------------------------------------------------------ branching prompts (DP3)
def test_branching_prefill_once_decode_n_by_hand():
    # one 100-token prompt, n=4 samples of 3 tokens: one prefill, then 4 sequences decode together
    tr = trace([0.0], [100], [3], n=np.array([4]))
    r = simulate(tr, toy(), progress=False)
    t1 = toy_time(100, 1, 5050, 100)  # the prefill, as for a single sample
    t2 = toy_time(4, 4, 4 * 101, 4 * 101)  # 4 decodes over 100 cached tokens each
    t3 = toy_time(4, 4, 4 * 102, 4 * 102)
    assert r.results.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert r.results.finish[0] == pytest.approx(t1 + t2 + t3, rel=1e-12)
    rep = r.replicas[0]
    assert sum(rep.timeline.prefill) == 100 and sum(rep.timeline.decode) == 4 * 2
    # 6 full prompt blocks shared; the partial 7th copied once per extra sample (copy-on-write)
    assert rep.peak_used == 6 + 4
    assert rep.used == 0 and r.results.status[0] == 1


def test_branching_copy_on_write_refused_means_recompute():
    # 8 blocks: the prompt takes 7, two extra samples want a copy of the partial block: one fits
    tr = trace([0.0], [100], [2], n=np.array([3]))
    r = simulate(tr, toy(num_kv_blocks=8), progress=False)
    assert r.results.status[0] == 1
    assert r.results.preemptions[0] == 1  # the third sample waited and was recomputed
    assert sum(r.replicas[0].timeline.prefill) == 100 + 101
    assert r.replicas[0].peak_used <= 8


def test_branching_fast_equals_exact():
    rng = np.random.default_rng(11)
    n = 60
    tr = trace(
        np.cumsum(rng.exponential(0.02, n)) - 0.0,
        rng.integers(10, 500, n),
        rng.integers(1, 80, n),
        n=rng.integers(1, 5, n),
    )
    tr.arrival_s -= tr.arrival_s[0]
    kw = dict(num_kv_blocks=300, max_batched_tokens=512)
    a = simulate(tr, toy(**kw), progress=False).results
    b = simulate(tr, toy(exact=True, **kw), progress=False).results
    assert (a.status == 1).all()
    assert np.allclose(a.finish, b.finish, rtol=1e-9, atol=0)
    assert np.array_equal(a.preemptions, b.preemptions)
