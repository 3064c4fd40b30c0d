"""Efficiency metrics: formulas, a hand-checked run, and the Kavier prototype's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import HAVE_OPENDC
from kavier_opendc.reports import efficiency as E
from test_pipeline import FakeOpenDC, tiny_experiment

EXACT = dict(rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------- formulas


def test_joules_to_wh_is_divided_by_3600():
    assert E.joules_to_wh(3600.0) == 1.0
    assert E.joules_to_wh(1000.0) == pytest.approx(0.2777777778)


def test_per_token_formulas():
    assert E.wh_per_mtoken(50.0, 2_000_000) == 25.0
    assert E.gco2_per_mtoken(10.0, 500_000) == 20.0
    assert E.wh_per_mtoken(None, 10) is None and E.wh_per_mtoken(5.0, 0) is None
    assert E.gpu_cost({"A": 2, "B": 1}, 1800.0, {"A": 2.0, "B": 4.0}) == 2 * 0.5 * 2.0 + 1 * 0.5 * 4.0
    assert E.electricity_cost(2000.0, 0.25) == 0.5 and E.electricity_cost(2000.0, None) == 0.0
    # the paper's form: total / (Mtokens per second)
    assert E.per_mtoken_per_s(10.0, 3_000_000, 100.0) == 10.0 / 0.03


def test_slo_mask_nan_tpot_passes_and_missing_target_is_not_checked():
    ttft = np.array([0.1, 0.3, 0.1, 0.1, np.nan])
    tpot = np.array([0.01, 0.01, 0.05, np.nan, np.nan])
    fin = np.array([True, True, True, True, False])
    assert E.slo_mask(ttft, tpot, fin, 0.2, 0.02).tolist() == [True, False, False, True, False]
    assert E.slo_mask(ttft, tpot, fin, None, 0.02).tolist() == [True, True, False, True, False]
    assert E.slo_mask(ttft, tpot, fin, 0.2, None).tolist() == [True, False, True, True, False]


def test_goodput_without_slo_is_none():
    df = pd.DataFrame(
        {"ttft_s": [0.1], "tpot_s": [0.01], "status": ["finished"], "num_input_tokens": [10], "num_output_tokens": [5]}
    )
    assert E.goodput(df, 10.0, E.LatencyTargets())["goodput_rps"] is None
    g = E.goodput(df, 10.0, E.LatencyTargets(ttft_s=1.0))
    assert g["goodput_rps"] == 0.1 and g["goodput_tokens_per_s"] == 1.5 and g["slo_attainment"] == 1.0


# ----------------------------------------------------------------- a run, checked by hand


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny experiment through the real OpenDC when the bridge is built, else
    through the stand-in bridge (the hand check is about the efficiency
    arithmetic on whatever OpenDC reported)."""
    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    tmp = tmp_path_factory.mktemp("eff")
    # SLOs between the faster and the slower requests of this run (A100-80GB profile)
    p = tiny_experiment(tmp, slo={"ttft_s": 0.04, "tpot_s": 0.0125})
    run_experiment(
        load_experiment(p), tmp / "out", bridge=None if HAVE_OPENDC else FakeOpenDC(), quiet=True, plots=False
    )
    return p, tmp / "out"


def test_every_efficiency_number_by_hand(run_dir):
    exp_file, out = run_dir
    exp = yaml.safe_load(exp_file.read_text())
    rep = json.loads((out / "report.json").read_text())["efficiency"]
    req = pd.read_parquet(out / "simulation" / "requests.parquet")
    sus = json.loads((out / "opendc" / "sustainability.json").read_text())

    fin = (req["status"] == "finished").to_numpy()
    tin = int(req.loc[fin, "num_input_tokens"].sum())
    tout = int(req.loc[fin, "num_output_tokens"].sum())
    tokens = tin + tout
    window = float(req["finish_s"].max())
    energy_wh, carbon_g = sus["energy_wh"], sus["carbon_g"]
    gpus = exp["serving"]["replicas"] * exp["serving"].get("tp", 1)
    price = exp["prices"]["gpu_hour"]["A100-80GB"]
    kwh_price = exp["prices"]["electricity_per_kwh"]
    gpu_cost = gpus * window / 3600.0 * price
    elec_cost = energy_wh / 1000.0 * kwh_price
    total = gpu_cost + elec_cost
    ttft, tpot = req["ttft_s"].to_numpy(), req["tpot_s"].to_numpy()
    ok = fin & (ttft <= exp["slo"]["ttft_s"]) & (np.isnan(tpot) | (tpot <= exp["slo"]["tpot_s"]))
    mtok_per_s = tokens / window / 1e6

    assert 0 < ok.sum() < len(req), "the tiny experiment's SLOs should separate requests"
    expected = {
        "tokens": tokens,
        "tokens_output": tout,
        "window_s": window,
        "wh_per_mtoken": energy_wh / (tokens / 1e6),
        "wh_per_mtoken_output": energy_wh / (tout / 1e6),
        "gco2_per_mtoken": carbon_g / (tokens / 1e6),
        "gco2_per_mtoken_output": carbon_g / (tout / 1e6),
        "gpu_hours": gpus * window / 3600.0,
        "gpu_cost": gpu_cost,
        "electricity_cost": elec_cost,
        "total_cost": total,
        "cost_per_mtoken": total / (tokens / 1e6),
        "cost_per_mtoken_output": total / (tout / 1e6),
        "goodput_rps": ok.sum() / window,
        "goodput_tokens_per_s": (req.loc[ok, "num_input_tokens"].sum() + req.loc[ok, "num_output_tokens"].sum())
        / window,
        "slo_attainment": ok.sum() / len(req),
        "throughput_mtokens_per_s": mtok_per_s,
        "cost_per_mtoken_per_s": total / mtok_per_s,
        "wh_per_mtoken_per_s": energy_wh / mtok_per_s,
        "kgco2_per_mtoken_per_s": carbon_g / 1000.0 / mtok_per_s,
    }
    for k, v in expected.items():
        assert rep[k] == pytest.approx(v, **EXACT), k
    assert rep["currency"] == "EUR"


def test_sustainability_energy_is_joules_over_3600(run_dir):
    _, out = run_dir
    sus = json.loads((out / "opendc" / "sustainability.json").read_text())
    host = next((out / "opendc" / "output").rglob("host.parquet"))
    ps = next((out / "opendc" / "output").rglob("powerSource.parquet"))
    # OpenDC writes float32 columns: sum them in float64, as the reader does
    energy_j = pd.read_parquet(host)["energy_usage"].astype("float64").sum()
    assert sus["energy_wh"] == pytest.approx(energy_j / 3600.0, **EXACT)
    assert sus["carbon_g"] == pytest.approx(pd.read_parquet(ps)["carbon_emission"].astype("float64").sum(), **EXACT)


# ----------------------------------------------------------------- the Kavier prototype


def prototype_files(tmp: Path) -> tuple[Path, Path]:
    tasks = pd.DataFrame(
        {
            "id": np.arange(3, dtype=np.int32),
            "duration": np.array([2000, 3000, 5000], np.int64),
            "total_tokens": np.array([1000, 2000, 2000], np.int64),
        }
    )
    ps = pd.DataFrame({"timestamp": [1000, 2000], "energy_usage": [36_000.0, 72_000.0], "carbon_emission": [3.0, 5.0]})
    tp, pp = tmp / "tasks.parquet", tmp / "powerSource.parquet"
    tasks.to_parquet(tp, index=False)
    ps.to_parquet(pp, index=False)
    return tp, pp


def test_prototype_summary_by_hand(tmp_path):
    tp, pp = prototype_files(tmp_path)
    s = E.prototype_efficiency_summary(pd.read_parquet(tp), pd.read_parquet(pp), 10.0)
    T, N, J, g = 10.0, 5000.0, 108_000.0, 8.0  # s, tokens, J, gCO2
    assert s["total_latency_s"] == T and s["total_tokens"] == N
    assert s["financial_efficiency (EUR / million token / s)"] == pytest.approx((10.0 / 3600) / (N / T) * 1e6, **EXACT)
    assert s["sustainability_efficiency (Wh / million token / s)"] == pytest.approx(J / 3600 * T / (N / 1e6), **EXACT)
    assert s["sustainability_efficiency (kgCO2 / million token / s)"] == pytest.approx(
        g / 1000 * T / (N / 1e6), **EXACT
    )
    # the prototype's own number (J / 1000 / 1000) is 3600 / 1e6 of the corrected one
    assert s["prototype_sustainability_efficiency_as_printed"] == pytest.approx(
        s["sustainability_efficiency (Wh / million token / s)"] * 3600 / 1e6, **EXACT
    )
    assert "3600" in s["note"]


def test_cli_efficiency(tmp_path):
    tp, pp = prototype_files(tmp_path)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "efficiency",
            "--tasks",
            tp,
            "--opendc",
            pp,
            "--price",
            "2.5",
            "--out",
            tmp_path / "s.json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "sustainability_efficiency (Wh / million token / s)" in r.stdout and "3600" in r.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["financial_efficiency (EUR / million token / s)"] == pytest.approx((2.5 / 3600) / 500.0 * 1e6, **EXACT)
    pd.DataFrame({"duration": [1]}).to_parquet(tmp_path / "bad.parquet")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "efficiency",
            "--tasks",
            tmp_path / "bad.parquet",
            "--opendc",
            pp,
            "--price",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "total_tokens" in r.stderr and "Traceback" not in r.stderr
