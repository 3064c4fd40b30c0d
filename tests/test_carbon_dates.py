"""A run outside its carbon trace's dates is refused or mapped as declared, never silently extrapolated
(issue 17, item 1): OpenDC itself would hold the trace's last value for the whole run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SHARED_DATA, needs_opendc
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.opendc import carbon as C
from test_pipeline import cli, tiny_experiment

NL = SHARED_DATA / "carbon" / "NL_2022.parquet"  # 2022-01-01 00:00 .. 2022-12-30 23:45, every 15 min


def year_trace(tmp_path, year=2022, days=365):
    ts = pd.date_range(f"{year}-01-01", periods=days * 24, freq="h")
    df = pd.DataFrame({"timestamp": ts, "carbon_intensity": np.arange(len(ts), dtype=float)})
    return C.write_carbon_trace(df, tmp_path / f"T_{year}.parquet")


def test_a_run_inside_the_trace_uses_it_as_it_is(tmp_path):
    p = year_trace(tmp_path)
    assert C.fit_trace_to_run(p, "2022-03-01T00:00:00", 86400, "none", tmp_path) == (p, {})
    # the last row holds for one step: a run ending there is still inside
    assert C.fit_trace_to_run(p, "2022-12-31T22:00:00", 7200, "none", tmp_path) == (p, {})


def test_a_run_outside_is_refused_with_both_ranges_named(tmp_path):
    p = year_trace(tmp_path)
    with pytest.raises(KavierInputError) as e:
        C.fit_trace_to_run(p, "2023-06-01T00:00:00", 60, "none", tmp_path, location="carbon.region")
    msg = str(e.value)
    assert msg.startswith(
        "carbon.region: the run (2023-06-01T00:00:00 to 2023-06-01T00:01:00 UTC) lies outside "
        "the carbon trace T_2022.parquet (2022-01-01T00:00:00 to 2023-01-01T00:00:00 UTC)"
    )
    assert "last value" in msg and "carbon.align: same-day-of-year" in msg
    with pytest.raises(KavierInputError, match="first value"):
        C.fit_trace_to_run(p, "2021-12-31T23:00:00", 7200, "none", tmp_path)  # starts before it
    assert not list(tmp_path.glob("*_aligned.parquet"))  # nothing written when refused


def test_same_day_of_year_moves_by_whole_years_and_repeats(tmp_path):
    p = year_trace(tmp_path)
    out, info = C.fit_trace_to_run(p, "2023-06-01T10:30:00", 3600, "same-day-of-year", tmp_path / "o")
    assert info["shift_years"] == 1 and info["repeats"] == 1 and info["longest_gap_s"] == 3600.0
    moved = C.read_carbon_trace(out)
    at = pd.Timestamp("2023-06-01T10:30:00").value // 10**6
    orig = pd.Timestamp("2022-06-01T10:30:00").value // 10**6
    assert C.intensity_at(moved, np.array([at]))[0] == C.intensity_at(C.read_carbon_trace(p), np.array([orig]))[0]
    # 400 days from 2025-12-01: the 2025 copy, then 2026's, then 2027's, each continuing the last
    out, info = C.fit_trace_to_run(p, "2025-12-01T00:00:00", 400 * 86400, "same-day-of-year", tmp_path / "o")
    moved = C.read_carbon_trace(out)
    assert info["shift_years"] == 3 and info["repeats"] == 3
    assert moved["timestamp"].is_monotonic_increasing and moved["timestamp"].is_unique
    assert moved["timestamp"].iloc[0] == pd.Timestamp("2025-01-01") and len(moved) == 3 * 365 * 24
    # before the trace: moved back
    _, info = C.fit_trace_to_run(p, "2019-07-04T00:00:00", 60, "same-day-of-year", tmp_path / "o")
    assert info["shift_years"] == -3


def test_a_leap_day_and_a_short_year_are_gaps_that_are_said(tmp_path):
    _, info = C.fit_trace_to_run(NL, "2024-02-28T12:00:00", 2 * 86400, "same-day-of-year", tmp_path)
    assert info["shift_years"] == 2 and info["longest_gap_s"] == 86400.0 + 900.0  # 29 Feb 2024 is not in 2022
    _, info = C.fit_trace_to_run(NL, "2023-12-31T06:00:00", 3600, "same-day-of-year", tmp_path)
    assert info["longest_gap_s"] == 86400.0 + 900.0  # NL 2022 lacks 31 December


def test_a_trace_shorter_than_a_year_cannot_be_aligned(tmp_path):
    p = year_trace(tmp_path, days=30)
    with pytest.raises(KavierInputError, match="covers less than a year"):
        C.fit_trace_to_run(p, "2023-01-10T00:00:00", 60, "same-day-of-year", tmp_path)


def test_validate_refuses_a_start_outside_the_trace_and_accepts_align(tmp_path):
    for where in ("carbon", "datacenter"):
        d = tmp_path / where
        over = {"carbon": {"trace": str(NL)}} if where == "carbon" else {"carbon": None}
        exp = tiny_experiment(d, **over)
        doc = yaml.safe_load(exp.read_text())
        if doc["carbon"] is None:
            del doc["carbon"]
            doc["datacenter"]["power_source"] = {"carbon_trace": str(NL)}
        doc["datacenter"]["start"] = "2023-06-01T11:45:00"
        exp.write_text(yaml.safe_dump(doc))
        r = cli("validate", exp)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        loc = "carbon.trace" if where == "carbon" else "datacenter.power_source.carbon_trace"
        assert loc in r.stderr + r.stdout and "lies outside the carbon trace NL_2022.parquet" in r.stderr + r.stdout
        doc["carbon"] = {**doc.get("carbon", {}), "align": "same-day-of-year"}
        exp.write_text(yaml.safe_dump(doc))
        r = cli("validate", exp)
        assert r.returncode == 0, r.stderr


def test_two_carbon_sources_or_an_unknown_align_are_refused(tmp_path):
    for bad in ({"trace": str(NL), "region": "NL"}, {"region": "NL", "align": "nearest"}):
        r = cli("validate", tiny_experiment(tmp_path / str(len(bad)) / bad.get("align", "x"), carbon=bad))
        assert r.returncode != 0 and "carbon" in r.stderr and "Traceback" not in r.stderr


@needs_opendc
def test_an_aligned_run_gets_the_carbon_of_the_same_day_a_year_before(tmp_path):
    """Real OpenDC: the run of 1 June 2023 aligned onto NL 2022 emits exactly what the run of
    1 June 2022 emits (same workload, same energy, same day of year, neither year a leap year)."""
    from kavier_opendc.opendc.bridge import OpenDCBridge

    results = {}
    with OpenDCBridge() as bridge:
        for year, carbon in ((2022, {"trace": str(NL)}), (2023, {"trace": str(NL), "align": "same-day-of-year"})):
            exp = tiny_experiment(tmp_path / str(year), carbon=carbon)
            doc = yaml.safe_load(exp.read_text())
            doc["datacenter"]["start"] = f"{year}-06-01T11:45:00"
            exp.write_text(yaml.safe_dump(doc))
            run_experiment(
                load_experiment(exp),
                tmp_path / str(year) / "out",
                bridge=bridge,
                plots=False,
                quiet=True,
                command="test",
            )
            results[year] = json.loads((tmp_path / str(year) / "out" / "report.json").read_text())
    s22, s23 = (results[y]["sustainability"] for y in (2022, 2023))
    assert s22["energy_wh"] == s23["energy_wh"] and s22["carbon_g"] == s23["carbon_g"] > 0
    carbon = results[2023]["experiment"]["carbon"]
    assert carbon["align"] == "same-day-of-year" and carbon["shift_years"] == 1
    md = (tmp_path / "2023" / "out" / "report.md").read_text()
    assert "moved by +1 year(s) to the same day of year" in md
