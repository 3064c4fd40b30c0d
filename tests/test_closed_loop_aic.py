"""TensorRT-LLM as a server (trtllm-1.0-server) and the MoE rows of AIConfigurator's table simulated whole
(calibration/closed_loop_bench.py, bench/build_frameworks.py --whole-runs)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from conftest import SHARED_DATA
from kavier_opendc.calibration.closed_loop_bench import (
    ClosedLoopFit,
    ClosedLoopRow,
    SimulatedRow,
    evaluate,
    read_rows,
    row_config,
    simulate_row,
    ttft_jumps,
)
from kavier_opendc.specs import default_catalog
from kavier_opendc.specs.frameworks import framework

CAT = default_catalog()
CSV = SHARED_DATA / "calibration" / "aiconfigurator_e2e_h100.csv"


def _row(c: int, ttft: float, tp: int = 1, **kw) -> ClosedLoopRow:
    base = dict(id=f"c{c}tp{tp}", backend="trtllm", version="t", model="Llama-3.1-8B", gpu="H100-SXM")
    base.update(precision="bf16", tp=tp, isl=1024, osl=128, concurrency=c, batch_size=c, ttft_s=ttft, tpot_s=0.01)
    base.update(kw)
    return ClosedLoopRow(**base)


def test_trtllm_server_profile_loads():
    fw = framework("trtllm-1.0-server")
    assert (fw.policy, fw.batch_defaults, fw.capacity_scheduler, fw.serving_path) == (
        "trtllm",
        "trtllm",
        "guaranteed_no_evict",
        "server",
    )
    assert not fw.chunked_prefill and not fw.prefix_caching and fw.allreduce == "vllm-custom"
    # trtllm-serve's defaults (BuildConfig's fields), not trtllm-bench's heuristic
    assert fw.batch_limits(CAT.gpu("H100-SXM"), "server", 131072) == (8192, 2048)
    assert "00209af149e7" in fw.provenance["batch_defaults"]
    assert {t for (_, t) in fw.step_overhead} == {1, 2, 4, 8}
    assert all(o.fixed_s >= 0 and o.per_seq_s >= 0 for o in fw.step_overhead.values())
    assert 0 <= fw.client_latency_s < 0.2


def test_ttft_jumps_by_hand():
    # C 8 -> 16: 100 -> 150 ms (x1.5, not a jump); 16 -> 32: 150 -> 301 ms (x2.007, a jump); 32 -> 64 no
    rows = [_row(8, 0.100), _row(16, 0.150), _row(32, 0.301), _row(64, 0.500)]
    assert ttft_jumps(rows) == {"c32tp1"}
    # another TP is another server: its 200 ms at C 8 is no jump from TP 1's 100 ms
    assert ttft_jumps([_row(8, 0.100), _row(16, 0.2, tp=2)]) == set()


def test_bias_and_mape_by_hand():
    a, b = _row(8, 0.100), _row(16, 0.200)
    fit = ClosedLoopFit({}, 0.010, [], [SimulatedRow(a, 0.100, 0.012), SimulatedRow(b, 0.170, 0.009)])
    # TTFT (client clock): 0.110 / 0.100 - 1 = +10 %, 0.180 / 0.200 - 1 = -10 %; TPOT +20 %, -10 %
    assert fit.bias(fit.held_out)["ttft"] == pytest.approx(0.0, abs=1e-12)
    assert fit.mape(fit.held_out)["ttft"] == pytest.approx(0.10)
    assert fit.bias(fit.held_out)["tpot"] == pytest.approx(0.05)
    assert fit.mape(fit.held_out)["tpot"] == pytest.approx(0.15)


def test_layouts_the_engine_cannot_run_are_named():
    assert _row(8, 0.1, tp=8, model="Qwen3-235B-A22B", moe_ep=8).unmodelled_layout() is None
    assert "EP 2 x TP 2" in _row(8, 0.1, tp=4, moe_ep=2, moe_tp=2).unmodelled_layout()
    assert "EP 4 over part of the 8 GPUs" in _row(8, 0.1, tp=8, moe_ep=4).unmodelled_layout()
    assert _row(8, 0.1, tp=4, moe_ep=4, moe_tp=1, attn_dp=4).layout == "TP4 EP4 DP4"
    # AIConfigurator's servers hold tp x attention DP GPUs (= moe_tp x moe_ep): MiniMax-M2.5's TP 4 x DP 4
    # x EP 16 is one 16-GPU replica, EP over all 16, attention TP 4 per rank
    wide = _row(8, 0.1, tp=4, moe_ep=16, moe_tp=1, attn_dp=4, model="MiniMax-M2.5")
    assert wide.gpus == 16 and wide.unmodelled_layout() is None


def test_moe_row_end_to_end_reaches_simconfig():
    if not CSV.exists():
        pytest.skip("shared data not found")
    rows = [r for r in read_rows(CSV, "trtllm") if r.model == "Qwen3-235B-A22B" and r.tp == 8]
    row = min(rows, key=lambda r: (r.concurrency, r.isl, r.osl))
    assert (row.moe_ep, row.moe_tp, row.attn_dp, row.precision) == (8, 1, 1, "fp8")
    fw = framework("trtllm-1.0-server")
    cfg = row_config(row, CAT, fw)
    assert cfg.expert_parallel and cfg.data_parallel_size == 1 and cfg.weight_dtype == "fp8" and cfg.tp == 8
    served = cfg.served_model(cfg.model)
    assert served.expert_parallel and served.dtype == "fp8" and served.expert_dtype is None
    # attention DP reaches the config too (no such H100 row for a catalogue model: a row made from this one)
    dp = row_config(dataclasses.replace(row, attn_dp=2, tp=4), CAT, fw)
    assert dp.data_parallel_size == 2 and dp.served_model(dp.model).attn_dp == 2 and dp.tp == 8
    assert dp.max_num_seqs == 2 * row.batch_size  # the table's batch is per attention DP rank
    s = simulate_row(row, CAT, fw)
    assert math.isfinite(s.ttft_s) and math.isfinite(s.tpot_s) and s.tpot_s > 0
    # the whole run is within 50 % of the measured TPOT (nothing fitted to this model)
    assert abs(s.tpot_s - row.tpot_s) / row.tpot_s < 0.5
    # without EP (experts TP-split) the decode step differs: the mapping matters
    tp_only = simulate_row(dataclasses.replace(row, moe_ep=1), CAT, fw)
    assert tp_only.tpot_s != s.tpot_s


def test_cli_trtllm_server_closed_loop(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,num_input_tokens,num_output_tokens\n" + "0,1024,32\n" * 24)
    out = tmp_path / "o"
    p = subprocess.run(
        [
            sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "Llama-3.1-8B", "--gpu", "H100-SXM",
            "--tp", "2", "--framework", "trtllm-1.0-server", "--concurrency", "8", "--trace", str(trace),
            "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "framework    trtllm-1.0-server" in p.stdout
    assert "8192 tokens, 2048 sequences per iteration" in p.stdout
    assert "arrival      closed-loop, concurrency 8" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    fw = framework("trtllm-1.0-server")
    assert s["config"]["framework"]["name"] == "trtllm-1.0-server"
    assert s["config"]["framework"]["client_latency_s"] == fw.client_latency_s
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == 24 and (df["ttft_s"] >= fw.client_latency_s).all()
    # 8 clients: the first 8 start at 0, every later one when an earlier one finished
    assert (df["arrival_s"].to_numpy()[:8] == 0).all() and (df["arrival_s"].to_numpy()[8:] > 0).all()


def test_minimax_rows_simulated_whole():
    """MiniMax-M2.5 (vLLM 0.18, FP8, TP 4 x EP 4): the 15 rows simulated whole under vllm-0.12-server, nothing
    fitted to them, stay within the README's errors (TPOT 12.5 %, TTFT 20.6 % MAPE)."""
    if not CSV.exists():
        pytest.skip("shared data not found")
    rows = [r for r in read_rows(CSV, "vllm") if r.model == "MiniMax-M2.5" and r.attn_dp == 1]
    assert len(rows) == 15 and {(r.gpus, r.moe_ep) for r in rows} == {(4, 4)}
    ev = evaluate(rows, CAT, framework("vllm-0.12-server"))
    m = ev.mape(ev.held_out)
    assert m["tpot"] < 0.13 and m["ttft"] < 0.21


def test_disaggregated_rows_read_and_laid_out_as_pools():
    """AIConfigurator's disaggregated rows: workers per role become P/D pools of tp x attention-DP GPUs, the
    experts EP where moe_ep > 1, the batch per DP rank; rows without a client count are left out, named."""
    from kavier_opendc.calibration.closed_loop_bench import (
        NO_CLIENTS,
        disagg_config,
        disagg_framework,
        read_disagg_rows,
    )

    if not CSV.exists():
        pytest.skip("shared data not found")
    rows, skipped = read_disagg_rows(CSV)
    assert len(rows) == 100 and sum(skipped.values()) == 7 and all(NO_CLIENTS in k for k in skipped)
    row = next(r for r in rows if r.model == "DeepSeek-V3" and r.concurrency == 30 and r.isl == 1024)
    assert row.layout == "1P3D P TP1 DP16 EP16 / D TP16 EP16" and (row.prefill.batch, row.decode.batch) == (1, 10)
    fw = disagg_framework("trtllm")
    assert fw.policy == "vllm-v1" and fw.step_overhead == framework("trtllm-1.0-server").step_overhead
    cfg = disagg_config(row, CAT, fw)
    cfg.validate()
    topo = cfg.topology()
    pre, dec = topo.prefill, topo.decode
    assert (pre.replicas, pre.tp, pre.max_num_seqs, dec.replicas, dec.tp, dec.max_num_seqs) == (1, 16, 16, 3, 16, 10)
    assert (pre.model.attn_dp, pre.model.expert_parallel, dec.model.attn_dp, dec.model.expert_parallel) == (
        16,
        True,
        1,
        True,
    )
    assert pre.model.dtype == dec.model.dtype == "fp8"
    assert topo.link.gbs == 16 * 50.0  # one 400 Gb/s port per GPU of the smaller worker
    sglang = next(r for r in rows if r.backend == "sglang")
    assert sglang.workers == "?P?D" and sglang.prefill.label == "TP16" and sglang.unmodelled() is None


def test_disaggregated_deepseek_v3_rows_simulated_whole():
    """The 8 DeepSeek-V3 TRT-LLM rows (1 prefill worker of TP 1 x DP 16, 2-3 decode workers of TP 16 EP 16)
    simulated as P/D pools, nothing fitted: TPOT within the README's 50 %; the measured TTFT (5-31 s) is
    not the prefill's compute, which the simulation puts below 3 s."""
    from kavier_opendc.calibration.closed_loop_bench import evaluate_disagg, read_disagg_rows

    if not CSV.exists():
        pytest.skip("shared data not found")
    rows = [r for r in read_disagg_rows(CSV)[0] if r.model == "DeepSeek-V3"]
    assert len(rows) == 8
    ev = evaluate_disagg(rows, CAT, "trtllm")
    assert ev.mape(ev.held_out)["tpot"] < 0.5
    assert all(s.ttft_s < 3.0 and s.row.ttft_s > 5.0 for s in ev.held_out)
