"""``kavier compare``: the error arithmetic, the A10 validation of the README, and its inputs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, shared
from kavier_opendc.cli import main
from kavier_opendc.reports.compare import errors

A10 = "measurements/kavier_a10_llama3_8b_vllm.csv"


def readme_a10_figures() -> tuple[float, float, float, float]:
    """(prefill, decode MAPE of this simulator, prefill, decode of the Kavier prototype) as the README states."""
    text = (REPO / "README.md").read_text()
    m = re.search(
        r"Prefill MAPE ([\d.]+) ?% and decode MAPE ([\d.]+) ?% \(the Kavier prototype: ([\d.]+) ?% "
        r"and ([\d.]+) ?%\)",
        " ".join(text.split()),
    )
    assert m, "README.md no longer states the A10 MAPE figures in the expected sentence"
    return tuple(float(g) for g in m.groups())


def test_a10_table_reproduces_the_readme_mape(tmp_path, capsys):
    table = shared(A10)
    pre, dec, proto_pre, proto_dec = readme_a10_figures()
    # this simulator, each row's single requests simulated now
    assert (
        main(
            ["compare", str(table), str(table), "--model", "Llama-3-8B", "--gpu", "A10", "--out", str(tmp_path / "sim")]
        )
        == 0
    )
    r = json.loads((tmp_path / "sim" / "compare.json").read_text())
    assert r["kind"] == "table" and r["matched"] == 9
    assert round(r["metrics"]["prefill"]["mape_pct"], 2) == pre
    assert round(r["metrics"]["decode"]["mape_pct"], 2) == dec
    assert f"prefill  MAPE {pre:.2f} %" in capsys.readouterr().out
    # the Kavier prototype's column of the same table (the seeds' own validation)
    assert main(["compare", str(table), str(table), "--out", str(tmp_path / "proto"), "--quiet"]) == 0
    p = json.loads((tmp_path / "proto" / "compare.json").read_text())
    assert round(p["metrics"]["prefill"]["mape_pct"], 2) == proto_pre
    assert round(p["metrics"]["decode"]["mape_pct"], 2) == proto_dec
    for f in ("report.md", "per_request.csv", "scatter.png", "errors.png"):
        assert (tmp_path / "sim" / f).stat().st_size > 0
    assert f"| prefill | 9 | {pre:.2f} % |" in (tmp_path / "sim" / "report.md").read_text()


def test_a10_mape_equals_the_calibration_script():
    """The same numbers as bench/calibrate_a10.py computes, to the last digit."""
    import importlib.util

    from kavier_opendc.reports.compare import Side, _read_table, compare_tables
    from kavier_opendc.specs import default_catalog

    table = shared(A10)
    spec = importlib.util.spec_from_file_location("calibrate_a10", REPO / "bench" / "calibrate_a10.py")
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    pre, dec, _ = cal.evaluate(cal.load_rows(table))
    cat = default_catalog()
    side = Side("table", table, _read_table(table))
    r, _ = compare_tables(side, side, (cat.model("Llama-3-8B"), cat.gpu("A10")))
    assert r["metrics"]["prefill"]["mape_pct"] == pytest.approx(pre, rel=1e-12)
    assert r["metrics"]["decode"]["mape_pct"] == pytest.approx(dec, rel=1e-12)


def test_error_arithmetic():
    e = errors(np.array([1.1, 0.8, 2.0, np.nan]), np.array([1.0, 1.0, 2.0, 1.0]))
    assert e["n"] == 3
    assert e["mape_pct"] == pytest.approx((10 + 20 + 0) / 3)
    assert e["bias_pct"] == pytest.approx((10 - 20 + 0) / 3)
    assert e["mae_s"] == pytest.approx(0.1)
    assert e["bias_s"] == pytest.approx(-0.1 / 3)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    trace = d / "trace.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "arrival_time_s": np.arange(40) * 0.05,
            "num_input_tokens": rng.integers(50, 500, 40),
            "num_output_tokens": rng.integers(2, 100, 40),
        }
    ).to_csv(trace, index=False)
    assert (
        main(
            [
                "simulate",
                "--model",
                "Llama-3-8B",
                "--gpu",
                "A100-80GB",
                "--trace",
                str(trace),
                "--out",
                str(d / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    return d / "out"


def test_requests_comparison_known_errors(sim_dir, tmp_path):
    meas = tmp_path / "meas"
    meas.mkdir()
    df = pd.read_parquet(sim_dir / "requests.parquet")
    m = df.copy()
    m["ttft_s"] *= 1.25  # measured 25 % longer: the simulator is 20 % low
    m["e2e_s"] *= 0.8  # measured 20 % shorter: the simulator is 25 % high
    m = m[m["request_id"] != 5]  # one request missing from the measurement
    m.to_parquet(meas / "requests.parquet")
    summary = json.loads((sim_dir / "summary.json").read_text())
    summary["output_tokens_per_s"] *= 2
    (meas / "summary.json").write_text(json.dumps(summary))
    assert main(["compare", str(sim_dir), str(meas), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    r = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert r["kind"] == "requests" and r["matched"] == 39 and r["unmatched_simulated"] == 1
    assert r["metrics"]["ttft_s"]["mape_pct"] == pytest.approx(20.0)
    assert r["metrics"]["ttft_s"]["bias_pct"] == pytest.approx(-20.0)
    assert r["metrics"]["e2e_s"]["bias_pct"] == pytest.approx(25.0)
    assert r["metrics"]["tpot_s"]["mape_pct"] == pytest.approx(0.0)
    for st in ("mean", "p50", "p90", "p99"):
        assert r["metrics"]["ttft_s"]["stats"][st]["error_pct"] == pytest.approx(-20.0)
    assert r["throughput"]["output_tokens_per_s"]["error_pct"] == pytest.approx(-50.0)
    per = pd.read_csv(tmp_path / "c" / "per_request.csv")
    assert len(per) == 39 and per["ttft_s_error_pct"].to_numpy() == pytest.approx(-20.0)
    for f in ("report.md", "cdf.png", "scatter.png"):
        assert (tmp_path / "c" / f).stat().st_size > 0
    assert "| TTFT | 39 | 20.00 % | -20.00 % |" in (tmp_path / "c" / "report.md").read_text()


@pytest.mark.parametrize("case", ["missing", "incomplete", "kinds", "no-columns"])
def test_bad_inputs_one_error(sim_dir, tmp_path, capsys, case):
    meas = tmp_path / "meas"
    if case == "missing":
        meas = tmp_path / "nothing"
    elif case == "incomplete":
        shutil.copytree(sim_dir, meas)
        s = json.loads((meas / "summary.json").read_text())
        s.update(complete=False, status="interrupted")
        (meas / "summary.json").write_text(json.dumps(s))
    elif case == "kinds":
        meas = shared(A10)
    else:
        meas.mkdir()
        pd.DataFrame({"request_id": [0]}).to_parquet(meas / "requests.parquet")
    rc = main(["compare", str(sim_dir), str(meas), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("kavier: error: ")
    assert not (tmp_path / "c").exists()
