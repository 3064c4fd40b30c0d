"""GPU power caps and SM clocks (engine/clock.py): hand-computed iterations, invariants, bad input, end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TOY_BODY, TOY_EFF, TOY_GPU, TOY_MODEL, make_trace, needs_opendc
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.clock import ClockKnob, power_scale, voltage
from kavier_opendc.engine.cost_model import CappedCostModel, CostModel, make_cost_model
from kavier_opendc.engine.simulator import simulate
from kavier_opendc.specs import default_catalog
from test_engine import toy
from test_pipeline import cli, tiny_experiment

# the toy GPU (100 TFLOP/s, 1 TB/s, idle 50 W, TDP 300 W, 1000 MHz) with board limits: 100 W, 200 MHz
GPU = dataclasses.replace(TOY_GPU, extra={"min_power_limit_w": 100, "min_clock_mhz": 200})


def cm_of(**knob) -> CostModel:
    return make_cost_model(TOY_MODEL, GPU, 1, TOY_EFF, None, ClockKnob(**knob))


def watts(cm: CostModel, it: tuple) -> float:
    return GPU.idle_power_w + (GPU.max_power_w - GPU.idle_power_w) * cm.activity(*it)


# A compute-bound iteration: a 1,000-token prompt chunk (2e12 FLOPs; 2e9 weight bytes, 512,000 KV bytes).
# By hand at clock ratio r: t = 2 x TOY_BODY x 1000 / (1e14 r) (body GEMM at 1e14 r FLOP/s, ~0.02 / r)
# + 2.56e-7 (LM head, memory) + 5.12e-7 (KV writes) + 1e-3 (overhead);
# u = min(1, (1.2 x 2e12 / (1e14 r) + 0.75 x 2e-3 + 1.41 x 5.12e-7) / t) = 1 at every r.
# A decode of one sequence: t = 2e-3 + 2.56e-7 ... = 3.000000512e-3 s whatever r (memory-bound).
PREFILL = (1000, 0.0, 0.0, 1)
DECODE = (1, 0.0, 0.0, 1)


def test_voltage_and_power_scale_by_hand():
    assert voltage(1.0) == 1.0 and voltage(0.6) == 0.7 and voltage(0.3) == 0.7
    assert voltage(0.8) == pytest.approx(0.85)
    assert power_scale(0.81) == pytest.approx(0.81 * 0.8575**2)
    assert power_scale(0.5) == pytest.approx(0.5 * 0.49)


def test_compute_bound_iteration_under_a_cap_by_hand():
    # 200 W cap: dynamic budget (200 - 50) / 250 = 0.6 of (max - idle); u = 1, so the clock must have
    # s(r) = r v(r)^2 <= 0.6: s(0.815) = 0.6045 > 0.6, s(0.81) = 0.81 x 0.8575^2 = 0.59560 fits
    cm = cm_of(power_cap_w=200)
    full = CostModel(TOY_MODEL, GPU, 1, TOY_EFF)
    it = cm.iteration(*PREFILL)
    assert cm.clock_of(*PREFILL) == pytest.approx(0.81)
    assert it[0] == pytest.approx(2 * TOY_BODY * 1000 / (1e14 * 0.81) + 2.56e-7 + 5.12e-7 + 1e-3, rel=1e-12)
    t_full = 2 * TOY_BODY * 1000 / 1e14 + 2.56e-7 + 5.12e-7 + 1e-3
    assert full.iteration(*PREFILL)[0] == pytest.approx(t_full, rel=1e-12)
    assert watts(cm, it) == pytest.approx(50 + 250 * 0.81 * 0.8575**2, rel=1e-9)  # 198.90 W
    assert watts(full, full.iteration(*PREFILL)) == pytest.approx(300.0)  # uncapped: the TDP


def test_memory_bound_iteration_under_a_cap_by_hand():
    # u(r) = (2.4e-5 / r + 1.5e-3 + 7.2e-10) / 3.000000512e-3: 0.50800 at r = 1 (177.0 W). A 150 W cap
    # (budget 0.4): u s at r = 0.91 is 0.50879 x 0.79130 = 0.40260 > 0.4; at 0.905: 0.50884 x 0.78063 = 0.39722
    cm = cm_of(power_cap_w=150)
    t_hand = 2 * (1e9 - 128_000) / 1e12 + 2 * 128_000 / 1e12 + 512 / 1e12 + 1e-3
    it = cm.iteration(*DECODE)
    assert cm.clock_of(*DECODE) == pytest.approx(0.905)
    assert it[0] == pytest.approx(t_hand, rel=1e-12)  # the time does not change: HBM-bound
    u = (1.2 * 2e9 / (1e14 * 0.905) + 0.75 * 2e9 / 1e12 + 1.41 * 512 / 1e12) / t_hand
    assert watts(cm, it) == pytest.approx(50 + 250 * u * power_scale(0.905), rel=1e-9)
    assert watts(cm, it) <= 150.0
    full = CostModel(TOY_MODEL, GPU, 1, TOY_EFF)
    assert watts(full, full.iteration(*DECODE)) == pytest.approx(50 + 250 * (2.4e-5 + 1.5e-3 + 7.2e-10) / t_hand)


def test_clock_knob_by_hand():
    # 500 MHz of 1000: r = 0.5 below the voltage floor: s = 0.5 x 0.7^2 = 0.245; compute twice as long
    cm = cm_of(sm_clock_mhz=500)
    assert not isinstance(cm, CappedCostModel) and cm.clock_ratio == 0.5
    it = cm.iteration(*PREFILL)
    assert it[0] == pytest.approx(2 * TOY_BODY * 1000 / (1e14 * 0.5) + 2.56e-7 + 5.12e-7 + 1e-3, rel=1e-12)
    assert watts(cm, it) == pytest.approx(50 + 250 * 0.245)
    dec = cm.iteration(*DECODE)
    assert dec[0] == pytest.approx(CostModel(TOY_MODEL, GPU, 1, TOY_EFF).iteration(*DECODE)[0], rel=1e-12)


def test_no_knob_is_the_plain_model():
    cm = make_cost_model(TOY_MODEL, GPU, 1, TOY_EFF, None, ClockKnob())
    assert type(cm) is CostModel and not cm.clocked


@settings(max_examples=40, deadline=None)
@given(
    caps=st.lists(st.floats(100, 300), min_size=2, max_size=2),
    n=st.integers(1, 4096),
    seqs=st.integers(1, 64),
    ctx=st.integers(0, 4000),
)
def test_lower_cap_never_faster_never_more_power(caps, n, seqs, ctx):
    lo, hi = sorted(caps)
    shape = (n, float(seqs * (ctx + 1)), float(seqs * ctx), min(seqs, n))
    a, b = cm_of(power_cap_w=lo), cm_of(power_cap_w=hi)
    ia, ib = a.iteration(*shape), b.iteration(*shape)
    assert ia[0] >= ib[0] * (1 - 1e-12)
    pa, pb = watts(a, ia), watts(b, ib)
    assert pa <= pb + 1e-9
    assert pa <= lo + 1e-9 or a.clock_of(*shape) == pytest.approx(0.2)  # fits, or the lowest clock


def test_capped_prefill_slows_more_than_capped_decode_llama3_8b_h100():
    cat = default_catalog()
    m, g = cat.model("Llama-3-8B"), cat.gpu("H100-SXM")
    full, capped = CostModel(m, g), make_cost_model(m, g, knob=ClockKnob(power_cap_w=450))
    prefill = (2048, 2048 * 2049 / 2, 0.0, 1)
    decode = (64, 64 * 1025.0, 64 * 1024.0, 64)  # 64 sequences at 1,024 tokens of context
    slow_p = capped.iteration(*prefill)[0] / full.iteration(*prefill)[0] - 1
    slow_d = capped.iteration(*decode)[0] / full.iteration(*decode)[0] - 1
    assert slow_p > 0.10  # 14.7 %: the clock falls to 0.830 of the boost clock
    assert 0.0 <= slow_d < 0.01  # 0.14 %: HBM-bound
    for it_shape in (prefill, decode):
        it = capped.iteration(*it_shape)
        assert g.idle_power_w + (g.max_power_w - g.idle_power_w) * capped.activity(*it) <= 450.0


@pytest.mark.parametrize(
    ("knob", "field", "words"),
    [
        (ClockKnob(power_cap_w=150), "power_cap_w", "200 <= W <= 700"),
        (ClockKnob(power_cap_w=800), "power_cap_w", "200 <= W <= 700"),
        (ClockKnob(sm_clock_mhz=2500), "sm_clock_mhz", "345 <= MHz <= 1980"),
        (ClockKnob(sm_clock_mhz=100), "sm_clock_mhz", "345 <= MHz <= 1980"),
        (ClockKnob(power_cap_w=400, sm_clock_mhz=1500), "power_cap_w/sm_clock_mhz", "one of them"),
    ],
)
def test_bad_knobs_name_the_field(knob, field, words):
    cat = default_catalog()
    with pytest.raises(KavierInputError) as exc:
        make_cost_model(cat.model("Llama-3-8B"), cat.gpu("H100-SXM"), knob=knob)
    assert exc.value.location == field and words in str(exc.value)


def test_gpu_without_limits_refuses_a_cap():
    cat = default_catalog()
    with pytest.raises(KavierInputError, match="no minimum power limit for L4"):
        make_cost_model(cat.model("Llama-3-8B"), cat.gpu("L4"), knob=ClockKnob(power_cap_w=60))


def _busy(result) -> float:
    return sum(
        sum((b - a) * u for a, b, u in zip(rep.timeline.start, rep.timeline.end, rep.timeline.util, strict=True))
        * rep.cm.tp
        for rep in result.replicas
    )


def test_simulation_under_a_cap_keeps_power_below_it_and_energy_conserved():
    rng = np.random.default_rng(3)
    n = 80
    trace = make_trace(np.sort(rng.uniform(0, 2, n)), rng.integers(50, 3000, n), rng.integers(1, 200, n))
    base = simulate(trace, toy(gpu=GPU), progress=False)
    capped = simulate(trace, toy(gpu=GPU, power_cap_w=150), progress=False)
    u = np.concatenate([r.timeline.util for r in capped.replicas])
    assert 50 + 250 * u.max() <= 150 + 1e-6
    assert np.concatenate([r.timeline.util for r in base.replicas]).max() > 0.4  # the cap binds
    assert capped.replicas[0].busy_time > base.replicas[0].busy_time
    from kavier_opendc.engine.outputs import requests_table

    req = requests_table(capped)
    assert float(np.nansum(np.asarray(req["gpu_busy_s"]))) == pytest.approx(_busy(capped), rel=1e-9)


def test_cli_simulate_with_a_cap_and_a_bad_cap(tmp_path):
    trace = tmp_path / "t.csv"
    pd.DataFrame({"arrival_time_s": np.arange(40) * 0.05, "num_input_tokens": 1500, "num_output_tokens": 30}).to_csv(
        trace, index=False
    )
    common = ("simulate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--trace", trace)
    a = cli(*common, "--out", tmp_path / "a")
    b = cli(*common, "--out", tmp_path / "b", "--power-cap-w", "300")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    sa, sb = (json.loads((tmp_path / x / "summary.json").read_text()) for x in ("a", "b"))
    assert sb["ttft_s"]["p50"] > sa["ttft_s"]["p50"]
    assert sb["gpu_utilization_mean"] < sa["gpu_utilization_mean"]
    tl = pd.read_parquet(tmp_path / "b" / "timeline.parquet")
    assert 70 + 630 * tl["gpu_utilization"].max() <= 300 + 1e-6  # H100-SXM: idle 70 W, TDP 700 W
    bad = cli(*common, "--out", tmp_path / "c", "--power-cap-w", "150")
    assert bad.returncode == 2
    assert "--power-cap-w" in bad.stderr and "200 <= W <= 700" in bad.stderr and "Traceback" not in bad.stderr


@needs_opendc
def test_kavier_run_with_a_cap_lowers_energy_and_peak_power(tmp_path):
    out = {}
    for name, serving in (
        ("full", {"replicas": 2}),
        ("capped", {"replicas": 2, "power_cap_w": 200}),
    ):
        p = tiny_experiment(tmp_path / name, serving=serving)
        r = cli("run", p, "--out", tmp_path / name / "out")
        assert r.returncode == 0, r.stderr
        out[name] = json.loads((tmp_path / name / "out" / "report.json").read_text())["sustainability"]
    assert out["capped"]["energy_wh"] < out["full"]["energy_wh"]
    assert out["capped"]["peak_power_w"] < out["full"]["peak_power_w"]


def test_experiment_with_a_cap_above_the_tdp_names_the_field(tmp_path):
    p = tiny_experiment(tmp_path, serving={"replicas": 2, "power_cap_w": 500})  # A100-80GB: TDP 400 W
    r = cli("validate", p)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "serving.power_cap_w" in r.stderr and "100 <= W <= 400" in r.stderr


def test_disaggregated_pools_take_their_own_caps(tmp_path):
    trace = tmp_path / "t.csv"
    pd.DataFrame({"arrival_time_s": np.arange(40) * 0.05, "num_input_tokens": 1500, "num_output_tokens": 30}).to_csv(
        trace, index=False
    )
    common = ("simulate", "--model", "llama-3-8b", "--gpu", "h100-sxm", "--trace", trace)
    common += ("--prefill-replicas", "1", "--decode-replicas", "1")
    a = cli(*common, "--out", tmp_path / "a")
    b = cli(*common, "--out", tmp_path / "b", "--prefill-power-cap-w", "300")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    sa, sb = (json.loads((tmp_path / x / "summary.json").read_text()) for x in ("a", "b"))
    assert sb["ttft_s"]["p50"] > 1.5 * sa["ttft_s"]["p50"]  # the capped prefill pool is the bottleneck
    assert sb["tpot_s"]["p50"] == pytest.approx(sa["tpot_s"]["p50"], rel=0.05)  # the decode pool is not capped
    bad = cli(*common, "--out", tmp_path / "c", "--decode-power-cap-w", "150")
    assert bad.returncode == 2 and "--decode-power-cap-w" in bad.stderr and "200 <= W <= 700" in bad.stderr
