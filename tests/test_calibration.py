"""Accuracy against real measurements: vLLM, Llama-3-8B, one A10 (acceptance: MAPE <= 5 %)."""

from __future__ import annotations

import importlib.util

from conftest import REPO, shared


def _calibration():
    spec = importlib.util.spec_from_file_location("calibrate_a10", REPO / "bench" / "calibrate_a10.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a10_prefill_and_decode_mape_within_5_percent():
    cal = _calibration()
    rows = cal.load_rows(shared("measurements/kavier_a10_llama3_8b_vllm.csv"))
    pre, dec, table = cal.evaluate(rows, cal.DEFAULT_EFFICIENCY)
    assert len(table) == 9
    assert pre <= 5.0, f"prefill MAPE {pre:.2f}%"
    assert dec <= 5.0, f"decode MAPE {dec:.2f}%"
    # and better than the Kavier prototype on both
    assert pre < 7.39 and dec < 4.00
