"""Closed-loop clients (engine/closed_loop.py): by hand, invariants, fast == exact, the CLI, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.outputs import summary_dict
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.workload.synthetic import load_synthetic_spec
from kavier_opendc.workload.trace import ClosedLoop


def toy(**kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=10_000)
    base.update(kw)
    return SimConfig(**base)


def run(prompts, outputs, arrivals=None, **kw):
    arrivals = [0.0] * len(prompts) if arrivals is None else arrivals
    return simulate(make_trace(arrivals, prompts, outputs), toy(**kw), progress=False)


def alone(p: int, o: int) -> float:
    """Seconds one request of p prompt and o output tokens takes alone on the toy replica, by hand."""
    t = toy_time(p, 1, p * (p + 1) / 2, p)  # the prefill samples the first token
    for k in range(o - 1):  # each decode attends the cached context and writes one token
        ctx = p + k
        t += toy_time(1, 1, ctx + 1, ctx + 1)
    return t


# ------------------------------------------------------------------ by hand
def test_one_client_sends_each_request_when_the_previous_ends():
    r = run([100] * 4, [3] * 4, concurrency=1)
    a, f = r.trace.arrival_s, r.results.finish
    one = alone(100, 3)
    assert one == pytest.approx(0.00900018203136, rel=1e-12)  # test_engine's hand-worked single request
    assert a[0] == 0.0
    assert np.array_equal(a[1:], f[:-1])  # exactly the previous finish: the replica idles, starts at once
    assert np.allclose(f, one * np.arange(1, 5), rtol=1e-12)
    assert np.array_equal(r.results.first_sched, a)  # never queued


def test_two_clients_batched_by_hand():
    # both start at 0: one prefill of 200 tokens, then one decode of 2 sequences; the next two arrive
    # together at that finish, on an idle replica, and repeat it exactly
    t1 = toy_time(200, 2, 2 * 5050, 200) + toy_time(2, 2, 202, 202)
    r = run([100] * 4, [2] * 4, concurrency=2)
    a, f = r.trace.arrival_s, r.results.finish
    assert np.array_equal(a[:2], [0.0, 0.0])
    assert np.allclose(f[:2], t1, rtol=1e-12)
    assert np.array_equal(a[2:], f[:2])
    assert np.allclose(f[2:], 2 * t1, rtol=1e-12)


def test_arrival_at_a_boundary_joins_the_next_iteration():
    # request 0 ends after 3 tokens while request 1 still decodes: request 2 arrives at that boundary, after
    # the iteration there was formed (it is caused by it), and starts at the next boundary
    r = run([100, 100, 50], [3, 40, 2], concurrency=2)
    a, res = r.trace.arrival_s, r.results
    assert a[2] == res.finish[0]
    step = toy_time(1, 1, 103, 103)  # request 1 decodes alone then: 102 tokens cached (100 + 2 generated) + 1
    assert res.first_sched[2] == pytest.approx(a[2] + step, rel=1e-12)
    # the same, stepping every iteration
    ex = run([100, 100, 50], [3, 40, 2], concurrency=2, exact=True)
    assert np.array_equal(ex.trace.arrival_s, a)
    assert np.array_equal(ex.results.first_sched, res.first_sched)


def test_think_time_and_rejections_free_the_client_at_once():
    # request 1 is longer than max_model_len: refused on arrival, its client sends request 2 (think 0.5 s later)
    r = run([100, 900, 100], [3, 200, 3], concurrency=1, think_time_s=0.5, max_model_len=1000)
    a, res = r.trace.arrival_s, r.results
    assert list(res.status) == [FINISHED, REJECTED, FINISHED]
    assert a[1] == res.finish[0] + 0.5
    assert a[2] == a[1] + 0.5
    assert res.finish[2] - a[2] == pytest.approx(alone(100, 3), rel=1e-12)


def test_trace_times_are_replaced_from_the_first():
    r = run([100] * 3, [3] * 3, arrivals=[5.0, 100.0, 200.0], concurrency=1)
    assert r.trace.arrival_s[0] == 5.0
    assert np.allclose(r.trace.arrival_s, 5.0 + alone(100, 3) * np.arange(3), rtol=1e-12)
    s = summary_dict(r)
    assert s["arrival"] == {"process": "closed-loop", "concurrency": 1, "think_time_s": 0.0}
    assert s["ttft_s"]["max"] == pytest.approx(toy_time(100, 1, 5050, 100), rel=1e-12)


def test_open_loop_summary_has_no_arrival_section():
    assert "arrival" not in summary_dict(run([100], [3], arrivals=[0.0]))


# ------------------------------------------------------------------ invariants
def _check_closed_loop(r, c: int, think: float):
    a, res = r.trace.arrival_s, r.results
    n = len(a)
    assert np.isin(res.status, [FINISHED, REJECTED]).all()  # no request lost
    assert (np.diff(a) >= 0).all()
    assert np.isfinite(a).all()
    ends = np.where(res.status == FINISHED, res.finish, a)  # refused requests end on arrival
    assert (ends >= a).all()
    # the k-th request after the first C is sent when the (k-C)-th request (by end time) ends
    assert np.array_equal(a[: min(c, n)], np.zeros(min(c, n)))
    assert np.allclose(a[c:], np.sort(ends)[: max(n - c, 0)] + think, rtol=1e-12, atol=0)
    # at every arrival, at most C requests are in flight (arrived and not ended)
    for k in range(n):
        assert int(((a <= a[k]) & (ends > a[k])).sum()) <= c


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 30),
    c=st.integers(1, 12),
    think=st.sampled_from([0.0, 0.0, 0.002, 0.05]),
    replicas=st.integers(1, 2),
    blocks=st.integers(60, 400),
    fw=st.sampled_from(["vllm-v1", "vllm-0.5-server", "sglang-0.3-server"]),
)
def test_invariants_and_fast_equals_exact(seed, n, c, think, replicas, blocks, fw):
    rng = np.random.default_rng(seed)
    prompts, outs = rng.integers(1, 600, n), rng.integers(1, 120, n)
    kw = dict(concurrency=c, think_time_s=think, replicas=replicas, num_kv_blocks=blocks, framework=fw)
    if fw == "vllm-v1":
        kw["max_model_len"] = 640  # some requests refused on arrival
    fast = run(prompts, outs, **kw)
    _check_closed_loop(fast, c, think)
    exact = run(prompts, outs, exact=True, **kw)
    assert np.allclose(exact.trace.arrival_s, fast.trace.arrival_s, rtol=1e-9, atol=0)
    for name in ("first_sched", "first_token", "finish"):
        x, y = getattr(fast.results, name), getattr(exact.results, name)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=1e-9, atol=0)
    assert np.array_equal(fast.results.status, exact.results.status)
    if c >= n:  # every client sends its one request at once: the all-at-once trace (as a server)
        open_kw = {k: v for k, v in kw.items() if k not in ("concurrency", "think_time_s")}
        batch = run(prompts, outs, usage="server", **open_kw)
        for name in ("first_sched", "first_token", "finish"):
            assert np.array_equal(getattr(fast.results, name), getattr(batch.results, name), equal_nan=True)


def test_disaggregated_closed_loop():
    kw = dict(prefill_replicas=1, decode_replicas=1, concurrency=3, num_kv_blocks=400)
    rng = np.random.default_rng(3)
    prompts, outs = rng.integers(1, 600, 20), rng.integers(1, 120, 20)
    r = run(prompts, outs, **kw)
    _check_closed_loop(r, 3, 0.0)


def test_synthetic_closed_loop_workload():
    spec = {"arrival": "closed-loop", "concurrency": 4, "num_requests": 12, "input": 100, "output": 5}
    tr = load_synthetic_spec(spec)
    assert tr.closed_loop == ClosedLoop(4, 0.0)
    r = simulate(tr, toy(), progress=False)
    _check_closed_loop(r, 4, 0.0)
    # --concurrency overrides the workload's clients
    _check_closed_loop(simulate(tr, toy(concurrency=2), progress=False), 2, 0.0)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(concurrency=0), "concurrency must be a whole number"),
        (dict(concurrency=-3), "concurrency must be a whole number"),
        (dict(concurrency=2.5), "got 2.5"),
        (dict(concurrency=True), "got True"),
        (dict(concurrency=2, think_time_s=-1.0), "think time must be a finite number"),
        (dict(concurrency=2, think_time_s=float("nan")), "think time must be a finite number"),
        (dict(think_time_s=1.0), "no closed-loop concurrency"),
    ],
)
def test_bad_closed_loop_settings(kw, needle):
    with pytest.raises(KavierInputError, match=needle):
        run([100], [3], **kw)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"arrival": "closed-loop"}, "'concurrency' is a required property"),
        ({"arrival": "closed-loop", "concurrency": 0}, "less than the minimum of 1"),
        ({"arrival": "closed-loop", "concurrency": 1.5}, "concurrency"),
        ({"arrival": "closed-loop", "concurrency": 2, "think_time_s": -1}, "think_time_s"),
        ({"arrival": "poisson", "rate": 1.0, "concurrency": 2}, "only for arrival 'closed-loop'"),
        (
            {"arrival": "closed-loop", "concurrency": 2, "sessions": {"turns": 2, "think_time_s": 1.0}},
            "not with arrival 'closed-loop'",
        ),
    ],
)
def test_bad_synthetic_closed_loop(spec, needle):
    with pytest.raises(KavierInputError, match=needle):
        load_synthetic_spec({"num_requests": 4, "input": 10, "output": 5, **spec})


# ------------------------------------------------------------------ CLI
def kavier(*args):
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_concurrency_end_to_end(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n" + "".join(f"{i},200,20\n" for i in range(9)))
    out = tmp_path / "o"
    p = kavier(
        "simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", trace, "--out", out,
        "--concurrency", 3, "--think-time", 0.25,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "arrival      closed-loop, concurrency 3 (think time 0.25 s)" in p.stdout
    df = pd.read_parquet(out / "requests.parquet")
    a, f = df["arrival_s"].to_numpy(), df["finish_s"].to_numpy()
    assert np.array_equal(a[:3], np.zeros(3))
    assert np.allclose(a[3:], np.sort(f)[:6] + 0.25, rtol=1e-12)
    assert np.allclose(df["e2e_s"], f - a, rtol=1e-12)
    s = json.loads((out / "summary.json").read_text())
    assert s["arrival"] == {"process": "closed-loop", "concurrency": 3, "think_time_s": 0.25}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--concurrency", "2.5"], "--concurrency must be an integer"),
        (["--concurrency", "2", "--think-time", "-1"], "--think-time must be >= 0"),
        (["--think-time", "1"], "no closed-loop concurrency"),
    ],
)
def test_cli_bad_closed_loop(tmp_path, args, needle):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0,200,20\n")
    out = tmp_path / "o"
    p = kavier("simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", trace, "--out", out, *args)
    assert p.returncode != 0
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


def test_plan_refuses_a_rate_for_a_closed_loop_workload(tmp_path):
    from types import SimpleNamespace

    from kavier_opendc.experiments.plan_file import traffic_at

    w = tmp_path / "w.yaml"
    w.write_text("arrival: closed-loop\nconcurrency: 4\nnum_requests: 8\ninput: 100\noutput: 10\n")
    with pytest.raises(KavierInputError, match="no request rate to set"):
        traffic_at(SimpleNamespace(workload=w, workload_format=None), 2.0, tmp_path / "out")
    assert traffic_at(SimpleNamespace(workload=w, workload_format=None), None, tmp_path / "out") == w
