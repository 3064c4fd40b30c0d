"""Speculative decoding (engine/speculative.py): hand-worked steps, invariants, physics, bad input, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, toy_time
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.itl import itl_of
from kavier_opendc.engine.outputs import summary_dict
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.engine.speculative import NGRAM_SEQ_S, NGRAM_STEP_S, expected_tokens
from kavier_opendc.specs import default_catalog

NGRAM = NGRAM_STEP_S + NGRAM_SEQ_S  # the prompt lookup's CPU time of a one-sequence step


def toy(**kw) -> SimConfig:
    base = dict(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=10_000)
    base.update(kw)
    return SimConfig(**base)


def run(arrivals, prompts, outputs, **kw):
    return simulate(make_trace(arrivals, prompts, outputs), toy(**kw), progress=False)


def spec(method="ngram", k=3, a=0.7, **kw) -> dict:
    return dict(speculative_method=method, num_speculative_tokens=k, spec_acceptance_rate=a, **kw)


# ------------------------------------------------------------------ by hand
def test_expected_tokens_by_hand():
    assert expected_tokens(0.7, 3) == pytest.approx((1 - 0.7**4) / 0.3, rel=1e-15)
    assert expected_tokens(0.7, 3) == pytest.approx(2.533, abs=5e-4)
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(0.5, 1) == 1.5


def test_single_request_ngram_by_hand():
    # 100-token prompt, 11 output tokens: the prefill samples the first, 10 come from verify steps of k+1 = 4
    # tokens. E = 2.533: step j emits floor(jE) - floor((j-1)E) = 2, 3, 2, 3 (10 tokens in 4 steps); the
    # context before each step is 100, 102, 105, 107. A step attends 4c + (1+2+3+4) pairs, reads c cached
    # tokens and writes 4, runs the LM head on 4 positions, plus the n-gram lookup's CPU time.
    t = toy_time(100, 1, 5050, 100)
    first = t
    for c in (100, 102, 105, 107):
        t += toy_time(4, 4, 4 * c + 10, c + 4) + NGRAM
    r = run([0.0], [100], [11], **spec())
    assert r.results.first_token[0] == pytest.approx(first, rel=1e-12)
    assert r.results.finish[0] == pytest.approx(t, rel=1e-12)
    rep = r.replicas[0]
    assert rep.iterations == 5
    assert sum(rep.timeline.decode) == 10
    s = summary_dict(r)["config"]["speculative"]
    assert s["mean_accepted_length"] == pytest.approx(2.533, rel=1e-12)
    assert s["decode_steps"] == 4 and s["tokens_per_decode_step"] == 2.5
    assert s["acceptance_rate_source"] == "given"
    # ITL: one streamed chunk per verify step, 4 gaps (not 10) summing to finish - first token
    itl = itl_of(r)
    assert itl.count[0] == 4
    assert itl.total[0] == pytest.approx(t - first, rel=1e-12)


def test_zero_acceptance_is_plain_decoding_plus_verify_cost():
    # a = 0: every step keeps only the bonus token, so the steps are those of plain decoding, each verifying
    # k+1 = 3 tokens (their GEMM, attention and LM-head work) plus the lookup
    plain = run([0.0], [100], [6]).results.finish[0]
    t = toy_time(100, 1, 5050, 100)
    for c in range(100, 105):
        t += toy_time(3, 3, 3 * c + 6, c + 3) + NGRAM
    r = run([0.0], [100], [6], **spec(k=2, a=0.0))
    assert r.results.finish[0] == pytest.approx(t, rel=1e-12)
    assert r.results.finish[0] > plain
    assert r.replicas[0].iterations == run([0.0], [100], [6]).replicas[0].iterations == 6


def test_eagle_and_draft_cost_by_hand():
    # eagle: k steps of one extra layer, 1/L of the target's decode step less its 1 ms CPU time (TOY_MODEL has
    # L = 1)
    t = toy_time(100, 1, 5050, 100)
    c = 100
    for m in (1, 1):  # a = 0: one token per step
        draft = sum(toy_time(1, 1, c + j + 1, c + j + 1) - 1e-3 for j in range(2))  # GPU time, no CPU step
        t += toy_time(3, 3, 3 * c + 6, c + 3) + draft / TOY_MODEL.num_layers
        c += m
    r = run([0.0], [100], [3], **spec("eagle", k=2, a=0.0))
    assert r.results.finish[0] == pytest.approx(t, rel=1e-12)


def test_summary_without_spec_has_no_section():
    assert "speculative" not in summary_dict(run([0.0], [100], [5]))["config"]


def test_default_acceptance_is_assumed_per_method():
    r = run([0.0], [100], [5], speculative_method="mtp")
    s = summary_dict(r)["config"]["speculative"]
    assert s["acceptance_rate"] == 0.85 and s["num_speculative_tokens"] == 3
    assert "assumed" in s["acceptance_rate_source"]


# ------------------------------------------------------------------ invariants
def _random_trace(seed, n_max=60):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, n_max))
    gaps = rng.exponential(float(rng.uniform(0.001, 0.05)), n)
    gaps[0] = 0.0
    return make_trace(np.cumsum(gaps), rng.integers(1, 400, n), rng.integers(1, 150, n))


def check(result, k):
    tr, res = result.trace, result.results
    assert (res.status != 0).all()
    done = res.status == 1
    assert (res.finish[done] >= res.first_token[done]).all()
    decode = prefill = 0
    for rep in result.replicas:
        assert rep.used == 0 and rep.D == 0 and not rep.running and not rep.waiting
        assert rep.peak_used <= rep.capacity
        decode += sum(rep.timeline.decode)
        prefill += sum(rep.timeline.prefill)
    # token conservation: every output token after the first comes from a verify step; a request's last step
    # may draft past its end (at most k tokens, discarded), recomputation after preemption adds prefill only
    need = int((tr.num_output_tokens[done] - 1).sum())
    assert decode <= need + k * int(done.sum())
    if res.preemptions.sum() == 0:
        assert need <= decode
        assert prefill == int(tr.num_input_tokens[done].sum())
    else:  # a recomputed request samples its next token from a prefill chunk
        assert prefill + decode >= int(tr.num_input_tokens[done].sum()) + need


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 5),
    a=st.floats(0.0, 0.95),
    blocks=st.integers(60, 400),
    budget=st.integers(16, 512),
    method=st.sampled_from(["ngram", "eagle", "mtp"]),
)
def test_invariants_and_fast_equals_exact(seed, k, a, blocks, budget, method):
    # spec decoding steps every iteration (no closed-form runs): fast mode must give exactly the exact results
    kw = dict(num_kv_blocks=blocks, max_num_seqs=16, max_batched_tokens=budget, seed=seed, **spec(method, k, a))
    trace = _random_trace(seed)
    fast = simulate(trace, toy(**kw), progress=False)
    exact = simulate(trace, toy(exact=True, **kw), progress=False)
    check(fast, k)
    for name in ("first_sched", "first_token", "finish"):
        assert np.array_equal(getattr(fast.results, name), getattr(exact.results, name), equal_nan=True)
    assert np.array_equal(fast.results.preemptions, exact.results.preemptions)
    again = simulate(trace, toy(**kw), progress=False)  # deterministic
    assert np.array_equal(again.results.finish, fast.results.finish, equal_nan=True)


def test_budget_counts_k_plus_one_tokens_per_decoder():
    # three 4-token prompts, 3 output tokens each (2 verify steps), k = 3, a = 0: a step takes 4 tokens per
    # decoder. Budget 12: the three prompts in one iteration, then 2 steps of all three decoders (12 tokens)
    r = run([0.0, 0.0, 0.0], [4, 4, 4], [3, 3, 3], max_batched_tokens=12, **spec(k=3, a=0.0))
    assert r.replicas[0].iterations == 3
    assert len(set(r.results.finish.tolist())) == 1
    # budget 11: the third prompt's last token waits an iteration; then only two decoders' 4 tokens fit beside
    # it, so the third decoder sits out until they finish: 1 + 2 + 2 iterations
    r = run([0.0, 0.0, 0.0], [4, 4, 4], [3, 3, 3], max_batched_tokens=11, **spec(k=3, a=0.0))
    assert r.replicas[0].iterations == 5
    f = r.results.finish
    assert f[0] == f[1] < f[2]


# ------------------------------------------------------------------ physics
def _tpot(batch, **kw):
    cat = default_catalog()
    tr = make_trace(np.zeros(batch), np.full(batch, 512), np.full(batch, 256))
    cfg = SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("H100-SXM"), max_num_seqs=batch, **kw)
    r = simulate(tr, cfg, progress=False).results
    return float(np.mean((r.finish - r.first_token) / 255.0))


def test_spec_lowers_tpot_at_small_batch_and_raises_it_when_compute_bound():
    # Llama-3-8B / H100, n-gram drafts, k = 3, a = 0.5 (E = 1.875 tokens per step): at batch 1 a step reads
    # the 16 GB of weights whatever its 4 tokens, so TPOT falls by about E; at batch 256 the step's 1024
    # tokens are compute-bound, 4x the GEMM work of plain decoding for 1.875x the tokens, and TPOT rises
    s = spec("ngram", 3, 0.5, max_batched_tokens=16384)
    small_off, small_on = _tpot(1, max_batched_tokens=16384), _tpot(1, **s)
    big_off, big_on = _tpot(256, max_batched_tokens=16384), _tpot(256, **s)
    assert small_on < small_off / 1.5
    assert big_on > big_off


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(speculative_method="ngram", num_speculative_tokens=0), "num_speculative_tokens"),
        (dict(speculative_method="ngram", spec_acceptance_rate=1.0), "spec_acceptance_rate"),
        (dict(speculative_method="ngram", spec_acceptance_rate=-0.1), "spec_acceptance_rate"),
        (dict(speculative_method="medusa"), "speculative_method"),
        (dict(speculative_method="draft"), "draft_model"),
        (dict(speculative_method="draft", draft_model="Nope-7B"), "draft_model"),
        (dict(speculative_method="eagle", draft_model="Llama-3.2-1B"), "draft_model"),
        (dict(num_speculative_tokens=3), "num_speculative_tokens"),
        (dict(speculative_method="ngram", framework="sglang-0.3-server"), "speculative_method"),
        (dict(speculative_method="ngram", kv_cache=False), "speculative_method"),
    ],
)
def test_bad_input_names_the_field(kw, field):
    with pytest.raises(KavierInputError) as e:
        run([0.0], [10], [5], **kw)
    assert e.value.location == field


def test_draft_model_larger_than_target_refused():
    cat = default_catalog()
    cfg = SimConfig(
        model=cat.model("Llama-3-8B"), gpu=cat.gpu("H100-SXM"), speculative_method="draft", draft_model="Llama-3-70B"
    )
    with pytest.raises(KavierInputError, match="not smaller than the target") as e:
        cfg.validate()
    assert e.value.location == "draft_model"


# ------------------------------------------------------------------ CLI
def test_cli_end_to_end(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0,200,64\n0.01,300,32\n0.02,100,16\n")

    def sim(out, *extra):
        return subprocess.run(
            [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "Llama-3-8B", "--gpu", "H100-SXM"]
            + ["--trace", str(trace), "--out", str(tmp_path / out), "--quiet", *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = sim("on", "--speculative-method", "draft", "--draft-model", "Llama-3.2-1B", "--num-speculative-tokens", "4")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "on" / "summary.json").read_text())
    sp = s["config"]["speculative"]
    assert sp["method"] == "draft" and sp["draft_model"] == "Llama-3.2-1B" and sp["num_speculative_tokens"] == 4
    assert sp["mean_accepted_length"] == pytest.approx(expected_tokens(0.6, 4), rel=1e-12)
    assert s["output_tokens"] == 64 + 32 + 16
    assert sim("off").returncode == 0
    off = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert "speculative" not in off["config"]
    assert s["tpot_s"]["mean"] < off["tpot_s"]["mean"]  # three requests: memory-bound, spec helps
    bad = sim("bad", "--speculative-method", "ngram", "--spec-acceptance-rate", "1.5")
    assert bad.returncode != 0 and "--spec-acceptance-rate" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    bad = sim("bad", "--speculative-method", "draft", "--draft-model", "Nope-1B")
    assert bad.returncode != 0 and "--draft-model" in bad.stderr and "Traceback" not in bad.stderr
    assert math.isfinite(sp["tokens_per_decode_step"])


# ------------------------------------------------------------------ experiments
def test_experiment_serving_speculative(tmp_path):
    from kavier_opendc.experiments.engine_config import sim_config
    from kavier_opendc.experiments.experiment import experiment_problems

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0,200,64\n")
    doc = {
        "model": "Llama-3-8B",
        "gpu": "H100-SXM",
        "trace": str(trace),
        "serving": {"speculative": {"method": "draft", "draft_model": "Llama-3.2-1B", "num_speculative_tokens": 2}},
    }
    problems, exp = experiment_problems(doc, base_dir=tmp_path, opendc=False)
    assert problems == [] and exp is not None
    cfg = sim_config(exp.serving, exp.groups, 0, default_catalog())
    sp = cfg.speculative()
    assert sp is not None and sp.method == "draft" and sp.k == 2 and sp.draft_model.name == "Llama-3.2-1B"
    # the schema refuses an acceptance rate of 1; the engine names a draft model larger than the target
    doc["serving"]["speculative"] = {"method": "ngram", "acceptance_rate": 1.0}
    problems, _ = experiment_problems(doc, base_dir=tmp_path, opendc=False)
    assert {p for p, _ in problems} == {("serving", "speculative", "acceptance_rate")}
    doc["serving"]["speculative"] = {"method": "draft", "draft_model": "Llama-3-70B"}
    problems, _ = experiment_problems(doc, base_dir=tmp_path, opendc=False)
    assert [p for p, _ in problems] == [("serving", "speculative", "draft_model")]
    assert "not smaller than the target" in problems[0][1]


# ------------------------------------------------------------------ other schedulers
def _trtllm(name="trtllm-1.0"):
    """A TensorRT-LLM profile on the toy GPU's own step overhead (1 ms), so toy_time holds."""
    import dataclasses

    from kavier_opendc.specs.frameworks import framework

    return dataclasses.replace(framework(name), step_overhead=None)


def test_trtllm_single_request_ngram_by_hand():
    """TensorRT-LLM's scheduler verifies k+1 tokens per generation request as vLLM v1's does: the same steps
    as test_single_request_ngram_by_hand (a 100-token context runs whole, then 4 verify steps of 4 tokens)."""
    t = toy_time(100, 1, 5050, 100)
    for c in (100, 102, 105, 107):
        t += toy_time(4, 4, 4 * c + 10, c + 4) + NGRAM
    r = run([0.0], [100], [11], framework=_trtllm(), **spec())
    assert r.results.finish[0] == pytest.approx(t, rel=1e-12)
    assert r.replicas[0].iterations == 5 and sum(r.replicas[0].timeline.decode) == 10
    assert summary_dict(r)["config"]["speculative"]["decode_steps"] == 4


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5), policy=st.sampled_from(["trtllm-1.0", "trtllm-1.0-mu"]))
def test_trtllm_speculative_invariants(seed, k, policy):
    """Random traces under TensorRT-LLM (both capacity policies) with speculative decoding and a small KV
    pool: every request ends, its tokens conserved, blocks never over capacity (the invariants of check())."""
    import dataclasses

    fw = _trtllm()
    if policy.endswith("-mu"):
        fw = dataclasses.replace(fw, capacity_scheduler="max_utilization")
    r = simulate(_random_trace(seed), toy(framework=fw, num_kv_blocks=400, **spec(k=k, a=0.6)), progress=False)
    check(r, k)


@pytest.mark.parametrize(
    "framework,words",
    [
        ("vllm-0.5-server", "spec-decode worker"),
        ("vllm-0.6-multistep-server", "spec-decode worker"),
        ("sglang-0.3-server", "draft-extend and verify batches"),
        ("sglang-0.5-server", "draft-extend and verify batches"),
    ],
)
def test_other_schedulers_refuse_naming_the_field(framework, words):
    with pytest.raises(KavierInputError) as e:
        run([0.0], [10], [5], framework=framework, **spec())
    assert e.value.location == "speculative_method" and words in str(e.value)
    assert "TensorRT-LLM" in e.value.expected
