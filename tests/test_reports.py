"""Plots and report.md on hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kavier_opendc.reports import plots as P
from kavier_opendc.reports.efficiency import DEFINITIONS, LatencyTargets
from kavier_opendc.reports.report import fmt, render_markdown

PNG = b"\x89PNG\r\n\x1a\n"


def png_ok(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 8_000


def requests_frame(n=200, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.uniform(0, 600, n))
    ttft = rng.lognormal(-2, 0.5, n)
    tpot = rng.lognormal(-3.5, 0.2, n)
    tpot[:5] = np.nan
    inp = rng.integers(50, 2000, n)
    out = rng.integers(1, 300, n)
    return pd.DataFrame(
        {
            "request_id": np.arange(n),
            "replica": np.arange(n) % 2,
            "arrival_s": arr,
            "num_input_tokens": inp,
            "num_output_tokens": out,
            "cached_tokens": (inp * rng.uniform(0, 0.8, n)).astype(int),
            "queue_s": ttft / 2,
            "ttft_s": ttft,
            "tpot_s": tpot,
            "e2e_s": ttft + 5,
            "finish_s": arr + ttft + 5,
            "preemptions": 0,
            "status": "finished",
        }
    )


def test_binned_mean_is_time_weighted():
    # one replica: util 1 on [0, 1), gap on [1, 2) (0), 0.5 on [2, 4)
    s, e, v = np.array([0.0, 2.0]), np.array([1.0, 4.0]), np.array([1.0, 0.5])
    got = P._binned_mean(s, e, v, np.array([0.0, 2.0, 4.0]))
    assert got.tolist() == pytest.approx([0.5, 0.5])
    got = P._binned_mean(s, e, v, np.array([0.0, 0.5, 1.5, 3.0]))
    assert got.tolist() == pytest.approx([1.0, 0.5, (0.0 * 0.5 + 0.5 * 1.0) / 1.5])  # [1.5, 2) idle, [2, 3) at 0.5


def test_time_unit():
    assert P.time_unit(100) == ("s", 1.0) and P.time_unit(1000) == ("min", 60.0)
    assert P.time_unit(5 * 3600) == ("h", 3600.0)


def test_run_plots_are_written(tmp_path):
    req = requests_frame()
    assert png_ok(P.latency_cdfs(req, tmp_path / "lat.png", LatencyTargets(ttft_s=0.2, tpot_s=0.05)))
    assert png_ok(P.cache_hit_ratio(req, tmp_path / "cache.png"))
    tl = pd.DataFrame(
        {
            "replica": [0, 0, 1, 1],
            "start_s": [0, 300, 0, 200],
            "end_s": [300, 620, 200, 620],
            "gpu_utilization": [0.4, 0.8, 0.2, 0.6],
            "kv_utilization": [0.1, 0.3, 0.05, 0.2],
            "gpu": "A100-80GB",
        }
    )
    assert png_ok(P.gpu_utilization(tl, tmp_path / "util.png"))
    ts = np.arange(1, 601) * 1000
    host = pd.concat(
        [
            pd.DataFrame({"host_name": h, "timestamp": ts, "power_draw": 500 + 100 * np.sin(ts / 6e4 + k)})
            for k, h in enumerate(["a-0", "a-1"])
        ]
    )
    assert png_ok(P.host_power(host, tmp_path / "power.png"))
    power = pd.DataFrame(
        {
            "timestamp_s": ts / 1000,
            "interval_s": 1.0,
            "power_w": 1000.0,
            "energy_j": 1000.0,
            "carbon_intensity": np.where(ts < 3e5, 200.0, 180.0),
            "carbon_g": 1000 * 200 / 3.6e6,
        }
    )
    trace = pd.DataFrame(
        {
            "timestamp": pd.date_range("2022-01-01", periods=96, freq="15min"),
            "carbon_intensity": 300 - 100 * np.cos(np.arange(96) / 96 * 2 * np.pi),
        }
    )
    assert png_ok(P.carbon(power, tmp_path / "carbon.png", 1_641_034_800_000, trace))
    sus = {
        "energy_wh": 300.0,
        "per_host": [
            {
                "host_name": "a-0",
                "energy_wh": 150.0,
                "gpu_energy_wh": 100.0,
                "cpu_energy_wh": 50.0,
                "idle_energy_wh": 80.0,
            }
        ],
        "per_gpu": [{"host_name": "a-0", "gpu_index": 0, "energy_wh": 100.0, "idle_energy_wh": 40.0}],
    }
    assert png_ok(P.energy_breakdown(sus, tmp_path / "energy.png"))


def test_plots_survive_empty_data(tmp_path):
    empty = requests_frame().iloc[0:0]
    assert P.latency_cdfs(empty, tmp_path / "a.png").is_file()
    assert P.host_power(None, tmp_path / "b.png").is_file()
    assert P.carbon(None, tmp_path / "c.png").is_file()
    assert P.energy_breakdown({}, tmp_path / "d.png").is_file()


def test_sweep_plots(tmp_path):
    t = pd.DataFrame(
        {
            "run": ["r0", "r1", "r2"],
            "label": ["gpu=A", "gpu=B", "gpu=C"],
            "status": "done",
            "ttft_p99_s": [0.5, 0.2, 1.5],
            "wh_per_mtoken": [40.0, 55.0, 30.0],
            "gco2_per_mtoken": [10.0, 12.0, 8.0],
            "cost_per_mtoken": [0.3, 0.5, 0.2],
        }
    )
    assert png_ok(P.sweep_tradeoff(t, tmp_path / "t.png"))
    assert png_ok(P.sweep_bars(t, [("ttft_p99_s", "p99 TTFT (s)"), ("wh_per_mtoken", "Wh/Mtoken")], tmp_path / "b.png"))


def test_fmt():
    assert fmt(None) == "n/a" and fmt(12345) == "12,345" and fmt(0.123456) == "0.1235"
    assert fmt(2.5e-5) == "2.500e-05" and fmt(float("nan")) == "n/a" and fmt(1234.56) == "1,234.6"


def test_markdown_has_values_and_definitions():
    rep = {
        "performance": {
            "num_requests": 10,
            "num_finished": 9,
            "num_rejected": 1,
            "makespan_s": 12.0,
            "output_tokens_per_s": 50.0,
            "total_tokens_per_s": 400.0,
            "request_throughput_per_s": 0.75,
            "ttft_s": {"mean": 0.1, "p50": 0.09, "p90": 0.2, "p99": 0.3},
            "prefix_cache_hit_ratio": 0.25,
            "preemptions": 0,
            "gpu_utilization_mean": 0.4,
            "kv_utilization_peak": 0.1,
        },
        "sustainability": {
            "energy_wh": 12.5,
            "avg_power_w": 3750.0,
            "peak_power_w": 4000.0,
            "carbon_g": 3.2,
            "duration_s": 12.0,
            "per_host": [],
            "per_gpu": [],
        },
        "efficiency": {
            "tokens": 4800,
            "tokens_input": 4200,
            "tokens_output": 600,
            "window_s": 12.0,
            "wh_per_mtoken": 2604.1666,
            "currency": "EUR",
            "gpu_hour_price": {"A100-80GB": 2.0},
            "electricity_per_kwh": None,
            "slo": {"ttft_s": 0.2},
        },
        "provenance": {"seed": 1, "inputs": [{"role": "trace", "sha256": "ab" * 32, "path": "/x/t.csv"}]},
        "experiment": {
            "name": "t",
            "replica_groups": [{"model": "M", "gpu": "G", "replicas": 2, "tp": 1}],
            "serving": {"router": "rr", "prefix_cache": {"policy": "block"}},
            "trace": {"kind": "file"},
        },
    }
    md = render_markdown(rep)
    assert "| energy, all hosts | 12.5 Wh |" in md
    assert "2,604.2" in md and "EUR/Mtoken" in md
    assert "9 of 10 requests finished" in md
    for k in ("wh_per_mtoken", "cost_per_mtoken_per_s", "kgco2_per_mtoken_per_s"):
        assert f"- `{k}`: {DEFINITIONS[k]}" in md
    assert "J / 3600" in md and "abababababababab" in md
