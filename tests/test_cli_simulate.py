"""End-to-end: the ``kavier simulate`` command, its outputs and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import shared

REQ_COLS = [
    "request_id",
    "replica",
    "arrival_s",
    "num_input_tokens",
    "num_output_tokens",
    "cached_tokens",
    "queue_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "finish_s",
    "preemptions",
]
TL_COLS = ["replica", "start_s", "end_s", "gpu_utilization", "batch_size", "kv_utilization"]
SUMMARY_KEYS = [
    "num_requests",
    "makespan_s",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "prefix_cache_hit_ratio",
    "preemptions",
    "gpu_utilization_mean",
]


def kavier(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def small_trace(tmp_path):
    p = tmp_path / "trace.csv"
    rows = ["arrival_time_s,num_input_tokens,num_output_tokens"]
    rng = np.random.default_rng(0)
    t = 10.0
    for _ in range(50):
        rows.append(f"{t:.3f},{rng.integers(10, 2000)},{rng.integers(1, 300)}")
        t += float(rng.exponential(0.2))
    p.write_text("\n".join(rows) + "\n")
    return p


def test_simulate_writes_contract_outputs(tmp_path, small_trace):
    out = tmp_path / "out"
    r = kavier(
        "simulate",
        "--model",
        "llama-3-8b",
        "--gpu",
        "A100-80GB",
        "--trace",
        small_trace,
        "--out",
        out,
        "--replicas",
        "2",
        "--router",
        "least-kv",
    )
    assert r.returncode == 0, r.stderr
    assert "50 finished" in r.stdout
    req = pq.read_table(out / "requests.parquet").to_pandas()
    assert list(req.columns[: len(REQ_COLS)]) == REQ_COLS
    assert len(req) == 50 and req["request_id"].tolist() == list(range(50))
    assert req["arrival_s"].iloc[0] == 0.0  # re-based
    assert (req["ttft_s"] <= req["e2e_s"]).all()
    assert np.allclose(req["e2e_s"], req["finish_s"] - req["arrival_s"])
    assert str(pq.read_schema(out / "requests.parquet").field("request_id").type) == "int64"
    summary = json.loads((out / "summary.json").read_text())
    for k in SUMMARY_KEYS:
        assert k in summary
    for k in ("mean", "p50", "p90", "p99"):
        assert summary["ttft_s"][k] is not None
    assert summary["num_requests"] == 50
    assert [r["replica"] for r in summary["replicas"]] == [0, 1]
    assert all(0 < r["busy_fraction"] <= 1 for r in summary["replicas"])
    assert summary["num_over_model_context"] == 0
    # a timed trace is served as by vllm serve: vLLM v1's A100 defaults, reported with where they come from
    cfg = summary["config"]
    assert (cfg["usage"], cfg["max_batched_tokens"], cfg["max_num_seqs"]) == ("server", 2048, 256)
    assert cfg["batch_limits"] == "vLLM v1 defaults (server)"
    assert all(r["max_batched_tokens"] == 2048 for r in summary["replicas"])
    tl = pq.read_table(out / "timeline.parquet").to_pandas()
    for c in TL_COLS:
        assert c in tl.columns
    assert set(tl["replica"]) == {0, 1}
    for _, g in tl.groupby("replica"):
        assert g["start_s"].iloc[0] == 0.0
        assert np.allclose(g["start_s"].to_numpy()[1:], g["end_s"].to_numpy()[:-1])
        assert g["end_s"].iloc[-1] == pytest.approx(summary["makespan_s"])
    assert tl["gpu_utilization"].between(0, 1).all()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind


def test_simulate_is_deterministic(tmp_path, small_trace):
    for name in ("a", "b"):
        r = kavier(
            "simulate",
            "--model",
            "Mistral-7B",
            "--gpu",
            "l4",
            "--trace",
            small_trace,
            "--out",
            tmp_path / name,
            "--quiet",
            "--router",
            "random",
            "--seed",
            "3",
            "--replicas",
            "3",
        )
        assert r.returncode == 0, r.stderr
    a = pq.read_table(tmp_path / "a" / "requests.parquet")
    b = pq.read_table(tmp_path / "b" / "requests.parquet")
    assert a.equals(b)


def test_simulate_real_azure_trace(tmp_path):
    trace = shared("traces/azure_llm_2023_code.csv")
    r = kavier(
        "simulate", "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--trace", trace, "--out", tmp_path / "o", "--quiet"
    )
    assert r.returncode == 0, r.stderr
    req = pq.read_table(tmp_path / "o" / "requests.parquet")
    assert req.num_rows == 8819


def test_help_documents_every_flag():
    r = kavier("simulate", "--help")
    assert r.returncode == 0
    for flag in (
        "--model",
        "--gpu",
        "--trace",
        "--out",
        "--replicas",
        "--tp",
        "--max-num-seqs",
        "--max-batched-tokens",
        "--kv-cache",
        "--prefix-cache",
        "--router",
        "--seed",
        "--exact",
        "--trace-format",
        "--gpu-memory-utilization",
        "--catalog",
        "--max-model-len",
        "--prefix-cache-min-tokens",
        "--prefix-cache-scope",
        "--prefix-cache-capacity-prompts",
        "--prefix-cache-capacity-tokens",
        "--host-cache-gb",
        "--num-kv-blocks",
        "--quiet",
    ):
        assert flag in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["--gpu", "TPU"], "unknown GPU 'TPU'"),
        (["--router", "magic-router"], "unknown router"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--tp", "3"], "cannot be split evenly"),
        (["--prefix-cache", "magic"], "--prefix-cache"),
        # precisions (issue 22): the flag is named; FP8 on an A100 is refused unless the weight-only fallback is asked
        (["--weight-dtype", "fp5"], "--weight-dtype: unknown weight dtype 'fp5'"),
        (["--kv-cache-dtype", "int4"], "--kv-cache-dtype: unknown KV cache dtype 'int4'"),
        (["--weight-dtype", "fp8"], "--weight-dtype: fp8 weights on A100-80GB, which has no FP8 tensor cores"),
        (["--weight-dtype", "nvfp4", "--gpu", "H100-SXM"], "no peak_fp4_tflops"),
    ],
)
def test_bad_arguments_clear_error_no_output(tmp_path, small_trace, args, needle):
    base = {"--model": "Llama-3-8B", "--gpu": "A100-80GB", "--trace": str(small_trace), "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["simulate"] + [x for kv in base.items() for x in kv]
    r = kavier(*argv)
    assert r.returncode != 0
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        ("arrival_time_s,num_input_tokens,num_output_tokens\n0,10,5\n1,-3,5\n", "row 2"),
        ("arrival_time_s,num_input_tokens,num_output_tokens\n0,10,5\n1,2.5,5\n", "row 2"),
        ("arrival_time_s,num_input_tokens,num_output_tokens\n0,10,5\n1,,5\n", "row 2"),
        ("arrival_time_s,num_input_tokens,num_output_tokens\n5,10,5\n1,20,5\n", "row 2"),
        ("arrival_time_s,num_input_tokens\n0,10\n", "num_output_tokens"),
        ("time,prompt,answer\n0,10,5\n", "column"),
    ],
)
def test_bad_trace_clear_error_no_output(tmp_path, content, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    out = tmp_path / "out"
    r = kavier("simulate", "--model", "Llama-3-8B", "--gpu", "A10", "--trace", bad, "--out", out)
    assert r.returncode != 0
    assert "bad.csv" in r.stderr and needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_unwritable_output(tmp_path, small_trace):
    if os.geteuid() == 0:
        target = "/proc/kavier-out"  # even root cannot create directories in /proc
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    r = kavier("simulate", "--model", "Llama-3-8B", "--gpu", "A10", "--trace", small_trace, "--out", target)
    assert r.returncode != 0
    assert "cannot write" in r.stderr or "--out" in r.stderr
    assert "Traceback" not in r.stderr


def test_kv_off_slower_than_on(tmp_path, small_trace):
    res = {}
    for kv in ("on", "off"):
        r = kavier(
            "simulate",
            "--model",
            "Llama-3-8B",
            "--gpu",
            "A100-80GB",
            "--trace",
            small_trace,
            "--out",
            tmp_path / kv,
            "--kv-cache",
            kv,
            "--quiet",
        )
        assert r.returncode == 0, r.stderr
        res[kv] = json.loads((tmp_path / kv / "summary.json").read_text())
    assert res["off"]["tpot_s"]["mean"] > res["on"]["tpot_s"]["mean"]
