"""Tests of kavier_opendc.workload.synthetic: arrivals, lengths, sessions, spec files."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_DATA
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.workload.synthetic import (
    LengthSpec,
    load_synthetic_spec,
    schema_path,
    synthetic_trace,
    validate_synthetic_spec,
)
from kavier_opendc.workload.trace import Trace

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "traces"
SHAREGPT = DATA / "sharegpt_lengths_llama2.csv"


def sharegpt() -> Path:
    if not SHAREGPT.is_file():
        pytest.skip(f"shared data file {SHAREGPT} is absent")
    return SHAREGPT


def sharegpt_rows() -> list[tuple[int, int]]:
    with open(sharegpt(), newline="") as fh:
        return [(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(fh)]


def same(a: Trace, b: Trace) -> bool:
    ok = (
        np.array_equal(a.arrival_s, b.arrival_s)
        and np.array_equal(a.num_input_tokens, b.num_input_tokens)
        and np.array_equal(a.num_output_tokens, b.num_output_tokens)
    )
    if a.session_id is not None or b.session_id is not None:
        ok = ok and np.array_equal(a.session_id, b.session_id)
    return ok and a.hash_ids == b.hash_ids


def check_invariants(tr: Trace) -> None:
    assert tr.format == "synthetic"
    assert tr.arrival_s.dtype == np.float64
    assert tr.num_input_tokens.dtype == np.int64 and tr.num_output_tokens.dtype == np.int64
    assert len(tr) == tr.arrival_s.size == tr.num_output_tokens.size
    if len(tr):
        assert tr.arrival_s[0] == 0.0
    assert np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.num_input_tokens.min() >= 1 and tr.num_output_tokens.min() >= 1


# --------------------------------------------------------------------------- determinism


SESSION_KW = dict(
    sessions={
        "turns": {"dist": "uniform", "low": 1, "high": 6},
        "think_time_s": {"dist": "exponential", "mean": 20.0},
        "accumulate_context": True,
    },
    hash_ids=True,
    shared_prefix_tokens=600,
)


@pytest.mark.parametrize("kw", [{}, {"arrival": "gamma", "cv": 2.0}, SESSION_KW], ids=["poisson", "gamma", "sessions"])
def test_deterministic_for_a_seed(kw):
    args = dict(input=LengthSpec.lognormal(mean=700, sigma=0.8, max=8000), output=LengthSpec.uniform(1, 400), **kw)
    a = synthetic_trace(5000, 10.0, seed=7, **args)
    b = synthetic_trace(5000, 10.0, seed=7, **args)
    c = synthetic_trace(5000, 10.0, seed=8, **args)
    check_invariants(a)
    assert same(a, b)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert not np.array_equal(a.num_input_tokens, c.num_input_tokens)


# --------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("rate", [0.5, 20.0, 1000.0])
def test_poisson_mean_interarrival(rate):
    tr = synthetic_trace(200_000, rate, seed=1, input=10, output=10)
    gaps = np.diff(tr.arrival_s)
    assert gaps.mean() == pytest.approx(1.0 / rate, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_cv(cv):
    tr = synthetic_trace(300_000, 5.0, arrival="gamma", cv=cv, seed=3, input=10, output=10)
    gaps = np.diff(tr.arrival_s)
    assert gaps.mean() == pytest.approx(0.2, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_constant_and_batch_arrivals():
    tr = synthetic_trace(11, 4.0, arrival="constant", input=3, output=2)
    np.testing.assert_allclose(tr.arrival_s, np.arange(11) * 0.25)
    tr = synthetic_trace(5, None, arrival="batch", input=3, output=2)
    assert np.all(tr.arrival_s == 0) and tr.total_tokens() == 25


# --------------------------------------------------------------------------- lengths


def test_constant_uniform_lengths():
    tr = synthetic_trace(50_000, 1.0, input=LengthSpec.uniform(3, 9), output=LengthSpec.constant(42), seed=2)
    assert set(np.unique(tr.num_input_tokens)) == set(range(3, 10))
    assert np.all(tr.num_output_tokens == 42)


def test_lognormal_mean_and_median():
    tr = synthetic_trace(
        200_000,
        1.0,
        input=LengthSpec.lognormal(mean=1000, sigma=0.5),
        output=LengthSpec.lognormal(median=200, sigma=1.0),
        seed=4,
    )
    assert tr.num_input_tokens.mean() == pytest.approx(1000, rel=0.02)
    assert np.median(tr.num_output_tokens) == pytest.approx(200, rel=0.03)
    tr = synthetic_trace(
        10_000, 1.0, input=LengthSpec.lognormal(mean=1000, sigma=2.0, min=50, max=4096), output=1, seed=4
    )
    assert tr.num_input_tokens.min() >= 50 and tr.num_input_tokens.max() <= 4096


def test_zipf_bounded_and_unbounded():
    tr = synthetic_trace(100_000, 1.0, input=LengthSpec.zipf(1.1, min=5, max=300), output=LengthSpec.zipf(2.0), seed=5)
    x = tr.num_input_tokens
    assert x.min() >= 5 and x.max() <= 300
    counts = np.bincount(x)
    assert counts[5] == counts.max()  # the mode is the minimum
    assert counts[5] / counts[6] == pytest.approx(2**1.1, rel=0.1)
    assert tr.num_output_tokens.min() >= 1


def test_histogram_from_file_stays_in_support():
    rows = sharegpt_rows()
    obs_in = {r[0] for r in rows}
    obs_out = {r[1] for r in rows}
    f = str(sharegpt())
    tr = synthetic_trace(50_000, 3.0, input=LengthSpec.histogram(file=f), output=LengthSpec.histogram(file=f), seed=9)
    assert set(np.unique(tr.num_input_tokens)) <= obs_in
    assert set(np.unique(tr.num_output_tokens)) <= obs_out
    # auto joint sampling keeps observed (input, output) pairs and their correlation
    pairs = set(rows)
    assert all(p in pairs for p in zip(tr.num_input_tokens.tolist(), tr.num_output_tokens.tolist(), strict=True))
    obs = np.array(rows, dtype=float)
    r_obs = np.corrcoef(obs[:, 0], obs[:, 1])[0, 1]
    r_syn = np.corrcoef(tr.num_input_tokens, tr.num_output_tokens)[0, 1]
    assert r_syn == pytest.approx(r_obs, abs=0.03)
    # explicit independent sampling breaks the pairing
    ind = synthetic_trace(
        50_000, 3.0, input=LengthSpec.histogram(file=f), output=LengthSpec.histogram(file=f), seed=9, joint=False
    )
    assert set(np.unique(ind.num_input_tokens)) <= obs_in
    assert not all(p in pairs for p in zip(ind.num_input_tokens.tolist(), ind.num_output_tokens.tolist(), strict=True))
    assert abs(np.corrcoef(ind.num_input_tokens, ind.num_output_tokens)[0, 1]) < 0.03


def test_histogram_named_column(tmp_path):
    p = tmp_path / "lens.csv"
    p.write_text("prompt,answer\n10,1\n20,2\n30,3\n")
    tr = synthetic_trace(
        1000,
        1.0,
        input={"dist": "histogram", "file": str(p), "column": "prompt"},
        output={"dist": "histogram", "file": str(p), "column": "answer"},
        seed=1,
    )
    assert set(np.unique(tr.num_input_tokens)) <= {10, 20, 30}
    np.testing.assert_array_equal(tr.num_input_tokens, tr.num_output_tokens * 10)  # joint rows


def test_histogram_bins_and_values():
    tr = synthetic_trace(
        100_000,
        1.0,
        input=LengthSpec.histogram(bins=[1, 100, 1000, 4000], weights=[0.5, 0.3, 0.2]),
        output=LengthSpec.histogram(values=[7, 70], weights=[3, 1]),
        seed=11,
    )
    x = tr.num_input_tokens
    assert x.min() >= 1 and x.max() < 4000
    frac = [np.mean(x < 100), np.mean((x >= 100) & (x < 1000)), np.mean(x >= 1000)]
    np.testing.assert_allclose(frac, [0.5, 0.3, 0.2], atol=0.01)
    assert set(np.unique(tr.num_output_tokens)) == {7, 70}
    assert np.mean(tr.num_output_tokens == 7) == pytest.approx(0.75, abs=0.01)


@settings(max_examples=30, deadline=None)
@given(
    low=st.integers(1, 10_000),
    span=st.integers(0, 10_000),
    lo_clip=st.integers(1, 5000),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 2000),
)
def test_lengths_always_respect_clips(low, span, lo_clip, seed, n):
    spec = LengthSpec("lognormal", median=float(low), sigma=1.5, min=lo_clip, max=lo_clip + span)
    tr = synthetic_trace(n, 2.0, input=spec, output=LengthSpec.uniform(low, low + span), seed=seed)
    check_invariants(tr)
    assert len(tr) == n
    assert tr.num_input_tokens.min() >= lo_clip and tr.num_input_tokens.max() <= lo_clip + span
    assert tr.num_output_tokens.min() >= low and tr.num_output_tokens.max() <= low + span


# --------------------------------------------------------------------------- sessions


def _by_session(tr: Trace) -> dict[int, np.ndarray]:
    order = np.argsort(tr.session_id, kind="stable")
    sid = tr.session_id[order]
    cuts = np.flatnonzero(np.diff(sid)) + 1
    return {int(sid[g[0]]): g for g in np.split(order, cuts)}


def test_sessions_ids_turns_and_think_time():
    tr = synthetic_trace(
        20_000,
        50.0,
        input=100,
        output=10,
        seed=3,
        sessions={"turns": {"dist": "uniform", "low": 2, "high": 5}, "think_time_s": 7.5},
    )
    check_invariants(tr)
    assert len(tr) == 20_000
    sid = tr.session_id
    assert sid.dtype == np.int64
    # dense ids in order of first appearance
    _, first = np.unique(sid, return_index=True)
    assert np.all(np.diff(first) > 0) and sid.max() + 1 == first.size
    groups = _by_session(tr)
    sizes = np.array([g.size for g in groups.values()])
    assert sizes[:-1].min() >= 1 and sizes.max() <= 5
    assert np.sum(sizes < 2) <= 1  # only the cut-short last session may have fewer turns
    for g in list(groups.values())[:200]:
        np.testing.assert_allclose(np.diff(tr.arrival_s[g]), 7.5)
    # long-run request rate is `rate` (measured in the middle, away from the edges)
    in_window = np.count_nonzero((tr.arrival_s >= 100) & (tr.arrival_s < 300))
    assert in_window / 200 == pytest.approx(50.0, rel=0.05)


def test_sessions_exact_count_and_accumulated_context():
    tr = synthetic_trace(
        None,
        5.0,
        input=LengthSpec.uniform(10, 50),
        output=LengthSpec.uniform(1, 30),
        seed=12,
        sessions={
            "num_sessions": 300,
            "turns": {"dist": "uniform", "low": 1, "high": 4},
            "think_time_s": {"dist": "exponential", "mean": 3.0},
            "accumulate_context": True,
        },
        shared_prefix_tokens=1100,
        hash_ids=True,
        hash_block_size=512,
    )
    check_invariants(tr)
    assert np.unique(tr.session_id).size == 300
    for g in _by_session(tr).values():
        ins, outs = tr.num_input_tokens[g], tr.num_output_tokens[g]
        assert np.all(ins[1:] > ins[:-1] + outs[:-1])  # previous prompt + answer + new message
        for k in range(1, g.size):
            prev, cur = tr.hash_ids[g[k - 1]], tr.hash_ids[g[k]]
            full_prev = ins[k - 1] // 512
            assert cur[:full_prev] == prev[:full_prev]
    assert all(len(h) == -(-n // 512) for h, n in zip(tr.hash_ids, tr.num_input_tokens.tolist(), strict=True))
    assert all(h[:2] == [0, 1] for h in tr.hash_ids)  # two full blocks of the shared prefix
    # partially filled last blocks are unique
    partial = [h[-1] for h, n in zip(tr.hash_ids, tr.num_input_tokens.tolist(), strict=True) if n % 512]
    assert len(partial) == len(set(partial))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3000),
    hi=st.integers(1, 6),
    think=st.floats(0, 100),
    seed=st.integers(0, 10**6),
    arrival=st.sampled_from(["poisson", "gamma", "constant", "batch"]),
)
def test_sessions_property(n, hi, think, seed, arrival):
    tr = synthetic_trace(
        n,
        3.0,
        arrival=arrival,
        cv=2.0,
        input=5,
        output=5,
        seed=seed,
        sessions={"turns": {"dist": "uniform", "low": 1, "high": hi}, "think_time_s": think},
    )
    check_invariants(tr)
    assert len(tr) == n
    assert tr.session_id is not None and tr.session_id.min() == 0
    _, first = np.unique(tr.session_id, return_index=True)
    assert np.all(np.diff(first) > 0)


# --------------------------------------------------------------------------- errors and spec files


def test_invalid_parameters_report_every_problem():
    with pytest.raises(KavierInputError) as ei:
        synthetic_trace(0, -1.0, arrival="weibull", input={"dist": "lognormal", "sigma": 1}, output=0)
    msg = str(ei.value)
    for needle in ("$.num_requests", "$.rate", "$.arrival", "$.input", "mean", "$.output"):
        assert needle in msg, msg


def test_spec_file_json_and_yaml(tmp_path):
    (tmp_path / "lens.csv").write_text("num_prefill_tokens,num_decode_tokens\n100,10\n200,20\n300,30\n")
    spec = {
        "name": "demo",
        "num_requests": 2000,
        "rate": 4.0,
        "arrival": "gamma",
        "cv": 1.5,
        "seed": 42,
        "input": {"dist": "histogram", "file": "lens.csv"},
        "output": {"dist": "histogram", "file": "lens.csv"},
        "sessions": {"turns": {"dist": "uniform", "low": 1, "high": 3}, "think_time_s": 4},
    }
    (tmp_path / "w.json").write_text(json.dumps(spec))
    (tmp_path / "w.yaml").write_text(
        "name: demo\nnum_requests: 2000\nrate: 4.0\narrival: gamma\ncv: 1.5\nseed: 42\n"
        "input: {dist: histogram, file: lens.csv}\noutput: {dist: histogram, file: lens.csv}\n"
        "sessions:\n  turns: {dist: uniform, low: 1, high: 3}\n  think_time_s: 4\n"
    )
    a = load_synthetic_spec(tmp_path / "w.json")
    b = load_synthetic_spec(tmp_path / "w.yaml")
    c = synthetic_trace(
        2000,
        4.0,
        arrival="gamma",
        cv=1.5,
        seed=42,
        input=LengthSpec.histogram(file=tmp_path / "lens.csv"),
        output=LengthSpec.histogram(file=tmp_path / "lens.csv"),
        sessions={"turns": {"dist": "uniform", "low": 1, "high": 3}, "think_time_s": 4},
    )
    check_invariants(a)
    assert same(a, b) and same(a, c)
    assert a.source == str(tmp_path / "w.json")
    np.testing.assert_array_equal(a.num_input_tokens, a.num_output_tokens * 10)
    d = load_synthetic_spec(spec, base_dir=tmp_path)
    assert same(a, d)


def test_spec_validation_lists_every_problem_with_paths(tmp_path):
    bad = {
        "num_requests": 0,
        "rate": "fast",
        "arrival": "weibull",
        "bogus": 1,
        "input": {"dist": "uniform", "low": 5},
        "output": {"dist": "lognormal", "mean": 10},
        "sessions": {"turns": 0},
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(KavierInputError) as ei:
        load_synthetic_spec(p)
    msg = str(ei.value)
    assert "bad.json" in msg
    for needle in (
        "$.num_requests",
        "$.rate",
        "$.arrival",
        "bogus",
        "$.input",
        "'high'",
        "$.output",
        "'sigma'",
        "$.sessions",
        "'think_time_s'",
        "$.sessions.turns",
    ):
        assert needle in msg, (needle, msg)
    assert "\n" not in msg
    assert len(validate_synthetic_spec(bad)) >= 8


def test_spec_semantic_problems(tmp_path):
    spec = {
        "num_requests": 10,
        "rate": 1,
        "input": {"dist": "uniform", "low": 50, "high": 5},
        "output": {"dist": "histogram", "file": "nowhere.csv"},
        "sessions": {"turns": 2, "think_time_s": {"dist": "lognormal", "sigma": 1}},
    }
    with pytest.raises(KavierInputError) as ei:
        load_synthetic_spec(spec, base_dir=tmp_path)
    msg = str(ei.value)
    for needle in ("$.input.high", "$.output.file", "nowhere.csv", "$.sessions.think_time_s", "mean"):
        assert needle in msg, (needle, msg)


def test_spec_file_syntax_errors(tmp_path):
    (tmp_path / "x.yaml").write_text("rate: 1\ninput: [1, 2\n")
    with pytest.raises(KavierInputError, match="line") as ei:
        load_synthetic_spec(tmp_path / "x.yaml")
    assert "x.yaml" in str(ei.value)
    (tmp_path / "x.json").write_text('{"rate": 1,}')
    with pytest.raises(KavierInputError, match="line 1"):
        load_synthetic_spec(tmp_path / "x.json")
    with pytest.raises(KavierInputError, match="not found"):
        load_synthetic_spec(tmp_path / "absent.yaml")


def test_schema_path_is_the_schemas_file():
    assert schema_path().read_bytes() == (REPO / "schemas" / "synthetic_workload.schema.json").read_bytes()


# --------------------------------------------------------------------------- speed


def test_one_million_requests_speed():
    t = time.perf_counter()
    tr = synthetic_trace(
        1_000_000,
        100.0,
        arrival="gamma",
        cv=2.0,
        seed=1,
        input=LengthSpec.lognormal(mean=900, sigma=1.0, max=16_000),
        output=LengthSpec.uniform(1, 1024),
    )
    plain = time.perf_counter() - t
    t = time.perf_counter()
    tr2 = synthetic_trace(
        1_000_000,
        100.0,
        seed=1,
        input=LengthSpec.uniform(10, 500),
        output=LengthSpec.uniform(1, 500),
        sessions={"turns": {"dist": "uniform", "low": 1, "high": 10}, "think_time_s": 30, "accumulate_context": True},
    )
    sessions = time.perf_counter() - t
    assert len(tr) == len(tr2) == 1_000_000
    check_invariants(tr2)
    print(f"\n1M requests: {plain:.3f} s plain, {sessions:.3f} s with sessions")
    assert plain < 10.0 and sessions < 10.0
