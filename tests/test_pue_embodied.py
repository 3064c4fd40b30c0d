"""PUE and embodied carbon (opendc/overheads.py, datacenter.pue, the catalogue's embodied numbers): one-hour
cases by hand, the efficiency metrics, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from conftest import needs_opendc
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.opendc.datacenter import load_datacenter
from kavier_opendc.opendc.overheads import check_embodied, embodied_carbon, facility, pue_from_temperature
from kavier_opendc.reports.efficiency import _overhead_metrics
from kavier_opendc.specs import default_catalog
from test_pipeline import cli, tiny_experiment

YEAR_S = 365.25 * 86400


def _dc(**over):
    doc = {
        "start": "2022-01-01T00:00:00",
        "hosts": [
            {
                "name": "node",
                "gpus_per_host": 2,
                "gpu": "A100-80GB",
                "cpu": {"cores": 16, "mhz": 2000},
                "memory_gib": 256,
                "embodied_kgco2e": 1000,
                "lifetime_years": 5,
            }
        ],
    }
    doc.update(over)
    return load_datacenter(doc)


def test_catalogue_gpus_all_have_embodied_numbers_with_a_source():
    for g in default_catalog().gpus():
        assert g.embodied_kgco2e is not None and g.embodied_kgco2e > 0, g.name
        assert g.lifetime_years == 4, g.name
        assert g.embodied_source, g.name
    assert default_catalog().gpu("A100-80GB").embodied_kgco2e == 318  # Chien et al., HotCarbon 2023


def test_embodied_one_hour_by_hand():
    """2 x A100-80GB (318 kgCO2e, 4 years) and one host (1000 kgCO2e, 5 years) over one hour:
    GPUs 2 x 318e3 g x 3600 / (4 x 31,557,600 s) = 18.1382 g; host 1e6 g x 3600 / (5 x 31,557,600) = 22.8154 g."""
    e = embodied_carbon(_dc(), 3600.0)
    assert e["gpu_embodied_g"] == pytest.approx(2 * 318e3 * 3600 / (4 * YEAR_S))
    assert e["gpu_embodied_g"] == pytest.approx(18.1382, abs=1e-4)
    assert e["host_embodied_g"] == pytest.approx(22.8154, abs=1e-4)
    assert e["embodied_g"] == pytest.approx(18.1382 + 22.8154, abs=2e-4)
    assert e["missing"] == []
    assert [d["device"] for d in e["devices"]] == ["host", "A100-80GB"]


def test_constant_pue_one_hour_by_hand():
    """1 kWh of IT energy and 300 g over an hour at PUE 1.3: 1.3 kWh and 390 g at the facility."""
    dc = _dc(pue=1.3)
    f = facility(dc.pue, None, None, 1000.0, 300.0)
    assert f["facility_energy_wh"] == pytest.approx(1300.0)
    assert f["facility_overhead_wh"] == pytest.approx(300.0)
    assert f["facility_carbon_g"] == pytest.approx(390.0)
    assert f["pue"] == pytest.approx(1.3) and f["pue_kind"] == "constant"


def test_pue_trace_one_hour_by_hand(tmp_path):
    """PUE 1.2 from 00:00, 1.5 from 00:30; two half-hour OpenDC intervals of 1000 J / 1 g and 3000 J / 2 g:
    facility (1000 x 1.2 + 3000 x 1.5) J = 5700 J, carbon 1 x 1.2 + 2 x 1.5 = 4.2 g."""
    (tmp_path / "pue.csv").write_text("timestamp,pue\n2022-01-01T00:00:00,1.2\n2022-01-01T00:30:00,1.5\n")
    dc = load_datacenter(
        {"start": "2022-01-01T00:00:00", "pue": {"file": "pue.csv"}, "hosts": _dc().raw["hosts"]},
        base_dir=tmp_path,
    )
    power = pd.DataFrame(
        {
            "timestamp_s": [1800.0, 3600.0],
            "interval_s": [1800.0, 1800.0],
            "energy_j": [1000.0, 3000.0],
            "carbon_g": [1.0, 2.0],
        }
    )
    start_ms = 1640995200000  # 2022-01-01T00:00:00Z
    f = facility(dc.pue, power, start_ms, 4000.0 / 3600.0, 3.0)
    assert f["facility_energy_wh"] == pytest.approx(5700.0 / 3600.0)
    assert f["facility_carbon_g"] == pytest.approx(4.2)
    assert f["pue"] == pytest.approx(5700.0 / 4000.0) and f["pue_kind"] == "trace"


def test_efficiency_metrics_operational_plus_embodied():
    s = {
        "energy_wh": 1000.0,
        "carbon_g": 300.0,
        "facility": {"pue": 1.3, "facility_energy_wh": 1300.0, "facility_carbon_g": 390.0},
        "embodied": {"embodied_g": 40.9536},
    }
    m = _overhead_metrics(s, 1000.0, 300.0, 2e6)
    assert m["facility_wh_per_mtoken"] == pytest.approx(650.0)
    assert m["operational_gco2_per_mtoken"] == pytest.approx(195.0)
    assert m["embodied_gco2_per_mtoken"] == pytest.approx(20.4768)
    assert m["total_gco2_per_mtoken"] == pytest.approx(215.4768)
    # no PUE given: the facility is the IT energy (PUE 1)
    m = _overhead_metrics({"energy_wh": 1000.0, "carbon_g": 300.0}, 1000.0, 300.0, 2e6)
    assert m["pue"] == 1.0 and m["operational_gco2_per_mtoken"] == pytest.approx(150.0)
    assert m["embodied_gco2"] is None and m["total_gco2_per_mtoken"] is None


# ------------------------------------------------------------------ bad input
def test_pue_below_one_is_refused_naming_the_field():
    with pytest.raises(KavierInputError) as e:
        _dc(pue=0.9)
    assert "pue" in str(e.value) and "0.9" in str(e.value)


def test_pue_trace_with_a_value_below_one(tmp_path):
    (tmp_path / "pue.csv").write_text("timestamp,pue\n2022-01-01T00:00:00,1.2\n2022-01-01T01:00:00,0.8\n")
    with pytest.raises(KavierInputError) as e:
        load_datacenter({"pue": {"file": "pue.csv"}, "hosts": _dc().raw["hosts"]}, base_dir=tmp_path)
    msg = str(e.value)
    assert "pue.file" in msg and "row 2" in msg and "0.8" in msg and "at least 1" in msg


def test_pue_trace_without_its_column(tmp_path):
    (tmp_path / "pue.csv").write_text("time,value\n2022-01-01T00:00:00,1.2\n")
    with pytest.raises(KavierInputError) as e:
        load_datacenter({"pue": {"file": "pue.csv", "column": "value"}, "hosts": _dc().raw["hosts"]}, base_dir=tmp_path)
    assert "pue.time_column" in str(e.value) and "'timestamp'" in str(e.value)


def test_missing_embodied_value_of_a_used_gpu_is_an_error_naming_the_field():
    dc = _dc(embodied_carbon=True)
    check_embodied(dc)  # the catalogue's A100 has both numbers
    h = dc.hosts[0]
    bare = dataclasses.replace(h, gpu=dataclasses.replace(h.gpu, embodied_kgco2e=None))
    dc2 = dataclasses.replace(dc, hosts=(bare,))
    with pytest.raises(KavierInputError) as e:
        check_embodied(dc2)
    assert "hosts[0].gpu.embodied_kgco2e" in str(e.value) and "A100-80GB" in str(e.value)
    # without embodied_carbon: true the device counts 0 and is listed
    out = embodied_carbon(dataclasses.replace(dc2, embodied_required=False), 3600.0)
    assert out["gpu_embodied_g"] == 0.0 and out["missing"] == [
        "hosts[0].gpu.embodied_kgco2e (or gpus[A100-80GB].embodied_kgco2e in the GPU catalogue)"
    ]


def test_cli_run_refuses_a_pue_below_one(tmp_path):
    p = tiny_experiment(
        tmp_path,
        datacenter={
            "pue": 0.95,
            "hosts": [{"name": "node", "gpus_per_host": 2, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}],
        },
    )
    r = cli("run", p, "--out", tmp_path / "out")
    assert r.returncode != 0
    assert "pue" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ PUE from the outside temperature
def test_pue_from_temperature_by_hand():
    # 1.1 up to 18 C, + 0.02 per degree above, at most 1.25: 10 C -> 1.1, 18 -> 1.1, 23 -> 1.2, 30 -> 1.25 (cap)
    got = pue_from_temperature(np.array([10.0, 18.0, 23.0, 30.0]), 1.1, 0.02, max_pue=1.25)
    assert got.tolist() == pytest.approx([1.1, 1.1, 1.2, 1.25])
    assert pue_from_temperature(np.array([20.0]), 1.2, 0.01, free_cooling_c=10.0)[0] == pytest.approx(1.3)


def test_temperature_pue_one_hour_by_hand(tmp_path):
    """10 C from 00:00 (PUE 1.1), 28 C from 00:30 (1.1 + 0.02 x 10 = 1.3); two half-hour OpenDC intervals of
    1000 J / 1 g and 3000 J / 2 g: facility 1000 x 1.1 + 3000 x 1.3 = 5000 J, carbon 1.1 + 2.6 = 3.7 g."""
    (tmp_path / "t.csv").write_text(
        "timestamp,temperature_c\n2022-01-01T00:30:00,28\n2022-01-01T00:00:00,10\n"  # out of order: sorted
    )
    pue = {"temperature": {"file": "t.csv"}, "free_cooling_pue": 1.1, "per_degree_c": 0.02}
    dc = load_datacenter({"start": "2022-01-01T00:00:00", "pue": pue, "hosts": _dc().raw["hosts"]}, base_dir=tmp_path)
    power = pd.DataFrame(
        {
            "timestamp_s": [1800.0, 3600.0],
            "interval_s": [1800.0, 1800.0],
            "energy_j": [1000.0, 3000.0],
            "carbon_g": [1.0, 2.0],
        }
    )
    f = facility(dc.pue, power, 1640995200000, 4000.0 / 3600.0, 3.0)
    assert f["facility_energy_wh"] == pytest.approx(5000.0 / 3600.0)
    assert f["facility_carbon_g"] == pytest.approx(3.7)
    assert f["pue"] == pytest.approx(5000.0 / 4000.0) and f["pue_kind"] == "temperature"
    assert f["pue_model"] == {"free_cooling_pue": 1.1, "per_degree_c": 0.02, "free_cooling_c": 18.0}
    assert dc.to_dict()["pue"]["temperature"]["file"].endswith("t.csv")


@pytest.mark.parametrize(
    ("pue", "csv", "needles"),
    [
        (
            {"free_cooling_pue": 0.9, "per_degree_c": 0.01},
            "timestamp,temperature_c\n2022-01-01T00:00:00,10\n",
            ["pue", "0.9"],
        ),
        (
            {"free_cooling_pue": 1.1, "per_degree_c": 0.01},
            "timestamp,temperature_c\n2022-01-01T00:00:00,10\n2022-01-01T01:00:00,295.1\n",
            ["pue.temperature.file", "row 2", "295.1", "degrees Celsius"],
        ),
        (
            {"free_cooling_pue": 1.1, "per_degree_c": 0.01},
            "timestamp,temp\n2022-01-01T00:00:00,10\n",
            ["pue.temperature.column", "'temperature_c'"],
        ),
        (
            {"free_cooling_pue": 1.3, "per_degree_c": 0.01, "max_pue": 1.2},
            "timestamp,temperature_c\n2022-01-01T00:00:00,10\n",
            ["pue.max_pue", "below free_cooling_pue"],
        ),
    ],
)
def test_temperature_pue_bad_input_names_the_field(tmp_path, pue, csv, needles):
    (tmp_path / "t.csv").write_text(csv)
    with pytest.raises(KavierInputError) as e:
        load_datacenter(
            {"pue": {"temperature": {"file": "t.csv"}, **pue}, "hosts": _dc().raw["hosts"]}, base_dir=tmp_path
        )
    msg = str(e.value)
    assert all(n in msg for n in needles), msg


@needs_opendc
def test_cli_run_with_a_temperature_pue(tmp_path):
    """25 C all along: PUE 1.1 + 0.02 x (25 - 18) = 1.24 on every OpenDC interval."""
    (tmp_path / "t.csv").write_text("timestamp,temperature_c\n2022-01-01T00:00:00,25\n")
    p = tiny_experiment(
        tmp_path,
        datacenter={
            "start": "2022-01-01T12:00:00",
            "pue": {"temperature": {"file": str(tmp_path / "t.csv")}, "free_cooling_pue": 1.1, "per_degree_c": 0.02},
            "hosts": [{"name": "node", "gpus_per_host": 2, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}],
        },
    )
    r = cli("run", p, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "out" / "report.json").read_text())["sustainability"]
    assert s["facility"]["pue_kind"] == "temperature" and s["facility"]["pue"] == pytest.approx(1.24)
    assert s["facility"]["facility_energy_wh"] == pytest.approx(1.24 * s["energy_wh"])
    assert s["facility"]["facility_carbon_g"] == pytest.approx(1.24 * s["carbon_g"])
