"""The digital-twin loop: trace a server -> calibrate its framework -> simulate -> compare.

The server is the project's test server in engine mode (tests/fake_openai_server.py): one continuously
batched engine whose steps last what the cost model gives for Llama-3-8B on an A10, plus a programmed
CPU time per step (8 ms) and per running sequence (1.5 ms) and 6 ms of request handling. Replays at
three rates calibrate a framework; a fourth replay, held out, is simulated with it and compared.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from kavier_opendc.cli import main
from test_tracer import Server

FIXED_S, PER_SEQ_S, CLIENT_S = 0.008, 0.0015, 0.006


@pytest.fixture(scope="module")
def engine_server():
    s = Server()
    s.configure(
        engine={"model": "Llama-3-8B", "gpu": "A10", "fixed_s": FIXED_S, "per_seq_s": PER_SEQ_S, "client_s": CLIENT_S}
    )
    yield s
    s.stop()


def _loop(server, tmp_path) -> dict:
    """One pass: four replays, a calibration on three, the fourth simulated and compared. Its numbers."""
    tmp_path.mkdir()
    trace = tmp_path / "t.csv"
    pd.DataFrame({"num_input_tokens": [100] * 30, "num_output_tokens": [16] * 30}).to_csv(trace, index=False)
    runs = {}
    for rate in (2, 6, 12, 8):
        out = tmp_path / f"rate{rate}"
        assert (
            main(
                [
                    "trace",
                    server.url,
                    "--model",
                    "fake-model",
                    "--trace",
                    str(trace),
                    "--rate",
                    str(rate),
                    "--seed",
                    str(rate),
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        runs[rate] = out
    fw_file = tmp_path / "fw.yaml"
    assert (
        main(
            [
                "calibrate",
                str(runs[2]),
                str(runs[6]),
                str(runs[12]),
                "--model",
                "llama-3-8b",
                "--gpu",
                "a10",
                "--framework-name",
                "traced-a10",
                "--out",
                str(fw_file),
            ]
        )
        == 0
    )
    entry = yaml.safe_load(fw_file.read_text())["frameworks"][0]
    step = entry["step_overhead"][0]
    assert (entry["name"], entry["base"], step["gpu"], step["tp"]) == ("traced-a10", "vllm-v1", "A10", 1)
    # the held-out replay, simulated from its own requests.parquet with the calibrated framework
    sim = tmp_path / "sim"
    assert (
        main(
            [
                "simulate",
                "--model",
                "llama-3-8b",
                "--gpu",
                "a10",
                "--trace",
                str(runs[8] / "requests.parquet"),
                "--catalog",
                str(fw_file),
                "--framework",
                "traced-a10",
                "--out",
                str(sim),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["compare", str(sim), str(runs[8]), "--out", str(tmp_path / "cmp")]) == 0
    metrics = json.loads((tmp_path / "cmp" / "compare.json").read_text())["metrics"]
    return {
        "fixed_s": step["fixed_s"],
        "per_seq_s": step["per_seq_s"],
        "client_s": entry["client_latency_s"],
        **{f"{k} MAPE %": metrics[k]["mape_pct"] for k in ("ttft_s", "tpot_s", "e2e_s")},
    }


def _meets(r: dict) -> bool:
    return (
        abs(r["fixed_s"] / FIXED_S - 1) <= 0.05
        and abs(r["per_seq_s"] / PER_SEQ_S - 1) <= 0.05
        # the programmed request handling plus the loopback HTTP round trip
        and CLIENT_S <= r["client_s"] < CLIENT_S + 0.010
        and max(r[f"{k} MAPE %"] for k in ("ttft_s", "tpot_s", "e2e_s")) < 5.0
    )


def test_trace_calibrate_simulate_compare(engine_server, tmp_path):
    """The programmed overheads come back within 5 % and the held-out replay compares under 5 % MAPE.

    Measured times pass through the OS's timers, which on a virtual machine now and then wake up
    milliseconds late (a request's TTFT then lands in the next engine step), so a pass whose replays
    caught such a burst is repeated, at most 4 passes; the test passes when one pass meets every bound.
    Each pass's numbers are printed."""
    results = []
    for attempt in range(4):
        r = _loop(engine_server, tmp_path / f"pass{attempt}")
        results.append(r)
        print(f"pass {attempt + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
        if _meets(r):
            return
    pytest.fail(f"no pass met the bounds: {results}")
