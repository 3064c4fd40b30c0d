"""Cost and energy count the same hardware (issue 17, item 5): with OpenDC, every GPU of the datacenter
(idle ones draw power in OpenDC and are paid for); without it, the GPUs serving the replicas."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import needs_opendc
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.pipeline import run_experiment
from kavier_opendc.reports.efficiency import LatencyTargets, Prices, efficiency_report
from test_pipeline import tiny_experiment

PRICES = Prices(gpu_hour={"A100-80GB": 2.0}, electricity_per_kwh=0.3, currency="EUR")
PERF = {"makespan_s": 3600.0, "input_tokens": 600_000, "output_tokens": 400_000}


def test_the_cost_counts_the_datacenters_gpus_when_given():
    import pandas as pd

    req = pd.DataFrame({"ttft_s": [0.1], "tpot_s": [0.01], "status": [0]})
    kw = dict(gpu_counts={"A100-80GB": 2}, prices=PRICES, slo=LatencyTargets())
    alone = efficiency_report(PERF, req, None, **kw)
    assert alone["gpu_counts_basis"] == "replicas" and alone["gpu_hours"] == 2.0 and alone["gpu_cost"] == 4.0
    full = efficiency_report(PERF, req, {"energy_wh": 1000.0, "carbon_g": 1.0}, datacenter_gpus={"A100-80GB": 8}, **kw)
    assert full["gpu_counts_basis"] == "datacenter" and full["gpu_counts"] == {"A100-80GB": 8}
    assert full["serving_gpu_counts"] == {"A100-80GB": 2}
    assert full["gpu_hours"] == 8.0 and full["gpu_cost"] == 16.0
    assert full["total_cost"] == pytest.approx(16.0 + 0.3)  # 1 kWh at 0.3


@needs_opendc
def test_an_eight_gpu_host_serving_two_replicas_pays_for_eight(tmp_path):
    """Real OpenDC: one 4-GPU host more than the replicas need raises energy (idle GPUs) and the cost alike."""
    from kavier_opendc.opendc.bridge import OpenDCBridge

    effs = {}
    with OpenDCBridge() as bridge:
        for hosts in (1, 4):
            exp = tiny_experiment(tmp_path / str(hosts))
            doc = yaml.safe_load(exp.read_text())
            doc["datacenter"]["hosts"][0]["count"] = hosts  # 2 GPUs a host
            exp.write_text(yaml.safe_dump(doc))
            out = tmp_path / str(hosts) / "out"
            run_experiment(load_experiment(exp), out, bridge=bridge, plots=False, quiet=True, command="test")
            effs[hosts] = (json.loads((out / "report.json").read_text())["efficiency"], (out / "report.md").read_text())
    (small, _), (big, md) = effs[1], effs[4]
    assert small["gpu_counts"] == {"A100-80GB": 2} and big["gpu_counts"] == {"A100-80GB": 8}
    assert big["serving_gpu_counts"] == small["serving_gpu_counts"] == {"A100-80GB": 2}
    assert big["gpu_cost"] == pytest.approx(4 * small["gpu_cost"])  # same window, 4x the GPUs
    assert big["energy_wh"] > small["energy_wh"]  # the idle GPUs' and hosts' power
    assert "cost and energy both count the datacenter's 8 x A100-80GB GPU(s)" in md
    assert "the replicas use 2 x A100-80GB" in md
