"""Closed-loop benchmark calibration (calibration/closed_loop_bench.py): a round trip, the rows, the profiles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import SHARED_DATA
from kavier_opendc.calibration.closed_loop_bench import (
    ClosedLoopRow,
    deployment_token_budget,
    fit_closed_loop,
    read_rows,
    row_config,
    row_trace,
    sglang05_memory_fraction,
    simulate_row,
)
from kavier_opendc.engine.simulator import simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.frameworks import StepOverhead, framework

CAT = default_catalog()


def _row(isl: int, osl: int, c: int, tp: int = 1) -> ClosedLoopRow:
    rid = f"r{isl}x{osl}c{c}"
    return ClosedLoopRow(rid, "vllm", "test", "Llama-3.1-8B", "H100-SXM", "bf16", tp, isl, osl, c, c, 1.0, 1.0)


def test_round_trip_recovers_a_known_profile():
    # rows "measured" by the simulator under a known step overhead and client latency are fitted back
    truth = StepOverhead(fixed_s=0.002, per_seq_s=4e-5)
    client = 0.03
    known = dataclasses.replace(framework("vllm-0.12-server"), step_overhead={("H100-SXM", 1): truth})
    rows = []
    for isl, osl, c in [(512, 64, 2), (512, 64, 8), (512, 64, 32), (256, 32, 16)]:
        s = simulate_row(_row(isl, osl, c), CAT, known)
        rows.append(dataclasses.replace(s.row, ttft_s=s.ttft_s + client, tpot_s=s.tpot_s))
    fit = fit_closed_loop(rows, CAT, framework("vllm-0.12-server"), lambda r: True)
    got = fit.overheads[("H100-SXM", 1)]
    assert got.fixed_s == pytest.approx(truth.fixed_s, rel=0.02)
    assert got.per_seq_s == pytest.approx(truth.per_seq_s, rel=0.02)
    assert fit.client_latency_s == pytest.approx(client, rel=0.02)
    assert fit.mape(fit.fitted)["tpot"] < 0.005 and not fit.held_out


def test_row_trace_is_the_aiperf_run():
    tr = row_trace(_row(1024, 128, 8))
    assert len(tr) == 22 * 8 and tr.closed_loop is not None and tr.closed_loop.concurrency == 8
    assert (tr.num_input_tokens == 1024).all() and (tr.num_output_tokens == 128).all()


def test_deployment_token_budget_by_hand():
    # AIConfigurator's generator rule: batch + ISL + 1500 tokens per step (TRT-LLM: up to 32-token blocks)
    vllm012 = dataclasses.replace(_row(1024, 128, 8), version="0.12.0")
    assert deployment_token_budget(vllm012) == 8 + 1024 + 1500
    assert row_config(vllm012, CAT, framework("vllm-0.12-server")).max_batched_tokens == 2532
    # measured before the generator existed (2025-12-04), or undated and not vLLM 0.12.0: the engine's default
    assert deployment_token_budget(dataclasses.replace(vllm012, measured="2025-10-29")) is None
    assert deployment_token_budget(_row(1024, 128, 8)) is None
    assert row_config(_row(1024, 128, 8), CAT, framework("vllm-0.12-server")).max_batched_tokens is None
    trt = dataclasses.replace(vllm012, backend="trtllm", version="1.2.0rc6.post1", measured="2026-01-23")
    assert deployment_token_budget(trt) == 80 * 32  # 2532 -> 2560


def test_token_budget_breaks_the_first_waves_lockstep():
    # 8 prompts of 1,024 tokens at once: the default 8,192-token budget prefills all of them in one step (one
    # first-token time); 2,532 tokens a step hold at most two whole prompts (the rest chunked), so the first
    # tokens come over at least four steps and the first one much sooner
    row = dataclasses.replace(_row(1024, 16, 8), version="0.12.0")
    fw = framework("vllm-0.12-server")
    firsts = {}
    for name, cfg in (("default", row_config(_row(1024, 16, 8), CAT, fw)), ("budget", row_config(row, CAT, fw))):
        res = simulate(row_trace(row), cfg, progress=False)
        firsts[name] = np.round(res.results.first_token[:8], 9)
    assert len(set(firsts["default"])) == 1
    assert len(set(firsts["budget"])) >= 4 and firsts["budget"].min() < firsts["default"].min() / 2


def test_sglang05_memory_fraction_by_hand():
    # 80 GiB: reserved = 512 + 8192 * 1.5 + 256 * 2 + 2 / 8 * 1024 = 13568 MiB at TP 2; 512 graphs from TP 4
    assert sglang05_memory_fraction(80.0, 2) == round((81920 - 13568) / 81920, 3)
    assert sglang05_memory_fraction(80.0, 8) == round((81920 - (512 + 12288 + 1024 + 1024)) / 81920, 3)


def test_new_framework_profiles_load():
    for name, policy in (("vllm-0.12-server", "vllm-v1"), ("sglang-0.5-server", "sglang")):
        fw = framework(name)
        assert fw.policy == policy and fw.serving_path == "server"
        assert {t for (_, t) in fw.step_overhead} == {2, 4, 8}
        assert all(o.fixed_s >= 0 and o.per_seq_s >= 0 for o in fw.step_overhead.values())


def test_shared_rows_read():
    path = SHARED_DATA / "calibration" / "aiconfigurator_e2e_h100.csv"
    if not path.exists():
        pytest.skip("shared data not found")
    rows = read_rows(path)
    vllm = [r for r in rows if r.backend == "vllm" and r.version == "0.12.0" and r.model == "Qwen3-32B"]
    assert len([r for r in vllm if r.precision == "bf16"]) == 90
    assert len([r for r in rows if r.backend == "vllm" and r.model == "Llama-3.1-70B"]) == 45
    assert all(r.concurrency >= 1 and r.ttft_s > 0 and r.tpot_s > 0 for r in rows)
    assert np.isin([r.backend for r in rows], ["vllm", "sglang", "trtllm"]).all()
