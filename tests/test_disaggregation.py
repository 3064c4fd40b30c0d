"""Disaggregated prefill/decode serving (engine/disaggregated.py, engine/kv_link.py): hand-computed cases,
the link model, invariants over random traces, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, needs_opendc, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine import knobs
from kavier_opendc.engine import kv_manager as kv_manager_mod
from kavier_opendc.engine.kv_link import Disaggregation, KVLink, LinkSpec, Pool
from kavier_opendc.engine.kv_manager import blocks_for
from kavier_opendc.engine.outputs import PD_COLUMNS, REQUESTS_COLUMNS, SimulationOutput, summary_dict
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.engine.simulator import SimConfig, simulate

KV_BYTES = TOY_MODEL.kv_bytes_per_token  # 2 x 1 layer x 1 KV head x 128 x 2 bytes = 512


def pd(**kw) -> SimConfig:
    base = dict(
        model=TOY_MODEL,
        gpu=TOY_GPU,
        efficiency=TOY_EFF,
        num_kv_blocks=10_000,
        prefill_replicas=1,
        decode_replicas=1,
        kv_link_gbs=1.0,
        kv_link_latency_s=0.001,
        kv_link_setup_s=0.002,
    )
    base.update(kw)
    return SimConfig(**base)


def run(arrivals, prompts, outputs, **kw):
    return simulate(make_trace(arrivals, prompts, outputs), pd(**kw), progress=False)


def decode_steps(context: int, steps: int) -> float:
    """``steps`` decode iterations of one sequence whose KV holds ``context`` tokens at the first."""
    return sum(toy_time(1, 1, context + k + 1, context + k + 1) for k in range(steps))


# ------------------------------------------------------------------ by hand
def test_kv_bytes_per_token_is_layers_heads_dim_two_bytes():
    assert KV_BYTES == 2 * 1 * 1 * 128 * 2


def test_one_request_1p1d_by_hand():
    r = run([0.0], [100], [3])
    res, rec = r.results, r.extra["pd"]
    t1 = toy_time(100, 1, 5050, 100)  # the prefill, alone on the prefill replica
    transfer = 0.002 + 100 * KV_BYTES / 1e9 + 0.001  # setup + bytes / bandwidth + latency
    assert res.first_token[0] == pytest.approx(t1, rel=1e-12)  # TTFT: the prefill and nothing else
    assert rec.transfer_start[0] == pytest.approx(t1, rel=1e-12)
    assert rec.transfer_end[0] == pytest.approx(t1 + transfer, rel=1e-12)
    assert rec.decode_wait[0] == 0.0
    assert (rec.prefill_replica[0], rec.decode_replica[0], res.replica[0]) == (0, 1, 1)
    assert res.finish[0] == pytest.approx(t1 + transfer + decode_steps(100, 2), rel=1e-12)
    # the decode side is exactly a co-located decode of the same context
    co = simulate(
        make_trace([0.0], [100], [3]),
        dataclasses.replace(pd(), prefill_replicas=None, decode_replicas=None),
        progress=False,
    )
    assert res.finish[0] - rec.transfer_end[0] == pytest.approx(
        co.results.finish[0] - co.results.first_token[0], rel=1e-9
    )
    # the prefill replica never decodes, the decode replica never prefills
    pre, dec = r.replicas
    assert sum(pre.timeline.decode) == 0 and sum(pre.timeline.prefill) == 100
    assert sum(dec.timeline.prefill) == 0 and sum(dec.timeline.decode) == 2
    assert pre.kv.used == 0 and dec.kv.used == 0


def test_a_one_token_request_finishes_on_its_prefill_replica_without_transfer():
    r = run([0.0], [100], [1])
    res, rec = r.results, r.extra["pd"]
    assert res.finish[0] == res.first_token[0] == pytest.approx(toy_time(100, 1, 5050, 100), rel=1e-12)
    assert (res.replica[0], rec.decode_replica[0]) == (0, -1)
    assert np.isnan(rec.transfer_start[0]) and rec.link.transfers == 0


def test_two_concurrent_transfers_on_one_link_take_twice_as_long():
    # both prompts are prefilled in one iteration and handed off together; no setup, no latency
    r = run(
        [0.0, 0.0], [100, 100], [2, 2], decode_replicas=2, kv_link_gbs=0.01, kv_link_latency_s=0.0, kv_link_setup_s=0.0
    )
    rec = r.extra["pd"]
    t1 = toy_time(200, 2, 2 * 5050, 200)
    one = 100 * KV_BYTES / 0.01e9
    assert r.results.first_token == pytest.approx([t1, t1], rel=1e-12)
    assert rec.transfer_end[0] - t1 == pytest.approx(one, rel=1e-12)
    assert rec.transfer_end[1] - t1 == pytest.approx(2 * one, rel=1e-12)  # FIFO: the second waits for the first
    assert sorted(rec.decode_replica) == [1, 2]  # most free blocks: one each
    link = KVLink(LinkSpec(gbs=2.0, latency_s=0.0, setup_s=0.0))
    alone = KVLink(LinkSpec(gbs=2.0, latency_s=0.0, setup_s=0.0)).reserve(5.0, 4e9, 1)[2] - 5.0
    both = [link.reserve(5.0, 4e9, 1)[2] - 5.0 for _ in range(2)]
    assert alone == 2.0 and max(both) == 4.0 and link.busy_s == 4.0 and link.bytes_moved == 8e9


def test_layerwise_leaves_only_the_last_layers_share_after_prefill():
    # a link fast enough to keep up with the prefill: of L layers' KV, the first L-1 moved during it
    link = KVLink(LinkSpec(gbs=1.0, latency_s=0.5, setup_s=0.0, mode="layerwise"))
    start, end, landed = link.reserve(10.0, 4e9, 4, overlap_from=0.0)
    assert end == pytest.approx(10.0 + 1e9 / 1e9)  # the last layer's 1 GB after the prefill
    assert landed == pytest.approx(11.5) and start == pytest.approx(7.0)
    # a slow link (window of 1 s for 8 GB): (L-1)/L of what it carried in the window overlaps
    link = KVLink(LinkSpec(gbs=1.0, latency_s=0.0, setup_s=0.0, mode="layerwise"))
    _, end, _ = link.reserve(1.0, 8e9, 4, overlap_from=0.0)
    assert end == pytest.approx(1.0 + 8.0 - 0.75)
    # the link busy with another transfer until 0.5: only the idle part of the window counts
    link = KVLink(LinkSpec(gbs=1.0, latency_s=0.0, setup_s=0.0, mode="layerwise"))
    link.reserve(0.0, 0.5e9, 1)
    start, end, _ = link.reserve(1.0, 8e9, 2, overlap_from=0.0)
    assert start >= 0.5 and end == pytest.approx(1.0 + 8.0 - 0.25)
    # whole mode, or a request that waited for a decode replica: no overlap
    whole = KVLink(LinkSpec(gbs=1.0, latency_s=0.0, setup_s=0.0, mode="whole"))
    assert whole.reserve(10.0, 4e9, 4, overlap_from=0.0)[1] == 14.0


def test_layerwise_in_a_run_by_hand():
    model = dataclasses.replace(TOY_MODEL, name="toy4", num_layers=4)
    whole = simulate(make_trace([0.0], [100], [3]), pd(model=model), progress=False)
    lw = simulate(make_trace([0.0], [100], [3]), pd(model=model, kv_transfer_mode="layerwise"), progress=False)
    t1 = whole.results.first_token[0]
    assert lw.results.first_token[0] == t1
    b = 100 * model.kv_bytes_per_token / 1e9  # seconds of the whole transfer on the link
    assert t1 - 0.002 > b  # the link keeps up with the prefill
    assert whole.extra["pd"].transfer_end[0] == pytest.approx(t1 + 0.002 + b + 0.001, rel=1e-12)
    assert lw.extra["pd"].transfer_end[0] == pytest.approx(t1 + b / 4 + 0.001, rel=1e-12)


def test_decode_pool_without_free_blocks_delays_admission_by_the_computed_time():
    # decode replica: 10 blocks. A (100 + 60 tokens) needs all 10 by its end; B's 7 prompt blocks must wait
    topo = Disaggregation(
        Pool(TOY_MODEL, TOY_GPU, 1, 1, 10_000),
        Pool(TOY_MODEL, TOY_GPU, 1, 1, 10),
        LinkSpec(gbs=1.0, latency_s=0.001, setup_s=0.0),
    )
    cfg = SimConfig(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, max_model_len=160, disaggregation=topo)
    r = simulate(make_trace([0.0, 0.0], [100, 100], [60, 2]), cfg, progress=False)
    res, rec = r.results, r.extra["pd"]
    t1 = toy_time(200, 2, 2 * 5050, 200)  # both prefilled in one iteration
    move = 100 * KV_BYTES / 1e9 + 0.001
    finish_a = t1 + move + decode_steps(100, 59)
    assert res.finish[0] == pytest.approx(finish_a, rel=1e-9)
    assert rec.decode_wait[0] == 0.0
    assert rec.decode_wait[1] == pytest.approx(finish_a - t1, rel=1e-9)  # until A's blocks are freed
    assert rec.transfer_start[1] == pytest.approx(finish_a, rel=1e-9)
    assert res.finish[1] == pytest.approx(finish_a + move + decode_steps(100, 1), rel=1e-9)
    dec = r.replicas[1]
    assert dec.peak_used <= dec.capacity == 10 and dec.preemptions == 0  # never over-committed
    # the prefill replica held B's blocks until B's transfer completed
    assert r.replicas[0].kv.used == 0 and r.replicas[0].peak_used == 14


def test_decode_fast_path_equals_exact_mode():
    arrivals = [0.0, 0.001, 0.002, 0.05, 0.3]
    prompts, outs = [100, 37, 250, 16, 80], [40, 3, 90, 1, 200]
    fast = run(arrivals, prompts, outs, decode_replicas=2, num_kv_blocks=40, max_model_len=640)
    exact = run(arrivals, prompts, outs, decode_replicas=2, num_kv_blocks=40, max_model_len=640, exact=True)
    for name in ("first_token", "finish"):
        np.testing.assert_allclose(getattr(fast.results, name), getattr(exact.results, name), rtol=1e-9)
    np.testing.assert_array_equal(fast.extra["pd"].decode_replica, exact.extra["pd"].decode_replica)
    assert sum(r.iterations for r in fast.replicas) == sum(r.iterations for r in exact.replicas)


# ------------------------------------------------------------------ invariants
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_traces_keep_the_invariants(data):
    n = data.draw(st.integers(1, 12))
    arrivals = sorted(data.draw(st.lists(st.floats(0, 0.5), min_size=n, max_size=n)))
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outs = data.draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
    blocks = data.draw(st.integers(20, 40))
    kw = dict(
        prefill_replicas=data.draw(st.integers(1, 2)),
        decode_replicas=data.draw(st.integers(1, 2)),
        kv_link_gbs=data.draw(st.sampled_from([0.001, 0.1, 10.0])),
        kv_link_setup_s=data.draw(st.sampled_from([0.0, 0.001])),
        kv_transfer_mode=data.draw(st.sampled_from(["whole", "layerwise"])),
        max_batched_tokens=data.draw(st.sampled_from([64, 2048])),
        num_kv_blocks=blocks,
        max_model_len=blocks * 16,
        exact=data.draw(st.booleans()),
    )
    model = TOY_MODEL if kw["kv_transfer_mode"] == "whole" else dataclasses.replace(TOY_MODEL, num_layers=3)
    # KV never above capacity, after every door that adds blocks (peak_used is noted at scheduling points only)
    kv_manager_mod.CHECK_INVARIANTS = True
    try:
        r = run(arrivals, prompts, outs, model=model, **kw)
    finally:
        kv_manager_mod.CHECK_INVARIANTS = False
    again = run(arrivals, prompts, outs, model=model, **kw)
    res, rec = r.results, r.extra["pd"]
    p, o = np.array(prompts), np.array(outs)
    # every request finished or rejected, exactly once; the same inputs give the same outputs
    assert set(res.status.tolist()) <= {FINISHED, REJECTED}
    np.testing.assert_array_equal(res.status == REJECTED, (p + o > blocks * 16))
    np.testing.assert_array_equal(res.finish, again.results.finish)
    np.testing.assert_array_equal(rec.transfer_end, again.extra["pd"].transfer_end)
    done = res.status == FINISHED
    pre = [x for x in r.replicas if x.idx in rec.prefill_ids]
    dec = [x for x in r.replicas if x.idx in rec.decode_ids]
    # tokens conserved: prompts prefilled once on the prefill pool (more when one was preempted, its blocks
    # being held by prefilled requests waiting for the link), every output token after the first decoded on
    # the decode pool, but those a recompute after preemption samples
    prefilled = sum(sum(x.timeline.prefill) for x in pre)
    if sum(x.preemptions for x in pre) == 0:
        assert prefilled == p[done].sum()
    else:
        assert prefilled > p[done].sum()
    assert sum(sum(x.timeline.decode) for x in pre) == 0
    recomputed = sum(x.preemptions for x in dec)
    decoded, wanted = sum(sum(x.timeline.decode) for x in dec), np.maximum(o[done] - 1, 0).sum()
    assert decoded <= wanted <= decoded + recomputed  # a recompute samples at most one token per preemption
    if recomputed == 0:
        assert decoded == wanted and sum(sum(x.timeline.prefill) for x in dec) == 0
    # KV never above capacity, everything released at the end
    for x in r.replicas:
        assert x.peak_used <= x.capacity and x.kv.used == 0
        assert max(x.timeline.kv, default=0.0) <= 1.0 + 1e-12
    # the link never carries more than its bandwidth: occupancy intervals do not overlap
    moved = np.flatnonzero(np.isfinite(rec.transfer_start))
    assert len(moved) == rec.link.transfers == int((done & (o > 1)).sum())
    occupancy = kw["kv_link_setup_s"] + p[moved] * model.kv_bytes_per_token / (kw["kv_link_gbs"] * 1e9)
    order = np.argsort(rec.transfer_start[moved], kind="stable")
    starts, ends = rec.transfer_start[moved][order], (rec.transfer_start[moved] + occupancy)[order]
    assert (starts[1:] >= ends[:-1] - 1e-9).all()
    np.testing.assert_allclose(
        rec.transfer_end[moved] - rec.transfer_start[moved], occupancy + 0.001, rtol=1e-9, atol=1e-12
    )
    # time never goes backwards
    a = np.array(arrivals)
    assert (res.first_sched[done] >= a[done]).all() and (res.first_token[done] >= res.first_sched[done]).all()
    assert (res.finish[done] >= res.first_token[done]).all()
    assert (rec.transfer_start[moved] >= res.first_sched[moved] - 1e-12).all()
    assert (rec.transfer_end[moved] >= res.first_token[moved]).all()
    assert (res.finish[moved] > rec.transfer_end[moved]).all() and (rec.decode_wait[moved] >= 0).all()
    for x in r.replicas:
        s, e = np.array(x.timeline.start), np.array(x.timeline.end)
        assert (e >= s).all() and (s[1:] >= e[:-1] - 1e-12).all()


def test_prefix_caching_works_on_the_prefill_pool():
    # block policy (hash_ids of 512-token units): the second request reuses the first's cached prompt on the
    # prefill replica, which keeps it as evictable after the first's KV has left; the decode pool caches nothing
    from kavier_opendc.workload.trace import Trace

    tr = Trace(
        np.array([0.0, 10.0, 20.0]),
        np.array([1024, 1024, 1024]),
        np.array([5, 5, 5]),
        source="test",
        format="kavier",
        hash_ids=[[1, 2], [1, 2], [3, 4]],
    )
    r = simulate(tr, pd(prefix_cache="block"), progress=False)
    co = simulate(
        tr, dataclasses.replace(pd(prefix_cache="block"), prefill_replicas=None, decode_replicas=None), progress=False
    )
    assert r.results.cached.tolist() == co.results.cached.tolist() == [0, 512, 0]
    np.testing.assert_allclose(r.results.first_token, co.results.first_token, rtol=1e-12)  # TTFT: same prefill
    pre, dec = r.replicas
    assert pre.pc is not None and dec.pc is None and pre.kv.used == 0 and dec.kv.used == 0
    assert sum(pre.timeline.prefill) == 1024 + 512 + 1024
    # the 'prefill' prompt cache and the 'full' one (an answer served from the cache never reaches a GPU)
    tr = Trace(
        np.array([0.0, 10.0]),
        np.array([500, 500]),
        np.array([20, 20]),
        source="test",
        format="kavier",
        hash_ids=[[1], [1]],
    )
    assert simulate(tr, pd(prefix_cache="prefill"), progress=False).results.cached.tolist() == [0, 499]
    full = simulate(tr, pd(prefix_cache="full"), progress=False)
    assert full.results.finish[1] == 10.0 and full.extra["pd"].link.transfers == 1


# ------------------------------------------------------------------ outputs
def test_outputs_have_the_pd_columns_and_sections_only_in_pd_runs():
    r = run([0.0, 0.1], [100, 50], [3, 1])
    out = SimulationOutput.from_result(r)
    for name in PD_COLUMNS:
        assert out.requests.schema.field(name).type == REQUESTS_COLUMNS[name][0], name
    assert out.requests.column("decode_replica").to_pylist() == [1, -1]
    s = summary_dict(r)["disaggregation"]
    assert s["prefill_pool"]["requests"] == 2 and s["decode_pool"]["requests"] == 1
    assert s["prefill_pool"]["replica_ids"] == [0] and s["decode_pool"]["replica_ids"] == [1]
    assert s["link"]["bytes_moved"] == 100 * KV_BYTES and s["link"]["transfers"] == 1
    assert s["link"]["transfer_s_mean"] == pytest.approx(0.002 + 100 * KV_BYTES / 1e9 + 0.001, rel=1e-9)
    assert s["link"]["exposed_s_mean"] == pytest.approx(s["link"]["transfer_s_mean"], rel=1e-9)  # whole mode
    assert set(out.timeline.column("replica").to_pylist()) == {0, 1}
    # the replicas group after group, as the OpenDC export places them: the prefill pool, then the decode pool
    groups = summary_dict(r)["config"]["replica_groups"]
    assert [(g["gpu"], g["replicas"]) for g in groups] == [("toygpu", 1), ("toygpu", 1)]
    wide = simulate(make_trace([0.0], [100], [3]), pd(decode_replicas=3, decode_tp=1, prefill_tp=1), progress=False)
    assert [g["replicas"] for g in summary_dict(wide)["config"]["replica_groups"]] == [1, 3]
    assert summary_dict(wide)["config"]["replicas"] == 4
    co = simulate(
        make_trace([0.0], [100], [3]),
        dataclasses.replace(pd(), prefill_replicas=None, decode_replicas=None),
        progress=False,
    )
    assert "pd" not in co.extra and "disaggregation" not in summary_dict(co)
    assert not set(PD_COLUMNS) & set(SimulationOutput.from_result(co).requests.column_names)


# ------------------------------------------------------------------ bad input
def _error(cfg: SimConfig, trace=None) -> KavierInputError:
    with pytest.raises(KavierInputError) as exc:
        simulate(trace or make_trace([0.0], [100], [3]), cfg, progress=False)
    return exc.value


def test_decode_gpus_that_cannot_hold_one_request_are_refused():
    tiny = dataclasses.replace(TOY_GPU, name="tiny", memory_gib=2.5)  # 2 GB of weights: a few KV blocks left
    exc = _error(pd(num_kv_blocks=None, decode_gpu=tiny))
    assert exc.location == "decode_gpu/decode_tp" and "cannot hold" in str(exc)
    assert knobs.flag_of(exc.location) == "--decode-gpu/--decode-tp"
    exc = _error(pd(num_kv_blocks=4, max_model_len=100))
    assert exc.location == "num_kv_blocks"


def test_zero_link_bandwidth_and_half_a_topology_are_refused():
    exc = _error(pd(kv_link_gbs=0.0))
    assert exc.location == "kv_link_gbs" and knobs.flag_of(exc.location) == "--kv-link-gbs"
    assert _error(pd(decode_replicas=None)).location == "decode_replicas"
    assert _error(pd(kv_transfer_mode="sideways")).location == "kv_transfer_mode"
    assert _error(pd(framework="vllm-0.5-server")).location == "framework"
    assert _error(pd(kv_cache=False)).location == "kv_cache"
    assert _error(pd(decode_gpu="H100-SXM")).location == "decode_gpu"  # a name, not a catalogue GPU
    assert _error(pd(prefill_tp=3)).location == "prefill_tp"  # 1 attention head: tp 1 only


def test_pools_with_another_model_are_refused():
    other = dataclasses.replace(TOY_MODEL, name="other")
    topo = Disaggregation(Pool(TOY_MODEL, TOY_GPU), Pool(other, TOY_GPU), LinkSpec())
    exc = _error(SimConfig(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, disaggregation=topo))
    assert exc.location == "disaggregation.decode.model" and "other" in str(exc)
    topo = Disaggregation(Pool(TOY_MODEL, TOY_GPU), Pool(TOY_MODEL, TOY_GPU), LinkSpec(gbs=-1.0))
    exc = _error(SimConfig(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, disaggregation=topo))
    assert exc.location == "disaggregation.link.gbs"


def test_branching_prompts_are_refused():
    tr = make_trace([0.0], [100], [3])
    tr.n = np.array([2])
    assert _error(pd(), tr).location == "n"


def test_requests_that_no_pool_can_hold_are_rejected():
    r = run([0.0, 0.0], [100, 300], [3, 100], num_kv_blocks=20, max_model_len=320)
    assert r.results.status.tolist() == [FINISHED, REJECTED]
    assert blocks_for(300 + 100 - 1) > 20


# ------------------------------------------------------------------ kavier simulate
def test_cli_runs_a_disaggregated_simulation_and_names_its_flags(tmp_path):
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0.0,500,20\n0.1,800,1\n0.2,300,50\n")
    out = tmp_path / "out"

    def kavier(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "kavier_opendc.cli",
                "simulate",
                "--model",
                "Llama-3-8B",
                "--gpu",
                "A100-80GB",
                "--trace",
                str(trace),
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = kavier(
        "--prefill-replicas",
        "1",
        "--decode-replicas",
        "2",
        "--decode-gpu",
        "H100-SXM",
        "--kv-transfer-mode",
        "layerwise",
    )
    assert r.returncode == 0, r.stderr
    assert "disaggregated prefill 1 x 1 x A100-80GB" in r.stdout and "decode 2 x 1 x H100-SXM" in r.stdout
    req = pq.read_table(out / "requests.parquet").to_pandas()
    assert req["prefill_replica"].tolist() == [0, 0, 0] and req["decode_replica"].tolist()[1] == -1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["disaggregation"]["link"]["transfers"] == 2
    assert [x["gpu"] for x in summary["replicas"]] == ["A100-80GB", "H100-SXM", "H100-SXM"]
    r = kavier("--prefill-replicas", "1", "--decode-replicas", "1", "--kv-link-gbs", "0")
    assert r.returncode != 0 and "--kv-link-gbs" in r.stderr
    r = kavier("--prefill-replicas", "1")
    assert r.returncode != 0 and "--decode-replicas" in r.stderr


# ----------------------------------------------------------------------------- experiment files


def _pd_experiment(tmp_path, **serving):
    from test_pipeline import tiny_experiment

    dis = {
        "prefill": {"replicas": 1},
        "decode": {"replicas": 1, "num_kv_blocks": 3000},
        "link": {"gbs": 50, "latency_s": 2e-5, "mode": "layerwise"},
    }
    return tiny_experiment(
        tmp_path, serving={"router": "least-kv", "prefix_cache": "block", "disaggregation": dis, **serving}
    )


def test_an_experiment_declares_the_pools_and_the_link(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment

    exp = load_experiment(_pd_experiment(tmp_path))
    assert [(g.name, g.gpu.name, g.replicas, g.tp) for g in exp.groups] == [
        ("prefill", "A100-80GB", 1, 1),
        ("decode", "A100-80GB", 1, 1),
    ]
    topo = exp.sim_config().topology()
    assert (topo.prefill.replicas, topo.decode.replicas, topo.decode.num_kv_blocks) == (1, 1, 3000)
    assert (topo.link.gbs, topo.link.latency_s, topo.link.setup_s, topo.link.mode) == (50, 2e-5, 0.0, "layerwise")
    assert exp.gpu_counts() == {"A100-80GB": 2}


def test_an_experiment_runs_the_same_simulation_as_the_cli_flags(tmp_path):
    import subprocess
    import sys

    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    exp = load_experiment(_pd_experiment(tmp_path))
    run_experiment(exp, tmp_path / "run", opendc=False, plots=False, quiet=True)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "simulate",
            "--model",
            "Llama-3-8B",
            "--gpu",
            "A100-80GB",
            "--trace",
            str(tmp_path / "workload.yaml"),
            "--seed",
            "7",
            "--router",
            "least-kv",
            "--prefix-cache",
            "block",
            "--prefill-replicas",
            "1",
            "--decode-replicas",
            "1",
            "--kv-link-gbs",
            "50",
            "--kv-link-latency-s",
            "2e-5",
            "--kv-transfer-mode",
            "layerwise",
            "--out",
            str(tmp_path / "cli"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    # the experiment's decode pool has its own KV capacity (3,000 blocks, never full here): the same timings
    assert r.returncode == 0, r.stderr
    a = pandas.read_parquet(tmp_path / "run" / "simulation" / "requests.parquet")
    b = pandas.read_parquet(tmp_path / "cli" / "requests.parquet")
    assert len(a) == len(b) == 60 and (a["status"] == "finished").all()
    assert {"prefill_replica", "decode_replica", "transfer_start_s", "transfer_end_s", "decode_wait_s"} <= set(a)
    assert np.allclose(a["ttft_s"], b["ttft_s"]) and np.allclose(a["transfer_end_s"], b["transfer_end_s"])
    assert (a["prefill_replica"] == 0).all() and (a["decode_replica"] == 1).all()
    summary = json.loads((tmp_path / "run" / "simulation" / "summary.json").read_text())
    assert [g["gpu"] for g in summary["config"]["replica_groups"]] == ["A100-80GB", "A100-80GB"]


@pytest.mark.parametrize(
    "serving, path, words",
    [
        ({"replicas": 2}, ("serving", "replicas"), "not allowed together with serving.disaggregation"),
        (
            {"disaggregation": {"prefill": {"replicas": 1, "tp": 3}, "decode": {"replicas": 1}}},
            ("serving", "disaggregation", "prefill", "tp"),
            "cannot be split evenly over 3 GPUs",
        ),
        (
            {"disaggregation": {"prefill": {"replicas": 1, "gpu": "NoSuchGPU"}, "decode": {"replicas": 1}}},
            ("serving", "disaggregation", "prefill", "gpu"),
            "unknown GPU",
        ),
        (
            {"disaggregation": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}, "link": {"gbs": 0}}},
            ("serving", "disaggregation", "link", "gbs"),
            "0",
        ),
    ],
)
def test_a_bad_disaggregated_experiment_names_its_field(tmp_path, serving, path, words):
    from kavier_opendc.experiments.experiment import experiment_problems
    from test_pipeline import tiny_experiment

    doc = yaml.safe_load(tiny_experiment(tmp_path).read_text())
    doc["serving"] = {**_pd_doc_serving(), **serving}
    problems, exp = experiment_problems(doc, base_dir=tmp_path, opendc=False)
    assert exp is None
    assert any(p == path and words in m for p, m in problems), problems


def _pd_doc_serving() -> dict:
    return {"disaggregation": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}


@needs_opendc
def test_a_disaggregated_experiment_gets_each_pools_energy_from_opendc(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    node = {
        "cpu": {"cores": 16, "mhz": 2000},
        "memory_gib": 256,
        "count": 1,
        "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
    }
    dc = {
        "start": "2022-01-01T12:00:00",
        "export_interval_s": 1,
        "hosts": [
            {"name": "prefill-node", "gpu": "A100-80GB", "gpus_per_host": 1, **node},
            {"name": "decode-node", "gpu": "H100-SXM", "gpus_per_host": 2, **node},
        ],
    }
    dis = {"prefill": {"replicas": 1}, "decode": {"replicas": 2, "gpu": "H100-SXM"}, "link": {"mode": "layerwise"}}
    from test_pipeline import tiny_experiment

    exp = load_experiment(tiny_experiment(tmp_path, serving={"disaggregation": dis}, datacenter=dc))
    assert exp.gpu_counts() == {"A100-80GB": 1, "H100-SXM": 2}
    report = run_experiment(exp, tmp_path / "out", plots=False, quiet=True).report
    hosts = {h["host_name"]: h for h in report["sustainability"]["per_host"]}
    assert set(hosts) == {"prefill-node", "decode-node"}
    assert (hosts["prefill-node"]["gpus"], hosts["decode-node"]["gpus"]) == (1, 2)
    # each pool's GPUs draw between their catalogue idle and maximum power (A100-80GB 60-400 W, H100-SXM
    # 70-700 W), above idle since they serve; the total is the pools' sum
    for name, n_gpus, idle_w, max_w in (("prefill-node", 1, 60.0, 400.0), ("decode-node", 2, 70.0, 700.0)):
        hours = hosts[name]["duration_s"] / 3600
        assert n_gpus * idle_w * hours * 1.01 < hosts[name]["gpu_energy_wh"] < n_gpus * max_w * hours
    total = report["sustainability"]["energy_wh"]
    assert abs(sum(h["energy_wh"] for h in hosts.values()) - total) <= 1e-6 * total + 1e-6
    assert report["performance"]["num_finished"] == 60
    pools = {p["pool"]: p for p in report["sustainability"]["per_pool"]}
    assert pools["prefill"]["hosts"] == ["prefill-node"] and pools["decode"]["hosts"] == ["decode-node"]
    assert pools["decode"]["energy_wh"] == hosts["decode-node"]["energy_wh"]
    assert "## Disaggregated pools" in (tmp_path / "out" / "report.md").read_text()


def test_pool_energy_is_its_hosts_and_never_a_guessed_share_of_a_shared_host():
    from kavier_opendc.reports.efficiency import pool_energy

    dis = {
        "prefill_pool": {"replica_ids": [0], "gpu": "A", "replicas": 1, "tp": 1},
        "decode_pool": {"replica_ids": [1, 2], "gpu": "B", "replicas": 2, "tp": 1},
    }
    tasks = [{"task_id": i, "replica": i} for i in range(3)]
    per_host = [
        {"host_name": "a", "energy_wh": 10.0, "gpu_energy_wh": 4.0},
        {"host_name": "b", "energy_wh": 30.0, "gpu_energy_wh": 20.0},
    ]
    own = pool_energy(dis, tasks, {"0": "a", "1": "b", "2": "b"}, per_host)
    assert [(p["pool"], p["hosts"], p["energy_wh"], p["gpu_energy_wh"]) for p in own] == [
        ("prefill", ["a"], 10.0, 4.0),
        ("decode", ["b"], 30.0, 20.0),
    ]
    shared = pool_energy(dis, tasks, {"0": "b", "1": "b", "2": "a"}, per_host)  # OpenDC put replica 0 on b
    assert [(p["energy_wh"], p["shared_hosts"]) for p in shared] == [(None, ["b"]), (None, ["b"])]
