"""Decode-replica routing (engine/disaggregated.py, ``decode_routing``): free-kv (the default, most free KV
blocks then fewest requests) and free-slots (most free sequence slots then most free blocks) by hand; the
invariants under both; fast decode runs place and time every request as stepping does with several decode
replicas; the CLI flag, the experiment field and bad values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_GPU, TOY_MODEL, make_trace, toy_pd_config
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.kv_link import Disaggregation, LinkSpec, Pool
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.engine.simulator import simulate

LINK = LinkSpec(1.0, 0.001, 0.002)


cfg = toy_pd_config


def pool(blocks: int, replicas: int = 1, seqs: int | None = None) -> Pool:
    return Pool(TOY_MODEL, TOY_GPU, replicas, 1, blocks, max_num_seqs=seqs)


def placed(routing: str, seqs_a: int, seqs_b: int) -> list[int]:
    # five 320-token prompts (20 blocks each) at t=0, prefilled together on the prefill replica (id 0), then
    # placed one after another at the prefill's end: pool A (100 blocks, id 1), pool B (120 blocks, id 2)
    topo = Disaggregation(
        pool(10_000), pool(100, seqs=seqs_a), LINK, more_decode=(pool(120, seqs=seqs_b),), decode_routing=routing
    )
    r = simulate(make_trace([0.0] * 5, [320] * 5, [2] * 5), cfg(topo), progress=False)
    assert (r.results.status == FINISHED).all()
    return r.extra["pd"].decode_replica.tolist()


def test_free_kv_routing_by_hand_ignores_the_slots():
    # free blocks (A, B) before each: (100,120) -> B; (100,100), requests 0 vs 1 -> A; (80,100) -> B;
    # (80,80) -> A; (60,80) -> B, whatever the slots: B gets 3 requests with 2 slots (the third is held)
    assert placed("free-kv", 8, 2) == [2, 1, 2, 1, 2]


def test_free_slots_routing_by_hand():
    # A 8 slots, B 2: free slots (8,2) -> A, (7,2) -> A, ... all five on A, whose 100 blocks take them all
    assert placed("free-slots", 8, 2) == [1, 1, 1, 1, 1]
    # A 3 slots, B 2: (3,2) -> A; (2,2), free blocks 80 vs 120 -> B; (2,1) -> A; (1,1), 60 vs 100 -> B;
    # (1,0) -> A
    assert placed("free-slots", 3, 2) == [1, 2, 1, 2, 1]
    # a replica without room for the KV now is passed over, however many slots it has: A of 30 blocks takes
    # one 20-block prompt, then B takes the rest
    topo = Disaggregation(
        pool(10_000), pool(30, seqs=8), LINK, more_decode=(pool(120, seqs=2),), decode_routing="free-slots"
    )
    r = simulate(make_trace([0.0] * 5, [320] * 5, [2] * 5), cfg(topo), progress=False)
    assert r.extra["pd"].decode_replica.tolist() == [1, 2, 2, 2, 2]


def _random_case(data):
    n = data.draw(st.integers(1, 12))
    arrivals = sorted(data.draw(st.lists(st.floats(0, 0.2), min_size=n, max_size=n)))
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outs = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    decode = [
        pool(data.draw(st.integers(25, 120)), data.draw(st.integers(1, 2)), data.draw(st.sampled_from([None, 1, 2, 4])))
        for _ in range(data.draw(st.integers(1, 2)))
    ]
    if sum(p.replicas for p in decode) < 2:
        decode.append(pool(data.draw(st.integers(25, 120)), 1, data.draw(st.sampled_from([None, 1, 3]))))
    topo = Disaggregation(
        pool(10_000, data.draw(st.integers(1, 2))),
        decode[0],
        LinkSpec(data.draw(st.sampled_from([0.01, 1.0])), 0.0005, 0.0),
        more_decode=tuple(decode[1:]),
        decode_routing=data.draw(st.sampled_from(["free-kv", "free-slots"])),
    )
    return topo, arrivals, prompts, outs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_decode_runs_place_and_time_requests_as_stepping_does(data):
    # 2-3 decode replicas, small KV pools and slot limits, either routing: the closed-form decode runs give
    # the stepped engine's placements, times and waits
    topo, arrivals, prompts, outs = _random_case(data)
    trace = make_trace(arrivals, prompts, outs)
    fast = simulate(trace, cfg(topo), progress=False)
    exact = simulate(trace, cfg(topo, exact=True), progress=False)
    np.testing.assert_array_equal(fast.results.status, exact.results.status)
    np.testing.assert_array_equal(fast.extra["pd"].decode_replica, exact.extra["pd"].decode_replica)
    for name in ("first_token", "finish"):
        np.testing.assert_allclose(getattr(fast.results, name), getattr(exact.results, name), rtol=1e-9)
    for name in ("transfer_end", "decode_wait", "slot_wait"):
        np.testing.assert_allclose(
            getattr(fast.extra["pd"], name), getattr(exact.extra["pd"], name), rtol=1e-9, atol=1e-12
        )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_either_routing_keeps_the_invariants(data):
    topo, arrivals, prompts, outs = _random_case(data)
    r = simulate(make_trace(arrivals, prompts, outs), cfg(topo), progress=False)
    res, rec = r.results, r.extra["pd"]
    assert set(res.status.tolist()) <= {FINISHED, REJECTED}  # every request once, finished or rejected
    done = res.status == FINISHED
    o = np.array(outs)
    assert set(rec.decode_replica[done & (o > 1)].tolist()) <= set(rec.decode_ids)
    assert (np.isfinite(rec.transfer_end) == (done & (o > 1))).all()
    # tokens conserved on the decode pool: every output token after the first, but those a recompute samples
    dec = [x for x in r.replicas if x.idx in rec.decode_ids]
    decoded, wanted = sum(sum(x.timeline.decode) for x in dec), np.maximum(o[done] - 1, 0).sum()
    assert decoded <= wanted <= decoded + sum(x.preemptions for x in dec)
    for rep in r.replicas:  # KV never above capacity, and all of it freed at the end
        assert rep.peak_used <= rep.capacity and rep.kv.used == 0


def _kavier(tmp_path, *extra, out="out"):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n" + "0.0,300,20\n" * 6)
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB"]
        + ["--trace", str(trace), "--out", str(tmp_path / out), "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_decode_routing(tmp_path):
    pools = ("--prefill-pool", "H100-SXM:1:1", "--decode-pool", "A100-80GB:1:1", "--decode-pool", "H100-SXM:1:1")
    kv = _kavier(tmp_path, *pools, out="kv")
    slots = _kavier(tmp_path, *pools, "--decode-routing", "free-slots", out="slots")
    assert kv.returncode == 0 and slots.returncode == 0, kv.stderr + slots.stderr

    def decode_counts(out):
        s = json.loads((tmp_path / out / "summary.json").read_text())["disaggregation"]
        return [p["requests"] for p in s["pools"] if p["role"] == "decode"]

    # six 300-token prompts (19 blocks each) at once: the A100 has 28,279 KV blocks, the H100 27,739 (its
    # larger default token budget reserves more activation memory), so free-kv puts all six on the A100;
    # free-slots puts them on the H100, whose 1024 sequences leave more slots free than the A100's 256
    assert decode_counts("kv") == [6, 0] and decode_counts("slots") == [0, 6]
    # the single-pool flags take it too
    one = _kavier(tmp_path, "--prefill-replicas", "1", "--decode-replicas", "2", "--decode-routing", "free-slots")
    assert one.returncode == 0, one.stderr


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--prefill-replicas", "1", "--decode-replicas", "2", "--decode-routing", "most-slots"), "--decode-routing"),
        (
            (
                "--decode-routing",
                "free-slots",
            ),
            "--decode-routing: a decode routing is set, but serving is co-located",
        ),
    ],
)
def test_bad_decode_routing_is_a_clear_error(tmp_path, extra, words):
    r = _kavier(tmp_path, *extra)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_experiment_sets_the_decode_routing(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment
    from test_disagg_pools import TWO_DECODE_POOLS, _experiment

    topo = load_experiment(_experiment(tmp_path, {**TWO_DECODE_POOLS, "decode_routing": "free-slots"})).sim_config()
    assert topo.topology().decode_routing == "free-slots"
    default = load_experiment(_experiment(tmp_path / "d", TWO_DECODE_POOLS)).sim_config().topology()
    assert default.decode_routing == "free-kv"
    with pytest.raises(KavierInputError, match=r"serving.disaggregation.decode_routing"):
        load_experiment(_experiment(tmp_path / "bad", {**TWO_DECODE_POOLS, "decode_routing": "nearest"}))
