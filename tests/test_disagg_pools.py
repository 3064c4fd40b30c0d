"""Several pools per role and several KV links (engine/kv_link.py, engine/disaggregated.py): routing across
heterogeneous decode pools by hand, contention on one link only, link energy by hand, the single-pool
outputs unchanged, bad input, the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, needs_opendc, toy_pd_config, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.kv_link import DEFAULT_LINK_J_PER_BYTE, Disaggregation, LinkSpec, PairLink, Pool
from kavier_opendc.engine.outputs import summary_dict
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.engine.simulator import SimConfig, simulate

KV_BYTES = TOY_MODEL.kv_bytes_per_token  # 512
TOY_GPU2 = dataclasses.replace(TOY_GPU, name="toygpu2", mem_bandwidth_gbs=2000.0)


cfg = toy_pd_config


def pool(blocks: int, gpu=TOY_GPU, replicas: int = 1) -> Pool:
    return Pool(TOY_MODEL, gpu, replicas, 1, blocks)


# ------------------------------------------------------------------ routing by hand
def test_routing_across_two_decode_pools_of_different_gpus_by_hand():
    # five 320-token prompts (20 blocks each) at t=0, prefilled together on the one prefill replica (id 0),
    # then placed in order on the decode replica with the most free blocks, then the fewest requests, then the
    # lowest id: pool A (toygpu, 100 blocks, id 1), pool B (toygpu2, 120 blocks, id 2).
    # free (A, B) before each: (100,120) -> B; (100,100), requests 0 vs 1 -> A; (80,100) -> B;
    # (80,80), requests 1 vs 2 -> A; (60,80) -> B.
    topo = Disaggregation(pool(10_000), pool(100), LinkSpec(1.0, 0.001, 0.002), more_decode=(pool(120, TOY_GPU2),))
    c = cfg(topo)
    c.validate()
    r = simulate(make_trace([0.0] * 5, [320] * 5, [2] * 5), c, progress=False)
    rec = r.extra["pd"]
    assert rec.prefill_replica.tolist() == [0] * 5
    assert rec.decode_replica.tolist() == [2, 1, 2, 1, 2]
    # the transfers are one FIFO on the shared link, in placement order, from the prefill's end
    t1 = toy_time(1600, 5, 5 * 320 * 321 / 2, 1600)
    occ = 0.002 + 320 * KV_BYTES / 1e9
    for k in range(5):
        assert rec.transfer_end[k] == pytest.approx(t1 + (k + 1) * occ + 0.001, rel=1e-9)
    s = summary_dict(r)["disaggregation"]
    by_name = {p["name"]: p for p in s["pools"]}
    assert set(by_name) == {"prefill", "decode-0", "decode-1"}
    assert (by_name["decode-0"]["gpu"], by_name["decode-0"]["requests"], by_name["decode-0"]["replica_ids"]) == (
        "toygpu",
        2,
        [1],
    )
    assert (by_name["decode-1"]["gpu"], by_name["decode-1"]["requests"], by_name["decode-1"]["replica_ids"]) == (
        "toygpu2",
        3,
        [2],
    )
    # KV peak of B: its three transfers take 20 blocks each when placed (all at the prefill's end), then the
    # first to land decodes its second token into a 21st block before the others land: 61 of 120
    assert by_name["decode-1"]["kv_utilization_peak"] == 61 / 120
    assert by_name["decode-0"]["kv_utilization_peak"] == 41 / 100
    assert s["replica_pool"] == {"0": "prefill", "1": "decode-0", "2": "decode-1"}
    assert s["decode_pool"]["gpu"] == "toygpu+toygpu2" and s["decode_pool"]["replicas"] == 2
    # the faster GPU decodes the same work faster: its pool's busy time is lower per request
    assert by_name["decode-1"]["busy_s"] / 3 < by_name["decode-0"]["busy_s"] / 2


def test_prefill_pools_share_the_least_queued_prompt_tokens_rule():
    # two prefill pools of one replica each: 300, then 100 (pool 1 has 0 queued), then 50 (pool 1 has 100)
    topo = Disaggregation(pool(10_000), pool(10_000), LinkSpec(1.0, 0.0, 0.0), more_prefill=(pool(10_000),))
    r = simulate(make_trace([0.0, 0.0, 0.0], [300, 100, 50], [2, 2, 2]), cfg(topo), progress=False)
    assert r.extra["pd"].prefill_replica.tolist() == [0, 1, 1]


# ------------------------------------------------------------------ two links
def test_two_links_contention_on_one_link_only_by_hand():
    # three 100-token prompts prefilled together; decode pools A (id 1) and B (id 2), equal blocks: A, B, A.
    # A's transfers share the slow shared link (FIFO: the second takes twice as long); B's own fast link
    # carries one transfer, unqueued.
    slow = LinkSpec(0.01, 0.001, 0.0, "whole", 1e-9)
    fast = LinkSpec(1.0, 1e-6, 0.0005, "whole", 2e-9)
    topo = Disaggregation(
        pool(10_000), pool(10_000), slow, more_decode=(pool(10_000),), pair_links=(PairLink(0, 1, fast),)
    )
    r = simulate(make_trace([0.0, 0.0, 0.0], [100, 100, 100], [2, 2, 2]), cfg(topo), progress=False)
    rec = r.extra["pd"]
    assert rec.decode_replica.tolist() == [1, 2, 1]
    t1 = toy_time(300, 3, 3 * 5050, 300)
    nbytes = 100 * KV_BYTES
    one_slow = nbytes / 0.01e9
    assert rec.transfer_end[0] == pytest.approx(t1 + one_slow + 0.001, rel=1e-9)
    assert rec.transfer_end[2] == pytest.approx(t1 + 2 * one_slow + 0.001, rel=1e-9)
    assert rec.transfer_end[1] == pytest.approx(t1 + 0.0005 + nbytes / 1e9 + 1e-6, rel=1e-9)
    shared, own = rec.links
    assert (shared.transfers, own.transfers) == (2, 1)
    assert shared.busy_s == pytest.approx(2 * one_slow, rel=1e-12)
    # link energy by hand: bytes x J/byte per link
    s = summary_dict(r)
    assert s["kv_transfer"]["energy_j"] == pytest.approx(2 * nbytes * 1e-9 + nbytes * 2e-9, rel=1e-12)
    assert s["kv_transfer"]["bytes_moved"] == 3 * nbytes and s["kv_transfer"]["transfers"] == 3
    links = s["disaggregation"]["links"]
    assert [lk["pair"] for lk in links] == ["shared", "prefill->decode-1"]
    assert [lk["energy_j"] for lk in links] == pytest.approx([2 * nbytes * 1e-9, nbytes * 2e-9], rel=1e-12)


def test_link_energy_default_is_the_derived_figure():
    assert DEFAULT_LINK_J_PER_BYTE == pytest.approx(3.4e-10)
    topo = Disaggregation(pool(10_000), pool(10_000), LinkSpec(1.0, 0.0, 0.0))
    r = simulate(make_trace([0.0], [100], [3]), cfg(topo), progress=False)
    s = summary_dict(r)
    assert s["kv_transfer"]["energy_j"] == pytest.approx(100 * KV_BYTES * 3.4e-10, rel=1e-12)
    assert s["disaggregation"]["link"]["energy_j_per_byte"] == pytest.approx(3.4e-10)


# ------------------------------------------------------------------ invariants
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_pools_and_links_keep_the_invariants(data):
    n = data.draw(st.integers(1, 10))
    arrivals = sorted(data.draw(st.lists(st.floats(0, 0.3), min_size=n, max_size=n)))
    prompts = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outs = data.draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))

    def pools(k):
        return tuple(
            Pool(
                TOY_MODEL,
                data.draw(st.sampled_from([TOY_GPU, TOY_GPU2])),
                data.draw(st.integers(1, 2)),
                1,
                data.draw(st.integers(25, 60)),
            )
            for _ in range(k)
        )

    pre, dec = pools(data.draw(st.integers(1, 3))), pools(data.draw(st.integers(1, 3)))
    pairs = sorted({(data.draw(st.integers(0, len(pre) - 1)), data.draw(st.integers(0, len(dec) - 1)))})
    links = tuple(PairLink(a, b, LinkSpec(data.draw(st.sampled_from([0.001, 1.0])), 0.0, 0.001)) for a, b in pairs)
    shared = LinkSpec(data.draw(st.sampled_from([0.001, 0.1])), 0.0005, 0.0)
    topo = Disaggregation(pre[0], dec[0], shared, pre[1:], dec[1:], links[: data.draw(st.integers(0, len(links)))])
    c = cfg(topo, max_model_len=400, max_batched_tokens=data.draw(st.sampled_from([64, 2048])))
    c.validate()
    r = simulate(make_trace(arrivals, prompts, outs), c, progress=False)
    res, rec = r.results, r.extra["pd"]
    p, o = np.array(prompts), np.array(outs)
    # every request finished (or rejected: longer than the smallest replica's KV or max_model_len), once
    assert set(res.status.tolist()) <= {FINISHED, REJECTED}
    done = res.status == FINISHED
    # each request's replicas belong to their roles; a transfer iff it finished with more than one token
    assert set(rec.prefill_replica[done].tolist()) <= set(rec.prefill_ids)
    moved = done & (o > 1)
    assert set(rec.decode_replica[moved].tolist()) <= set(rec.decode_ids)
    assert (np.isfinite(rec.transfer_end) == moved).all()
    assert sum(lk.transfers for lk in rec.links) == moved.sum()
    assert sum(lk.bytes_moved for lk in rec.links) == (p[moved] * KV_BYTES).sum()
    # links never above their bandwidth: busy time at most the makespan, and KV never above capacity
    for lk in rec.links:
        assert lk.busy_s <= r.makespan_s + 1e-12
    for rep in r.replicas:
        assert rep.peak_used <= rep.capacity
    # outputs: each pool's requests add up to the role's
    s = summary_dict(r)["disaggregation"]
    for role in ("prefill", "decode"):
        assert sum(q["requests"] for q in s["pools"] if q["role"] == role) == s[f"{role}_pool"]["requests"]


# ------------------------------------------------------------------ single pool: unchanged
def test_a_single_pool_topology_runs_exactly_as_the_old_knobs():
    arrivals = [0.0, 0.01, 0.02, 0.05, 0.3]
    prompts, outs = [300, 100, 900, 50, 400], [5, 1, 40, 9, 30]
    old = SimConfig(
        model=TOY_MODEL,
        gpu=TOY_GPU,
        efficiency=TOY_EFF,
        num_kv_blocks=10_000,
        prefill_replicas=1,
        decode_replicas=2,
        kv_link_gbs=1.0,
        kv_link_latency_s=0.001,
        kv_link_setup_s=0.002,
    )
    topo = Disaggregation(pool(10_000), pool(10_000, replicas=2), LinkSpec(1.0, 0.001, 0.002))
    new = dataclasses.replace(old, prefill_replicas=None, decode_replicas=None, disaggregation=topo)
    a = simulate(make_trace(arrivals, prompts, outs), old, progress=False)
    b = simulate(make_trace(arrivals, prompts, outs), new, progress=False)
    for f in ("prefill_replica", "decode_replica", "transfer_start", "transfer_end", "decode_wait"):
        np.testing.assert_array_equal(getattr(a.extra["pd"], f), getattr(b.extra["pd"], f))
    np.testing.assert_array_equal(a.results.finish, b.results.finish)
    sa, sb = summary_dict(a), summary_dict(b)
    for s in (sa, sb):
        s.pop("engine")
    assert sa == sb
    # the sections before this change keep their keys and values (pools, links and kv_transfer are added)
    assert set(sa["disaggregation"]["prefill_pool"]) == {
        "replicas",
        "gpu",
        "tp",
        "replica_ids",
        "kv_capacity_blocks",
        "busy_fraction",
        "requests",
    }
    assert sa["disaggregation"]["links"][0]["pair"] == "shared" and len(sa["disaggregation"]["links"]) == 1


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "topo, where, words",
    [
        (
            Disaggregation(pool(10_000), pool(10_000), more_decode=(Pool(TOY_MODEL, TOY_GPU, 0, 1, 10_000),)),
            "disaggregation.decode_pools[1].replicas",
            "at least 1",
        ),
        (
            Disaggregation(pool(10_000), pool(10_000), pair_links=(PairLink(0, 1, LinkSpec()),)),
            "disaggregation.pair_links[0]",
            "does not exist",
        ),
        (
            Disaggregation(
                pool(10_000),
                pool(10_000),
                more_decode=(pool(10_000),),
                pair_links=(PairLink(0, 1, LinkSpec()), PairLink(0, 1, LinkSpec())),
            ),
            "disaggregation.pair_links[1]",
            "two links",
        ),
        (
            Disaggregation(
                pool(10_000), pool(10_000), more_decode=(pool(10_000),), pair_links=(PairLink(0, 1, LinkSpec(0.0)),)
            ),
            "disaggregation.pair_links[0].gbs",
            "positive",
        ),
        (
            Disaggregation(pool(10_000), pool(10_000), LinkSpec(energy_j_per_byte=-1.0)),
            "disaggregation.link.energy_j_per_byte",
            "energy per byte",
        ),
    ],
)
def test_bad_pools_and_links_are_refused_naming_the_field(topo, where, words):
    with pytest.raises(KavierInputError, match=words) as e:
        cfg(topo).validate()
    assert e.value.location == where


def test_a_small_second_pool_is_refused_naming_it():
    topo = Disaggregation(pool(10_000), pool(10_000), more_decode=(pool(10),))
    with pytest.raises(KavierInputError, match="cannot hold") as e:
        simulate(make_trace([0.0], [100], [3]), cfg(topo), progress=False)
    assert e.value.location == "disaggregation.decode_pools[1].num_kv_blocks"


# ------------------------------------------------------------------ CLI
def _kavier(tmp_path, *extra, out="out"):
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "arrival_time_s,num_input_tokens,num_output_tokens\n0.0,500,20\n0.0,800,30\n0.0,300,50\n0.0,200,10\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB"]
        + ["--trace", str(trace), "--out", str(tmp_path / out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_two_decode_pools_and_a_pair_link_end_to_end(tmp_path):
    r = _kavier(
        tmp_path,
        "--prefill-pool",
        "H100-SXM:1:1",
        "--decode-pool",
        "A100-80GB:1:1",
        "--decode-pool",
        "H100-SXM:1:1",
        "--kv-link-pair",
        "0:1:450:1e-6:0:1e-11",
    )
    assert r.returncode == 0, r.stderr
    assert "decode-0 1 x 1 x A100-80GB" in r.stdout and "decode-1 1 x 1 x H100-SXM" in r.stdout
    assert "prefill->decode-1 450 GB/s" in r.stdout
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    d = s["disaggregation"]
    assert [x["gpu"] for x in s["replicas"]] == ["H100-SXM", "A100-80GB", "H100-SXM"]
    assert d["replica_pool"] == {"0": "prefill", "1": "decode-0", "2": "decode-1"}
    assert sum(p["requests"] for p in d["pools"] if p["role"] == "decode") == 4
    own = d["links"][1]
    assert (own["gbs"], own["latency_s"], own["setup_s"], own["energy_j_per_byte"]) == (450, 1e-6, 0, 1e-11)
    assert d["links"][0]["transfers"] + own["transfers"] == 4 == s["kv_transfer"]["transfers"]
    total = sum(lk["bytes_moved"] * lk["energy_j_per_byte"] for lk in d["links"])
    assert s["kv_transfer"]["energy_j"] == pytest.approx(total, rel=1e-12)


def test_cli_single_pool_flags_and_pool_flags_write_the_same_files(tmp_path):
    a = _kavier(tmp_path, "--prefill-replicas", "1", "--decode-replicas", "2", "--decode-gpu", "H100-SXM", out="a")
    b = _kavier(tmp_path, "--prefill-pool", "A100-80GB:1:1", "--decode-pool", "H100-SXM:1:2", out="b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    for name in ("requests.parquet", "timeline.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    sa, sb = (json.loads((tmp_path / x / "summary.json").read_text()) for x in "ab")
    for s in (sa, sb):
        s.pop("engine")
    assert sa == sb


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--prefill-pool", "A100-80GB:1:1", "--decode-pool", "H100-SXM:1:0"), "--decode-pool H100-SXM:1:0: must be"),
        (("--prefill-pool", "A100-80GB:1:1", "--decode-pool", "NoSuchGPU:1:1"), "unknown GPU 'NoSuchGPU'"),
        (
            ("--prefill-pool", "A100-80GB:1:1", "--decode-pool", "A100-80GB:1:1", "--kv-link-pair", "0:1:100"),
            "--kv-link-pair 0:1:100: a link for the pair (prefill pool 0, decode pool 1), which does not exist",
        ),
        (("--prefill-pool", "A100-80GB:1", "--decode-pool", "A100-80GB:1:1"), "cannot read the pool"),
        (("--prefill-pool", "A100-80GB:1:1"), "needs a decode pool"),
        (
            ("--prefill-pool", "A100-80GB:1:1", "--prefill-replicas", "1", "--decode-replicas", "1"),
            "given twice",
        ),
    ],
)
def test_cli_bad_pools_are_clear_errors(tmp_path, extra, words):
    r = _kavier(tmp_path, *extra)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------ experiment files
NODE = {
    "cpu": {"cores": 16, "mhz": 2000},
    "memory_gib": 256,
    "count": 1,
    "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
}
TWO_DECODE_POOLS = {
    "prefill": {"replicas": 1, "gpu": "H100-SXM"},
    "decode": [{"replicas": 1}, {"replicas": 1, "gpu": "H100-SXM", "name": "decode-h100"}],
    "link": {"gbs": 25, "mode": "layerwise", "energy_j_per_byte": 1e-9},
    "links": [{"prefill": 0, "decode": 1, "gbs": 450, "latency_s": 1e-6, "energy_j_per_byte": 1e-11}],
}


def _experiment(tmp_path, dis, **over):
    from test_pipeline import tiny_experiment

    dc = {
        "start": "2022-01-01T12:00:00",
        "export_interval_s": 1,
        "hosts": [
            {"name": "a100-node", "gpu": "A100-80GB", "gpus_per_host": 1, **NODE},
            {"name": "h100-node", "gpu": "H100-SXM", "gpus_per_host": 2, **NODE},
        ],
    }
    return tiny_experiment(tmp_path, serving={"disaggregation": dis}, datacenter=dc, **over)


def test_an_experiment_declares_pool_lists_and_pair_links(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment

    exp = load_experiment(_experiment(tmp_path, TWO_DECODE_POOLS))
    assert [(g.name, g.gpu.name, g.replicas) for g in exp.groups] == [
        ("prefill", "H100-SXM", 1),
        ("decode-0", "A100-80GB", 1),
        ("decode-h100", "H100-SXM", 1),
    ]
    topo = exp.sim_config().topology()
    assert [p.gpu.name for p in topo.decode_pools] == ["A100-80GB", "H100-SXM"]
    assert topo.pool_name("decode", 1) == "decode-h100" and topo.pool_name("decode", 0) == "decode-0"
    (pl,) = topo.pair_links
    spec = pl.spec
    assert (pl.prefill, pl.decode, spec.gbs, spec.mode, spec.energy_j_per_byte) == (0, 1, 450, "layerwise", 1e-11)
    assert exp.gpu_counts() == {"A100-80GB": 1, "H100-SXM": 2}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"decode": [{"replicas": 1}, {"replicas": 0}]}, "serving.disaggregation.decode[1].replicas"),
        ({"decode": [{"replicas": 1}, {"replicas": 1, "gpu": "NoSuchGPU"}]}, "NoSuchGPU"),
        ({"links": [{"prefill": 1, "decode": 0, "gbs": 10}]}, "does not exist"),
    ],
)
def test_a_bad_pool_experiment_names_its_field(tmp_path, change, words):
    from kavier_opendc.experiments.experiment import load_experiment

    with pytest.raises(KavierInputError) as e:
        load_experiment(_experiment(tmp_path, {**TWO_DECODE_POOLS, **change})).sim_config().validate()
    assert words in str(e.value)


@needs_opendc
def test_a_two_decode_pool_experiment_runs_with_opendc(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    exp = load_experiment(_experiment(tmp_path, TWO_DECODE_POOLS))
    report = run_experiment(exp, tmp_path / "out", plots=False, quiet=True).report
    sus = report["sustainability"]
    hosts = {h["host_name"]: h for h in sus["per_host"]}
    pools = {p["pool"]: p for p in sus["per_pool"]}
    assert list(pools) == ["prefill", "decode-0", "decode-h100"]
    # the A100 pool is alone on its host type: its energy is that host's; the two H100 pools share H100 hosts
    # when OpenDC places them together, and are then named, never split
    assert pools["decode-0"]["hosts"] == ["a100-node"]
    assert pools["decode-0"]["energy_wh"] == hosts["a100-node"]["energy_wh"]
    for name in ("prefill", "decode-h100"):
        p = pools[name]
        assert p["energy_wh"] is not None or p["shared_hosts"] == ["h100-node"]
    # KV transfer energy: the engine's bytes x J/byte, beside OpenDC's energy (no network model there)
    summary = json.loads((tmp_path / "out" / "simulation" / "summary.json").read_text())
    links = summary["disaggregation"]["links"]
    by_hand = sum(lk["bytes_moved"] * lk["energy_j_per_byte"] for lk in links) / 3600
    assert [lk["energy_j_per_byte"] for lk in links] == [1e-9, 1e-11]
    assert sus["kv_transfer"]["energy_wh"] == pytest.approx(by_hand, rel=1e-12) and by_hand > 0
    assert sus["energy_wh_with_kv_transfer"] == pytest.approx(sus["energy_wh"] + by_hand, rel=1e-12)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| decode-h100 | 1 x 1 x H100-SXM |" in md and "KV transfers over the links (engine, not OpenDC)" in md


def test_a_pool_has_its_own_batching():
    # two 100-token prompts at t=0: one prefill iteration on a default prefill pool, two where the pool's
    # max_num_seqs is 1 (the second prompt's TTFT then ends with the second iteration)
    def run(pre: Pool):
        topo = Disaggregation(pre, pool(10_000), LinkSpec(1.0, 0.0, 0.0))
        return simulate(make_trace([0.0, 0.0], [100, 100], [2, 2]), cfg(topo), progress=False)

    both = run(pool(10_000))
    one = run(dataclasses.replace(pool(10_000), max_num_seqs=1, max_batched_tokens=512))
    t2 = toy_time(200, 2, 2 * 5050, 200)
    assert both.results.first_token.tolist() == pytest.approx([t2, t2], rel=1e-12)
    t1 = toy_time(100, 1, 5050, 100)
    assert one.results.first_token.tolist() == pytest.approx([t1, 2 * t1], rel=1e-12)
    (q,) = [p for p in summary_dict(one)["disaggregation"]["pools"] if p["role"] == "prefill"]
    assert (q["max_num_seqs"], q["max_batched_tokens"]) == (1, 512)
    with pytest.raises(KavierInputError) as e:
        cfg(Disaggregation(pool(10_000), dataclasses.replace(pool(10_000), max_num_seqs=0))).validate()
    assert e.value.location == "disaggregation.decode.max_num_seqs"


def test_an_experiment_pool_sets_its_own_batching(tmp_path):
    from kavier_opendc.experiments.experiment import load_experiment

    dis = {**TWO_DECODE_POOLS, "prefill": {"replicas": 1, "gpu": "H100-SXM", "max_batched_tokens": 1024}}
    topo = load_experiment(_experiment(tmp_path, dis)).sim_config().topology()
    assert (topo.prefill.max_batched_tokens, topo.prefill.max_num_seqs) == (1024, None)
    assert topo.decode_pools[1].max_batched_tokens is None
