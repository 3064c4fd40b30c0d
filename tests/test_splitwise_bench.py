"""bench/splitwise_side_by_side.py, run as a script (never imported): bad input, and one run against a
stand-in Splitwise-sim checkout whose run.py answers with known latencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "splitwise_side_by_side.py"

#: a stand-in run.py: reads the converted trace and writes Splitwise-sim's two output files with
#: TTFT 0.1 s and 30 ms per output token after the first, on the first prompt and the last token machine
FAKE_RUN = textwrap.dedent(
    """
    import sys, pathlib, pandas as pd, yaml
    args = sys.argv[1:]
    cfg = pathlib.Path(args[args.index("--config-dir") + 1]) / "side_by_side.yaml"
    out = pathlib.Path(yaml.safe_load(cfg.read_text().split("hydra:")[0])["output_dir"])
    over = dict(a.split("=", 1) for a in args if "=" in a)
    machines = int(over["cluster.servers.1.count"])
    trace = pd.read_csv(over["trace.path"])
    trace.to_csv(out.parent / "seen_trace.csv", index=False)  # what it was given, for the test
    n = trace["token_size"]
    e2e = 0.1 + (n - 1) * 0.03
    (out / "detailed").mkdir(parents=True)
    pd.DataFrame({"request_ids": trace["request_id"], "response_times": e2e, "ttft_times": 0.1,
                  "tbt_times": (e2e - 0.1) / n, "token_sizes": n}).to_csv(out / "detailed" / "0.csv", index=False)
    rows = []
    for rid in trace["request_id"]:
        rows += [(rid, "PROMPT", "h100-80gb_0", 0.0, 0.1), (rid, "KVCacheTransfer", "DummyLink", 0.1, 0.104),
                 (rid, "TOKEN", f"h100-80gb_{machines - 1}", 0.104, 1.0)]
    pd.DataFrame(rows, columns=["request_id", "node_type", "runner", "start_timestamp",
                                "completion_timestamp"]).to_csv(out / "request_nodes.csv", index=False)
    """
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def _fake_checkout(root: Path) -> Path:
    files = {
        "configs/orchestrator_repo/schedulers/mixed_pool.yml": "transfer_bandwidth: 200\n",
        "configs/start_state/splitwise.yaml": (
            "prompt: {max_batch_size: 512, max_batch_tokens: 2048}\n"
            "token: {max_batch_size: 512, max_batch_tokens: 2048}\n"
        ),
        "configs/model_repo/architectures/llama2-70b.yaml": "num_layers: 80\nhidden_size: 8192\n",
        "configs/model_repo/sizes/llama2-70b-fp16.yaml": "dtype_size: 2\n",
        "run.py": FAKE_RUN,
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_missing_checkout_is_one_paragraph(tmp_path):
    proc = _run(str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "nowhere: no such folder" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_folder_that_is_not_a_checkout_names_the_missing_file(tmp_path):
    proc = _run(str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a Splitwise-sim checkout" in proc.stderr and "mixed_pool.yml is missing" in proc.stderr


def test_zero_machines_refused(tmp_path):
    proc = _run(str(_fake_checkout(tmp_path)), "--decode", "0")
    assert proc.returncode == 2 and "--decode 0: give at least one machine" in proc.stderr


def test_unequal_batch_limits_refused(tmp_path):
    sw = _fake_checkout(tmp_path)
    (sw / "configs/start_state/splitwise.yaml").write_text(
        "prompt: {max_batch_size: 512, max_batch_tokens: 2048}\ntoken: {max_batch_size: 256, max_batch_tokens: 2048}\n"
    )
    proc = _run(str(sw))
    assert proc.returncode == 2 and "different batch limits" in proc.stderr


def test_against_a_stand_in_checkout(tmp_path):
    sw = _fake_checkout(tmp_path / "sw")
    trace = tmp_path / "t.csv"
    pd.DataFrame(
        {"arrival_time_s": [0.0, 0.5, 2.0], "num_input_tokens": [100, 300, 50], "num_output_tokens": [11, 21, 5]}
    ).to_csv(trace, index=False)
    work = tmp_path / "work"
    proc = _run(
        str(sw),
        "--trace",
        str(trace),
        "--prefill",
        "1",
        "--decode",
        "2",
        "--work",
        str(work),
        "--json",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    # the converted trace: Splitwise-sim's columns, arrivals one second later, lengths unchanged
    seen = pd.read_csv(work / "trace" / "splitwise" / "seen_trace.csv")
    assert seen.columns.tolist() == [
        "request_id",
        "request_type",
        "application_id",
        "arrival_timestamp",
        "batch_size",
        "prompt_size",
        "token_size",
    ]
    assert seen["arrival_timestamp"].tolist() == [1.0, 1.5, 3.0]
    assert seen["prompt_size"].tolist() == [100, 300, 50] and seen["token_size"].tolist() == [11, 21, 5]
    assert (seen["request_type"] == 2).all() and (seen["batch_size"] == 1).all()
    r = json.loads((tmp_path / "r.json").read_text())
    s = r["trace"]["splitwise"]
    # TPOT by our definition is exactly the stand-in's 30 ms; its TBT divides by all output tokens
    assert s["tpot_s"] == pytest.approx([0.03, 0.03])
    assert s["tbt_s"][0] == pytest.approx(0.03 * 10 / 11)  # the median request has 11 tokens
    assert s["transfer_s_mean"] == pytest.approx(0.004) and s["transfers"] == 3
    assert s["prompts_on_token_machines"] == 0 and s["decodes_on_prompt_machines"] == 0
    # the probe is one request of the trace's median lengths
    assert r["probe"] == {"input_tokens": 100, "output_tokens": 11}
    # our run got the checkout's numbers: 200 GiB/s, 2048 tokens, 512 sequences; 8 H100 per machine
    summary = json.loads((work / "trace" / "kavier" / "summary.json").read_text())
    pools = summary["disaggregation"]["pools"]
    assert [(p["role"], p["gpu"], p["tp"], p["replicas"]) for p in pools] == [
        ("prefill", "H100-SXM", 8, 1),
        ("decode", "H100-SXM", 8, 2),
    ]
    assert summary["disaggregation"]["link"]["gbs"] == pytest.approx(200 * 1024**3 / 1e9, rel=1e-5)
    assert r["trace"]["kavier"]["requests"] == 3 and r["settings"]["kv_bytes_per_token"] == 2 * 8192 * 80 * 2
    assert "| machines prefill + decode (GPUs) | 1 + 2 (24) | 1 + 2 (24) | 1 + 2 (24) |" in proc.stdout
    # the third run is ours with the harness's fitted step overheads, as a framework of a catalogue file
    harness = json.loads((work / "trace" / "kavier_harness" / "summary.json").read_text())
    assert harness["config"]["framework"]["name"] == "splitwise-harness"
    assert summary["config"]["framework"]["name"] == "vllm-v1"
    assert r["harness_overheads"]["fixed_s"] > 0.001  # more than vLLM v1's assumed 1 ms per iteration


def test_missing_calibration_data_is_named(tmp_path):
    trace = tmp_path / "t.csv"
    pd.DataFrame({"arrival_time_s": [0.0], "num_input_tokens": [10], "num_output_tokens": [3]}).to_csv(
        trace, index=False
    )
    env = dict(os.environ, KAVIER_SHARED_DATA=str(tmp_path / "no-data"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(_fake_checkout(tmp_path / "sw")), "--trace", str(trace)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "calibration data not found" in proc.stderr and "splitwise_llama2_70b_dgx.csv" in proc.stderr


def test_unreadable_trace_is_one_paragraph(tmp_path):
    proc = _run(str(_fake_checkout(tmp_path / "sw")), "--trace", str(tmp_path / "missing.csv"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing.csv" in proc.stderr
