"""`kavier plan` over prefill/decode ratios: the P/D shapes a plan yields, their experiment, a run, bad input.

The end-to-end case is test_plan.py's bursts (3 requests at once every 20 s, 100 prompt and 200 output
tokens, max_num_seqs 1, SLO max TTFT <= 0.5 s): co-located, the third request of a burst waits for a whole
200-token answer at 2 replicas, so 3 are needed. Disaggregated, TTFT ends with the prefill, and one prefill
replica does the 3 prefills of a burst one after the other (tens of ms): 1 prefill + 1 decode replica meet
the SLO, at two thirds of the co-located GPUs. Runs without OpenDC.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.plan_file import EXAMPLE_PLAN, load_plan, parse_ratio, pd_splits
from test_plan import bursts_plan, plan_cli

BASE = {
    "gpu": ["A100-80GB"],
    "prefix_cache": ["none"],
    "router": ["round-robin"],
    "max_num_seqs": [1],
    "replicas": {"min": 2, "max": 4},
}
PD = {"ratios": ["1:3", "1:1", "3:1"], "link": {"gbs": 25, "mode": "layerwise"}}


def pd_plan(tmp, **dis):
    return bursts_plan(tmp, candidates={**BASE, "disaggregation": {**PD, **dis}})


def test_the_shapes_of_a_plan_with_ratios(tmp_path):
    plan = load_plan(pd_plan(tmp_path, decode_gpu=["A100-80GB", "H100-SXM"]))
    got = [(s.layout, s.decode_gpu, s.router, {n: (p, d) for n, p, d in s.splits}, s.counts(2, 4)) for s in plan.shapes]
    # N = 2: 1:3 rounds to 1P1D, which 1:1 gives exactly (1:1 keeps it); 3:1 leaves no decode replica.
    # N = 3: 1:1 rounds to 2P1D, nearer to 3:1 (2/3 vs 3/4) than to 1:1 (1/2): 3:1 keeps it.
    # N = 4: 1P3D, 2P2D, 3P1D. The P/D shapes have no router (the P/D engine routes by itself).
    pd_layouts = [
        ("1:3", {3: (1, 2), 4: (1, 3)}, [3, 4]),
        ("1:1", {2: (1, 1), 4: (2, 2)}, [2, 4]),
        ("3:1", {3: (2, 1), 4: (3, 1)}, [3, 4]),
    ]
    assert got == [("colocated", None, "round-robin", {}, [2, 3, 4])] + [
        (lay, None, None, sp, c) for lay, sp, c in pd_layouts
    ] + [(lay, "H100-SXM", None, sp, c) for lay, sp, c in pd_layouts]
    assert [s.label for s in plan.shapes[:2]] == [
        "A100-80GB, TP1, prefix none, round-robin, seqs 1",
        "A100-80GB, TP1, prefix none, P/D 1:3, seqs 1",
    ]
    assert plan.shapes[4].label == "A100-80GB+H100-SXM decode, TP1, prefix none, P/D 1:3, seqs 1"
    assert plan.shapes[4].gpus_of(4) == {"A100-80GB": 1, "H100-SXM": 3}
    # colocated: false keeps the P/D shapes only; a mix stays co-located
    only = load_plan(
        bursts_plan(
            tmp_path / "only",
            candidates={
                **BASE,
                "mixes": [{"A100-80GB": 1, "H100-SXM": 1}],
                "disaggregation": {**PD, "colocated": False},
            },
        )
    )
    assert [s.layout for s in only.shapes] == ["1:3", "1:1", "3:1", "colocated"]
    assert len(only.shapes[3].gpus) == 2


def test_pd_splits_by_hand():
    assert pd_splits([(1, 3), (1, 1), (3, 1)], 1, 4) == [
        ((3, 1, 2), (4, 1, 3)),
        ((2, 1, 1), (4, 2, 2)),
        ((3, 2, 1), (4, 3, 1)),
    ]
    assert pd_splits([(1, 1)], 1, 1) == [()]  # one replica cannot be split
    assert pd_splits([(1, 2)], 5, 5) == [((5, 2, 3),)]  # 5/3 = 1.67 rounds to 2
    assert parse_ratio(" 2 : 5 ") == (2, 5)


def test_the_experiment_of_a_pd_shape(tmp_path):
    plan = load_plan(pd_plan(tmp_path, decode_gpu=["H100-SXM"]))
    shape = next(s for s in plan.shapes if s.layout == "1:3")
    host = {"name": "node", "gpus_per_host": 4, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}
    assert plan.experiment(shape, 4, plan.workload, opendc=True) == {
        "name": "bursts-A100-80GB-H100-SXM_tp1_pc-none_pd1-3_seqs1-n4",
        "seed": 0,
        "model": "Llama-3-8B",
        "trace": str(plan.workload),
        "gpu": "A100-80GB",
        "serving": {
            "prefix_cache": {"policy": "none"},
            "max_num_seqs": 1,
            "disaggregation": {
                "prefill": {"replicas": 1, "tp": 1},
                "decode": {"replicas": 3, "tp": 1, "gpu": "H100-SXM"},
                "link": {"gbs": 25, "mode": "layerwise"},
            },
        },
        "carbon": {"synthetic": {"mean": 250, "amplitude": 0}},
        "slo": {"ttft_s": 0.5},
        "datacenter": {
            "hosts": [
                {**host, "name": "node-A100-80GB", "count": 1, "gpu": "A100-80GB"},
                {**host, "name": "node-H100-SXM", "count": 1, "gpu": "H100-SXM"},
            ]
        },
        "opendc": {"enabled": True},
    }
    # one GPU type: both pools on one host group, sized to all their replicas (5 + 3 TP2 replicas on 4-GPU hosts)
    plan2 = load_plan(
        bursts_plan(
            tmp_path / "tp2",
            candidates={**BASE, "tp": [2], "replicas": {"min": 8, "max": 8}, "disaggregation": {"ratios": ["2:1"]}},
        )
    )
    pd2 = plan2.shapes[1]
    doc = plan2.experiment(pd2, 8, plan2.workload, opendc=False)
    assert doc["serving"]["disaggregation"] == {"prefill": {"replicas": 5, "tp": 2}, "decode": {"replicas": 3, "tp": 2}}
    assert [(h["name"], h["count"]) for h in doc["datacenter"]["hosts"]] == [("node", 4)]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan_pd")
    out = tmp / "out"
    r = plan_cli(pd_plan(tmp), "--out", out, "--no-opendc")
    assert r.returncode == 0, r.stderr
    return out, r


def test_plan_run_over_ratios_names_layouts(planned):
    out, r = planned
    summary = json.loads((out / "plan.json").read_text())
    shapes = {s["layout"]: s for s in summary["shapes"]}
    assert set(shapes) == {"colocated", "1:3", "1:1", "3:1"}
    assert shapes["colocated"]["replicas"] == 3 and shapes["colocated"]["prefill_replicas"] is None
    assert (shapes["1:1"]["replicas"], shapes["1:1"]["prefill_replicas"], shapes["1:1"]["decode_replicas"]) == (2, 1, 1)
    chosen = summary["chosen"]
    assert chosen in summary["shapes"] and chosen["layout"] == "1:1" and chosen["gpus"] == 2
    assert (
        "chosen (cost): A100-80GB, TP1, prefix none, P/D 1:1, seqs 1, 2 replica(s) (1 prefill + 1 decode) = 2 GPU(s)"
    ) in r.stdout
    assert "1P+1D" in r.stdout and "layout" in r.stdout
    cands, evals, front = (pd.read_csv(out / f) for f in ("candidates.csv", "evaluations.csv", "front.csv"))
    assert set(cands["layout"]) == set(evals["layout"]) == {"colocated", "1:3", "1:1", "3:1"}
    assert "1:1" in set(front["layout"])
    # the runs are P/D runs: every one of the 1:3 shape at its counts 3, 4 only
    e13 = evals[evals["layout"] == "1:3"].set_index("replicas")
    assert set(e13.index) <= {3, 4} and list(e13.loc[4, ["prefill_replicas", "decode_replicas"]]) == [1, 3]
    run = out / "runs" / e13.loc[4, "run"]
    assert json.loads((run / "experiment.json").read_text())["serving"]["disaggregation"]["prefill"]["replicas"] == 1
    assert "| layout |" in (out / "candidates.md").read_text() and "P/D 1:1" in (out / "plan.md").read_text()
    assert summary["simulations"]["full_grid"] == 3 + 2 + 2 + 2


def test_bad_pd_input_is_named_by_its_path(tmp_path):
    with pytest.raises(KavierInputError) as ei:
        load_plan(pd_plan(tmp_path, ratios=["1:3", "a:b", "0:2", "2:0", "2:2", "1-1"]))
    text = str(ei.value)
    assert "candidates.disaggregation.ratios[1]: 'a:b' is not a ratio PREFILL:DECODE" in text
    assert "candidates.disaggregation.ratios[2]: '0:2' leaves the prefill pool empty" in text
    assert "candidates.disaggregation.ratios[3]: '2:0' leaves the decode pool empty" in text
    assert "candidates.disaggregation.ratios[5]: '1-1' is not a ratio" in text
    # 2:2 is 1:1's proportion, but 1:1 is not listed here: fine
    assert "ratios[4]" not in text
    with pytest.raises(KavierInputError, match=r"ratios\[1\]: '2:2' is the same proportion as ratios\[0\]"):
        load_plan(pd_plan(tmp_path / "dup", ratios=["1:1", "2:2"]))
    with pytest.raises(KavierInputError) as ei:
        load_plan(
            bursts_plan(
                tmp_path / "v0",
                candidates={**BASE, "disaggregation": PD},
                experiment={"serving": {"framework": "vllm-0.5-server"}},
            )
        )
    text = str(ei.value)
    assert (
        "candidates.disaggregation: framework 'vllm-0.5-server' (experiment.serving.framework) cannot run "
        "disaggregated prefill/decode"
    ) in text
    assert "P/D 1:3" not in text  # said once, not again per P/D shape
    with pytest.raises(KavierInputError, match=r"candidates.disaggregation.ratios: no ratio splits any replica count"):
        load_plan(bursts_plan(tmp_path / "one", candidates={**BASE, "replicas": 1, "disaggregation": PD}))
    with pytest.raises(KavierInputError, match=r"candidates.disaggregation.link.mode"):
        load_plan(pd_plan(tmp_path / "link", link={"mode": "fast"}))
    with pytest.raises(KavierInputError, match=r"unknown GPU 'NoSuchGPU'"):
        load_plan(pd_plan(tmp_path / "gpu", decode_gpu=["NoSuchGPU"]))


def test_the_readme_pd_example_is_a_valid_plan():
    plan = load_plan(EXAMPLE_PLAN.parent / "plan_pd_example.yaml")
    assert [s.layout for s in plan.shapes] == ["colocated", "1:3", "1:1", "3:1"]
    assert plan.pd_link == {"gbs": 25, "mode": "layerwise"}


POOLS = {
    "ratios": ["1:1", "1:2"],
    "prefill_gpu": ["H100-SXM", "A100-80GB"],
    "decode_gpu": ["A100-80GB", {"A100-80GB": 1, "H100-SXM": 1}],
    "link": {"gbs": 25},
}


def test_the_shapes_of_a_plan_over_pool_gpus(tmp_path):
    plan = load_plan(pd_plan(tmp_path, **POOLS))
    got = [(s.gpu_label, s.layout, [(n, p, d) for n, p, d in s.splits]) for s in plan.shapes]
    # A100 prefill is listed in candidates.gpu, so it keeps its place (co-located first); H100 is a prefill type
    # only (no co-located H100 shape). The mix takes decode replicas in pairs: 1:1 at N = 4 (2P2D: 1 A100 and
    # 1 H100 decode replica), 1:2 at N = 3 (1P2D); N = 2 (1P1D) and 4 for 1:2 (1P3D) do not split in pairs.
    mix = "[1xA100-80GB+1xH100-SXM] decode"
    assert got == [
        ("A100-80GB", "colocated", []),
        ("A100-80GB", "1:1", [(2, 1, 1), (3, 2, 1), (4, 2, 2)]),
        ("A100-80GB", "1:2", [(3, 1, 2), (4, 1, 3)]),
        (f"A100-80GB+{mix}", "1:1", [(4, 2, 2)]),
        (f"A100-80GB+{mix}", "1:2", [(3, 1, 2)]),
        ("H100-SXM+A100-80GB decode", "1:1", [(2, 1, 1), (3, 2, 1), (4, 2, 2)]),
        ("H100-SXM+A100-80GB decode", "1:2", [(3, 1, 2), (4, 1, 3)]),
        (f"H100-SXM+{mix}", "1:1", [(4, 2, 2)]),
        (f"H100-SXM+{mix}", "1:2", [(3, 1, 2)]),
    ]
    hah = plan.shapes[-1]  # Splitwise's H-AH: an H100 prefill pool, an A100 and an H100 decode pool
    assert hah.slug == "H100-SXM-1xA100-80GB-1xH100-SXM_tp1_pc-none_pd1-2_seqs1"
    assert hah.gpus_of(3) == {"H100-SXM": 2, "A100-80GB": 1}
    doc = plan.experiment(hah, 3, plan.workload, opendc=False)
    assert doc["gpu"] == "H100-SXM"
    assert doc["serving"]["disaggregation"] == {
        "prefill": {"replicas": 1, "tp": 1},
        "decode": [{"replicas": 1, "tp": 1, "gpu": "A100-80GB"}, {"replicas": 1, "tp": 1, "gpu": "H100-SXM"}],
        "link": {"gbs": 25},
    }
    assert [(h["name"], h["gpu"], h["count"]) for h in doc["datacenter"]["hosts"]] == [
        ("node-H100-SXM", "H100-SXM", 1),
        ("node-A100-80GB", "A100-80GB", 1),
    ]


def test_plan_over_pool_gpus_says_which_layout_wins(tmp_path):
    out = tmp_path / "out"
    r = plan_cli(pd_plan(tmp_path, **POOLS), "--out", out, "--no-opendc")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "plan.json").read_text())
    shapes = {s["shape"]: s for s in summary["shapes"]}
    hah = shapes["H100-SXM+[1xA100-80GB+1xH100-SXM] decode, TP1, prefix none, P/D 1:2, seqs 1"]
    assert (hah["status"], hah["replicas"], hah["prefill_replicas"], hah["decode_replicas"], hah["gpus"]) == (
        "feasible",
        3,
        1,
        2,
        3,
    )
    assert hah["decode_gpu"] == "1xA100-80GB+1xH100-SXM"
    run = json.loads((out / "runs" / hah["run"] / "experiment.json").read_text())
    assert [p["gpu"] for p in run["serving"]["disaggregation"]["decode"]] == ["A100-80GB", "H100-SXM"]
    # the bursts need 3 co-located A100s (module docstring); 1 A100 prefill + 1 A100 decode meet the SLO
    lay = summary["layouts"]
    assert lay["winner"] == "disaggregated"
    assert lay["disaggregated"]["shape"] == "A100-80GB, TP1, prefix none, P/D 1:1, seqs 1"
    assert lay["colocated"]["shape"] == "A100-80GB, TP1, prefix none, round-robin, seqs 1"
    assert (lay["disaggregated"]["gpus"], lay["colocated"]["gpus"]) == (2, 3)
    assert lay["disaggregated"]["value"] < lay["colocated"]["value"]
    assert "disaggregated wins for cost: A100-80GB, TP1, prefix none, P/D 1:1, seqs 1 (2 GPUs) at " in r.stdout
    assert ", against the best colocated, A100-80GB, TP1, prefix none, round-robin, seqs 1 (3 GPUs) at " in r.stdout
    assert "disaggregated wins for cost" in (out / "plan.md").read_text()
    assert set(pd.read_csv(out / "candidates.csv")["decode_gpu"].dropna()) == {
        "A100-80GB",
        "1xA100-80GB+1xH100-SXM",
    }


def test_bad_pool_gpu_input_is_named_by_its_path(tmp_path):
    with pytest.raises(KavierInputError) as ei:
        load_plan(pd_plan(tmp_path, ratios=["1:1"], decode_gpu=[{"A100-80GB": 1, "H100-SXM": 2}]))
    assert (
        "candidates.disaggregation.decode_gpu[0]: the decode pools {'A100-80GB': 1, 'H100-SXM': 2} take decode "
        "replicas in multiples of 3, and no ratio gives such a decode pool at 2..4 replicas"
    ) in str(ei.value)
    with pytest.raises(KavierInputError, match=r"candidates.disaggregation.decode_gpu\[1\]"):
        load_plan(pd_plan(tmp_path / "one", decode_gpu=["H100-SXM", {"A100-80GB": 2}]))  # a mix of one type
    with pytest.raises(KavierInputError, match=r"candidates.disaggregation.decode_gpu\[0\]"):
        load_plan(pd_plan(tmp_path / "zero", decode_gpu=[{"A100-80GB": 0, "H100-SXM": 1}]))
    with pytest.raises(KavierInputError) as ei:
        load_plan(pd_plan(tmp_path / "gpu", prefill_gpu=["NoSuchGPU"], decode_gpu=[{"A100-80GB": 1, "NoGPU": 1}]))
    text = str(ei.value)
    assert "invalid plan, 2 problems" in text  # once each, at the pool lists, not again per P/D shape
    assert "candidates.disaggregation.prefill_gpu[0]: unknown GPU 'NoSuchGPU'" in text
    assert "candidates.disaggregation.decode_gpu[0]: unknown GPU 'NoGPU'" in text
    with pytest.raises(KavierInputError, match=r"candidates.disaggregation.prefill_gpu"):
        load_plan(pd_plan(tmp_path / "empty", prefill_gpu=[]))


def test_the_readme_pool_gpus_example_is_a_valid_plan():
    plan = load_plan(EXAMPLE_PLAN.parent / "plan_pd_pools.yaml")
    assert len(plan.shapes) == 14
    assert sum(s.layout == "colocated" for s in plan.shapes) == 2
    assert {s.decode_label for s in plan.shapes if s.ratio} == {"A100-80GB", "H100-SXM", "1xA100-80GB+1xH100-SXM"}
