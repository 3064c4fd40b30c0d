"""vLLM v1's async scheduling: an arrival during a busy step joins the step after the next one, by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.specs.frameworks import builtin_frameworks, framework, framework_from_entry
from test_engine import _random_trace, check_invariants, fast_and_exact, run, toy

CM = CostModel(TOY_MODEL, TOY_GPU, 1, TOY_EFF)


def step(n_tok: int, pairs: int, kv_read: int, n_seqs: int) -> float:
    return CM.iteration(n_tok, pairs, kv_read, n_seqs)[0]


def prefill_a() -> float:
    return step(100, 5050, 0, 1)  # A's 100-token prompt alone


def decode_a(k: int) -> float:
    """A's k-th decode step alone: 100 + k - 1 tokens cached, one new."""
    comp = 100 + k - 1
    return step(1, comp + 1, comp, 1)


def mixed(k: int) -> float:
    """A's k-th decode step beside B's whole 100-token prompt."""
    comp = 100 + k - 1
    return step(1 + 100, comp + 1 + 5050, comp, 2)


@pytest.mark.parametrize("exact", [False, True])
def test_an_arrival_during_a_decode_step_waits_one_more_step(exact):
    # A (100 prompt, 6 out) at 0; B (100, 2) halfway through A's first decode step. Synchronous: B's prompt
    # joins the step starting at that step's end. Async: that step was fixed when the first began, so B
    # joins the one after it; A's second decode step runs alone in between.
    p, d1 = prefill_a(), decode_a(1)
    t_b = p + d1 / 2
    sync = run([0.0, t_b], [100, 100], [6, 2], exact=exact).results
    asyn = run([0.0, t_b], [100, 100], [6, 2], exact=exact, async_scheduling=True).results
    b1 = p + d1
    assert sync.first_token[1] == pytest.approx(b1 + mixed(2), rel=1e-12)
    assert asyn.first_token[1] == pytest.approx(b1 + decode_a(2) + mixed(3), rel=1e-12)
    assert asyn.first_sched[1] == pytest.approx(b1 + decode_a(2), rel=1e-12)
    assert asyn.first_token[0] == sync.first_token[0] == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_an_arrival_during_a_prefill_step_waits_for_the_decode_step_after_it(exact):
    # B arrives during A's prefill: synchronous, it joins A's first decode step; async, A's first decode
    # step was fixed when the prefill began, so B joins the second
    p = prefill_a()
    sync = run([0.0, p / 2], [100, 100], [6, 2], exact=exact).results
    asyn = run([0.0, p / 2], [100, 100], [6, 2], exact=exact, async_scheduling=True).results
    assert sync.first_token[1] == pytest.approx(p + mixed(1), rel=1e-12)
    assert asyn.first_token[1] == pytest.approx(p + decode_a(1) + mixed(2), rel=1e-12)


def test_an_idle_engine_schedules_at_once():
    # nothing in flight: no step was fixed ahead, the arrival is scheduled when it comes
    for arrivals in ([0.0, 0.0], [0.0, 1.0]):  # together, and B long after A finished
        sync = run(arrivals, [100, 100], [3, 2]).results
        asyn = run(arrivals, [100, 100], [3, 2], async_scheduling=True).results
        assert np.array_equal(sync.first_token, asyn.first_token)
        assert np.array_equal(sync.finish, asyn.finish)


@pytest.mark.parametrize("seed", range(12))
def test_fast_equals_exact_and_invariants_hold(seed):
    tr = _random_trace(seed)
    cap = 40 + 20 * (seed % 4)  # small KV pools: preemption paths too
    fast, _ = fast_and_exact(
        tr,
        toy(async_scheduling=True, num_kv_blocks=cap),
        toy(async_scheduling=True, num_kv_blocks=cap, exact=True),
    )
    check_invariants(fast, capacity=cap)
    # the look-ahead never schedules a request before it arrives (a mean TTFT need not rise: under overload
    # the lagged requests batch together)
    ok = ~np.isnan(fast.results.first_sched)
    assert (fast.results.first_sched[ok] >= tr.arrival_s[ok]).all()


def test_the_vllm_014_profile_and_the_switch():
    fw = framework("vllm-0.14-server")
    assert fw.async_scheduling is True and fw.policy == "vllm-v1" and fw.serving_path == "server"
    assert "PR #27614" in fw.provenance["async_scheduling"]
    assert [n for n, f in builtin_frameworks().items() if f.async_scheduling] == ["vllm-0.14-server"]
    assert framework("vllm-v1").async_scheduling is False
    assert toy(async_scheduling=True).framework_profile().async_scheduling is True
    assert toy(framework="vllm-0.14-server", async_scheduling=False).framework_profile().async_scheduling is False
    assert fw.summary()["async_scheduling"] is True and "async_scheduling" not in framework("vllm-v1").summary()


@pytest.mark.parametrize("fw", ["vllm-0.5-server", "sglang-0.3-server", "trtllm-1.0-server"])
def test_refused_where_the_engine_has_no_async_scheduling(fw):
    with pytest.raises(KavierInputError, match="async scheduling is vLLM v1's") as exc:
        run([0.0], [10], [2], framework=fw, async_scheduling=True)
    assert exc.value.location == "async_scheduling"


def test_refused_with_prefill_decode_pools():
    with pytest.raises(KavierInputError, match="co-located replicas only") as exc:
        run([0.0], [10], [2], prefill_replicas=1, decode_replicas=1, async_scheduling=True)
    assert exc.value.location == "async_scheduling"


def test_a_catalogue_entry_checks_the_field():
    base = {"name": "x", "engine": "vllm", "versions": "1", "policy": "vllm-v1", "batch_defaults": "vllm-v1"}
    assert framework_from_entry(base | {"async_scheduling": True}).async_scheduling is True
    with pytest.raises(KavierInputError, match="true or false"):
        framework_from_entry(base | {"async_scheduling": "yes"})
    with pytest.raises(KavierInputError, match="not modelled for policy vllm-v0"):
        framework_from_entry(base | {"policy": "vllm-v0", "batch_defaults": "vllm-v0", "async_scheduling": True})


def test_cli_async_scheduling(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0,100,20\n0.03,50,5\n0.05,50,5\n")
    base = [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "llama-3-8b", "--gpu", "a100-80gb"]
    base += ["--trace", str(trace)]
    outs = {}
    for name, extra in (("sync", []), ("async", ["--async-scheduling"])):
        done = subprocess.run([*base, "--out", str(tmp_path / name), *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        outs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert outs["async"]["config"]["framework"]["async_scheduling"] is True
    assert "async_scheduling" not in outs["sync"]["config"]["framework"]
    assert outs["async"]["ttft_s"]["mean"] > outs["sync"]["ttft_s"]["mean"]
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "b"), "--framework", "vllm-0.5-server", "--async-scheduling"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--async-scheduling" in bad.stderr and "vLLM v1's" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()
