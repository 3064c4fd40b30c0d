"""SGLang v0.3's scheduler and vLLM 0.6's multi-step scheduling: by hand, invariants, fast = exact, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import shared
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.simulator import simulate
from kavier_opendc.specs.frameworks import builtin_frameworks, framework
from test_engine import _random_trace, fast_and_exact, run, toy
from test_frameworks import v0_time

# the toy GPU takes vllm-0.5-offline's '*' overhead (1.5 ms + 75 us per sequence per step): v0_time
_BASE = framework("vllm-0.5-offline")
SGL = dataclasses.replace(_BASE, name="sglang-toy", engine="sglang", policy="sglang", batch_defaults="sglang")


def multistep(steps: int):
    return dataclasses.replace(_BASE, name=f"multistep-{steps}", scheduler_steps=steps)


def decode(*cached: int) -> float:
    """One decode step of sequences with these cached tokens."""
    n, c = len(cached), sum(cached)
    return v0_time(n, n, c + n, c + n)


# ------------------------------------------------------------------ the built-in profiles
def test_builtin_profiles_of_the_two_engines():
    fws = builtin_frameworks()
    sg, ms = fws["sglang-0.3-server"], fws["vllm-0.6-multistep-server"]
    assert (sg.policy, sg.batch_defaults, sg.scheduler_steps, sg.serving_path) == ("sglang", "sglang", 1, "server")
    assert (ms.policy, ms.scheduler_steps, ms.serving_path) == ("vllm-v0", 10, "server")
    for fw in (sg, ms):
        assert set(fw.step_overhead) == {("A100-80GB", 1), ("H100-SXM", 4)}
        # the A100 rows leave no CPU time beside the attention kernels' floor (0.49 ms for 32 layers): fixed_s 0
        assert all(o.per_seq_s == 0 and 0 <= o.fixed_s < 0.02 for o in fw.step_overhead.values())
        assert 0 <= fw.client_latency_s < 0.1
        assert "sglang030_vllm060_sharegpt.csv" in fw.provenance["step_overhead"]
    assert "05bea6883c4b" in sg.provenance["policy"] and "v0.6.0" in ms.provenance["policy"]
    cat_a100 = __import__("kavier_opendc.specs", fromlist=["default_catalog"]).default_catalog().gpu("A100-80GB")
    assert sg.batch_limits(cat_a100, "server", 131072) == (8192, 2048)


# ------------------------------------------------------------------ vLLM 0.6 multi-step by hand
def test_multistep_blocks_by_hand():
    # 3 steps per block. A (100 prompt, 5 out) at 0; B (50, 3) and C (20, 2) arrive during A's prefill;
    # D (10, 2) arrives during the first decode block.
    #   prefill A | prefill B+C | block 1: A+B+C x 3 steps (C's last token at step 1, B's at step 2: both
    #   finish at the block's end, having run all 3 steps) | prefill D (D waited for the block) |
    #   block 2: A+D x 3 steps (both done at step 1, finish at the block's end)
    t1 = v0_time(100, 1, 5050, 100)
    t2 = v0_time(70, 2, 50 * 51 // 2 + 20 * 21 // 2, 70)
    b1 = decode(100, 50, 20) + decode(101, 51, 21) + decode(102, 52, 22)
    t3 = v0_time(10, 1, 55, 10)
    b2 = decode(103, 10) + decode(104, 11) + decode(105, 12)
    d_at = t1 + t2 + 0.5 * decode(100, 50, 20)  # inside block 1
    res = run([0.0, 0.001, 0.002, d_at], [100, 50, 20, 10], [5, 3, 2, 2], framework=multistep(3))
    r = res.results
    assert r.first_token[0] == pytest.approx(t1, rel=1e-12)
    assert r.first_token[1] == r.first_token[2] == pytest.approx(t1 + t2, rel=1e-12)
    assert r.finish[1] == r.finish[2] == pytest.approx(t1 + t2 + b1, rel=1e-12)  # the block's end, not step 1/2
    assert r.first_sched[3] == pytest.approx(t1 + t2 + b1, rel=1e-12)  # admitted between blocks only
    assert r.first_token[3] == pytest.approx(t1 + t2 + b1 + t3, rel=1e-12)
    assert r.finish[0] == r.finish[3] == pytest.approx(t1 + t2 + b1 + t3 + b2, rel=1e-12)
    # the GPU ran every step of both blocks: 9 + 6 decode tokens for the 4 + 2 + 1 + 1 the requests needed
    assert sum(res.replicas[0].timeline.decode) == 15
    # the same requests one step at a time (plain v0): C finishes after one decode step, D is admitted earlier
    v0 = run([0.0, 0.001, 0.002, d_at], [100, 50, 20, 10], [5, 3, 2, 2], framework=_BASE).results
    assert v0.finish[2] == pytest.approx(t1 + t2 + decode(100, 50, 20), rel=1e-12)
    assert v0.first_sched[3] < r.first_sched[3]


def test_multistep_streams_a_block_at_a_time():
    # one request alone, 10 steps per block, 21 output tokens: prefill + 2 blocks; the time per output
    # token is the blocks' time over 20 tokens, and a client sees 10 tokens at each block's end
    t1 = v0_time(100, 1, 5050, 100)
    blocks = sum(decode(100 + k) for k in range(20))
    r = run([0.0], [100], [21], framework=multistep(10)).results
    assert r.finish[0] == pytest.approx(t1 + blocks, rel=1e-12)
    # with 12 tokens the second block still runs its 10 steps (9 of them discarded)
    r12 = run([0.0], [100], [12], framework=multistep(10)).results
    assert r12.finish[0] == pytest.approx(t1 + blocks, rel=1e-12)
    assert run([0.0], [100], [12], framework=_BASE).results.finish[0] == pytest.approx(
        t1 + sum(decode(100 + k) for k in range(11)), rel=1e-12
    )


def test_multistep_preempts_for_the_lookahead_slots():
    # 10 steps need the next token plus 9 lookahead slots per sequence: two 16-token prompts each need a
    # second block for the first block of steps; with 3 blocks the newest is preempted (recompute)
    r = run([0.0, 0.0], [16, 16], [4, 4], framework=multistep(10), num_kv_blocks=3)
    assert r.results.preemptions[1] >= 1 and (r.results.status == 1).all()
    assert run([0.0, 0.0], [16, 16], [4, 4], framework=multistep(10), num_kv_blocks=4).results.preemptions.sum() == 0


# ------------------------------------------------------------------ SGLang v0.3 by hand
def test_sglang_extend_batches_first_then_decode_steps_by_hand():
    # A (100, 5) at 0; B (50, 3), C (20, 2) during A's prefill: extend A | extend B+C (A waits) |
    # decode A+B+C (C done) | decode A+B (B done) | decode A | decode A (A done)
    t1 = v0_time(100, 1, 5050, 100)
    t2 = v0_time(70, 2, 50 * 51 // 2 + 20 * 21 // 2, 70)
    s1, s2 = decode(100, 50, 20), decode(101, 51)
    s3, s4 = decode(102), decode(103)
    for exact in (False, True):
        r = run([0.0, 0.001, 0.002], [100, 50, 20], [5, 3, 2], framework=SGL, exact=exact).results
        assert r.first_token[0] == pytest.approx(t1, rel=1e-12)
        assert r.first_token[1] == r.first_token[2] == pytest.approx(t1 + t2, rel=1e-12)
        assert r.finish[2] == pytest.approx(t1 + t2 + s1, rel=1e-12)
        assert r.finish[1] == pytest.approx(t1 + t2 + s1 + s2, rel=1e-12)
        assert r.finish[0] == pytest.approx(t1 + t2 + s1 + s2 + s3 + s4, rel=1e-12)


def test_sglang_chunked_prefill_by_hand():
    # chunk size 64: A (100, 2) is cut at 64 and continues first in the next extend batch, where B (10, 2)
    # fills what is left of the chunk; then one decode step of both
    t1 = v0_time(64, 1, 64 * 65 // 2, 64)
    t2 = v0_time(46, 2, 36 * 64 + 36 * 37 // 2 + 10 * 11 // 2, 64 + 46)
    r = run([0.0, 0.0], [100, 10], [2, 2], framework=SGL, max_batched_tokens=64).results
    assert r.first_sched[1] == pytest.approx(t1, rel=1e-12)
    assert r.first_token[0] == r.first_token[1] == pytest.approx(t1 + t2, rel=1e-12)
    assert r.finish[0] == r.finish[1] == pytest.approx(t1 + t2 + decode(100, 10), rel=1e-12)


def test_sglang_admission_reserves_the_running_outputs_by_hand():
    # 20 blocks (320 tokens). A (8, 200) decodes in its first block (8 + k <= 16 tokens); B (16, 151) needs
    # 16 + 151 = 167 < 304 - (199 - k) x (0.7 - 0.001 k): 164.7, 165.6, 166.5 after k = 0, 1, 2 decode steps
    # (refused), 167.39 after k = 3 (admitted: an extend batch of B alone)
    t1 = v0_time(8, 1, 36, 8)
    steps = decode(8) + decode(9) + decode(10)
    for exact in (False, True):
        r = run([0.0, 0.001], [8, 16], [200, 151], framework=SGL, num_kv_blocks=20, exact=exact).results
        assert r.first_sched[1] == pytest.approx(t1 + steps, rel=1e-12)
        assert r.first_token[1] == pytest.approx(t1 + steps + v0_time(16, 1, 136, 16), rel=1e-12)
        # A's 208 tokens and B's 167 need 24 blocks by the end: decoding runs out, and B (fewer generated
        # tokens) is retracted, to be recomputed after A
        assert (r.status == 1).all() and list(r.preemptions) == [0, 1]
    # B one token shorter (166): admitted after 2 steps; with room to spare, at once (A waits for its prompt)
    r = run([0.0, 0.001], [8, 16], [200, 150], framework=SGL, num_kv_blocks=20).results
    assert r.first_sched[1] == pytest.approx(t1 + decode(8) + decode(9), rel=1e-12)
    r = run([0.0, 0.001], [8, 16], [200, 151], framework=SGL, num_kv_blocks=200).results
    assert r.first_sched[1] == pytest.approx(t1, rel=1e-12)


def test_sglang_retracts_the_fewest_generated_when_memory_runs_out():
    # many requests with long outputs on few blocks: the 0.7 ratio over-admits, decoding runs out of blocks
    # and requests are retracted (recomputed later); all finish, fast and exact alike
    trace_kw = dict(arrivals=[0.001 * i for i in range(12)], prompts=[40] * 12, outputs=[120] * 12)
    kw = dict(num_kv_blocks=40)
    a = run(trace_kw["arrivals"], trace_kw["prompts"], trace_kw["outputs"], framework=SGL, **kw)
    b = run(trace_kw["arrivals"], trace_kw["prompts"], trace_kw["outputs"], framework=SGL, exact=True, **kw)
    assert a.results.preemptions.sum() > 0 and (a.results.status == 1).all()
    assert np.allclose(a.results.finish, b.results.finish, rtol=1e-9)
    assert a.replicas[0].peak_used <= 40


def test_sglang_rejects_what_it_can_never_admit():
    # prompt + output beyond the whole pool (10 blocks = 160 tokens): never admitted, rejected; the next runs
    r = run([0.0, 0.0], [100, 20], [100, 5], framework=SGL, num_kv_blocks=10).results
    assert list(r.status) == [2, 1]


# ------------------------------------------------------------------ invariants, fast = exact
def _check_multistep(result, steps):
    """check_invariants of test_engine, but a block runs all its steps: decode work >= what was needed."""
    tr, res = result.trace, result.results
    assert (res.status != 0).all()
    done = res.status == 1
    assert (res.first_token[done] >= res.first_sched[done]).all() and (res.finish[done] >= res.first_token[done]).all()
    prefill = decode_tokens = 0
    for rep in result.replicas:
        assert rep.used == 0 and rep.D == 0 and not rep.running and not rep.waiting
        assert rep.peak_used <= rep.capacity
        prefill += sum(rep.timeline.prefill)
        decode_tokens += sum(rep.timeline.decode)
    need_prefill = int(tr.num_input_tokens[done].sum())
    need_decode = int((tr.num_output_tokens[done] - 1).sum())
    if res.preemptions.sum() == 0:
        assert prefill == need_prefill
        assert need_decode <= decode_tokens <= need_decode + (steps - 1) * int(done.sum())
    else:
        assert prefill + decode_tokens >= need_prefill + need_decode


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(40, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(8, 2048),
)
# a retracted request (139 of 173 tokens generated) was re-admitted against its whole output instead of what
# is left of it, so it never fitted the 40 blocks again and was rejected after its prefill had run
@example(seed=2646, replicas=2, blocks=40, seqs=2, budget=8)
def test_sglang_invariants_and_fast_equals_exact(seed, replicas, blocks, seqs, budget):
    kw = dict(
        replicas=replicas, num_kv_blocks=blocks, max_num_seqs=seqs, max_batched_tokens=budget, seed=seed, framework=SGL
    )
    fast_and_exact(_random_trace(seed), toy(**kw), toy(exact=True, **kw))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    blocks=st.integers(60, 400),
    seqs=st.integers(1, 32),
    budget=st.integers(600, 2048),
    steps=st.sampled_from([2, 3, 10]),
)
def test_multistep_invariants_and_fast_equals_exact(seed, replicas, blocks, seqs, budget, steps):
    kw = dict(
        replicas=replicas,
        num_kv_blocks=blocks,
        max_num_seqs=seqs,
        max_batched_tokens=budget,
        seed=seed,
        framework=multistep(steps),
    )
    trace = _random_trace(seed)
    fast = simulate(trace, toy(**kw), progress=False)
    exact = simulate(trace, toy(exact=True, **kw), progress=False)
    _check_multistep(fast, steps)
    _check_multistep(exact, steps)
    for name in ("first_sched", "first_token", "finish"):
        x, y = getattr(fast.results, name), getattr(exact.results, name)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.allclose(x[~np.isnan(y)], y[~np.isnan(y)], rtol=1e-9, atol=0)
    assert np.array_equal(fast.results.status, exact.results.status)
    assert np.array_equal(fast.results.preemptions, exact.results.preemptions)


# ------------------------------------------------------------------ bad input
def test_catalogue_files_with_the_new_policies_and_bad_ones(tmp_path):
    from kavier_opendc.specs.catalog import load_catalog_file

    good = tmp_path / "fw.yaml"
    good.write_text(
        "frameworks:\n  - name: mine\n    base: vllm-0.6-multistep-server\n    scheduler_steps: 4\n"
        "  - name: sg\n    base: sglang-0.3-server\n    client_latency_s: 0.01\n"
    )
    cat = load_catalog_file(good)
    assert cat.framework("mine").scheduler_steps == 4 and cat.framework("sg").policy == "sglang"
    for text, needle in [
        ("frameworks:\n  - name: x\n    policy: sglang-0.4\n", "policy"),
        ("frameworks:\n  - name: x\n    base: vllm-v1\n    scheduler_steps: 10\n", "scheduler_steps"),
        ("frameworks:\n  - name: x\n    scheduler_steps: 10\n", "policy"),
        ("frameworks:\n  - name: x\n    base: sglang-0.3-server\n    scheduler_steps: 2\n", "scheduler_steps"),
        ("frameworks:\n  - name: x\n    base: vllm-0.5-server\n    scheduler_steps: 0\n", "scheduler_steps"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(KavierInputError, match=needle):
            load_catalog_file(bad)


def test_framework_entry_errors_name_the_field():
    from kavier_opendc.specs.frameworks import framework_from_entry

    with pytest.raises(KavierInputError, match="scheduler_steps") as exc:
        framework_from_entry({"name": "x", "base": "vllm-v1", "scheduler_steps": 10})
    assert "vllm-v0" in str(exc.value)
    with pytest.raises(KavierInputError, match="unknown policy") as exc:
        framework_from_entry({"name": "x", "base": "vllm-v1", "policy": "sgl"})
    assert "sglang" in str(exc.value)


# ------------------------------------------------------------------ the fit on the shared benchmark
def test_serving_benchmark_fit_errors():
    import importlib.util
    from pathlib import Path

    shared("calibration/sglang030_vllm060_sharegpt.csv")
    spec = importlib.util.spec_from_file_location(
        "build_frameworks", Path(__file__).resolve().parents[1] / "bench" / "build_frameworks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from kavier_opendc.specs import default_catalog

    blocks: dict = {}
    table = mod.serving_bench_fits(default_catalog(), shared("calibration").parent, blocks)
    assert set(blocks) == {"sglang-0.3-server", "vllm-0.6-multistep-server"}
    online = [line.split("|") for line in table if line.startswith("| online")]
    assert len(online) == 8
    for cells in online:
        ttft, tpot, e2e = (float(c.strip(" %")) for c in cells[10:13])
        assert tpot < 5.0 and ttft < 25.0 and e2e < 15.0, cells
    offline = [line.split("|") for line in table if line.startswith("| offline")]
    assert len(offline) == 4 and all(abs(float(c[8].strip(" %"))) < 20.0 for c in offline)
    # held out: the median inter-token gap (a 10-step block for vLLM 0.6 multi-step), measured 129-275 ms
    itl = [line.split("|") for line in table if line.startswith("| ITL")]
    assert len(itl) == 8 and all(abs(float(c[8].strip(" %"))) < 15.0 for c in itl)
    multistep_itl = [float(c[7].split("/")[1]) for c in itl if "multistep" in c[2]]
    assert len(multistep_itl) == 4 and min(multistep_itl) > 100.0  # a block, not a token


def test_serving_bench_workload_helpers(tmp_path):
    from kavier_opendc.calibration.serving_bench import output_law, read_rows, sharegpt_lengths, sharegpt_trace

    # the power law gives the lengths the mean and median asked for, keeping their order
    o = np.arange(4, 1001, dtype=np.int64)  # an odd count: the median is one of them
    c, b = output_law(o, 194.3, 119.0)
    mapped = c * o.astype(float) ** b
    assert np.median(mapped) == pytest.approx(119.0, rel=1e-9) and mapped.mean() == pytest.approx(194.3, rel=1e-6)
    with pytest.raises(KavierInputError, match="power law"):
        output_law(np.full(10, 7), 194.3, 119.0)  # equal lengths: no law separates mean and median
    # the benchmark's ShareGPT filter; Poisson arrivals at the rate, all at once offline
    lengths = sharegpt_lengths(shared("traces/sharegpt_lengths_llama2.csv"))
    p, o = lengths
    assert (p >= 4).all() and (o >= 4).all() and (p <= 1024).all() and (p + o <= 2048).all()
    tr = sharegpt_trace(lengths, 2000, 8.0)
    assert len(tr) == 2000 and tr.arrival_s[0] == 0 and 2000 / tr.arrival_s[-1] == pytest.approx(8.0, rel=0.1)
    assert (sharegpt_trace(lengths, 50, float("inf")).arrival_s == 0).all()
    # a bad row names its line
    bad = tmp_path / "rows.csv"
    bad.write_text(
        "scenario,model,gpu,tp,request_rate_rps,num_prompts,engine,median_ttft_ms\nonline,m,g,one,4,100,e,30\n"
    )
    with pytest.raises(KavierInputError, match="line 2"):
        read_rows(bad, {"m": "Llama-3.1-8B"}, {"g": "A100-80GB"})
