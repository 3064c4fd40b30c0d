"""Carbon-aware deferral (engine/deferral.py): the window chosen, the deadlines counted, the outputs."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_opendc, shared
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli import main as cli_main
from kavier_opendc.engine.deferral import (
    Battery,
    CarbonSteps,
    battery_aware_start,
    battery_plan,
    lowest_carbon_start,
    simulate_deferred,
    spread_releases,
)
from kavier_opendc.engine.outputs import requests_table, summary_dict
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.opendc.carbon import carbon_steps, read_carbon_trace
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import load_trace


def _cfg() -> SimConfig:
    cat = default_catalog()
    return SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-80GB"))


def _run(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, err.getvalue() + out.getvalue()


# --------------------------------------------------------------------------- the window, by hand

STEPS = CarbonSteps(np.array([0.0, 10.0, 20.0, 30.0]), np.array([4.0, 1.0, 3.0, 2.0]))


def test_window_inside_one_step():
    # a 10 s job from 2 s, due at 35 s: the step [10, 20) at 1 g/kWh holds it whole
    assert lowest_carbon_start(2.0, 35.0, 10.0, STEPS) == 10.0


def test_window_across_steps():
    # 15 s from t: on [5, 10] the mean is (35 - t)/15, on [10, 15] (2t + 5)/15: the minimum 25/15 at t = 10
    assert lowest_carbon_start(0.0, 40.0, 15.0, STEPS) == 10.0
    assert STEPS.mean(np.array([10.0]), 15.0)[0] == pytest.approx(25.0 / 15.0)


def test_ties_and_no_room_run_on_arrival():
    flat = CarbonSteps(np.array([0.0, 10.0]), np.array([2.0, 2.0]))
    assert lowest_carbon_start(3.0, 100.0, 5.0, flat) == 3.0  # equal everywhere: the earliest
    assert lowest_carbon_start(3.0, 7.0, 5.0, STEPS) == 3.0  # 5 s of work do not fit in 4 s: now


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 500.0), min_size=2, max_size=12),
    arrival=st.floats(0.0, 50.0),
    slack=st.floats(0.0, 200.0),
    service=st.floats(0.0, 40.0),
)
def test_window_is_the_lowest_on_a_fine_grid(values, arrival, slack, service):
    steps = CarbonSteps(np.arange(len(values)) * 15.0, np.array(values))
    deadline = arrival + slack
    t = lowest_carbon_start(arrival, deadline, service, steps)
    latest = max(arrival, deadline - service)
    assert arrival <= t <= latest + 1e-9
    grid = np.linspace(arrival, latest, 401)  # any start a brute force tries is no better
    best = steps.mean(np.array([t]), service)[0]
    assert best <= steps.mean(grid, service).min() + 1e-6 * max(1.0, best)


# --------------------------------------------------------------------------- NL 2022, end to end


def test_job_moves_to_the_lowest_carbon_quarter_hour_of_nl_2022(tmp_path):
    """A job due 24 h after it arrives starts in the quarter hour of NL 2022 with the lowest intensity in that
    day; the quarter hour is found here from the Parquet file alone."""
    path = shared("carbon/NL_2022.parquet")
    start = datetime(2022, 6, 1, 0, 0)
    arrival, deadline = 600.0, 600.0 + 86400.0
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        f"arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,200,20,\n{arrival},300,40,{deadline}\n"
    )
    trace = load_trace(csv)
    steps = carbon_steps(read_carbon_trace(path), start, deadline, label="NL_2022", location="test")
    result = simulate_deferred(trace, _cfg(), "lowest-carbon", steps)
    table = requests_table(result).to_pandas()
    service = float(simulate(trace, _cfg()).results.finish[1] - arrival)

    raw = pq.read_table(path).to_pandas()
    t_s = (raw["timestamp"] - pd.Timestamp(start)).dt.total_seconds().to_numpy()
    ci = raw["carbon_intensity"].to_numpy()
    # rows in force at some instant of [arrival, deadline - service]; the job (a fraction of a second) fits
    # inside one quarter hour, so the best window starts where the lowest of them starts (or on arrival)
    first = np.searchsorted(t_s, arrival, side="right") - 1
    last = np.searchsorted(t_s, deadline - service, side="right") - 1
    k = first + int(np.argmin(ci[first : last + 1]))
    expected = max(arrival, float(t_s[k]))
    assert 0 < service < 900
    assert table["arrival_s"][1] == expected
    assert table["held_s"][1] == expected - arrival
    assert table["submitted_s"][1] == arrival
    assert not table["deadline_missed"][1]
    assert table["held_s"][0] == 0.0 and pd.isna(table["deadline_s"][0])
    assert table["e2e_s"][1] == pytest.approx(service, rel=1e-9)  # alone on a replica, as without deferral
    s = summary_dict(result)["deferral"]
    assert s["deadlines_missed"] == 0 and s["held_requests"] == 1 and s["largest_release_burst"] == 1
    # the job's energy moved from ci[first] to ci[k]; the idle draw is the same in both runs
    assert s["without_deferral"]["static_g"] == s["with_deferral"]["static_g"]
    d = s["deferrable_dynamic_g"]
    assert d["with_deferral"] == pytest.approx(d["without_deferral"] * ci[k] / ci[first], rel=1e-6)
    assert s["carbon_saved_g"] == pytest.approx(d["without_deferral"] - d["with_deferral"], rel=1e-6)


# --------------------------------------------------------------------------- deadlines, bad input, none


def test_deadline_before_arrival_names_the_row_and_field(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,10,5,\n30,10,5,25\n")
    with pytest.raises(KavierInputError) as info:
        load_trace(csv)
    text = str(info.value)
    assert "bad.csv: row 2: deadline_s is 25" in text and "before the request's arrival" in text
    rc, out = _run(
        ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "Traceback" not in out and "row 2: deadline_s" in out and "--row" not in out


def test_missed_deadline_is_counted_not_hidden(tmp_path):
    csv = tmp_path / "tight.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,500,200,0.01\n0,100,10,\n")
    trace = load_trace(csv)
    steps = CarbonSteps(np.array([0.0]), np.array([100.0]))
    result = simulate_deferred(trace, _cfg(), "lowest-carbon", steps)
    s = summary_dict(result)["deferral"]
    assert s["deadlines_missed"] == 1 and s["missed_request_ids"] == [0] and s["baseline_deadlines_missed"] == 1
    table = requests_table(result).to_pandas()
    assert table["deadline_missed"][0] and pd.isna(table["deadline_missed"][1])


def test_policy_none_without_deadlines_is_the_plain_run(tmp_path):
    csv = tmp_path / "plain.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n0,100,10\n0.5,300,30\n")
    trace = load_trace(csv)
    a, b = simulate(trace, _cfg()), simulate_deferred(trace, _cfg(), "none", None)
    assert requests_table(a).equals(requests_table(b))
    sa, sb = summary_dict(a), summary_dict(b)
    for s in (sa, sb):
        s["engine"].pop("wall_s"), s["engine"].pop("requests_per_s")
    assert sa == sb and "deferral" not in sb


def test_policy_none_with_deadlines_counts_them(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,100,10,100\n1,100,10,1.0001\n")
    result = simulate_deferred(load_trace(csv), _cfg(), "none", None)
    s = summary_dict(result)["deferral"]
    assert s["policy"] == "none" and s["deferrable_requests"] == 2 and s["deadlines_missed"] == 1
    assert requests_table(result).column("held_s").to_pylist() == [0.0, 0.0]


def test_cli_deferral_needs_a_carbon_trace_and_writes_the_columns(tmp_path):
    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,100,10,\n10,100,10,5000\n")
    base = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
    rc, out = _run(base + ["--out", str(tmp_path / "a"), "--deferral", "lowest-carbon"])
    assert rc == 2 and "--carbon-trace" in out and "Traceback" not in out
    rc, out = _run(base + ["--out", str(tmp_path / "a"), "--deferral", "later"])
    assert rc == 2 and "unknown deferral policy 'later'" in out
    nl = str(shared("carbon/NL_2022.parquet"))
    rc, out = _run(base + ["--out", str(tmp_path / "b"), "--deferral", "lowest-carbon", "--carbon-trace", nl])
    assert rc == 2 and "--start" in out
    rc, out = _run(
        base
        + ["--out", str(tmp_path / "c"), "--deferral", "lowest-carbon", "--carbon-trace", nl, "--start", "2023-01-01"]
    )
    assert rc == 2 and "outside the carbon trace" in out
    argv = ["--out", str(tmp_path / "d"), "--deferral", "lowest-carbon", "--carbon-trace", nl, "--start", "2022-06-01"]
    rc, out = _run(base + argv)
    assert rc == 0, out
    cols = pq.read_table(tmp_path / "d" / "requests.parquet").column_names
    assert {"submitted_s", "held_s", "deadline_s", "deadline_missed"} <= set(cols)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["deferral"]["policy"] == "lowest-carbon" and "NL_2022" in summary["deferral"]["carbon_basis"]


# --------------------------------------------------------------------------- the experiment file, kavier run


def _experiment(tmp_path, **over) -> dict:
    (tmp_path / "jobs.csv").write_text(
        "arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,200,20,\n5,300,40,20000\n"
    )
    doc = {
        "name": "dfr",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "trace": "jobs.csv",
        "serving": {"replicas": 1},
        "datacenter": {
            "start": "2022-06-01T06:00:00",
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
        "carbon": {"trace": str(shared("carbon/NL_2022.parquet"))},
        "deferral": {"policy": "lowest-carbon"},
    }
    doc.update(over)
    return doc


def test_experiment_deferral_field_is_validated(tmp_path):
    from kavier_opendc.experiments.experiment import experiment_problems, json_path

    probs, exp = experiment_problems(_experiment(tmp_path), base_dir=tmp_path, source="e.yaml", opendc=False)
    assert probs == [] and exp.deferral == "lowest-carbon"
    probs, _ = experiment_problems(
        _experiment(tmp_path, deferral={"policy": "soon"}), base_dir=tmp_path, source="e.yaml", opendc=False
    )
    assert any(json_path(p) == "deferral.policy" and "soon" in m for p, m in probs), probs
    probs, _ = experiment_problems(
        _experiment(tmp_path, deferral={"when": 1}), base_dir=tmp_path, source="e.yaml", opendc=False
    )
    assert any("when" in m for _, m in probs), probs


def test_kavier_run_defers_and_reports(tmp_path):
    import yaml

    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump(_experiment(tmp_path)))
    rc, out = _run(["run", str(exp), "--out", str(tmp_path / "r"), "--no-opendc", "--no-plots"])
    assert rc == 0, out
    assert "deferral     policy lowest-carbon: 1 request with a deadline, 1 held" in out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Carbon-aware deferral" in md and "deadlines missed: 0" in md
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["performance"]["deferral"]["held_requests"] == 1
    # --deferral none overrides the file: nothing held, the deadline still counted
    rc, out = _run(["run", str(exp), "--out", str(tmp_path / "n"), "--no-opendc", "--no-plots", "--deferral", "none"])
    assert rc == 0, out
    rep = json.loads((tmp_path / "n" / "report.json").read_text())
    assert rep["performance"]["deferral"] == {
        "policy": "none",
        "deferrable_requests": 1,
        "service_time_estimate": rep["performance"]["deferral"]["service_time_estimate"],
        "deadlines_missed": 0,
        "missed_request_ids": [],
    }


def test_kavier_run_without_a_carbon_trace_is_refused(tmp_path):
    import yaml

    doc = _experiment(tmp_path)
    doc.pop("carbon")
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump(doc))
    rc, out = _run(["run", str(exp), "--out", str(tmp_path / "r"), "--no-opendc", "--no-plots"])
    assert rc == 2 and "deferral.policy" in out and "Traceback" not in out, out


# --------------------------------------------------------------------------- a deferrable class in synthetic workloads


def test_synthetic_deferrable_class_leaves_the_other_draws_alone():
    from kavier_opendc.workload.synthetic import load_synthetic_spec

    spec = {"num_requests": 2000, "rate": 5.0, "input": 200, "output": 20, "seed": 7}
    plain = load_synthetic_spec(spec)
    tr = load_synthetic_spec({**spec, "deferrable": {"share": 0.25, "deadline_s": 3600}})
    assert np.array_equal(plain.arrival_s, tr.arrival_s) and plain.deadline_s is None
    ok = np.isfinite(tr.deadline_s)
    assert 0.2 < ok.mean() < 0.3  # 500 expected, binomial sd 19
    assert np.array_equal(tr.deadline_s[ok], tr.arrival_s[ok] + 3600)
    again = load_synthetic_spec({**spec, "deferrable": {"share": 0.25, "deadline_s": 3600}})
    assert np.array_equal(np.isfinite(again.deadline_s), ok)  # the seed decides
    with pytest.raises(KavierInputError, match=r"\$\.deferrable\.share: 1\.5 is greater than the maximum of 1"):
        load_synthetic_spec({**spec, "deferrable": {"share": 1.5, "deadline_s": 10}})


def test_synthetic_deferrable_requests_are_held():
    from kavier_opendc.workload.synthetic import load_synthetic_spec

    tr = load_synthetic_spec(
        {
            "num_requests": 50,
            "rate": 1.0,
            "input": 100,
            "output": 10,
            "seed": 1,
            "deferrable": {"share": 0.5, "deadline_s": 600},
        }
    )
    # cleaner from 300 s on: every deferrable request that can wait starts at 300 s (or on arrival after it)
    steps = CarbonSteps(np.array([0.0, 300.0]), np.array([400.0, 100.0]))
    table = requests_table(simulate_deferred(tr, _cfg(), "lowest-carbon", steps)).to_pandas()
    d = table[table["deadline_s"].notna()]
    assert len(d) == int(np.isfinite(tr.deadline_s).sum()) > 0
    assert np.allclose(d["arrival_s"], np.maximum(d["submitted_s"], 300.0))
    assert (table.loc[table["deadline_s"].isna(), "held_s"] == 0).all()
    assert not d["deadline_missed"].any()
    held_at_300 = int(((d["submitted_s"] < 300.0) & (d["arrival_s"] == 300.0)).sum())
    summary = summary_dict(simulate_deferred(tr, _cfg(), "lowest-carbon", steps))["deferral"]
    assert summary["largest_release_burst"] == held_at_300 > 1


def test_python_api_defers_as_the_command(tmp_path):
    import kavier_opendc as ko

    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,100,10,\n10,100,10,5000\n")
    steps = carbon_steps(
        read_carbon_trace(shared("carbon/NL_2022.parquet")), "2022-06-01", 5000, label="NL", location="t"
    )
    ko.simulate(str(csv), "Llama-3-8B", "A100-80GB", out=tmp_path / "api", deferral="lowest-carbon", carbon=steps)
    nl = str(shared("carbon/NL_2022.parquet"))
    argv = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
    argv += [
        "--out",
        str(tmp_path / "cli"),
        "--deferral",
        "lowest-carbon",
        "--carbon-trace",
        nl,
        "--start",
        "2022-06-01",
    ]
    assert _run(argv)[0] == 0
    a = (tmp_path / "api" / "requests.parquet").read_bytes()
    assert a == (tmp_path / "cli" / "requests.parquet").read_bytes()


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 100), min_size=1, max_size=8),
    slack=st.lists(st.one_of(st.none(), st.integers(-50, 500)), min_size=8, max_size=8),
    t0=st.integers(0, 10_000),
)
def test_reader_keeps_deadlines_on_the_arrival_clock_and_names_the_first_early_row(tmp_path_factory, gaps, slack, t0):
    arrival = t0 + np.cumsum(gaps)
    rows = ["arrival_time_s,num_input_tokens,num_output_tokens,deadline_s"]
    for a, s in zip(arrival, slack, strict=False):
        rows.append(f"{a},10,5,{'' if s is None else a + s}")
    csv = tmp_path_factory.mktemp("dl") / "t.csv"
    csv.write_text("\n".join(rows) + "\n")
    early = [i for i, s in enumerate(slack[: len(arrival)]) if s is not None and s < 0]
    if early:
        with pytest.raises(KavierInputError, match=rf"row {early[0] + 1}: deadline_s is"):
            load_trace(csv)
        return
    tr = load_trace(csv)
    want = np.array([np.nan if s is None else a + s - arrival[0] for a, s in zip(arrival, slack, strict=False)])
    assert np.array_equal(tr.deadline_s, want, equal_nan=True)
    assert (tr.deadline_s[np.isfinite(want)] >= tr.arrival_s[np.isfinite(want)]).all()


def test_a_missed_deadline_is_a_warning_even_when_quiet(tmp_path):
    csv = tmp_path / "tight.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,500,200,0.01\n0,100,10,\n")
    argv = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
    rc, out = _run(argv + ["--out", str(tmp_path / "o")])
    assert rc == 0
    assert "kavier: warning: 1 of 1 deferrable requests missed their deadline_s under deferral policy none" in out


def test_a_plan_scaling_a_trace_to_a_rate_keeps_each_deadline_window(tmp_path):
    from types import SimpleNamespace

    from kavier_opendc.experiments.plan_file import traffic_at

    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,10,5,\n10,10,5,110\n20,10,5,25\n")
    plan = SimpleNamespace(workload=csv, workload_format=None)
    scaled = load_trace(traffic_at(plan, 0.01, tmp_path / "t"))  # 0.1 req/s -> 0.01: arrivals x 10
    assert scaled.arrival_s.tolist() == [0.0, 100.0, 200.0]
    assert np.array_equal(scaled.deadline_s, [np.nan, 200.0, 205.0], equal_nan=True)


# --------------------------------------------------------------------------- battery-aware, by hand and through OpenDC

# 300 gCO2/kWh until 100 s, 100 until 200, 300 until 300, then 50; the battery charges below 200
B_STEPS = CarbonSteps(np.array([0.0, 100.0, 200.0, 300.0]), np.array([300.0, 100.0, 300.0, 50.0]))
B_BATTERY = Battery(capacity_j=5000.0, charging_w=50.0, threshold=200.0)


def test_battery_prediction_follows_the_single_threshold_rule():
    # empty until 100 s (dirty); charges 50 W x 100 s = 5000 J (full) at 100 g/kWh; supplies 100 W from 200 s,
    # empty at 250 s (dirty until 300 s); charges again from 300 s: 5000 J at 50 g/kWh by the 400 s horizon
    plan = battery_plan(B_STEPS, B_BATTERY, 100.0, 400.0)
    assert plan.dirty == ((0.0, 100.0), (250.0, 300.0))
    assert plan.supplied_s == 50.0
    assert plan.charging_g == pytest.approx(5000.0 * 100.0 / 3.6e6 + 5000.0 * 50.0 / 3.6e6)
    assert plan.effective.times_s.tolist() == [0.0, 100.0, 200.0, 250.0, 300.0]
    assert plan.effective.values.tolist() == [300.0, 100.0, 0.0, 300.0, 50.0]


@pytest.mark.parametrize(
    ("arrival", "service", "deadline", "expected"),
    [
        (10.0, 40.0, 390.0, 100.0),  # dirty on arrival: waits for the grid below the threshold
        (210.0, 30.0, 390.0, 210.0),  # the battery covers [210, 240]: runs on arrival
        (210.0, 60.0, 390.0, 300.0),  # [210, 270] outlasts the battery (empty at 250): waits for 300
        (10.0, 40.0, 80.0, 10.0),  # no clean window before 80: lowest-carbon, a tie at 300 -> on arrival
        (10.0, 40.0, 45.0, 10.0),  # no room at all: on arrival
    ],
)
def test_battery_aware_start_by_hand(arrival, service, deadline, expected):
    plan = battery_plan(B_STEPS, B_BATTERY, 100.0, 400.0)
    assert battery_aware_start(arrival, deadline, service, B_STEPS, plan) == expected


def test_battery_aware_needs_a_battery(tmp_path):
    from kavier_opendc.experiments.experiment import experiment_problems, json_path

    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,100,10,5000\n")
    with pytest.raises(KavierInputError, match="battery-aware.*there is none"):
        simulate_deferred(load_trace(csv), _cfg(), "battery-aware", B_STEPS)
    probs, _ = experiment_problems(
        _experiment(tmp_path, deferral={"policy": "battery-aware"}), base_dir=tmp_path, source="e.yaml", opendc=False
    )
    assert any(json_path(p) == "deferral.policy" and "datacenter has none" in m for p, m in probs), probs
    doc = _experiment(tmp_path, deferral={"policy": "battery-aware"})
    doc["datacenter"]["battery"] = {
        "capacity_kwh": 1,
        "charging_speed_w": 100,
        "policy": {"type": "double", "lower_threshold": 100, "upper_threshold": 200},
    }
    probs, _ = experiment_problems(doc, base_dir=tmp_path, source="e.yaml", opendc=False)
    assert any(json_path(p) == "datacenter.battery.policy.type" and "single" in m for p, m in probs), probs
    rc, out = _run(
        ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
        + ["--out", str(tmp_path / "s"), "--deferral", "battery-aware"]
        + ["--carbon-trace", str(shared("carbon/NL_2022.parquet")), "--start", "2022-06-01"]
    )
    assert rc == 2 and "datacenter's battery" in out and "Traceback" not in out, out


@needs_opendc
def test_kavier_run_battery_aware_through_opendc(tmp_path):
    """From 06:00 on 1 June (NL 2022) with an empty battery charging below 140 gCO2/kWh, a job arriving at 5 s
    waits for the first quarter hour below 140 (found here from the Parquet file); OpenDC runs the battery."""
    import yaml

    doc = _experiment(tmp_path, deferral={"policy": "battery-aware"})
    doc["datacenter"]["export_interval_s"] = 60
    doc["datacenter"]["battery"] = {
        "capacity_kwh": 0.5,
        "charging_speed_w": 500,
        "policy": {"type": "single", "carbon_threshold": 140},
    }
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump(doc))
    rc, out = _run(["run", str(exp), "--out", str(tmp_path / "r"), "--no-plots"])
    assert rc == 0, out
    raw = pq.read_table(shared("carbon/NL_2022.parquet")).to_pandas()
    t_s = (raw["timestamp"] - pd.Timestamp("2022-06-01T06:00:00")).dt.total_seconds().to_numpy()
    ci = raw["carbon_intensity"].to_numpy()
    expected = float(t_s[(t_s > 5.0) & (ci < 140.0)][0])
    assert expected == 5400.0  # 07:30, 137.7 gCO2/kWh (07:15 is 140.1)
    req = pd.read_parquet(tmp_path / "r" / "simulation" / "requests.parquet")
    assert req["arrival_s"][1] == expected and req["held_s"][1] == expected - 5.0
    assert not req["deadline_missed"][1]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    d = rep["performance"]["deferral"]
    assert d["policy"] == "battery-aware" and d["deadlines_missed"] == 0 and d["held_requests"] == 1
    assert d["battery"]["threshold_gco2_per_kwh"] == 140.0 and d["battery"]["fell_back_to_lowest_carbon"] == 0
    # the estimated draw: the host's CPU idle (100 W) + the A100's idle + the run's mean GPU power above idle
    a100 = default_catalog().gpu("A100-80GB")
    assert 100.0 + a100.idle_power_w < d["battery"]["estimated_draw_w"] < 100.0 + a100.max_power_w
    assert d["latency_added_s"]["deferrable"]["mean"] == pytest.approx(expected - 5.0, abs=1.0)
    assert d["carbon_saved_g"] > 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "battery (predicted): threshold 140 gCO2/kWh" in md
    sus = json.loads((tmp_path / "r" / "opendc" / "sustainability.json").read_text())
    assert sus["battery"]["capacity_wh"] == pytest.approx(500.0) and sus["battery"]["final_charge_wh"] > 0


# --------------------------------------------------------------------------- deadlines in the other trace layouts


def _write_layout(path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    if path.suffix == ".parquet":
        df.to_parquet(path)
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows) + "\n")
    else:
        df.to_csv(path, index=False)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_azure_layout_reads_deadline_date_times(tmp_path, ext):
    # 18:15:46.5 and 18:15:50.5 arrive; the second is due at 19:15:50: 3604 s after the first arrival
    p = tmp_path / f"az{ext}"
    rows = [
        {"TIMESTAMP": "2023-11-16 18:15:46.5", "ContextTokens": 100, "GeneratedTokens": 10, "DEADLINE": None},
        {
            "TIMESTAMP": "2023-11-16 18:15:50.5",
            "ContextTokens": 100,
            "GeneratedTokens": 10,
            "DEADLINE": "2023-11-16 19:15:50.5",
        },
    ]
    if ext == ".parquet":  # Parquet holds real timestamps
        rows = [
            dict(
                r,
                TIMESTAMP=pd.Timestamp(r["TIMESTAMP"]),
                DEADLINE=pd.Timestamp(r["DEADLINE"]) if r["DEADLINE"] else None,
            )
            for r in rows
        ]
    _write_layout(p, rows)
    tr = load_trace(p)
    assert tr.format == "azure" and tr.arrival_s.tolist() == [0.0, 4.0]
    assert np.array_equal(tr.deadline_s, [np.nan, 3604.0], equal_nan=True)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_mooncake_layout_reads_deadline_s_on_its_timestamp_clock(tmp_path, ext):
    # timestamp 27000 ms with deadline_s 90 (s on timestamp / 1000): due 63 s after it arrives; rebased: 1000 ms = 0
    p = tmp_path / f"mc{ext}"
    rows = [
        {"timestamp": 1000, "input_length": 100, "output_length": 10, "deadline_s": None},
        {"timestamp": 27000, "input_length": 100, "output_length": 10, "deadline_s": 90.0},
    ]
    _write_layout(p, rows)
    tr = load_trace(p)
    assert tr.format == "mooncake" and tr.arrival_s.tolist() == [0.0, 26.0]
    assert np.array_equal(tr.deadline_s, [np.nan, 89.0], equal_nan=True)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_vidur_layout_reads_deadline_s(tmp_path, ext):
    p = tmp_path / f"vd{ext}"
    rows = [
        {"arrived_at": 5.0, "num_prefill_tokens": 100, "num_decode_tokens": 10, "deadline_s": 100.0},
        {"arrived_at": 6.0, "num_prefill_tokens": 100, "num_decode_tokens": 10, "deadline_s": None},
    ]
    _write_layout(p, rows)
    tr = load_trace(p)
    assert tr.format == "vidur" and tr.arrival_s.tolist() == [0.0, 1.0]
    assert np.array_equal(tr.deadline_s, [95.0, np.nan], equal_nan=True)


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        (
            "az.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens,DEADLINE\n2023-11-16 18:15:46.5,100,10,\n"
            "2023-11-16 18:15:50.5,100,10,2023-11-16 18:15:49\n",
            ["row 2", "DEADLINE is '2023-11-16 18:15:49', before the request's arrival (TIMESTAMP 4 s after"],
        ),
        (
            "az.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens,DEADLINE\n2023-11-16 18:15:46.5,100,10,soon\n",
            ["row 1", "DEADLINE is 'soon', which is not a date-time"],
        ),
        (
            "az.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens,DEADLINE\n2023-11-16 18:15:46.5,100,10,3600\n",
            ["row 1", "DEADLINE is 3600; expected a date-time as in TIMESTAMP"],
        ),
        (
            "mc.jsonl",
            '{"timestamp": 1000, "input_length": 100, "output_length": 10, "deadline_s": 0.5}\n',
            ["row 1 (line 1)", "deadline_s is 0.5, before the request's arrival (timestamp 1 s)"],
        ),
        (
            "mc.jsonl",
            '{"timestamp": 1000, "input_length": 100, "output_length": 10, "deadline_s": "later"}\n',
            ["row 1", "deadline_s is 'later'", "milliseconds / 1000"],
        ),
        (
            "vd.csv",
            "arrived_at,num_prefill_tokens,num_decode_tokens,deadline_s\n5.0,100,10,4\n",
            ["row 1", "deadline_s is 4, before the request's arrival (arrived_at 5)"],
        ),
    ],
)
def test_a_bad_deadline_in_each_layout_names_the_row(tmp_path, name, text, needles):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(KavierInputError) as e:
        load_trace(p)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_cli_defers_an_azure_layout_job(tmp_path):
    """An Azure-layout job due 24 h after 00:10 on 1 June 2022 moves to 11:45 (NL 2022), as the native one does."""
    csv = tmp_path / "az.csv"
    csv.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens,DEADLINE\n2022-06-01 00:00:00,200,20,\n"
        "2022-06-01 00:10:00,300,40,2022-06-02 00:10:00\n"
    )
    nl = str(shared("carbon/NL_2022.parquet"))
    argv = ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
    argv += ["--out", str(tmp_path / "o"), "--deferral", "lowest-carbon", "--carbon-trace", nl, "--start", "2022-06-01"]
    rc, out = _run(argv)
    assert rc == 0, out
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert req["deadline_s"][1] == 87000.0 and req["arrival_s"][1] == 11 * 3600 + 45 * 60


# --------------------------------------------------------------------------- spreading held requests over the window


def test_spread_releases_by_hand():
    # four held at 10 s (the step [10, 20) at 1 g/kWh): 10, 12.5, 15, 17.5; one of them may start no later than 14
    release = np.array([10.0, 10.0, 10.0, 10.0, 0.0, 30.0])
    held = np.array([True, True, True, True, False, True])
    arrival = np.array([0.0, 1.0, 2.0, 3.0, 0.0, 5.0])
    deadline = np.array([100.0, 100.0, 15.0, 100.0, np.nan, 100.0])
    service = np.array([1.0, 1.0, 1.0, 1.0, np.nan, 1.0])
    out, groups = spread_releases(release, held, arrival, deadline, service, STEPS)
    assert groups == 1
    assert out.tolist() == [10.0, 12.5, 14.0, 17.5, 0.0, 30.0]  # the third clipped to its latest start 15 - 1
    # in the trace's last step (from 30 s, no end) the width runs to the latest of their latest starts
    out, _ = spread_releases(
        np.array([30.0, 30.0]), np.array([True, True]), np.zeros(2), np.array([50.0, 71.0]), np.ones(2), STEPS
    )
    assert out.tolist() == [30.0, 50.0]  # W = 70 - 30 = 40 (the later latest start, 71 - 1): 30 and 50


def test_spread_releases_orders_by_submission():
    release = np.full(3, 10.0)
    out, _ = spread_releases(release, np.ones(3, bool), np.array([2.0, 0.0, 1.0]), np.full(3, 100.0), np.ones(3), STEPS)
    assert out.tolist() == pytest.approx([10.0 + 2 * 10 / 3, 10.0, 10.0 + 10 / 3])


def test_simulate_spreads_the_burst_and_meets_every_deadline(tmp_path):
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        "arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n"
        + "".join(f"{i * 0.5},200,20,35\n" for i in range(4))
    )
    trace = load_trace(csv)
    plain = simulate_deferred(trace, _cfg(), "lowest-carbon", STEPS)
    assert requests_table(plain).to_pandas()["arrival_s"].tolist() == [10.0] * 4
    spread = simulate_deferred(trace, _cfg(), "lowest-carbon", STEPS, spread=True)
    t = requests_table(spread).to_pandas()
    assert t["arrival_s"].tolist() == [10.0, 12.5, 15.0, 17.5]
    assert t["held_s"].tolist() == [10.0, 12.0, 14.0, 16.0] and not t["deadline_missed"].any()
    s = summary_dict(spread)["deferral"]
    assert s["largest_release_burst"] == 1 and s["spread"]["groups_spread"] == 1
    # alone on the replica in the same step, each takes its time without deferral: none queues behind another
    assert (t["e2e_s"] < requests_table(plain).to_pandas()["e2e_s"].max()).all()


def test_spread_needs_a_policy_that_holds(tmp_path):
    from kavier_opendc.experiments.experiment import experiment_problems, json_path

    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,100,10,5000\n")
    rc, out = _run(
        ["simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB", "--trace", str(csv), "--quiet"]
        + ["--out", str(tmp_path / "s"), "--deferral-spread"]
    )
    assert rc == 2 and "--deferral-spread" in out and "policy none holds none" in out and "Traceback" not in out
    probs, _ = experiment_problems(
        _experiment(tmp_path, deferral={"policy": "none", "spread": True}), base_dir=tmp_path, source="e", opendc=False
    )
    assert any(json_path(p) == "deferral.spread" for p, _ in probs), probs
    probs, exp = experiment_problems(
        _experiment(tmp_path, deferral={"policy": "lowest-carbon", "spread": True}),
        base_dir=tmp_path,
        source="e",
        opendc=False,
    )
    assert probs == [] and exp.deferral_spread


def test_requests_released_at_one_instant_stay_on_the_server_path(tmp_path):
    """Two timed requests run as a server (vLLM v1's server batch limits); both held to 10 s they arrive at one
    instant, which usage auto would read as an offline batch: the deferred run keeps the server's limits."""
    csv = tmp_path / "jobs.csv"
    csv.write_text("arrival_time_s,num_input_tokens,num_output_tokens,deadline_s\n0,200,20,35\n1,200,20,35\n")
    trace = load_trace(csv)
    assert simulate(trace, _cfg()).usage == "server"
    result = simulate_deferred(trace, _cfg(), "lowest-carbon", STEPS)
    assert requests_table(result).to_pandas()["arrival_s"].tolist() == [10.0, 10.0]
    assert result.usage == "server"


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(50, 300), min_size=2, max_size=8),
    initial=st.integers(0, 3000),
    load=st.integers(1, 200),
    arrival=st.integers(0, 60),
    slack=st.integers(0, 80),
    service=st.integers(0, 20),
)
def test_battery_aware_start_is_the_earliest_clean_start(values, initial, load, arrival, slack, service):
    """On a fine grid, no start from the arrival before the chosen one is clean; the chosen one is clean, or
    no clean start exists and it is the lowest-carbon start; it never leaves [arrival, the latest start]."""
    steps = CarbonSteps(np.arange(len(values)) * 10.0, np.array(values, dtype=np.float64))
    plan = battery_plan(steps, Battery(2000.0, 50.0, 150.0, initial_j=float(initial)), float(load), 200.0)
    deadline = float(arrival + service + slack)
    t = battery_aware_start(float(arrival), deadline, float(service), steps, plan)
    latest = deadline - service
    assert arrival <= t <= max(arrival, latest)
    grid = np.arange(arrival, latest, 0.25)
    clean = [g for g in grid if plan.clean(float(g), float(service))]
    if latest > arrival and plan.clean(t, float(service)):
        assert not clean or clean[0] >= t - 0.25
    elif latest > arrival:
        assert not clean and t == lowest_carbon_start(float(arrival), deadline, float(service), steps)
