"""A decode replica runs at most max_num_seqs sequences (engine/disaggregated.py): landed KV waits for a
slot, by hand; the wait in decode_wait_s; max_batched_tokens still binding; fast equal to exact; invariants
over random traces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, toy_time
from kavier_opendc.engine import kv_manager as kv_manager_mod
from kavier_opendc.engine.disaggregated import DecodeReplica
from kavier_opendc.engine.kv_link import Disaggregation, LinkSpec, PairLink, Pool
from kavier_opendc.engine.kv_manager import blocks_for
from kavier_opendc.engine.outputs import summary_dict
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.engine.simulator import SimConfig, simulate

KV_BYTES = TOY_MODEL.kv_bytes_per_token  # 512
LINK = LinkSpec(gbs=1.0, latency_s=0.001, setup_s=0.0)


def cfg(topo: Disaggregation, **kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, disaggregation=topo, max_model_len=400)
    base.update(kw)
    return SimConfig(**base)


def pool(blocks: int = 10_000, replicas: int = 1, **kw) -> Pool:
    return Pool(TOY_MODEL, TOY_GPU, replicas, 1, blocks, **kw)


def step(context: int) -> float:
    """One decode iteration of one sequence whose KV holds ``context`` tokens before it."""
    return toy_time(1, 1, context + 1, context + 1)


def landing_together(decode: Pool) -> Disaggregation:
    """Two prefill pools of one replica each, each with its own identical link to the one decode replica:
    two equal prompts at t=0 are prefilled side by side and their KV lands at the same time."""
    return Disaggregation(
        pool(), decode, LINK, more_prefill=(pool(),), pair_links=(PairLink(0, 0, LINK), PairLink(1, 0, LINK))
    )


def run(topo: Disaggregation, arrivals, prompts, outs, **kw):
    return simulate(make_trace(arrivals, prompts, outs), cfg(topo, **kw), progress=False)


# ------------------------------------------------------------------ by hand
def test_kv_landing_together_waits_for_the_one_slot_by_hand():
    # decode max_num_seqs=1: both KVs land at t_land; the first decodes its 2 tokens, the second starts at
    # exactly the first's last token, and its decode_wait_s is that gap
    t_land = toy_time(100, 1, 5050, 100) + 100 * KV_BYTES / 1e9 + 0.001
    r = run(landing_together(pool(max_num_seqs=1)), [0.0, 0.0], [100, 100], [3, 3])
    res, rec = r.results, r.extra["pd"]
    assert rec.transfer_end.tolist() == pytest.approx([t_land, t_land], rel=1e-12)
    first = t_land + step(100) + step(101)
    assert res.finish[0] == pytest.approx(first, rel=1e-12)
    assert res.finish[1] == pytest.approx(first + step(100) + step(101), rel=1e-12)
    assert rec.decode_wait.tolist() == pytest.approx([0.0, first - t_land], rel=1e-12, abs=1e-15)
    assert rec.slot_wait.tolist() == pytest.approx([0.0, first - t_land], rel=1e-12, abs=1e-15)
    dec = r.replicas[2]
    assert max(dec.timeline.batch) == 1.0 and dec.kv.used == 0 and dec.preemptions == 0
    # the second's blocks were held from its transfer on: 7 + 7 blocks at the landing, never above capacity
    assert dec.peak_used == 14
    # what the summary says: the wait after the landing is not counted as exposed transfer time
    s = summary_dict(r)["disaggregation"]
    assert s["decode_wait_s"]["max"] == pytest.approx(first - t_land, rel=1e-12)
    assert s["link"]["exposed_s_mean"] == pytest.approx(100 * KV_BYTES / 1e9 + 0.001, rel=1e-9)
    # without the limit (the cluster's 256), both decode side by side in iterations of two
    both = run(landing_together(pool()), [0.0, 0.0], [100, 100], [3, 3])
    side = t_land + toy_time(2, 2, 2 * 101, 2 * 101) + toy_time(2, 2, 2 * 102, 2 * 102)
    assert both.results.finish.tolist() == pytest.approx([side, side], rel=1e-12)
    assert both.extra["pd"].decode_wait.tolist() == [0.0, 0.0]


def test_a_request_landing_mid_iteration_is_held_from_the_next_boundary_by_hand():
    # 1P1D, one link: both prompts prefilled in one iteration; A's KV lands first, B's one transfer time later,
    # inside A's first decode step; B is refused at that step's end and admitted when A finishes
    topo = Disaggregation(pool(), pool(max_num_seqs=1), LINK)
    r = run(topo, [0.0, 0.0], [100, 100], [3, 3])
    res, rec = r.results, r.extra["pd"]
    t1 = toy_time(200, 2, 2 * 5050, 200)
    move = 100 * KV_BYTES / 1e9
    land_a, land_b = t1 + move + 0.001, t1 + 2 * move + 0.001
    assert rec.transfer_end.tolist() == pytest.approx([land_a, land_b], rel=1e-12)
    assert land_b < land_a + step(100)  # B lands while A's first step runs
    finish_a = land_a + step(100) + step(101)
    assert res.finish[0] == pytest.approx(finish_a, rel=1e-12)
    assert res.finish[1] == pytest.approx(finish_a + step(100) + step(101), rel=1e-12)
    assert rec.decode_wait[1] == pytest.approx(step(101), rel=1e-9)  # from A's first step's end to its last


def test_decode_max_batched_tokens_still_binds():
    # a decode pool with a budget of one token per iteration (and room for four sequences): both landed
    # requests run, but only the first in admission order decodes until it finishes; no one waits for a slot
    r = run(landing_together(pool(max_num_seqs=4, max_batched_tokens=1)), [0.0, 0.0], [100, 100], [3, 3])
    t_land = toy_time(100, 1, 5050, 100) + 100 * KV_BYTES / 1e9 + 0.001
    first = t_land + step(100) + step(101)
    assert r.results.finish.tolist() == pytest.approx([first, first + step(100) + step(101)], rel=1e-12)
    assert r.extra["pd"].decode_wait.tolist() == [0.0, 0.0]
    assert max(r.replicas[2].timeline.batch) == 1.0


def test_decode_fast_path_equals_exact_mode_when_the_slots_bind():
    arrivals = [0.0, 0.0, 0.001, 0.002, 0.01, 0.05, 0.06, 0.3]
    prompts, outs = [100, 120, 37, 250, 60, 16, 90, 80], [40, 25, 3, 90, 60, 1, 30, 200]
    topo = Disaggregation(pool(), pool(60, replicas=2, max_num_seqs=2), LINK)
    fast = run(topo, arrivals, prompts, outs)
    exact = run(topo, arrivals, prompts, outs, exact=True)
    assert fast.extra["pd"].slot_wait.max() > 0  # the limit binds
    for name in ("first_token", "finish"):
        np.testing.assert_allclose(getattr(fast.results, name), getattr(exact.results, name), rtol=1e-9)
    for name in ("decode_replica", "transfer_end", "decode_wait", "slot_wait"):
        np.testing.assert_allclose(getattr(fast.extra["pd"], name), getattr(exact.extra["pd"], name), rtol=1e-9)
    assert sum(r.iterations for r in fast.replicas) == sum(r.iterations for r in exact.replicas)


# ------------------------------------------------------------------ invariants
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_decode_replica_ever_runs_more_than_its_max_num_seqs(data):
    n = data.draw(st.integers(1, 12))
    arrivals = sorted(data.draw(st.lists(st.floats(0, 0.2), min_size=n, max_size=n)))
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outs = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    decode = tuple(
        pool(
            data.draw(st.integers(25, 60)),
            data.draw(st.integers(1, 2)),
            max_num_seqs=data.draw(st.integers(1, 3)),
            max_batched_tokens=data.draw(st.sampled_from([None, 2, 64])),
        )
        for _ in range(data.draw(st.integers(1, 2)))
    )
    link = LinkSpec(
        data.draw(st.sampled_from([0.001, 1.0])), 0.0005, 0.0, data.draw(st.sampled_from(["whole", "layerwise"]))
    )
    topo = Disaggregation(pool(replicas=data.draw(st.integers(1, 2))), decode[0], link, more_decode=decode[1:])
    model = TOY_MODEL if link.mode == "whole" else dataclasses.replace(TOY_MODEL, num_layers=3)
    topo = dataclasses.replace(
        topo,
        prefill=dataclasses.replace(topo.prefill, model=model),
        decode=dataclasses.replace(topo.decode, model=model),
        more_decode=tuple(dataclasses.replace(p, model=model) for p in topo.more_decode),
    )
    most_running: dict[int, int] = {}
    boundary = DecodeReplica.boundary

    def watched_boundary(self, t):
        out = boundary(self, t)
        most_running[self.idx] = max(most_running.get(self.idx, 0), len(self.running))
        assert len(self.running) <= self.max_num_seqs, (self.idx, len(self.running), self.max_num_seqs)
        return out

    DecodeReplica.boundary = watched_boundary  # type: ignore[method-assign]
    kv_manager_mod.CHECK_INVARIANTS = True  # KV never above capacity after a door that adds blocks
    try:
        r = run(topo, arrivals, prompts, outs, model=model, exact=data.draw(st.booleans()))
    finally:
        DecodeReplica.boundary = boundary  # type: ignore[method-assign]
        kv_manager_mod.CHECK_INVARIANTS = False
    res, rec = r.results, r.extra["pd"]
    p, o = np.array(prompts), np.array(outs)
    # every request finished or rejected (too long for the smallest replica or max_model_len), once
    assert set(res.status.tolist()) <= {FINISHED, REJECTED}
    biggest = max(d.num_kv_blocks for d in decode)
    too_long = (p + o > 400) | np.array([blocks_for(a + b - 1) > biggest for a, b in zip(prompts, outs, strict=True)])
    np.testing.assert_array_equal(res.status == REJECTED, too_long)
    done = res.status == FINISHED
    moved = done & (o > 1)
    assert (np.isfinite(rec.transfer_end) == moved).all()
    # tokens conserved on the decode pool: every output token after the first, but those a recompute samples
    dec = [x for x in r.replicas if x.idx in rec.decode_ids]
    recomputed = sum(x.preemptions for x in dec)
    decoded, wanted = sum(sum(x.timeline.decode) for x in dec), np.maximum(o[done] - 1, 0).sum()
    assert decoded <= wanted <= decoded + recomputed
    for x in r.replicas:
        assert x.peak_used <= x.capacity and x.kv.used == 0
    # the slot wait is part of decode_wait_s, comes after the landing, and the request finishes after it
    assert (rec.slot_wait >= 0).all() and (rec.decode_wait[moved] >= rec.slot_wait[moved] - 1e-15).all()
    assert (res.finish[moved] > rec.transfer_end[moved] + rec.slot_wait[moved]).all()
    assert (rec.slot_wait[~moved] == 0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_runs_in_closed_form_give_the_stepped_results_when_slots_bind(data):
    # one decode replica with room for every KV: placement cannot differ between the modes, so any difference
    # would be the slot limit's (several decode replicas: tests/test_decode_routing.py)
    n = data.draw(st.integers(1, 12))
    arrivals = sorted(data.draw(st.lists(st.floats(0, 0.2), min_size=n, max_size=n)))
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outs = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    decode = pool(
        max_num_seqs=data.draw(st.integers(1, 3)), max_batched_tokens=data.draw(st.sampled_from([None, 2, 64]))
    )
    topo = Disaggregation(pool(replicas=data.draw(st.integers(1, 2))), decode, LinkSpec(1.0, 0.0005, 0.0))
    fast = run(topo, arrivals, prompts, outs)
    exact = run(topo, arrivals, prompts, outs, exact=True)
    for name in ("first_token", "finish"):
        np.testing.assert_allclose(getattr(fast.results, name), getattr(exact.results, name), rtol=1e-9)
    for name in ("transfer_end", "decode_wait", "slot_wait"):
        np.testing.assert_allclose(
            getattr(fast.extra["pd"], name), getattr(exact.extra["pd"], name), rtol=1e-9, atol=1e-12
        )


def test_a_replica_whose_only_decoder_preempts_itself_admits_the_held_kv():
    # found by the property test above: two decode replicas of 25 blocks, max_num_seqs=1. On one of them the
    # running decoder needs a block that held (landed, waiting) KV has; it preempts itself and nothing runs:
    # the held requests must get the slot at once (no event would wake the replica), then the recomputation
    topo = Disaggregation(pool(), pool(25, replicas=2, max_num_seqs=1), LinkSpec(1.0, 0.0005, 0.0))
    prompts, outs = [1, 1, 1, 49, 1, 1, 209, 193, 81], [1, 2, 49, 2, 2, 2, 2, 2, 2]
    for exact in (False, True):
        r = run(topo, [0.0] * 9, prompts, outs, exact=exact)
        assert (r.results.status == FINISHED).all()
        dec = r.replicas[1:]
        assert sum(x.preemptions for x in dec) >= 1  # the case: a decoder preempted for the held KV's blocks
        assert all(x.peak_used <= x.capacity and x.kv.used == 0 for x in dec)
        assert r.extra["pd"].slot_wait.max() > 0
