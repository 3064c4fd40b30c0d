"""A simulated span OpenDC would step through for hours (a trace with arrivals a year apart) is refused
before the JVM starts, with what to do instead (issue 17); a normal span is unaffected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kavier_opendc.base import limits
from kavier_opendc.cli import main
from kavier_opendc.experiments import pipeline
from kavier_opendc.opendc.inputs import write_opendc_inputs
from kavier_opendc.opendc.span import experiment_dir_span, longest_gap, span_problem
from test_opendc_export import dc, write_sim

YEAR_S = 30_000_000.0
LIMIT = int(limits.OPENDC_INTERVALS.value)


def _no_jvm(*_a, **_k):
    raise AssertionError("the JVM was started")


@pytest.fixture
def no_opendc(monkeypatch):
    """OpenDC counts as installed, but starting its JVM fails the test."""
    import kavier_opendc.cli.experiments as cli_exp
    import kavier_opendc.cli.opendc as cli_odc

    monkeypatch.setattr(cli_exp, "check_opendc_available", lambda: None)
    monkeypatch.setattr(pipeline, "check_opendc_available", lambda: None)
    monkeypatch.setattr(pipeline, "OpenDCBridge", _no_jvm)
    monkeypatch.setattr(pipeline, "run_opendc_dir", _no_jvm)
    monkeypatch.setattr(cli_odc, "run_opendc_dir", _no_jvm)


def _experiment(tmp: Path, arrivals, interval_s=1) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "trace.csv").write_text(
        "arrival_time_s,num_input_tokens,num_output_tokens\n" + "".join(f"{a!r},200,50\n" for a in arrivals)
    )
    doc = {
        "name": "idle",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "seed": 7,
        "trace": "trace.csv",
        "serving": {"replicas": 1},
        "datacenter": {
            "start": "2022-01-01T12:00:00",
            "export_interval_s": interval_s,
            "hosts": [
                {
                    "name": "node",
                    "gpus_per_host": 1,
                    "cpu": {"cores": 16, "mhz": 2000},
                    "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
                    "memory_gib": 256,
                }
            ],
        },
        "carbon": {"synthetic": {"mean": 250, "amplitude": 100, "trough_hour": 12}},
    }
    (tmp / "exp.yaml").write_text(yaml.safe_dump(doc))
    return tmp / "exp.yaml"


def test_the_message_names_span_interval_limit_and_what_to_do():
    msg = span_problem(YEAR_S + 0.6, 1, gap=longest_gap([0.0, 1.0, YEAR_S]))
    assert msg is not None and "\n" not in msg
    assert "30,000,000.6 s of simulated time (347.2 days)" in msg
    assert "30,000,001 export intervals of 1 s" in msg
    assert f"above the limit of {LIMIT:,} export intervals" in msg
    assert "datacenter.export_interval_s to at least 4 s" in msg
    assert (
        "split the trace (its longest idle gap: 29,999,999.0 s between the arrivals at 1.0 s and 30,000,000.0 s)" in msg
    )
    assert "--no-opendc" in msg
    assert span_problem(YEAR_S, 3) is None  # 10,000,000 intervals: at the limit, allowed
    assert span_problem(LIMIT + 1, 1) is not None
    assert span_problem(3600.0, 1) is None


def test_kavier_run_refuses_a_year_long_idle_span_before_anything(tmp_path, capsys, no_opendc):
    exp = _experiment(tmp_path / "exp", [0.0, 1.0, YEAR_S])
    out = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(out), "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kavier: error: ") and err.count("\n") == 1
    assert "trace: the run spans 30,000,000.0 s of simulated time" in err
    assert "at least 3 s" in err and "split the trace" in err
    assert not out.exists()  # refused before the output folder was made


def test_a_makespan_over_the_limit_stops_at_the_export_stage(tmp_path, capsys, no_opendc):
    # the arrivals fit (9,999,999.5 s), the last answer ends past 10,000,000 s
    exp = _experiment(tmp_path / "exp", [0.0, LIMIT - 0.5])
    out = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(out), "--no-plots", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "simulation makespan: the run spans 10,000,000" in err and "10,000,001 export intervals" in err
    marker = (out / "INCOMPLETE").read_text()
    assert "FAILED during stage 'export'" in marker and "export intervals" in marker
    assert not (out / "opendc").exists()  # nothing of OpenDC half-written
    assert (out / "simulation" / "timeline.parquet").is_file()


def test_export_opendc_refuses_before_writing(tmp_path, capsys, no_opendc):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.6), (1, YEAR_S - 1, 0.0), (YEAR_S - 1, YEAR_S, 0.6)]})
    (tmp_path / "dc.json").write_text(json.dumps(dc(export_interval_s=1)))
    out = tmp_path / "odc"
    assert (
        main(["export-opendc", str(sim), "--datacenter", str(tmp_path / "dc.json"), "--out", str(out), "--quiet"]) == 2
    )
    err = capsys.readouterr().err
    assert "summary.json: makespan_s: the run spans 30,000,000.0 s" in err
    assert "datacenter.export_interval_s to at least 3 s" in err
    assert not out.exists()
    (tmp_path / "dc.json").write_text(json.dumps(dc(export_interval_s=3)))  # what the message says works
    assert (
        main(["export-opendc", str(sim), "--datacenter", str(tmp_path / "dc.json"), "--out", str(out), "--quiet"]) == 0
    )
    assert experiment_dir_span(out) == (YEAR_S, 3.0)


def test_kavier_opendc_refuses_a_folder_before_the_jvm(tmp_path, capsys, no_opendc):
    sim = write_sim(tmp_path / "sim", {0: [(0, 1, 0.6), (1, YEAR_S - 1, 0.0), (YEAR_S - 1, YEAR_S, 0.6)]})
    odc = tmp_path / "odc"
    write_opendc_inputs(sim, dc(export_interval_s=100), odc)
    exp = json.loads((odc / "experiment.json").read_text())
    exp["exportModels"] = [{"exportInterval": 1}]  # a hand-edited folder
    (odc / "experiment.json").write_text(json.dumps(exp))
    assert main(["opendc", str(odc), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "experiment.json: workloads: the run spans 30,000,000.0 s" in err
    assert "exportModels[].exportInterval (datacenter.export_interval_s) to at least 3 s" in err
    assert not (odc / "output").exists() and not (odc / "sustainability.json").exists()


def test_a_normal_span_is_unaffected(tmp_path):
    sim = write_sim(tmp_path / "sim", {0: [(0, 20, 0.6)], 1: [(0, 5, 0.2), (5, 30, 0.9)]})
    write_opendc_inputs(sim, dc(gpus_per_host=2, export_interval_s=1), tmp_path / "odc")
    assert experiment_dir_span(tmp_path / "odc") == (30.0, 1.0)
    assert span_problem(30.0, 1.0) is None
