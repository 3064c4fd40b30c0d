"""Prompt chunks applied as they are formed (Replica._prefill_run), and a replica's boundaries before the
next arrival taken without the heap: the same outputs, fewer events.

The reference is the same fast mode with the chunks applied at their own boundaries, each a heap event
(``simulator.EAGER_PREFILL = CHAIN_BOUNDARIES = False``): every output must be identical, bit for bit;
and the per-request times agree with ``--exact`` stepping as the fast mode always has.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, toy_time
from kavier_opendc.engine import simulator
from kavier_opendc.engine.cost_model import DEFAULT_EFFICIENCY
from kavier_opendc.engine.outputs import requests_table, summary_dict, timeline_table
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace

VOLATILE = ("wall_s", "requests_per_s")


def toy(**kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=10_000)
    base.update(kw)
    return SimConfig(**base)


def counted(trace, cfg, eager: bool, monkeypatch, chain: bool = True) -> tuple:
    """The simulation with eager prompt chunks on or off (and the boundaries before an arrival chained, or
    each a heap event), and the number of boundary events it took."""
    with monkeypatch.context() as m:
        m.setattr(simulator, "EAGER_PREFILL", eager)
        m.setattr(simulator, "CHAIN_BOUNDARIES", chain)
        result = simulate(trace, cfg, progress=False)
    return result, sum(rep.events for rep in result.replicas)


def outputs(result) -> tuple:
    summary = summary_dict(result)
    for key in VOLATILE:
        summary["engine"].pop(key, None)
    return requests_table(result), timeline_table(result), summary


def assert_identical(a, b) -> None:
    (ra, ta, sa), (rb, tb, sb) = outputs(a), outputs(b)
    assert ra.column_names == rb.column_names
    for name in ra.column_names:  # NaN == NaN here: a column is identical or not
        x, y = ra[name].to_numpy(zero_copy_only=False), rb[name].to_numpy(zero_copy_only=False)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert ta.equals(tb)
    assert sa == sb
    assert [r.iterations for r in a.replicas] == [r.iterations for r in b.replicas]


# ------------------------------------------------------------------ by hand
def test_one_long_prompt_alone_by_hand(monkeypatch):
    # 1,000 prompt tokens in chunks of the 100-token budget: chunk k computes 100 tokens over 100 (k-1)
    # cached ones (100 (k-1) x 100 + 5050 pairs, 100 k KV tokens); the 10th samples the first token
    trace = make_trace([0.0], [1000], [2])
    cfg = toy(max_batched_tokens=100)
    eager, events = counted(trace, cfg, True, monkeypatch)
    stepped, stepped_events = counted(trace, cfg, False, monkeypatch)
    ttft = 0.0
    for k in range(1, 11):
        comp = 100 * (k - 1)
        ttft += toy_time(100, 1, 100 * comp + 5050, comp + 100)
    assert eager.results.first_token[0] == pytest.approx(ttft, rel=1e-12)
    decode = toy_time(1, 1, 1001, 1001)
    assert eager.results.finish[0] == pytest.approx(ttft + decode, rel=1e-12)
    assert_identical(eager, stepped)
    # stepped: the arrival's boundary (admitting chunk 1), the 10 chunks' and the decode's; eager: chunks
    # 2-8 at chunk 1's boundary (each while the next is partial too), then chunk 9, chunk 10 and the decode
    assert stepped_events == 12
    assert events == 5


def test_an_arrival_during_the_chunks_joins_at_the_same_boundary(monkeypatch):
    # the second request arrives while the first is mid-prompt: it is admitted at the first boundary that
    # has budget left (the first prompt's last chunk), with chunks applied eagerly or not
    trace = make_trace([0.0, 0.004], [1000, 30], [3, 3])
    cfg = toy(max_batched_tokens=100)
    eager, _ = counted(trace, cfg, True, monkeypatch)
    stepped, _ = counted(trace, cfg, False, monkeypatch)
    assert_identical(eager, stepped)
    assert eager.results.first_sched[1] == stepped.results.first_sched[1] > 0.004


# ------------------------------------------------------------------ random traces
def _trace(seed: int, hashed: bool) -> Trace:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    arrivals = np.cumsum(rng.exponential(float(rng.uniform(0.002, 0.05)), n))
    arrivals -= arrivals[0]
    prompts = rng.integers(1, 3000, n)
    outs = rng.integers(1, 80, n)
    if not hashed:
        return make_trace(arrivals, prompts, outs)
    heads = rng.integers(0, 3, n)
    ids = [[int(heads[i]), 10 + int(heads[i])] + [1000 + 10 * i + j for j in range(6)] for i in range(n)]
    ids = [x[: (p + 511) // 512] for x, p in zip(ids, prompts, strict=True)]
    return Trace(
        arrivals, prompts.astype(np.int64), outs.astype(np.int64), source="test", format="kavier",
        hash_ids=ids, hash_block_size=512,
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    budget=st.sampled_from([16, 64, 128, 512]),
    blocks=st.sampled_from([120, 400, 10_000]),
    router=st.sampled_from(["round-robin", "least-outstanding", "session-affinity", "random", "least-kv"]),
    cache=st.sampled_from(["none", "block"]),
    async_sched=st.booleans(),
    setup=st.sampled_from(["toy", "a100", "a100-capped"]),
)
def test_eager_chunks_give_identical_outputs(
    monkeypatch, seed, replicas, budget, blocks, router, cache, async_sched, setup
):
    trace = _trace(seed, cache == "block")
    cfg = toy(
        replicas=replicas, max_batched_tokens=budget, num_kv_blocks=blocks, router=router, seed=seed,
        prefix_cache=cache, async_scheduling=async_sched, max_model_len=4096,
    )  # fmt: skip
    if setup != "toy":  # the catalogue's GPU, under a power cap that clocks it down (a CappedCostModel)
        cat = default_catalog()
        cap = 250.0 if setup == "a100-capped" else None
        real = dict(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-80GB"), efficiency=DEFAULT_EFFICIENCY)
        cfg = dataclasses.replace(cfg, power_cap_w=cap, **real)
    eager, events = counted(trace, cfg, True, monkeypatch)
    stepped, stepped_events = counted(trace, cfg, False, monkeypatch, chain=False)
    assert_identical(eager, stepped)
    assert events <= stepped_events
    if router == "least-kv":  # a router that reads the KV blocks at arrivals: chunks stay at their boundaries
        assert events == stepped_events
    # and the fast mode still agrees with one-iteration-per-event stepping, per request
    exact = simulate(trace, dataclasses.replace(cfg, exact=True), progress=False)
    for name in ("first_sched", "first_token", "finish"):
        assert np.allclose(
            getattr(eager.results, name), getattr(exact.results, name), rtol=1e-9, atol=0, equal_nan=True
        )
