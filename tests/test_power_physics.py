"""Physics of the power model: saturated decode reaches the power limit, CPU gaps are idle, weights move no time.

The activity weights are fitted on Argonne's vLLM 0.5-0.6 offline power rows (bench/calibrate_power.py);
these tests hold what they must give away from those rows: an H100 (or A100) decoding Llama-3-8B at high
batch under vLLM v1 sits at its power limit, as real serving does; batch-1 decode (weight streaming) well
below it; and the framework's CPU time counts as GPU idle.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from conftest import REPO
from kavier_opendc.engine.cost_model import CostModel
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace

CAT = default_catalog()


def _calibrate_power():
    spec = importlib.util.spec_from_file_location("calibrate_power", REPO / "bench" / "calibrate_power.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CP = _calibrate_power()


@pytest.mark.parametrize("gpu", ["H100-SXM", "A100-80GB"])
def test_saturated_decode_reaches_the_power_limit(gpu):
    s = CP.saturated_decode_power(gpu)  # Llama-3-8B, 256 sequences of 512 + 1024 tokens, vllm-v1
    assert s["preemptions"] == 0  # a steady batch, not recomputation
    assert 0.95 * s["max_w"] <= s["steady_w"] <= s["max_w"]
    assert 0.93 * s["max_w"] <= s["run_w"] <= s["max_w"]  # prefill at the start and all, nearly as high


def test_decode_power_rises_with_the_batch_from_well_below_the_limit():
    h100 = CAT.gpu("H100-SXM")
    watts = [CP.saturated_decode_power("H100-SXM", shape=(b, 512, 1024))["steady_w"] for b in (1, 16, 64, 256)]
    assert watts == sorted(watts) and len(set(watts)) == 4
    # one sequence streams the weights and little else: about half the limit, well above idle
    assert h100.idle_power_w + 0.3 * (h100.max_power_w - h100.idle_power_w) < watts[0] < 0.7 * h100.max_power_w


def test_cpu_time_per_step_counts_as_gpu_idle():
    """The same kernels with more CPU time per step: the activity is diluted by exactly the idle share."""
    m, g = CAT.model("Llama-3-8B"), CAT.gpu("H100-SXM")
    cm = CostModel(m, g)
    t, flops, wb, kvb = cm.iteration(64, 64 * 1025, 64 * 1024, 64)
    u = cm.activity(t, flops, wb, kvb)
    assert 0.0 < u < 1.0
    for gap in (0.001, 0.01, 0.1):
        assert cm.activity(t + gap, flops, wb, kvb) == pytest.approx(u * t / (t + gap), rel=1e-12)
    assert cm.activity(0.05, 0.0, 0.0, 0.0) == 0.0  # CPU time alone: idle power
    # a framework with more CPU time per step (vLLM 0.5 offline) gives a lower activity for the same batch
    slow = CostModel(m, g, framework=_framework("vllm-0.5-offline"))
    ts, fs, ws, ks = slow.iteration(64, 64 * 1025, 64 * 1024, 64)
    assert (fs, ws, ks) == (flops, wb, kvb) and ts > t
    assert slow.activity(ts, fs, ws, ks) < u


def _framework(name):
    from kavier_opendc.specs.frameworks import framework

    return framework(name)


def test_kv_bytes_draw_more_power_than_weight_bytes():
    """The fitted weights: per byte, the KV cache costs more than streaming weights, on every measured GPU."""
    for name in ("A100-40GB", "H100-SXM"):
        p = CAT.gpu(name).profile
        assert p.power_kv_weight > 1.4 * p.power_memory_weight
        # a compute-bound GEMM at 80 % of peak is at (or within 5 % of) the power limit
        assert p.power_compute_weight * 0.8 >= 0.95


def test_power_weights_change_power_only():
    """Timing (requests.parquet) does not depend on the activity weights; the timeline's activity does."""
    m, g = CAT.model("Llama-3-8B"), CAT.gpu("H100-SXM")
    rng = np.random.default_rng(3)
    n = 200
    trace = Trace(np.sort(rng.uniform(0, 20, n)), rng.integers(50, 2000, n), rng.integers(10, 500, n))
    runs = []
    for weights in ((1.3, 0.8, 1.37), (0.5, 0.5, 0.5)):
        eff = dataclasses.replace(
            g.profile, power_compute_weight=weights[0], power_memory_weight=weights[1], power_kv_weight=weights[2]
        )
        runs.append(simulate(trace, SimConfig(model=m, gpu=g, efficiency=eff), progress=False))
    a, b = runs
    for col in ("first_token", "finish"):
        assert np.array_equal(getattr(a.results, col), getattr(b.results, col))
    ua = np.asarray(a.replicas[0].timeline.util)
    ub = np.asarray(b.replicas[0].timeline.util)
    assert ua.mean() > ub.mean()
