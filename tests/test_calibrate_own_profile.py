"""`kavier calibrate` keeps a GPU's own unfitted numbers (issue 17 item 7).

What the measurement files cannot identify comes from the GPU's own profile
(the built-in profiles.yaml or a --catalog file's), overheads included; a GPU
without one inherits from the nearest measured GPU, except its framework
overheads, which are never another GPU's harness's (the A10 table's 9.3 ms).
"""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import yaml

from conftest import shared
from kavier_opendc.calibration.fit import calibrate_all
from kavier_opendc.calibration.layouts import read_measurements
from kavier_opendc.cli import main as kavier
from kavier_opendc.specs.catalog import Catalog, default_catalog, load_catalog_file
from kavier_opendc.specs.profiles import ASSUMED_OVERHEAD, NUMERIC_FIELDS, profile_to_entry

CAT = default_catalog()
GEMM = ("gemm_mbu", "gemm_mfu", "gemm_knee", "layer_fixed_s", "act_passes")
ALLREDUCE = ("custom_allreduce_latency_s",)
OVERHEAD_FIELDS = ("overhead_fixed_s", "overhead_per_seq_s")
POWER = ("power_compute_weight", "power_memory_weight", "power_kv_weight")
ATTENTION = ("attn_prefill_eff", "attn_decode_mbu")


def _obs(*names: str) -> list:
    out = []
    for name in names:
        out += read_measurements(shared(f"calibration/{name}"), CAT)[1]
    return out


def _kept(gpu: str) -> str:
    return f"kept from the built-in {gpu} profile (not identifiable from these files)"


def _assert_kept(fitted, gpu: str, fields) -> None:
    builtin = CAT.profile_for(gpu)
    for name in fields:
        if name == "allreduce":
            assert fitted.allreduce == builtin.allreduce and fitted.allreduce_link_gbs == builtin.allreduce_link_gbs
        else:
            assert getattr(fitted, name) == getattr(builtin, name), name
        assert fitted.provenance[name].startswith(_kept(gpu)), (name, fitted.provenance[name])


def test_h100_from_the_vidur_files_keeps_its_builtin_unfitted_numbers():
    fit = calibrate_all(_obs("vidur_linear_ops_a100_h100.csv", "vidur_allreduce_a100_h100.csv"), CAT)["H100-SXM"]
    p = fit.profile
    assert p.status == "measured"
    for name in GEMM:
        assert p.provenance[name].startswith("fitted on 120 operator times"), name
    assert p.provenance["allreduce"].startswith("measured NCCL curves")
    # attention, overheads and power weights: the files say nothing of them -> the built-in H100's, exactly
    _assert_kept(p, "H100-SXM", ATTENTION + OVERHEAD_FIELDS + POWER)
    assert (p.power_compute_weight, p.power_memory_weight, p.power_kv_weight) == (1.3, 0.8, 1.37)
    # the built-in's own provenance is quoted after the note
    assert "there: fitted on 147 end-to-end times" in p.provenance["attn_prefill_eff"]
    assert "hopper" not in json.dumps(dict(p.provenance))
    assert set(p.provenance) == set(NUMERIC_FIELDS) | {"allreduce"}  # every number says where it comes from


def test_h100_from_one_file_keeps_what_the_other_would_fit():
    cat_h100 = CAT.profile_for("H100-SXM")
    ar_only = calibrate_all(_obs("vidur_allreduce_a100_h100.csv"), CAT)["H100-SXM"].profile
    # the knee, GEMM and elementwise numbers are the built-in H100's (before: the H200's knee 4.37)
    _assert_kept(ar_only, "H100-SXM", GEMM + ATTENTION + OVERHEAD_FIELDS + POWER)
    assert ar_only.gemm_knee == cat_h100.gemm_knee
    ops_only = calibrate_all(_obs("vidur_linear_ops_a100_h100.csv"), CAT)["H100-SXM"].profile
    # the all-reduce curves and custom all-reduce latency are the built-in H100's (before: H200's 4.4 us)
    _assert_kept(ops_only, "H100-SXM", ("allreduce",) + ALLREDUCE + ATTENTION + OVERHEAD_FIELDS + POWER)
    assert ops_only.custom_allreduce_latency_s == 7e-6


def test_a100_does_not_take_the_a10_overhead():
    p = calibrate_all(_obs("vidur_linear_ops_a100_h100.csv", "vidur_allreduce_a100_h100.csv"), CAT)["A100-80GB"].profile
    assert p.overhead_fixed_s == 0.001 and p.overhead_per_seq_s == 0.0  # not the A10 table's 9.3 ms
    _assert_kept(p, "A100-80GB", ATTENTION + OVERHEAD_FIELDS + POWER)
    assert "A10 " not in json.dumps(dict(p.provenance)) and "A10)" not in json.dumps(dict(p.provenance))


def test_a_gpu_without_its_own_profile_is_derived_and_says_from_which():
    # the catalogue without the A100-80GB's and H100-SXM's profiles: both derive what the files do not fit
    keep = [p for p in CAT.profile_specs.values() if p.gpu not in ("A100-80GB", "H100-SXM")]
    cat = Catalog(models=CAT.models(), gpus=[dataclasses.replace(g, profile=None) for g in CAT.gpus()], profiles=keep)
    fits = calibrate_all(_obs("vidur_linear_ops_a100_h100.csv", "vidur_allreduce_a100_h100.csv"), cat)
    a100, h100 = fits["A100-80GB"].profile, fits["H100-SXM"].profile
    a10, h200 = CAT.profile_for("A10"), CAT.profile_for("H200")
    assert a100.attn_prefill_eff == a10.attn_prefill_eff and a100.power_kv_weight == a10.power_kv_weight
    assert a100.provenance["attn_prefill_eff"].startswith("derived from A10 (same architecture)")
    assert h100.attn_prefill_eff == h200.attn_prefill_eff
    assert h100.provenance["power_compute_weight"].startswith("derived from H200 (same architecture)")
    for p in (a100, h100):
        assert p.status == "measured" and p.provenance["gemm_mbu"].startswith("fitted on")
        # the A10's 9.3 ms is the A10 table's harness, never inherited
        assert (p.overhead_fixed_s, p.overhead_per_seq_s) == (0.001, 0.0)
        assert all(p.provenance[k] == ASSUMED_OVERHEAD for k in OVERHEAD_FIELDS)


def test_a_catalogue_file_profile_is_kept_and_named_as_the_catalogue_s(tmp_path):
    own = dataclasses.replace(CAT.profile_for("H100-SXM"), attn_prefill_eff=0.45, overhead_fixed_s=2e-3)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"profiles": [profile_to_entry(own)]}), encoding="utf-8")
    cat = load_catalog_file(path, base=CAT)
    p = calibrate_all(_obs("vidur_allreduce_a100_h100.csv"), cat)["H100-SXM"].profile
    assert p.attn_prefill_eff == 0.45 and p.overhead_fixed_s == 2e-3
    assert p.provenance["overhead_fixed_s"].startswith(
        "kept from the catalogue's H100-SXM profile (not identifiable from these files)"
    )


def _tpot_ms(tmp_path, name: str, gpu: str, trace, catalog=None) -> float:
    out = tmp_path / name
    args = ["simulate", "--model", "llama-3-8b", "--gpu", gpu, "--trace", str(trace), "--out", str(out)]
    assert kavier(args + (["--catalog", str(catalog)] if catalog else [])) == 0
    return 1e3 * json.loads((out / "summary.json").read_text())["tpot_s"]["mean"]


def test_tpot_with_the_calibrated_catalogue_stays_near_the_builtin(tmp_path, capsys):
    d = shared("calibration")
    cal = tmp_path / "h.yaml"
    assert (
        kavier(
            [
                "calibrate",
                str(d / "vidur_linear_ops_a100_h100.csv"),
                str(d / "vidur_allreduce_a100_h100.csv"),
                "--gpu",
                "H100-SXM",
                "--out",
                str(cal),
            ]
        )
        == 0
    )
    with open(shared("traces/azure_llm_2023_conv.csv"), newline="") as fh:
        rows = list(csv.reader(fh))[:401]  # the first 400 requests of the hour
    trace = tmp_path / "azure400.csv"
    with open(trace, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    for gpu in ("A100-80GB", "H100-SXM"):
        builtin = _tpot_ms(tmp_path, f"{gpu}-builtin", gpu, trace)
        calibrated = _tpot_ms(tmp_path, f"{gpu}-calibrated", gpu, trace, cal)
        # before: the A100 took the A10's 9.3 ms per iteration and its TPOT rose by about 70 %
        assert calibrated == pytest.approx(builtin, rel=0.03), (gpu, builtin, calibrated)
    capsys.readouterr()
