"""`kavier simulate`'s per-pool batching flags (--prefill-/--decode-max-num-seqs, --prefill-/--decode-max-batched-
tokens): each role's pools get them, whichever way the pools are declared; bad values and flags without pools are
clear errors naming the flag."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

TRACE = "arrival_time_s,num_input_tokens,num_output_tokens\n0.0,500,20\n0.0,800,30\n0.0,300,50\n0.0,200,10\n"


def _kavier(tmp_path, *extra, out="out"):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "Llama-3-8B", "--gpu", "A100-80GB"]
        + ["--trace", str(trace), "--out", str(tmp_path / out), "--quiet", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pools(tmp_path, out):
    s = json.loads((tmp_path / out / "summary.json").read_text())
    return [(p["role"], p["max_num_seqs"], p["max_batched_tokens"]) for p in s["disaggregation"]["pools"]]


ROLE_FLAGS = ("--prefill-max-num-seqs", "1", "--prefill-max-batched-tokens", "512", "--decode-max-num-seqs", "2")


def test_role_flags_set_every_pool_of_their_role(tmp_path):
    base = _kavier(tmp_path, "--prefill-replicas", "1", "--decode-replicas", "1", out="base")
    one = _kavier(tmp_path, "--prefill-replicas", "1", "--decode-replicas", "1", *ROLE_FLAGS, out="one")
    assert base.returncode == 0 and one.returncode == 0, base.stderr + one.stderr
    # the A100-80GB's vLLM v1 defaults (256 sequences, 8192 tokens for a trace all at t = 0) where no flag is given
    assert _pools(tmp_path, "base") == [("prefill", 256, 8192), ("decode", 256, 8192)]
    assert _pools(tmp_path, "one") == [("prefill", 1, 512), ("decode", 2, 8192)]
    # one prompt per prefill iteration: the four first tokens come one after another, none together
    ft = pd.read_parquet(tmp_path / "one" / "requests.parquet")["ttft_s"].sort_values().to_numpy()
    assert len(set(ft)) == 4 and (ft[1:] > ft[:-1]).all()
    ft0 = pd.read_parquet(tmp_path / "base" / "requests.parquet")["ttft_s"]
    assert ft0.max() < ft.max()
    # the same pools declared with --prefill-pool/--decode-pool: the same files
    pools = _kavier(tmp_path, "--prefill-pool", "A100-80GB:1:1", "--decode-pool", "A100-80GB:1:1", *ROLE_FLAGS, out="p")
    assert pools.returncode == 0, pools.stderr
    for name in ("requests.parquet", "timeline.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    # two decode pools: both take the decode flag
    two = _kavier(
        tmp_path,
        "--prefill-pool",
        "A100-80GB:1:1",
        "--decode-pool",
        "A100-80GB:1:1",
        "--decode-pool",
        "H100-SXM:1:1",
        "--decode-max-batched-tokens",
        "4096",
        out="two",
    )
    assert two.returncode == 0, two.stderr
    assert _pools(tmp_path, "two") == [("prefill", 256, 8192), ("decode", 256, 4096), ("decode", 1024, 4096)]


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            ("--prefill-replicas", "1", "--decode-replicas", "1", "--decode-max-num-seqs", "0"),
            "--decode-max-num-seqs must be >= 1, got 0",
        ),
        (
            ("--prefill-replicas", "1", "--decode-replicas", "1", "--prefill-max-batched-tokens", "x"),
            "--prefill-max-batched-tokens must be an integer, got 'x'",
        ),
        (
            (
                "--prefill-pool",
                "A100-80GB:1:1",
                "--decode-pool",
                "A100-80GB:1:1",
                "--decode-max-batched-tokens",
                "99999999",
            ),
            "--decode-max-batched-tokens: 99,999,999 is above the limit",
        ),
        (
            (
                "--prefill-max-num-seqs",
                "4",
            ),
            "--prefill-max-num-seqs: a pool's batching limit is set, but serving is co-located",
        ),
    ],
)
def test_bad_pool_batching_flags_are_clear_errors(tmp_path, extra, words):
    r = _kavier(tmp_path, *extra)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_engine_refuses_role_limits_beside_a_given_topology():
    from kavier_opendc.base.errors import KavierInputError
    from kavier_opendc.engine.kv_link import Disaggregation, Pool
    from kavier_opendc.engine.simulator import SimConfig
    from kavier_opendc.specs.catalog import default_catalog

    cat = default_catalog()
    m, g = cat.model("Llama-3-8B"), cat.gpu("A100-80GB")
    topo = Disaggregation(Pool(m, g), Pool(m, g))
    with pytest.raises(KavierInputError, match="given twice") as e:
        SimConfig(model=m, gpu=g, disaggregation=topo, decode_max_num_seqs=4).validate()
    assert e.value.location == "decode_max_num_seqs"
