"""Sweeps over disaggregated pool lists (experiments/sweep.py): a value setting serving.disaggregation on a
co-located base replaces its shape; the shipped pd_pools_sweep.yaml; a small pool-list sweep end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.experiments.sweep import load_sweep
from test_pipeline import tiny_experiment

DATA = Path(__file__).resolve().parents[1] / "kavier_opendc" / "data"
LINK = {"gbs": 25, "mode": "layerwise"}


def host(name: str, gpu: str, count: int = 1) -> dict:
    return {
        "name": name,
        "gpu": gpu,
        "count": count,
        "gpus_per_host": 1,
        "cpu": {"cores": 16, "mhz": 2000},
        "memory_gib": 256,
    }


def pool_sweep(tmp: Path, values: list, name: str = "sweep.yaml") -> Path:
    tiny_experiment(tmp)  # co-located: serving.replicas 2, router least-kv, block prefix cache
    doc = {"name": "pools", "base": "experiment.yaml", "axes": [{"name": "pools", "values": values}]}
    p = tmp / name
    p.write_text(yaml.safe_dump(doc))
    return p


TWO_VALUES = [
    {
        "label": "AA",
        "set": {
            "serving.disaggregation": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}, "link": LINK},
            "datacenter.hosts": [host("a100", "A100-80GB", 2)],
        },
    },
    {
        "label": "H-AH",
        "set": {
            "serving.disaggregation": {
                "prefill": {"replicas": 1, "gpu": "H100-SXM"},
                "decode": [{"replicas": 1}, {"replicas": 1, "gpu": "H100-SXM", "name": "decode-h100"}],
                "link": LINK,
            },
            "datacenter.hosts": [host("h100", "H100-SXM", 2), host("a100", "A100-80GB")],
        },
    },
]


def test_a_pool_list_value_replaces_the_bases_colocated_shape(tmp_path):
    s = load_sweep(pool_sweep(tmp_path, TWO_VALUES), opendc=True)
    assert [r.labels for r in s.runs] == [{"pools": "AA"}, {"pools": "H-AH"}]
    for r in s.runs:
        serving = r.document["serving"]
        assert "replicas" not in serving and "tp" not in serving
        assert serving["prefix_cache"] == "block" and serving["router"] == "least-kv"  # the rest is the base's
    topo = load_experiment(s.runs[1].document, base_dir=s.runs[1].base_dir).sim_config().topology()
    assert [(p.gpu.name, p.replicas) for p in topo.prefill_pools] == [("H100-SXM", 1)]
    assert [(p.gpu.name, p.name) for p in topo.decode_pools] == [("A100-80GB", None), ("H100-SXM", "decode-h100")]
    assert len({r.key for r in s.runs}) == 2


def test_a_value_setting_both_shapes_is_refused_naming_the_field(tmp_path):
    both = [{"label": "mixed", "set": {**TWO_VALUES[0]["set"], "serving.replicas": 2}}]
    with pytest.raises(KavierInputError) as e:
        load_sweep(pool_sweep(tmp_path, both), opendc=False)
    assert "configuration 0 (pools=mixed): serving.replicas: not allowed together with serving.disaggregation" in str(
        e.value
    )
    # a value of the co-located shape on the same base keeps it: nothing is dropped without disaggregation
    s = load_sweep(pool_sweep(tmp_path, [{"label": "three", "set": {"serving.replicas": 1}}], "c.yaml"))
    assert s.runs[0].document["serving"]["replicas"] == 1


def test_the_shipped_pool_list_sweep_is_valid():
    s = load_sweep(DATA / "pd_pools_sweep.yaml", opendc=True)
    assert [r.labels["pools"] for r in s.runs] == ["HH", "HA", "H-AH"]
    shapes = []
    for r in s.runs:
        topo = load_experiment(r.document, base_dir=r.base_dir).sim_config().topology()
        shapes.append(
            ([p.gpu.name for p in topo.prefill_pools], [p.gpu.name for p in topo.decode_pools], topo.link.mode)
        )
        hosts = r.document["datacenter"]["hosts"]
        assert sum(h["count"] * h["gpus_per_host"] for h in hosts) == len(shapes[-1][0]) + len(shapes[-1][1])
    assert shapes == [
        (["H100-SXM"], ["H100-SXM"], "layerwise"),
        (["H100-SXM"], ["A100-80GB"], "layerwise"),
        (["H100-SXM"], ["A100-80GB", "H100-SXM"], "layerwise"),
    ]


def test_a_pool_list_sweep_runs_end_to_end(tmp_path):
    sweep = pool_sweep(tmp_path, TWO_VALUES)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "sweep", str(sweep), "--out", str(out), "--jobs", "1"]
        + ["--no-opendc", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    runs = {}
    for s in load_sweep(sweep, opendc=False).runs:
        report = json.loads((out / "runs" / s.id / "report.json").read_text())
        runs[s.labels["pools"]] = report["performance"]["disaggregation"]
    assert [(p["name"], p["gpu"]) for p in runs["AA"]["pools"]] == [("prefill", "A100-80GB"), ("decode", "A100-80GB")]
    assert [(p["name"], p["gpu"]) for p in runs["H-AH"]["pools"]] == [
        ("prefill", "H100-SXM"),
        ("decode-0", "A100-80GB"),
        ("decode-h100", "H100-SXM"),
    ]
    for d in runs.values():  # every request prefilled once, and decoded on exactly one decode pool
        pre = [p["requests"] for p in d["pools"] if p["role"] == "prefill"]
        dec = [p["requests"] for p in d["pools"] if p["role"] == "decode"]
        assert sum(dec) == d["decode_pool"]["requests"] <= sum(pre) == 60
    table = (out / "comparison.csv").read_text()
    assert table.count("done") == 2 and "H-AH" in table
