"""`kavier calibrate`: round trip on synthetic measurements, layouts, and bad files."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.calibration.fit import Overheads, _isotonic_relative_l1, calibrate_all, predict
from kavier_opendc.calibration.layouts import ReadOptions, read_measurements
from kavier_opendc.cli import main as kavier
from kavier_opendc.specs.catalog import default_catalog, load_catalog_file
from kavier_opendc.specs.profiles import AllReduceCurve, GPUProfile

CAT = default_catalog()
GPU = "A100-80GB"
SIZES = tuple(float(2**k) for k in range(11, 28, 2))
CURVES = tuple(
    AllReduceCurve(g, SIZES, tuple(12e-6 * g**0.5 + s * 2 * (g - 1) / g / 200e9 for s in SIZES)) for g in (2, 4, 8)
)
TRUE = GPUProfile(
    gpu=GPU,
    status="measured",
    gemm_mbu=0.81,
    gemm_mfu=0.72,
    gemm_knee=2.6,
    layer_fixed_s=25e-6,
    act_passes=9.0,
    attn_prefill_eff=0.55,
    attn_decode_mbu=0.81,
    overhead_fixed_s=3e-3,
    overhead_per_seq_s=20e-6,
    # no file here times attention kernels alone: the fit keeps the built-in floor, so the truth has it too
    attn_fixed_s=default_catalog().gpu(GPU).profile.attn_fixed_s,
    # vLLM's custom all-reduce latency is the least all-reduce time measured
    custom_allreduce_latency_s=min(c.seconds[0] for c in CURVES),
    allreduce=CURVES,
    allreduce_link_gbs=300.0,
)
FITTED = (
    "gemm_mbu",
    "gemm_mfu",
    "gemm_knee",
    "layer_fixed_s",
    "act_passes",
    "attn_prefill_eff",
    "attn_decode_mbu",
    "overhead_fixed_s",
    "overhead_per_seq_s",
    "custom_allreduce_latency_s",
)


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def synthetic_files(tmp: Path, profile: GPUProfile) -> list[Path]:
    """Measurement files of all four layouts whose times ``profile`` predicts exactly."""
    gpu = dataclasses.replace(CAT.gpu(GPU), profile=None)
    ops_header = [
        "gpu",
        "model",
        "tp",
        "num_tokens",
        "n_head",
        "n_kv_head",
        "hidden",
        "ffn",
        "vocab",
        "gated_mlp",
        "attn_pre_proj_ms",
        "attn_post_proj_ms",
        "mlp_up_proj_ms",
        "mlp_down_proj_ms",
    ]
    shapes = [("Llama-3-8B", 32, 8, 4096, 14336), ("Llama-2-70B", 64, 8, 8192, 28672)]
    ops = [
        [GPU, name, tp, 2**k, h, kv, hid, ffn, 32000, True, 1, 1, 1, 1]
        for name, h, kv, hid, ffn in shapes
        for tp in (1, 2, 4)
        for k in range(0, 14)
    ]
    p_ops = _write(tmp / "ops.csv", ops_header, ops)
    _, obs = read_measurements(p_ops, CAT)
    for row, o in zip(ops, obs, strict=True):
        t_ms = predict(o, profile, gpu) * 1e3
        row[10:14] = [t_ms - 3e-6, 1e-6, 1e-6, 1e-6]
    _write(p_ops, ops_header, ops)
    p_ar = _write(
        tmp / "allreduce.csv",
        ["gpu", "node", "num_workers", "size_bytes", "all_reduce_median_ms"],
        [
            [GPU, "dgx", c.gpus, int(s), t * 1e3]
            for c in profile.allreduce
            for s, t in zip(c.sizes, c.seconds, strict=True)
        ],
    )
    single_header = [
        "prefill_input_tokens",
        "reality_prefill",
        "decode_input_tokens",
        "decode_output_tokens",
        "reality_decode",
    ]
    single = [[p, 1, 7, o, 1] for p, o in [(64, 50), (256, 200), (1024, 800), (4096, 3000), (16384, 12000)]]
    p_single = _write(tmp / "single.csv", single_header, single)
    opts = ReadOptions(model="Llama-3-8B", gpu=GPU, default_framework=True)
    _, obs = read_measurements(p_single, CAT, opts)
    for i, row in enumerate(single):
        row[1], row[4] = predict(obs[2 * i], profile, gpu), predict(obs[2 * i + 1], profile, gpu)
    _write(p_single, single_header, single)
    serving_header = ["gpu", "model", "tp", "max_num_seqs", "avg_tpot_s", "avg_output_tokens", "avg_input_tokens"]
    serving = [
        [GPU, m, tp, b, 1, 400, 300]
        for m, tp in [("Llama-3-8B", 1), ("Llama-3-70B", 4)]
        for b in (1, 8, 32, 64, 128, 256)
    ]
    p_serving = _write(tmp / "serving.csv", serving_header, serving)
    _, obs = read_measurements(p_serving, CAT, opts)
    for row, o in zip(serving, obs, strict=True):
        row[4] = predict(o, profile, gpu)
    _write(p_serving, serving_header, serving)
    return [p_ops, p_ar, p_single, p_serving]


def test_round_trip_recovers_the_profile_within_2_percent(tmp_path, capsys):
    files = synthetic_files(tmp_path, TRUE)
    out = tmp_path / "fitted.yaml"
    rc = kavier(
        ["calibrate", *map(str, files), "--model", "Llama-3-8B", "--gpu", GPU, "--default-framework", "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    fitted = load_catalog_file(out).gpu(GPU).profile
    assert fitted.status == "measured"
    for name in FITTED:
        want, got = getattr(TRUE, name), getattr(fitted, name)
        assert got == pytest.approx(want, rel=0.02), name
    for a, b in zip(TRUE.allreduce, fitted.allreduce, strict=True):
        assert a.gpus == b.gpus and b.sizes == a.sizes
        assert b.seconds == pytest.approx(a.seconds, rel=1e-5)
    text = capsys.readouterr().out
    assert "| ops.csv | A100-80GB | gemm |" in text and "wrote" in text


def test_harness_overheads_of_a_step_times_file_are_fitted_back(tmp_path):
    """A non-default harness: its four overheads per TP degree (the per-token² one included) come back."""
    files = synthetic_files(tmp_path, TRUE)
    harness = {2: Overheads(9e-3, 0.2e-3, 20e-6, 3e-9), 4: Overheads(15e-3, 0.25e-3, 12e-6, 5e-9)}
    gpu = dataclasses.replace(CAT.gpu(GPU), profile=None)
    header = ["model", "gpu", "tp", "prompt_size", "batch_size", "token_size", "prompt_time_ms", "token_time_ms"]
    rows = [
        ["Llama-2-70B", GPU, tp, p, b, 128, 1, 1]
        for tp in (2, 4)
        for p, b in [(128, 1), (512, 1), (2048, 1), (8192, 1), (512, 4), (512, 16), (512, 64)]
    ]
    path = _write(tmp_path / "steps.csv", header, rows)
    _, obs = read_measurements(path, CAT)
    for i, row in enumerate(rows):
        row[6] = predict(obs[2 * i], TRUE, gpu, harness[row[2]]) * 1e3
        row[7] = predict(obs[2 * i + 1], TRUE, gpu, harness[row[2]]) * 1e3
    _write(path, header, rows)
    obs = []
    for f in (files[0], files[1], files[2], path):
        obs += read_measurements(
            f, CAT, ReadOptions(model="Llama-3-8B", gpu=GPU, default_framework=True) if f == files[2] else ReadOptions()
        )[1]
    fit = calibrate_all(obs, CAT)[GPU]
    assert fit.profile.attn_prefill_eff == pytest.approx(TRUE.attn_prefill_eff, rel=0.02)
    for tp, want in harness.items():
        got = fit.frameworks[f"steps.csv tp{tp}"]
        for name in ("fixed_s", "per_seq_s", "per_token_s", "per_token_sq_s"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=0.02), (tp, name)
    assert fit.frameworks["default"].per_token_sq_s == 0.0  # vLLM's time does not grow with the batch's tokens


def test_allreduce_curve_is_the_monotone_curve_of_least_relative_error():
    # worked by hand: 1, 3, 2, 4 -> lowering 3 to 2 costs 1/3, raising 2 to 3 costs 1/2
    assert _isotonic_relative_l1([[1.0], [3.0], [2.0], [4.0]]) == [1.0, 2.0, 2.0, 4.0]
    # a slow outlier at the smallest size is lowered (4/5 of one row) rather than the two later raised (8/1)
    assert _isotonic_relative_l1([[5.0], [1.0], [1.0]]) == [1.0, 1.0, 1.0]
    # several measurements at one size: one value for them all
    assert _isotonic_relative_l1([[2.0, 4.0], [1.0]]) == [1.0, 1.0]


def _relative_l1(values: list[float], groups: list[list[float]]) -> float:
    return sum(abs(v - y) / y for v, ys in zip(values, groups, strict=True) for y in ys)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([0.01, 0.02, 0.03, 0.05, 0.08]), min_size=1, max_size=2), min_size=1, max_size=5)
)
def test_allreduce_curve_fit_is_optimal_and_monotone(groups):
    got = _isotonic_relative_l1(groups)
    assert all(a <= b for a, b in zip(got, got[1:], strict=False))
    values = sorted({y for ys in groups for y in ys})
    best = min(_relative_l1(list(c), groups) for c in itertools.combinations_with_replacement(values, len(groups)))
    assert _relative_l1(got, groups) == pytest.approx(best, abs=1e-9)


def test_single_request_layout_alone_fits_kernels_and_overhead(tmp_path):
    files = synthetic_files(tmp_path, TRUE)
    _, obs = read_measurements(files[2], CAT, ReadOptions(model="Llama-3-8B", gpu=GPU, default_framework=True))
    fit = calibrate_all(obs, CAT)[GPU]
    gpu = dataclasses.replace(CAT.gpu(GPU), profile=None)
    errs = [abs(predict(o, fit.profile, gpu) / o.measured_s - 1) for o in obs]
    assert max(errs) < 0.03  # 10 rows, 5 free numbers: a fit, not a copy
    assert fit.profile.gemm_mbu <= 1 and fit.profile.gemm_mfu <= 1 and fit.profile.overhead_fixed_s >= 0


def test_shared_data_calibration_rejects_the_implausible_splitwise_rows():
    path = shared("calibration/splitwise_llama2_70b_dgx.csv")
    _, obs = read_measurements(path, CAT)
    fits = calibrate_all(obs, CAT)
    rejected = [(o.gpu, o.row, o.kind) for f in fits.values() for o, _ in f.rejected]
    # A100 TP2 batch 64 (794 ms: faster than 2 A100s at full peak) is the one the README names
    assert ("A100-80GB", 16, "prefill") in rejected
    assert all(kind == "prefill" for _, _, kind in rejected)


# ------------------------------------------------------------- bad files ----


def _bad(tmp_path, text: str, name: str = "m.csv", **opts) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KavierInputError) as exc:
        read_measurements(path, CAT, ReadOptions(**opts))
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_bad_measurement_files_name_file_row_and_column(tmp_path):
    header = "gpu,num_workers,size_bytes,all_reduce_median_ms\n"
    msg = _bad(tmp_path, header + "H100,2,2048,0.01\nH100,2,4096,fast\n")
    assert "line 3, column 'all_reduce_median_ms'" in msg and "'fast' is not a number" in msg
    msg = _bad(tmp_path, header + "H100,2,-5,0.01\n")
    assert "line 2, column 'size_bytes'" in msg and "not positive" in msg
    msg = _bad(tmp_path, header + "H100,1,2048,0.01\n")
    assert "line 2, column 'num_workers'" in msg
    msg = _bad(tmp_path, header + "NoSuchGPU,2,2048,0.01\n")
    assert "line 2, column 'gpu'" in msg and "unknown GPU" in msg
    msg = _bad(tmp_path, "gpu,model,tp,max_num_seqs,avg_tpot_s,avg_output_tokens\nH100,Llama-9,1,8,0.02,100\n")
    assert "line 2, column 'model'" in msg
    msg = _bad(tmp_path, "a,b\n1,2\n")
    assert "cannot tell the layout" in msg
    msg = _bad(
        tmp_path,
        "prefill_input_tokens,reality_prefill,decode_input_tokens,decode_output_tokens,"
        "reality_decode\n64,0.05,7,53,2.3\n",
    )
    assert "--model and --gpu" in msg
    msg = _bad(
        tmp_path,
        "prefill_input_tokens,reality_prefill,decode_input_tokens,decode_output_tokens,"
        "reality_decode\n64,0.05,7,1.5,2.3\n",
        model="Llama-3-8B",
        gpu="A10",
    )
    assert "line 2, column 'decode_output_tokens'" in msg
    msg = _bad(tmp_path, "")
    assert "no header" in msg


def test_cli_reports_a_bad_file_in_one_paragraph(tmp_path, capsys):
    path = tmp_path / "ar.csv"
    path.write_text("gpu,num_workers,size_bytes,all_reduce_median_ms\nH100,2,2048,x\n", encoding="utf-8")
    rc = kavier(["calibrate", str(path), "--out", str(tmp_path / "o.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kavier: error: ") and str(path) in err and "line 2, column 'all_reduce_median_ms'" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o.yaml").exists()
