"""bench/distserve_side_by_side.py, run as a script (never imported): bad input, and one run against a
stand-in DistServe checkout whose simulate_dist answers with known latencies."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "distserve_side_by_side.py"

#: a stand-in simulate_dist: reads the custom workload and writes simdistserve's per-request latency
#: file (ms) with TTFT = the prompt length in ms and 30 ms per output token
FAKE_SIMULATE = textwrap.dedent(
    """
    import json, sys, pathlib, pandas as pd
    args = sys.argv[1:]
    opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("--")}
    work = json.loads(pathlib.Path(opt["--workload"]).read_text())
    out = pathlib.Path(opt["--output-request-latency"])
    (out.parent / "seen_args.json").write_text(json.dumps(opt))
    ttft = [float(w["prompt_len"]) for w in work]
    dec = [30.0 * w["output_len"] for w in work]
    pd.DataFrame({"first_token_latency": ttft, "decoding_latency": dec,
                  "total_latency": [a + b for a, b in zip(ttft, dec)],
                  "tpot": [30.0] * len(work)}).to_csv(out, index=False)
    # a worker log of two decode iterations (ms) and one wait: 2 sequences for 30 ms, then one of
    # 49,000 context tokens (within 2,048 of the 50,000 cap) for 10 ms
    pd.DataFrame({"event_type": ["do_decode", "wait", "do_decode"], "decode_bs": [2, 0, 1],
                  "decode_batch": ["[100, 300]", "[]", "[49000]"], "duration": [30.0, 5.0, 10.0]}
                 ).to_csv(opt["--output-worker"], index=False)
    """
)

PROFILE = {"facebook/opt-13b": {"1": {"prefill": [18.0, 0.1, 7e-06]}}}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def _fake_checkout(root: Path, profile: dict | None = None) -> Path:
    files = {
        "simdistserve/__init__.py": "",
        "simdistserve/benchmarks/__init__.py": "",
        "simdistserve/benchmarks/simulate_dist.py": FAKE_SIMULATE,
        "simdistserve/estimators/profile_data/profiler-a100-80g.distserve.json": json.dumps(profile or PROFILE),
        "simdistserve/estimators/profile_data/max_num_tokens.csv": (
            "model,tp,pp,max_num_tokens\nfacebook/opt-13b,1,1,66144\nfacebook/opt-13b,2,1,163008\n"
        ),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _lengths(path: Path) -> Path:
    # three pairs fit OPT-13B; one is past 2,048 positions and one has a single output token
    pd.DataFrame(
        {
            "num_prefill_tokens": [100, 300, 50, 2000, 80],
            "num_decode_tokens": [11, 21, 5, 49, 1],
        }
    ).to_csv(path, index=False)
    return path


def test_missing_checkout_is_one_paragraph(tmp_path):
    proc = _run(str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "nowhere: no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_folder_that_is_not_a_checkout_names_the_missing_file(tmp_path):
    proc = _run(str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a DistServe checkout" in proc.stderr and "simulate_dist.py is missing" in proc.stderr


def test_checkout_without_opt13b_tp1_is_refused(tmp_path):
    ds = _fake_checkout(tmp_path, profile={"facebook/opt-66b": {"1": {"prefill": [1, 2, 3]}}})
    proc = _run(str(ds), "--lengths", str(_lengths(tmp_path / "l.csv")))
    assert proc.returncode == 2 and "no facebook/opt-13b entry at TP 1" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--requests", "0", "give at least one request"), ("--rate", "0", "give a positive arrival rate")],
)
def test_bad_numbers_refused(tmp_path, flag, value, message):
    proc = _run(str(_fake_checkout(tmp_path)), flag, value)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_length_file_with_other_columns_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": [1], "answer": [2]}).to_csv(bad, index=False)
    proc = _run(str(_fake_checkout(tmp_path / "ds")), "--lengths", str(bad))
    assert proc.returncode == 2 and "bad.csv: expected columns num_prefill_tokens" in proc.stderr


def test_too_few_fitting_pairs_refused(tmp_path):
    lengths = _lengths(tmp_path / "l.csv")
    proc = _run(str(_fake_checkout(tmp_path / "ds")), "--lengths", str(lengths), "--requests", "4")
    assert proc.returncode == 2 and "only 3 pairs fit 2048 positions, --requests 4" in proc.stderr


def test_against_a_stand_in_checkout(tmp_path):
    ds = _fake_checkout(tmp_path / "ds")
    work = tmp_path / "work"
    proc = _run(
        str(ds),
        "--lengths",
        str(_lengths(tmp_path / "l.csv")),
        "--requests",
        "3",
        "--rate",
        "4",
        "--work",
        str(work),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    # the workload: the three pairs that fit, one every 0.25 s, in simdistserve's custom layout
    seen = json.loads((work / "trace" / "distserve" / "workload.json").read_text())
    assert [w["start_time"] for w in seen] == [0.0, 0.25, 0.5]
    assert sorted((w["prompt_len"], w["output_len"]) for w in seen) == [(50, 5), (100, 11), (300, 21)]
    ours = pd.read_csv(work / "trace" / "kavier_trace.csv")
    assert list(zip(ours["num_input_tokens"], ours["num_output_tokens"], strict=True)) == [
        (w["prompt_len"], w["output_len"]) for w in seen
    ]
    # it ran DistServe's disaggregated backend on OPT-13B, TP 1 prefill and decode, custom arrivals
    args = json.loads((work / "trace" / "distserve" / "seen_args.json").read_text())
    assert args["--backend"] == "distserve" and args["--model"] == "facebook/opt-13b"
    assert args["--arrival"] == "custom" and args["--N"] == "3"
    assert args["--tp-prefill"] == args["--tp-decode"] == "1"
    r = json.loads((tmp_path / "r.json").read_text())
    d = r["trace"]["distserve"]
    # TTFT 50, 100, 300 ms: p50 100 ms, p99 by linear interpolation 100 + 0.98 * 200 = 296 ms
    assert d["ttft_s"] == pytest.approx([0.1, 0.296])
    assert d["tpot_s"] == pytest.approx([0.03, 0.03])
    # the 300-token prompt misses the 200 ms TTFT target: 2 of 3 within both
    assert d["slo_attainment_pct"] == pytest.approx({"prefill": 200 / 3, "decode": 100.0, "both": 200 / 3})
    assert r["settings"]["max_num_tokens"] == 66144 and r["settings"]["prefill_coeffs_ms"] == [18.0, 0.1, 7e-06]
    # the probe is one request of the workload's median lengths
    assert r["probe"] == {"input_tokens": 100, "output_tokens": 11}
    # our run: one A100-80GB TP 1 replica per pool, whole-request transfers over 300 GB/s NVLink
    summary = json.loads((work / "trace" / "kavier" / "summary.json").read_text())
    pools = summary["disaggregation"]["pools"]
    assert [(p["role"], p["gpu"], p["tp"], p["replicas"]) for p in pools] == [
        ("prefill", "A100-80GB", 1, 1),
        ("decode", "A100-80GB", 1, 1),
    ]
    link = summary["disaggregation"]["link"]
    assert link["gbs"] == pytest.approx(300.0) and link["mode"] == "whole"
    # OPT-13B's KV: 2 x 40 layers x 5120 x 2 bytes per token, every prompt moved once
    assert link["bytes_moved"] == pytest.approx(2 * 40 * 5120 * 2 * (50 + 100 + 300))
    k = r["trace"]["kavier"]
    assert k["requests"] == 3 and 0 < k["ttft_s"][0] <= k["ttft_s"][1]
    # its decode iterations: 2 steps of mean 20 ms, batch (2 x 30 + 1 x 10) / 40 = 1.75, one near the cap
    assert d["decode_steps"] == 2 and d["decode_step_s_mean"] == pytest.approx(0.02)
    assert d["decode_batch_mean"] == pytest.approx(1.75) and d["decode_steps_near_cap"] == pytest.approx(0.5)
    # ours: every output token after the first is one decode step of some batch
    assert 0 < k["decode_steps"] <= (11 - 1) + (21 - 1) + (5 - 1)
    assert 1 <= k["decode_batch_mean"] <= 3 and 0 < k["decode_kv_peak"] <= 1 and k["decode_wait_s_mean"] >= 0
    assert "| requests finished | 3 | 3 |" in proc.stdout
    assert "| decode steps within 2,048 tokens of simdistserve's 50,000-token batch cap | 50 % | - |" in proc.stdout


def test_failing_simdistserve_is_one_paragraph(tmp_path):
    ds = _fake_checkout(tmp_path / "ds")
    (ds / "simdistserve/benchmarks/simulate_dist.py").write_text("import simpy_not_installed_here\n")
    proc = _run(str(ds), "--lengths", str(_lengths(tmp_path / "l.csv")), "--requests", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "simdistserve failed" in proc.stderr and "No module named 'simpy_not_installed_here'" in proc.stderr
    assert "pass --distserve-python" in proc.stderr
