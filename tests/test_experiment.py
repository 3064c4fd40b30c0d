"""Experiment files: schema and meaning checks, every problem with its JSON path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.experiment import experiment_problems, json_path, load_experiment, with_overrides

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "kavier_opendc" / "data"


def tiny_doc(**over) -> dict:
    doc = {
        "name": "tiny",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "seed": 3,
        "trace": {
            "synthetic": {
                "num_requests": 40,
                "rate": 4.0,
                "arrival": "poisson",
                "input": {"dist": "uniform", "low": 50, "high": 400},
                "output": {"dist": "uniform", "low": 5, "high": 60},
            }
        },
        "serving": {"replicas": 2, "router": "least-kv"},
        "datacenter": {
            "hosts": [
                {
                    "name": "node",
                    "gpus_per_host": 2,
                    "cpu": {"cores": 16, "mhz": 2000},
                    "cpu_power_model": {"model": "linear", "idle_w": 100, "max_w": 300},
                    "memory_gib": 256,
                }
            ]
        },
        "slo": {"ttft_s": 0.2, "tpot_s": 0.03},
    }
    doc.update(over)
    return doc


def write(tmp: Path, doc, name="exp.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(doc) if name.endswith((".yaml", ".yml")) else json.dumps(doc))
    return p


def problems_of(doc, tmp_path, **kw) -> list[str]:
    probs, exp = experiment_problems(doc, base_dir=tmp_path, source="exp.yaml", **kw)
    return [f"{json_path(p)}: {m}" for p, m in probs]


def test_demo_experiment_is_valid():
    exp = load_experiment(DATA / "demo_experiment.yaml")
    assert exp.name == "demo-chat-llama3-8b-a100"
    assert exp.gpu_counts() == {"A100-80GB": 4}
    assert exp.carbon.kind == "synthetic"
    assert exp.prices.gpu_hour["A100-80GB"] > 0
    assert exp.trace.path == (DATA / "demo_workload.yaml").resolve() or exp.trace.path.name == "demo_workload.yaml"


def test_tiny_experiment_valid_and_paths_relative_to_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "wl.yaml").write_text((DATA / "demo_workload.yaml").read_text())
    p = write(tmp_path / "sub", tiny_doc(trace="wl.yaml"), "exp.json")
    monkeypatch.chdir(tmp_path)  # a different working folder: the trace is found next to the experiment
    exp = load_experiment(p)
    assert exp.trace.kind == "synthetic" and exp.trace.path == tmp_path / "sub" / "wl.yaml"
    assert [r for r, _ in exp.input_files] == ["experiment", "trace"]


@pytest.mark.parametrize(
    "mutate, path, words",
    [
        (lambda d: d["serving"].update(replicas="two"), "serving.replicas", "wrong type"),
        (lambda d: d["serving"].update(replicas=-1), "serving.replicas", "minimum of 1"),
        (lambda d: d["serving"].update(replicas=0), "serving.replicas", "minimum of 1"),
        (lambda d: d.update(model="Llama-3-8Bx"), "model", "Did you mean 'Llama-3-8B'"),
        (lambda d: d.update(gpu="H101"), "gpu", "unknown GPU"),
        (lambda d: d.update(trace="nope/missing.csv"), "trace", "not found"),
        (lambda d: d.update(trace={"file": "missing.parquet"}), "trace.file", "not found"),
        (lambda d: d["serving"].update(colour="red"), "serving.colour", "unknown key"),
        (lambda d: d["serving"].update(router="fastest"), "serving.router", "unknown router"),
        (lambda d: d["serving"].update(prefix_cache="blok"), "serving.prefix_cache", "did you mean 'block'"),
        (lambda d: d["slo"].update(ttft_s=0), "slo.ttft_s", "minimum of 0"),
        (lambda d: d["datacenter"]["hosts"][0]["cpu"].update(cores=0), "datacenter.hosts[0].cpu.cores", "minimum"),
        (lambda d: d["datacenter"]["hosts"][0].update(gpus_per_host=1), "datacenter.hosts", "too few GPU slots"),
        (lambda d: d.update(prices={"gpu_hour": {"B300": 2.0}}), "prices.gpu_hour.B300", "unknown GPU"),
        (lambda d: d.update(carbon={"region": "XX"}), "carbon.region", "no carbon trace"),
        (lambda d: d.update(carbon={"synthetic": {"mean": 100, "amplitude": 500}}), "carbon.synthetic", "amplitude"),
        (lambda d: d.pop("model"), "model", "required"),
        (lambda d: d.update(model="Llama-3-70B", gpu="A10"), "serving.tp", "no room for a KV cache"),
        (
            lambda d: d["serving"].update(replica_groups=[{"model": "Llama-3-8B", "gpu": "A1O"}]),
            "serving.replica_groups[0].gpu",
            "unknown GPU",
        ),
    ],
)
def test_each_problem_names_its_json_path(tmp_path, mutate, path, words):
    doc = tiny_doc()
    mutate(doc)
    probs = problems_of(doc, tmp_path)
    assert any(p.startswith(path + ":") and words in p for p in probs), probs


def test_every_problem_is_reported_at_once(tmp_path):
    doc = tiny_doc(model="nope", gpu="nada", trace="missing.csv")
    doc["serving"].update(replicas=-3, max_num_seqs="many")
    doc["slo"]["tpot_s"] = -1
    with pytest.raises(KavierInputError) as ei:
        load_experiment(doc, base_dir=tmp_path, source="bad.yaml")
    lines = ei.value.problems
    for path in ("model", "gpu", "trace", "serving.replicas", "serving.max_num_seqs", "slo.tpot_s"):
        assert any(line.startswith(path + ":") for line in lines), (path, lines)
    assert str(ei.value).startswith("bad.yaml: invalid experiment, ")


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("model: Llama-3-8B\nserving: {replicas: 2\n")
    with pytest.raises(KavierInputError, match=r"exp.yaml: line \d+, column \d+: invalid YAML"):
        load_experiment(p)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("model: Llama-3-8B\nmodel: Llama-2-7B\n")
    with pytest.raises(KavierInputError, match="duplicate key 'model'"):
        load_experiment(p)


def test_datacenter_required_only_with_opendc(tmp_path):
    doc = tiny_doc()
    doc.pop("datacenter")
    assert any(p.startswith("datacenter:") for p in problems_of(doc, tmp_path))
    assert problems_of(doc, tmp_path, opendc=False) == []
    doc["opendc"] = {"enabled": False}
    assert problems_of(doc, tmp_path) == []


def test_datacenter_file_problems_name_the_file(tmp_path):
    dc = tiny_doc()["datacenter"]
    dc["hosts"][0]["memory_gib"] = -5
    (tmp_path / "dc.yaml").write_text(yaml.safe_dump(dc))
    probs = problems_of(tiny_doc(datacenter="dc.yaml"), tmp_path)
    assert any(p.startswith("datacenter.hosts[0].memory_gib:") and "dc.yaml" in p for p in probs), probs


def test_datacenter_naming_another_gpu_is_refused(tmp_path):
    doc = tiny_doc()
    doc["datacenter"]["hosts"][0]["gpu"] = "H100-SXM"
    probs = problems_of(doc, tmp_path)
    assert any(p.startswith("datacenter.hosts[0].gpu:") and "A100-80GB" in p for p in probs), probs


def test_yaml_12_floats_are_numbers(tmp_path):
    p = tmp_path / "exp.yaml"
    text = yaml.safe_dump(tiny_doc()).replace("ttft_s: 0.2", "ttft_s: 2e-1")
    p.write_text(text)
    assert load_experiment(p).slo.ttft_s == pytest.approx(0.2)


def test_sim_config_from_experiment(tmp_path):
    doc = tiny_doc()
    doc["serving"].update(
        tp=1,
        max_num_seqs=64,
        max_batched_tokens=4096,
        kv_cache="off",
        prefix_cache={
            "policy": "prefill",
            "min_prompt_tokens": 100,
            "capacity_prompts": 50,
            "scope": "session",
            "capacity_tokens": "inf",
        },
    )
    cfg = load_experiment(doc, base_dir=tmp_path).sim_config()
    assert (cfg.model.name, cfg.gpu.name, cfg.replicas, cfg.tp) == ("Llama-3-8B", "A100-80GB", 2, 1)
    assert (cfg.max_num_seqs, cfg.max_batched_tokens, cfg.kv_cache, cfg.router, cfg.seed) == (
        64,
        4096,
        False,
        "least-kv",
        3,
    )
    assert cfg.prefix_cache == "prefill"
    assert cfg.prefix_min_tokens == 100 and cfg.prefix_capacity_prompts == 50
    assert cfg.prefix_scope == "session" and cfg.prefix_capacity_tokens == math.inf


def test_one_replica_group_equals_top_level(tmp_path):
    a = tiny_doc()
    b = tiny_doc()
    b.pop("model")
    b.pop("gpu")
    b["serving"].pop("replicas")
    b["serving"]["replica_groups"] = [{"model": "Llama-3-8B", "gpu": "A100-80GB", "replicas": 2}]
    ca = load_experiment(a, base_dir=tmp_path).sim_config()
    cb = load_experiment(b, base_dir=tmp_path).sim_config()
    assert (ca.model, ca.gpu, ca.replicas, ca.tp) == (cb.model, cb.gpu, cb.replicas, cb.tp)


def test_several_replica_groups(tmp_path):
    doc = tiny_doc()
    doc["serving"].pop("replicas")
    doc["serving"]["replica_groups"] = [{"gpu": "A100-80GB", "replicas": 1}, {"gpu": "H100-SXM", "replicas": 2}]
    probs, exp = experiment_problems(doc, base_dir=tmp_path, source="x", opendc=False)
    if probs:  # an engine without heterogeneous groups says so, naming the field
        assert any("serving.replica_groups" in json_path(p) for p, _ in probs)
        return
    cfg = exp.sim_config()
    assert [(g.gpu.name, g.replicas) for g in cfg.groups] == [("A100-80GB", 1), ("H100-SXM", 2)]
    assert exp.gpu_counts() == {"A100-80GB": 1, "H100-SXM": 2}


def test_replica_groups_exclude_top_level_replicas(tmp_path):
    doc = tiny_doc()
    doc["serving"]["replica_groups"] = [{"replicas": 1}]
    assert any(p.startswith("serving.replicas:") for p in problems_of(doc, tmp_path))


def test_with_overrides():
    base = {"serving": {"replicas": 1, "prefix_cache": "none"}, "carbon": {"synthetic": {}}}
    out = with_overrides(
        base, {"serving.replicas": 4, "serving.prefix_cache.scope": "session", "carbon.region": "FR", "gpu": "H100-SXM"}
    )
    assert out == {
        "serving": {"replicas": 4, "prefix_cache": {"policy": "none", "scope": "session"}},
        "carbon": {"region": "FR"},
        "gpu": "H100-SXM",
    }
    assert base["serving"]["replicas"] == 1  # not changed


def test_cli_validate_reports_every_problem_without_traceback(tmp_path):
    doc = tiny_doc(model="Llama-3-8Bx", trace="missing.csv")
    doc["serving"]["replicas"] = -1
    bad = write(tmp_path, doc)
    good = write(tmp_path, tiny_doc(), "good.yaml")
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "validate", str(bad), str(good)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for path in ("model:", "trace:", "serving.replicas:"):
        assert f"  {path}" in r.stderr, r.stderr
    assert "good.yaml: valid experiment 'tiny'" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "validate", str(DATA / "demo_experiment.yaml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "3000 requests" in r.stdout


def test_cli_run_invalid_experiment_leaves_nothing(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("model: Llama-3-8B\ngpu: A100-80GB\ntrace: [1, 2\n")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "run", str(p), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "invalid YAML" in r.stderr and "line 4" in r.stderr
    assert not out.exists()


def test_heterogeneous_groups_need_slots_of_each_gpu_type(tmp_path):
    workload = Path(__file__).resolve().parents[1] / "kavier_opendc" / "data" / "demo_workload.yaml"
    doc = {
        "name": "het",
        "model": "Llama-3-8B",
        "trace": str(workload),
        "serving": {
            "replica_groups": [
                {"model": "Llama-3-8B", "gpu": "A100-80GB", "replicas": 2},
                {"model": "Llama-3-8B", "gpu": "H100-SXM", "replicas": 3},
            ]
        },
        "datacenter": {
            "name": "mixed",
            "power_source": {"name": "grid"},
            "hosts": [
                {
                    "name": "a100",
                    "count": 1,
                    "gpus_per_host": 2,
                    "gpu": "A100-80GB",
                    "cpu": {"cores": 32, "mhz": 2400},
                    "memory_gib": 512,
                },
                {
                    "name": "h100",
                    "count": 1,
                    "gpus_per_host": 2,
                    "gpu": "H100-SXM",
                    "cpu": {"cores": 32, "mhz": 2400},
                    "memory_gib": 512,
                },
            ],
        },
        "carbon": {"synthetic": {"mean": 300}},
    }
    with pytest.raises(KavierInputError, match="too few GPU slots of type 'H100-SXM'") as exc:
        load_experiment(doc, base_dir=tmp_path)
    assert "datacenter.hosts" in str(exc.value)
    doc["datacenter"]["hosts"][1]["gpus_per_host"] = 4
    exp = load_experiment(doc, base_dir=tmp_path)
    assert [g.replicas for g in exp.groups] == [2, 3]


def test_serving_enable_chunked_prefill(tmp_path):
    # vLLM v0's --enable-chunked-prefill as serving.enable_chunked_prefill; refused, by its path, where it does
    # not apply (vLLM v1 always chunks)
    doc = tiny_doc()
    doc["serving"].update(framework="vllm-0.5-server", enable_chunked_prefill=True)
    cfg = load_experiment(doc, base_dir=tmp_path).sim_config()
    assert cfg.enable_chunked_prefill is True and cfg.framework_profile().chunked_prefill is True
    assert load_experiment(tiny_doc(), base_dir=tmp_path).sim_config().enable_chunked_prefill is None
    doc = tiny_doc()
    doc["serving"]["enable_chunked_prefill"] = "yes"
    assert any(p.startswith("serving.enable_chunked_prefill:") for p in problems_of(doc, tmp_path))
    doc = tiny_doc()
    doc["serving"]["enable_chunked_prefill"] = True
    with pytest.raises(KavierInputError, match="vLLM v1 always chunks") as ei:
        load_experiment(doc, base_dir=tmp_path)
    assert "serving.enable_chunked_prefill: vLLM v0's chunked-prefill switch does not apply" in str(ei.value)
