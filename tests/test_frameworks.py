"""Serving frameworks: the profiles, vLLM v0's prefill-first rules by hand, invariants, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_trace, shared, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.frameworks import StepOverhead, builtin_frameworks, framework
from test_engine import _random_trace, fast_and_exact, run, toy

V0 = "vllm-0.5-offline"  # on the toy GPU: the '*' entry, 1.5 ms + 75 us per sequence per step


def v0_time(n_tokens, n_seqs, pairs, kv_tokens):
    """toy_time with vllm-0.5-offline's step overhead in place of the toy profile's 1 ms."""
    return toy_time(n_tokens, n_seqs, pairs, kv_tokens) - 1e-3 + 1.5e-3 + 75e-6 * n_seqs


# ------------------------------------------------------------------ the profiles
def test_builtin_frameworks_are_complete_and_physical():
    fws = builtin_frameworks()
    assert {"vllm-v1", "vllm-0.11-server", "vllm-0.9-v0-server", "vllm-0.5-server", "vllm-0.5-offline"} <= set(fws)
    for fw in fws.values():
        assert fw.provenance.get("policy") and fw.provenance.get("step_overhead")
        for o in (fw.step_overhead or {}).values():
            assert min(o.fixed_s, o.per_seq_s, o.per_token_s, o.per_token_sq_s) >= 0
    assert framework(None).name == "vllm-v1" and framework("VLLM-0.5-Server").name == "vllm-0.5-server"


def test_overhead_lookup_prefers_the_gpu_then_its_nearest_tp():
    fw = framework("vllm-0.5-server")
    assert fw.overhead_for("H100-SXM", 1).fixed_s == pytest.approx(0.01585)
    assert framework("vllm-0.5-offline").overhead_for("toygpu", 1).fixed_s == pytest.approx(0.0015)
    assert fw.overhead_for("H100-SXM", 2).fixed_s == pytest.approx(0.01585)  # nearest TP of that GPU
    assert fw.overhead_for("A100-40GB", 8).per_seq_s == pytest.approx(9.731e-5)
    assert fw.overhead_for("L40S", 1).fixed_s == pytest.approx(0.009644)  # same TP, first GPU by name
    assert framework("vllm-v1").overhead_for("H100-SXM", 1) is None  # the GPU profile's own


def test_batch_defaults_per_framework():
    cat = default_catalog()
    h100, a100 = cat.gpu("H100-SXM"), cat.gpu("A100-80GB")
    v1, v0 = framework("vllm-v1"), framework("vllm-0.5-server")
    assert v1.batch_limits(h100, "server", 8192) == (8192, 1024)
    assert v1.batch_limits(a100, "offline", 8192) == (8192, 256)
    assert v0.batch_limits(h100, "server", 8192) == (8192, 256)  # max(max_model_len, 2048)
    assert v0.batch_limits(a100, "server", 1024) == (2048, 256)
    r = simulate(
        make_trace([0.0, 1.0], [10, 10], [2, 2]),
        SimConfig(model=cat.model("Llama-3-8B"), gpu=h100, framework="vllm-0.5-server"),
        progress=False,
    )
    assert (r.replicas[0].budget, r.replicas[0].max_num_seqs, r.usage) == (8192, 256, "server")


def test_default_framework_is_todays_engine():
    trace = _random_trace(11)
    a = simulate(trace, toy(num_kv_blocks=200), progress=False)
    b = simulate(trace, toy(num_kv_blocks=200, framework="vllm-v1"), progress=False)
    for name in ("first_sched", "first_token", "finish"):
        assert np.array_equal(getattr(a.results, name), getattr(b.results, name), equal_nan=True)


# ------------------------------------------------------------------ vLLM v0 by hand
def test_v0_prefill_first_stalls_decodes_by_hand():
    # A (100 prompt, 3 out) at 0, B (100, 2) at 1 ms, while A's prefill runs.
    # v0: prefill A | prefill B alone (A waits) | decode A+B (B done) | decode A (A done)
    t1 = v0_time(100, 1, 5050, 100)
    t2 = v0_time(100, 1, 5050, 100)
    t3 = v0_time(2, 2, 202, 202)
    t4 = v0_time(1, 1, 102, 102)
    res = run([0.0, 0.001], [100, 100], [3, 2], framework=V0).results
    assert res.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert res.first_sched[1] == pytest.approx(t1, rel=1e-12)
    assert res.first_token[1] == pytest.approx(t1 + t2, rel=1e-12)
    assert res.finish[1] == pytest.approx(t1 + t2 + t3, rel=1e-12)
    assert res.finish[0] == pytest.approx(t1 + t2 + t3 + t4, rel=1e-12)
    # v1 puts B's prompt beside A's decode instead: B's first token comes with A's second
    v1 = run([0.0, 0.001], [100, 100], [3, 2]).results
    mixed = toy_time(101, 2, 101 + 5050, 100 + 101)
    assert v1.first_token[1] == pytest.approx(toy_time(100, 1, 5050, 100) + mixed, rel=1e-12)
    assert v1.finish[0] - v1.first_token[0] < res.finish[0] - res.first_token[0]  # v0 decodes stall longer


def test_v0_whole_prompts_within_the_token_budget_by_hand():
    # budget 150: one 100-token prompt per iteration; a 200-token prompt never fits and is rejected
    t = v0_time(100, 1, 5050, 100)
    res = run([0.0, 0.0, 0.0, 0.0], [100, 100, 200, 100], [1, 1, 1, 1], framework=V0, max_batched_tokens=150).results
    assert list(res.status) == [1, 1, 2, 1]
    assert res.first_token[0] == pytest.approx(t, rel=1e-12)
    assert res.first_token[1] == pytest.approx(2 * t, rel=1e-12)
    assert res.first_token[3] == pytest.approx(3 * t, rel=1e-12)
    # v1 chunks the same prompts to the same budget instead: the 200-token one is served
    assert (run([0.0] * 4, [100, 100, 200, 100], [1] * 4, max_batched_tokens=150).results.status == 1).all()


def test_v0_admission_keeps_the_watermark_free():
    # 200 blocks: 1 % watermark = 2 blocks. Two prompts of 99 blocks each (1584 tokens) do not both fit
    # (200 - 99 - 99 = 2 is not < 2: they do); three of 66 blocks need 198 (2 left: fits), a fourth waits
    res = run([0.0, 0.0], [99 * 16, 99 * 16], [1, 1], framework=V0, num_kv_blocks=200).results
    assert res.first_token[0] == res.first_token[1]  # one iteration: 198 + 2 free
    res = run([0.0, 0.0], [99 * 16, 100 * 16], [1, 1], framework=V0, num_kv_blocks=200).results
    assert res.first_token[1] > res.first_token[0]  # 199 blocks would leave 1 < 2


def test_v0_chunked_prefill_switch_uses_the_budget_rules():
    a = run([0.0, 0.001], [100, 100], [3, 2], framework=V0)
    for rep in a.replicas:
        assert rep.chunked_prefill is False and rep.admits_in_decode is False


def test_v0_enable_chunked_prefill_by_hand():
    # A (100 prompt, 3 out) at 0, B (100, 2) at 1 ms, as in test_v0_prefill_first_stalls_decodes_by_hand.
    # With --enable-chunked-prefill, B's prompt joins A's decode (v1's token-budget rules): prefill A | A's
    # token 2 + B's whole prompt | decode A+B (both done). A's decode no longer stalls; B's first token
    # comes one mixed iteration after A's prefill instead of one prompt-only iteration.
    t1 = v0_time(100, 1, 5050, 100)
    mixed = v0_time(101, 2, 101 + 5050, 100 + 101)
    t3 = v0_time(2, 2, 102 + 101, 203)
    off = run([0.0, 0.001], [100, 100], [3, 2], framework=V0)
    on = run([0.0, 0.001], [100, 100], [3, 2], framework=V0, enable_chunked_prefill=True)
    r = on.results
    assert r.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert r.first_token[1] == pytest.approx(t1 + mixed, rel=1e-12)
    assert r.finish[0] == r.finish[1] == pytest.approx(t1 + mixed + t3, rel=1e-12)
    # the rules' prediction: A's time per output token falls (no prompt-only iteration between its tokens),
    # B's TTFT rises by the decode sharing its iteration (mixed > the prompt alone)
    t2, t4 = v0_time(100, 1, 5050, 100), v0_time(1, 1, 102, 102)
    tpot_a = lambda res: (res.finish[0] - res.first_token[0]) / 2  # noqa: E731
    assert tpot_a(off.results) == pytest.approx((t2 + v0_time(2, 2, 202, 202) + t4) / 2, rel=1e-12)
    assert tpot_a(r) == pytest.approx((mixed + t3) / 2, rel=1e-12) and tpot_a(r) < tpot_a(off.results)
    assert r.first_token[1] - off.results.first_token[1] == pytest.approx(mixed - t2, rel=1e-9)
    assert all(rep.chunked_prefill and rep.admits_in_decode for rep in on.replicas)
    assert not any(rep.chunked_prefill for rep in off.replicas)
    # the default budget with chunking is vLLM 0.5's 512 tokens: a 1,000-token prompt in chunks of 512 + 488
    assert on.replicas[0].budget == 512 and off.replicas[0].budget >= 2048
    long = run([0.0], [1000], [1], framework=V0, enable_chunked_prefill=True).results
    c1 = v0_time(512, 1, 512 * 513 // 2, 512)
    c2 = v0_time(488, 1, 488 * 512 + 488 * 489 // 2, 1000)
    assert long.first_token[0] == pytest.approx(c1 + c2, rel=1e-12)


def test_framework_chunked_prefill_reaches_the_replicas():
    # a catalogue framework of policy vllm-v0 with chunked_prefill: true is simulated with it on
    import dataclasses

    fw = dataclasses.replace(framework(V0), name="v0-chunked", chunked_prefill=True)
    a = run([0.0, 0.001], [100, 100], [3, 2], framework=fw)
    b = run([0.0, 0.001], [100, 100], [3, 2], framework=V0, enable_chunked_prefill=True)
    assert all(rep.chunked_prefill for rep in a.replicas)
    assert np.array_equal(a.results.finish, b.results.finish)


@pytest.mark.parametrize(
    "fw, match",
    [
        (None, "vLLM v1 always chunks prompts"),
        ("sglang-0.3-server", "SGLang chunks prompts by its own chunked_prefill_size"),
        ("vllm-0.6-multistep-server", "multi-step scheduling"),
    ],
)
def test_enable_chunked_prefill_refused_where_it_does_not_apply(fw, match):
    kw = {} if fw is None else {"framework": fw}
    for value in (True, False):
        with pytest.raises(KavierInputError, match=match) as exc:
            run([0.0], [10], [2], enable_chunked_prefill=value, **kw)
        assert exc.value.location == "enable_chunked_prefill"


def test_cli_enable_chunked_prefill(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,num_input_tokens,num_output_tokens\n0,100,5\n0.001,50,5\n")
    base = [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "llama-3-8b", "--gpu", "a100-80gb"]
    base += ["--trace", str(trace)]
    ok = subprocess.run(
        [*base, "--out", str(tmp_path / "o"), "--framework", "vllm-0.5-server", "--enable-chunked-prefill"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["config"]["framework"]["chunked_prefill"] is True
    assert summary["config"]["max_batched_tokens"] == 512
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "b"), "--enable-chunked-prefill"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "--enable-chunked-prefill" in bad.stderr
    assert "chunked-prefill switch does not apply to framework vllm-v1" in bad.stderr
    assert "vLLM v1 always chunks" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ invariants and fast paths under v0
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(60, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(600, 2048),
    fw=st.sampled_from(["vllm-0.5-offline", "vllm-0.5-server"]),
    chunked=st.sampled_from([None, True]),
)
def test_v0_invariants_and_decode_runs_equal_stepping(seed, replicas, blocks, seqs, budget, fw, chunked):
    kw = dict(
        replicas=replicas,
        num_kv_blocks=blocks,
        max_num_seqs=seqs,
        max_batched_tokens=budget,
        seed=seed,
        framework=fw,
        enable_chunked_prefill=chunked,
    )
    fast_and_exact(_random_trace(seed), toy(**kw), toy(exact=True, **kw))


def test_v0_server_overheads_make_a_load_v1_sustains_blow_up():
    # Llama-3-8B on one A100-40GB, Poisson arrivals of 256-in/256-out requests at a rate v1 sustains:
    # v0's CPU time per step (10 ms + 0.26 ms per sequence, fitted on ML.ENERGY) saturates it, and the
    # queue grows over the run: the last requests wait far longer than the first
    cat = default_catalog()
    rng = np.random.default_rng(1)
    n = 1500
    arr = np.cumsum(rng.exponential(1 / 14.0, n))
    arr -= arr[0]
    trace = make_trace(arr, np.full(n, 256), np.full(n, 256))
    kw = dict(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-40GB"))
    v1 = simulate(trace, SimConfig(**kw), progress=False).results
    v0 = simulate(trace, SimConfig(framework="vllm-0.5-server", **kw), progress=False).results
    ttft1, ttft0 = v1.first_token - arr, v0.first_token - arr
    assert np.percentile(ttft1, 99) < 1.0  # v1 keeps up
    assert np.mean(ttft0[-200:]) > 10 * np.mean(ttft0[:200])  # v0 queues up
    assert np.mean(ttft0[-200:]) > 5.0


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(framework="vllm-v9"), "unknown serving framework"),
        (dict(framework="vllm-0.5-offline", usage="server"), "contradicts"),
        (dict(framework="vllm-0.5-server", prefix_cache="block"), "not modelled"),
        (dict(framework="vllm-0.5-server", kv_cache=False), "kv-cache"),
    ],
)
def test_framework_errors(kw, match):
    with pytest.raises(KavierInputError, match=match):
        run([0.0], [10], [2], **kw)


def test_cli_framework_flag_and_errors(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,num_input_tokens,num_output_tokens\n0,100,5\n0.5,50,5\n")
    out = tmp_path / "o"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "simulate",
            "--model",
            "llama-3-8b",
            "--gpu",
            "a100-80gb",
            "--trace",
            str(trace),
            "--out",
            str(out),
            "--framework",
            "vllm-0.5-server",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "framework    vllm-0.5-server" in ok.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["framework"]["name"] == "vllm-0.5-server"
    assert summary["config"]["batch_limits"] == "vllm-0.5-server defaults (server)"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "simulate",
            "--model",
            "llama-3-8b",
            "--gpu",
            "a100-80gb",
            "--trace",
            str(trace),
            "--out",
            str(tmp_path / "b"),
            "--framework",
            "vllm-v9",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "unknown serving framework 'vllm-v9'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ calibration of frameworks
def test_framework_fit_round_trip(tmp_path):
    # synthetic offline batch latencies from known overheads (2 ms per step, 60 us per sequence) on top of
    # the built-in H100 kernel times are fitted back within 2 % of each term
    import dataclasses

    from kavier_opendc.calibration.fit import Overheads, predict
    from kavier_opendc.calibration.frameworks import fit_framework
    from kavier_opendc.calibration.layouts import ReadOptions, read_measurements

    cat = default_catalog()
    rows = ["gpu,tp,model,in_out_tokens,batch_size,latency_s"]
    rows += [f"H100-SXM,1,Llama-3-8B,{n},{b},1.0" for n in (128, 256, 512, 1024) for b in (1, 16, 32, 64)]
    draft = tmp_path / "draft.csv"
    draft.write_text("\n".join(rows) + "\n")
    truth = Overheads(2e-3, 60e-6)
    gpu = dataclasses.replace(cat.gpu("H100-SXM"), profile=None)
    prof = cat.profile_for("H100-SXM")
    obs = read_measurements(draft, cat, ReadOptions())[1]
    real = tmp_path / "synthetic.csv"
    real.write_text(
        "\n".join(
            [rows[0]]
            + [
                f"H100-SXM,1,Llama-3-8B,{o.label.split()[-1][1:]},{o.label.split()[-2][1:]},"
                f"{predict(o, prof, gpu, truth)!r}"
                for o in obs
            ]
        )
        + "\n"
    )
    fit = fit_framework([real], cat)
    got = fit.overheads[("H100-SXM", 1)]
    assert got.fixed_s == pytest.approx(truth.fixed_s, rel=0.02)
    assert got.per_seq_s == pytest.approx(truth.per_seq_s, rel=0.02)
    assert max(fit.mape().values()) < 1e-6


def test_framework_fit_needs_several_batch_sizes(tmp_path):
    from kavier_opendc.calibration.frameworks import fit_framework

    one = tmp_path / "one.csv"
    one.write_text(
        "gpu,tp,model,in_out_tokens,batch_size,latency_s\nH100-SXM,1,Llama-3-8B,128,16,1.5\n"
        "H100-SXM,1,Llama-3-8B,256,16,3.0\n"
    )
    with pytest.raises(KavierInputError, match="batch sizes"):
        fit_framework([one], default_catalog())


def test_builtin_framework_overheads_are_a_refit_of_the_shared_data():
    import importlib.util
    from pathlib import Path

    shared("calibration/argonne_vllm_batch_latency.csv")
    spec = importlib.util.spec_from_file_location(
        "build_frameworks", Path(__file__).resolve().parents[1] / "bench" / "build_frameworks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.OUT.read_text(encoding="utf-8")
    new, table = mod.rebuild(text, shared("calibration").parent)
    assert new == text, "frameworks.yaml differs from a refit: run python bench/build_frameworks.py"
    # every shared source within 10 % under the framework that produced it, through the whole simulator too
    mapes = [float(line.split("|")[6].strip(" %")) for line in table[2:] if line.startswith("| vllm")]
    assert len(mapes) == 13 and max(mapes) < 10.0
    # trtllm-1.0-server (closed-loop rows): TPOT within 15 % per TP, fitted and held out; the 34 TTFT-jump
    # rows listed, one line each, and kept out of the fit
    trt = [line.split("|") for line in table if line.startswith(("| fitted | trtllm-1.0", "| held out | trtllm-1.0"))]
    assert len(trt) == 8 and max(float(c[9].strip(" %")) for c in trt) < 15.0
    assert len([line for line in table if line.startswith("<!-- jump: trtllm 1.0.0rc3 Llama-3.1-8B")]) == 34
    for (gpu, tp), e in mod.simulated_batch_latency(
        "vllm-0.5-offline", ["calibration/argonne_vllm_batch_latency.csv"], shared("calibration").parent
    ).items():
        assert sum(e) / len(e) < 0.10, (gpu, tp)


def test_load_sweep_fit_round_trip():
    # load points made by simulating a server with known CPU time (2 ms per step, 50 us per sequence) and
    # 15 ms of client latency are fitted back within 5 % of each term
    import dataclasses

    from kavier_opendc.calibration.load_sweep import LoadPoint, fit_load_sweep, simulate_point

    cat = default_catalog()
    base = framework("vllm-0.11-server")
    truth = dataclasses.replace(base, step_overhead={("H100-SXM", 1): StepOverhead(2e-3, 50e-6)})
    points = []
    for rate in (1.0, 30.0, 60.0, 200.0):
        draft = LoadPoint(
            "synthetic",
            f"{rate}",
            "s",
            "Llama-3-8B",
            "H100-SXM",
            1,
            rate,
            rate,
            200,
            64,
            1.0,
            2.0,
            duration_s=20.0,
            max_num_seqs=128,
            max_model_len=512,
        )
        sim = simulate_point(draft, cat, truth)
        achieved = rate if rate < 100 else 90.0  # the last stage saturates: left out of the fit
        points.append(
            dataclasses.replace(
                draft, achieved_rps=achieved, ttft_s=sim.ttft_s + 0.015, e2e_s=sim.ttft_s + 0.015 + sim.per_token_s * 63
            )
        )
    fit = fit_load_sweep(points, cat, base, evaluations=60)
    assert len(fit.points) == 3 and len(fit.left_out) == 1
    assert fit.overhead.fixed_s == pytest.approx(2e-3, rel=0.05)
    assert fit.overhead.per_seq_s == pytest.approx(50e-6, rel=0.05)
    assert fit.client_latency_s == pytest.approx(0.015, rel=0.05)


def test_client_latency_is_on_the_client_clock_only_for_servers(tmp_path):
    from kavier_opendc.engine.outputs import summary_dict

    cat = default_catalog()
    trace = make_trace([0.0, 0.5], [100, 100], [5, 5])
    kw = dict(model=cat.model("Llama-3-8B"), gpu=cat.gpu("H100-SXM"))
    engine = simulate(trace, SimConfig(framework="vllm-v1", **kw), progress=False)
    server = simulate(trace, SimConfig(framework="vllm-0.11-server", **kw), progress=False)
    c = framework("vllm-0.11-server").client_latency_s
    assert c > 0
    s = summary_dict(server)
    ttft = server.results.first_token - trace.arrival_s
    assert s["ttft_s"]["mean"] == pytest.approx(float(np.mean(ttft)) + c, rel=1e-12)
    assert summary_dict(engine)["ttft_s"]["mean"] == pytest.approx(
        float(np.mean(engine.results.first_token - trace.arrival_s)), rel=1e-12
    )


def _replay(path, n=5, status="finished"):
    import pandas as pd

    path.mkdir()
    pd.DataFrame(
        {
            "arrival_s": np.arange(n) * 0.5,
            "num_input_tokens": [50] * n,
            "num_output_tokens": [8] * n,
            "ttft_s": [0.05] * n,
            "e2e_s": [0.4] * n,
            "status": [status] + ["finished"] * (n - 1),
        }
    ).to_parquet(path / "requests.parquet")
    return path


@pytest.mark.parametrize(
    "case, extra, needle",
    [
        ("no model", [], "--model and --gpu"),
        ("one replay", ["--model", "llama-3-8b", "--gpu", "a10"], "at least two rates"),
        ("a failed request", ["--model", "llama-3-8b", "--gpu", "a10"], "did not finish"),
        ("mixed inputs", ["--model", "llama-3-8b", "--gpu", "a10"], "cannot be mixed"),
    ],
)
def test_calibrate_replay_errors(tmp_path, capsys, case, extra, needle):
    from kavier_opendc.cli import main

    files = [str(_replay(tmp_path / "a", status="failed" if case == "a failed request" else "finished"))]
    if case != "one replay":
        files.append(str(_replay(tmp_path / "b")))
    if case == "mixed inputs":
        (tmp_path / "m.csv").write_text("gpu,num_workers,size_bytes,all_reduce_median_ms\nA100-80GB,2,1024,0.01\n")
        files.append(str(tmp_path / "m.csv"))
    try:
        rc = main(["calibrate", *files, "--out", str(tmp_path / "fw.yaml"), *extra])
    except SystemExit as exc:
        rc = exc.code
    assert rc not in (0, None)
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and not (tmp_path / "fw.yaml").exists()


def test_catalogue_framework_files(tmp_path):
    from kavier_opendc.specs.catalog import load_catalog_file

    good = tmp_path / "fw.yaml"
    good.write_text(
        "frameworks:\n  - name: mine\n    base: vllm-0.9-v0-server\n    client_latency_s: 0.01\n"
        "    step_overhead:\n      - {gpu: A10, tp: 1, fixed_s: 0.003}\n"
    )
    cat = load_catalog_file(good)
    fw = cat.framework("MINE")
    assert fw.policy == "vllm-v0" and fw.client_latency_s == 0.01
    assert fw.overhead_for("A10", 1).fixed_s == 0.003 and fw.provenance["step_overhead"] == f"given in {good}"
    assert "mine" in cat.frameworks() and "mine" not in default_catalog().frameworks()
    for text, needle in [
        ("frameworks:\n  - name: x\n    base: nope\n", "unknown base framework"),
        ("frameworks:\n  - name: x\n    policy: magic\n", "policy"),
        ("frameworks:\n  - {name: x, step_overhead: [{gpu: A10, fixed_s: -1}]}\n", "fixed_s"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(KavierInputError, match=needle):
            load_catalog_file(bad)


# ------------------------------------------------------------------ physics, per framework (issue 18 item 6)
@pytest.mark.parametrize("name", sorted(builtin_frameworks()))
@pytest.mark.parametrize(
    ("gpu", "model", "tp"),
    [("A100-80GB", "Llama-3-8B", 1), ("H100-SXM", "Llama-3-8B", 1), ("H100-SXM", "Llama-3.1-70B", 4)],
)
def test_every_framework_step_time_grows_with_the_batch(name, gpu, model, tp):
    """A decode step of every built-in framework takes longer with more sequences (each at 1,000 tokens of
    context) and never less than its kernels alone (the default framework's kernels with no CPU time)."""
    from kavier_opendc.engine.cost_model import CostModel

    cat = default_catalog()
    m, g = cat.model(model), cat.gpu(gpu)
    fw = framework(name)
    cm = CostModel(m, g, tp, framework=fw)
    times = [cm.iteration(b, b * 1000.0, b * 1000.0, n_seqs=b)[0] for b in (1, 2, 8, 32, 128, 256)]
    assert all(b > a for a, b in zip(times, times[1:], strict=False)), (name, times)
    o = fw.overhead_for(g.name, tp)
    assert o is None or min(o.fixed_s, o.per_seq_s, o.per_token_s, o.per_token_sq_s) >= 0


def test_v1_is_never_slower_than_the_v0_server_at_equal_kernel_times():
    """The same trace and GPU under vllm-v1 and under vllm-0.5-server (same kernels; v0 adds its CPU time per
    step and prefill-first scheduling): every latency percentile of v1 is at most v0's."""
    cat = default_catalog()
    trace = make_trace(
        np.arange(200) * 0.05, [300 + 7 * (i % 40) for i in range(200)], [40 + (i % 30) for i in range(200)]
    )
    out = {}
    for name in ("vllm-v1", "vllm-0.5-server"):
        cfg = SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-40GB"), framework=framework(name))
        r = simulate(trace, cfg).results
        arrival = trace.arrival_s
        lat = {
            "ttft": r.first_token - arrival,
            "e2e": r.finish - arrival,
            "tpot": (r.finish - r.first_token) / np.maximum(trace.num_output_tokens - 1, 1),
        }
        out[name] = {k: np.nanpercentile(v, [50, 90, 99]) for k, v in lat.items()}
    for k in ("ttft", "tpot", "e2e"):
        assert np.all(out["vllm-v1"][k] <= out["vllm-0.5-server"][k] + 1e-12), (k, out)
