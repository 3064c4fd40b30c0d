"""A power cap under OpenDC's curved GPU power models (opendc/datacenter.py PowerModel.under_cap, the export):
the curve runs from idle to the cap on the utilisation rescaled to idle-to-cap, so no instant draws above the
cap; the linear model is left as it was. Hand-computed, then through the real OpenDC."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import needs_opendc
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.opendc.datacenter import PowerModel
from kavier_opendc.opendc.inputs import write_opendc_inputs
from test_opendc_integration import I_CPU, I_GPU, M_GPU, datacenter, write_sim

CAP = 250.0
U_FULL = (CAP - I_GPU) / (M_GPU - I_GPU)  # the timeline's utilisation of a GPU drawing its cap: 190 / 340


def _capped_sim(path, segments, caps=(CAP,)):
    sim = write_sim(path, segments)
    s = json.loads((sim / "summary.json").read_text())
    s["replicas"] = [{"replica": i, "power_cap_w": c} for i, c in enumerate(caps)]
    (sim / "summary.json").write_text(json.dumps(s))
    return sim


def test_under_cap_by_hand():
    sq = PowerModel("sqrt", I_GPU, M_GPU)
    capped = sq.under_cap(CAP)
    assert (capped.idle_w, capped.max_w) == (60.0, 250.0)
    # the capped draw (u = 190/340) is all of idle-to-cap; a quarter of it a quarter
    u = sq.capped_utilisation(np.array([U_FULL, U_FULL / 4, 1.0]), CAP)
    assert u.tolist() == pytest.approx([1.0, 0.25, 1.0])
    assert capped.power(0.25) == pytest.approx(60.0 + 190.0 * 0.5)  # 155 W
    # before, OpenDC drew 60 + 340 sqrt(190/340) = 314.2 W at the capped utilisation: above the cap
    assert sq.power(U_FULL) == pytest.approx(314.2, abs=0.1)
    lin = PowerModel("linear", I_GPU, M_GPU)
    assert lin.under_cap(CAP) is lin and lin.capped_utilisation(0.3, CAP) == 0.3
    assert PowerModel("constant", 0, 0, power_w=300.0).under_cap(CAP).power_w == 250.0
    assert sq.capped_utilisation(0.3, 500.0) == 0.3  # a cap above the TDP caps nothing


@needs_opendc
@pytest.mark.parametrize(("model", "low_w"), [("sqrt", 60.0 + 190.0 * 0.5), ("square", 60.0 + 190.0 * 0.0625)])
def test_curved_model_under_a_cap_through_opendc(tmp_path, model, low_w):
    """300 s at the cap's utilisation, 300 s at a quarter of it: OpenDC draws 250 W, then the curve at 0.25 of
    idle-to-cap (sqrt 155 W, square 71.875 W); the peak is the cap."""
    from kavier_opendc.opendc.results import run_opendc_dir

    sim = _capped_sim(tmp_path / "sim", {0: [(0.0, 300.0, U_FULL), (300.0, 600.0, U_FULL / 4)]})
    dc = datacenter(hosts=[dict(datacenter()["hosts"][0], gpu_power_model={"model": model})])
    write_opendc_inputs(sim, dc, tmp_path / "odc", cpu_load_cores=0.0, mode="segments")
    topo = json.loads((tmp_path / "odc" / "topology.json").read_text())
    assert topo["clusters"][0]["hosts"][0]["gpuPowerModel"]["maxPower"] == "250 W"
    r = run_opendc_dir(tmp_path / "odc")
    assert r["per_gpu"][0]["energy_wh"] * 3600 == pytest.approx(250.0 * 300 + low_w * 300, rel=0.01)
    assert r["peak_power_w"] == pytest.approx(CAP + I_CPU, rel=0.01)


def test_linear_model_export_is_unchanged_by_the_cap(tmp_path):
    seg = {0: [(0.0, 30.0, U_FULL), (30.0, 60.0, 0.1)]}
    capped = _capped_sim(tmp_path / "a", seg)
    plain = write_sim(tmp_path / "b", seg)
    write_opendc_inputs(capped, datacenter(), tmp_path / "oa", cpu_load_cores=0.0)
    write_opendc_inputs(plain, datacenter(), tmp_path / "ob", cpu_load_cores=0.0)
    for f in ("fragments.parquet", "tasks.parquet"):
        a = next((tmp_path / "oa").rglob(f)).read_bytes()
        assert a == next((tmp_path / "ob").rglob(f)).read_bytes()
    assert (tmp_path / "oa" / "topology.json").read_text() == (tmp_path / "ob" / "topology.json").read_text()


def test_curved_model_with_two_caps_or_per_request_is_refused(tmp_path):
    sim = _capped_sim(tmp_path / "sim", {0: [(0.0, 10.0, 0.5)], 1: [(0.0, 10.0, 0.5)]}, caps=(250.0, 300.0))
    dc = datacenter(
        gpus_per_host=2, hosts=[dict(datacenter()["hosts"][0], gpus_per_host=2, gpu_power_model={"model": "cubic"})]
    )
    with pytest.raises(KavierInputError) as e:
        write_opendc_inputs(sim, dc, tmp_path / "odc", cpu_load_cores=0.0)
    msg = str(e.value)
    assert "different power caps (250 W, 300 W)" in msg and "hosts[0].gpu_power_model.model" in msg
    one = _capped_sim(tmp_path / "one", {0: [(0.0, 10.0, 0.5)]})
    dc1 = datacenter(hosts=[dict(datacenter()["hosts"][0], gpu_power_model={"model": "cubic"})])
    with pytest.raises(KavierInputError, match="per-request export does not model a power cap"):
        write_opendc_inputs(one, dc1, tmp_path / "pr", cpu_load_cores=0.0, mode="per-request")
