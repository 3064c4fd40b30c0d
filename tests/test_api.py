"""The Python API of ``kavier_opendc`` (api.py): each function gives what its command gives.

``simulate`` against ``kavier simulate`` and ``run_experiment`` against ``kavier run --no-opendc``, on the
repository's demo chat trace and a tiny synthetic experiment; ``import kavier_opendc`` stays cheap.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import kavier_opendc as ko
from conftest import REPO
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli import main
from test_experiment import tiny_doc, write

DEMO_CHAT = REPO / "traces" / "demo_chat.csv"
SYNTHETIC = {
    "num_requests": 25,
    "rate": 5.0,
    "arrival": "poisson",
    "seed": 7,
    "input": {"dist": "uniform", "low": 20, "high": 300},
    "output": {"dist": "uniform", "low": 2, "high": 40},
}


def _csv_column(path, name) -> list[int]:
    with open(path, newline="") as fh:
        return [int(row[name]) for row in csv.DictReader(fh)]


def test_import_is_cheap_and_the_api_loads_on_first_use():
    code = (
        "import sys, kavier_opendc as k; heavy = ('numpy', 'pandas', 'pyarrow', 'kavier_opendc.api'); "
        "before = [m for m in heavy if m in sys.modules]; f = k.simulate; "
        "print(before, f.__module__, 'kavier_opendc.api' in sys.modules, sorted(k.__all__))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 1)[0] == "[]"
    assert "kavier_opendc.api True" in proc.stdout
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        ko.simulat  # noqa: B018 - a typo is an AttributeError, not a lazy import
    from kavier_opendc import api

    assert sorted(set(ko.__all__) - {"__version__"}) == sorted(api.__all__)
    assert all(getattr(ko, name) is getattr(api, name) and getattr(api, name).__doc__ for name in api.__all__)


def test_load_workload_reads_the_trace_file():
    trace = ko.load_workload(DEMO_CHAT)
    assert len(trace) == len(_csv_column(DEMO_CHAT, "num_input_tokens")) == 3000
    assert trace.num_input_tokens.tolist() == _csv_column(DEMO_CHAT, "num_input_tokens")
    assert trace.num_output_tokens.tolist() == _csv_column(DEMO_CHAT, "num_output_tokens")
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)


def test_load_workload_generates_a_description_file_or_mapping_alike(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(SYNTHETIC))
    from_file, from_mapping = ko.load_workload(path), ko.load_workload(SYNTHETIC)
    assert len(from_file) == len(from_mapping) == 25
    for column in ("arrival_s", "num_input_tokens", "num_output_tokens"):
        assert np.array_equal(getattr(from_file, column), getattr(from_mapping, column))
    assert from_mapping.num_input_tokens.min() >= 20 and from_mapping.num_input_tokens.max() <= 300
    with pytest.raises(KavierInputError, match="num_requests"):
        ko.load_workload({**SYNTHETIC, "num_requests": -1})


def test_simulate_equals_kavier_simulate(tmp_path):
    settings = {"replicas": 2, "router": "random", "seed": 5, "max_num_seqs": 64}
    cli_out = tmp_path / "cli"
    assert (
        main(
            [
                "simulate",
                "--model",
                "Llama-3-8B",
                "--gpu",
                "A100-80GB",
                "--trace",
                str(DEMO_CHAT),
                "--replicas",
                "2",
                "--router",
                "random",
                "--seed",
                "5",
                "--max-num-seqs",
                "64",
                "--out",
                str(cli_out),
                "--quiet",
            ]
        )
        == 0
    )
    result = ko.simulate(str(DEMO_CHAT), model="llama-3-8b", gpu="A100-80GB", out=tmp_path / "api", **settings)
    summary = ko.summary(result)
    assert summary["num_requests"] == summary["num_finished"] == 3000
    assert summary["config"]["replicas"] == 2 and summary["config"]["max_num_seqs"] == 64
    cli_requests = pq.read_table(cli_out / "requests.parquet")
    assert ko.requests_table(result).equals(cli_requests)
    assert (tmp_path / "api" / "requests.parquet").read_bytes() == (cli_out / "requests.parquet").read_bytes()
    assert (tmp_path / "api" / "timeline.parquet").read_bytes() == (cli_out / "timeline.parquet").read_bytes()
    cli_summary = json.loads((cli_out / "summary.json").read_text())
    assert summary["ttft_s"] == cli_summary["ttft_s"] and summary["makespan_s"] == cli_summary["makespan_s"]
    assert len(set(cli_requests.column("replica").to_pylist())) == 2


def test_simulate_takes_a_trace_and_a_different_seed_changes_a_random_router():
    trace = ko.load_workload(SYNTHETIC)
    a, b = (ko.simulate(trace, "Llama-3-8B", "A100-80GB", replicas=3, router="random", seed=s) for s in (1, 2))
    again = ko.simulate(trace, "Llama-3-8B", "A100-80GB", replicas=3, router="random", seed=1)
    assert ko.requests_table(a).equals(ko.requests_table(again))
    assert a.results.replica.tolist() != b.results.replica.tolist()
    assert ko.summary(a)["num_finished"] == 25


def test_simulate_rejects_bad_input_as_the_command_does():
    with pytest.raises(KavierInputError, match="Llama-9B"):
        ko.simulate(str(DEMO_CHAT), model="Llama-9B", gpu="A100-80GB")
    with pytest.raises(KavierInputError):
        ko.simulate(ko.load_workload(SYNTHETIC), model="Llama-3-8B", gpu="A100-80GB", framework="no-such-framework")
    with pytest.raises(TypeError, match="replica"):
        ko.simulate(ko.load_workload(SYNTHETIC), model="Llama-3-8B", gpu="A100-80GB", replica=2)


def test_load_experiment_reads_the_demo():
    exp = ko.load_experiment(REPO / "kavier_opendc" / "data" / "demo_experiment.yaml")
    assert exp.name == "demo-chat-llama3-8b-a100" and exp.seed == 42
    assert [(g.model.name, g.gpu.name, g.replicas) for g in exp.groups] == [("Llama-3-8B", "A100-80GB", 4)]
    with pytest.raises(KavierInputError, match="Llama-3-8Bx"):
        ko.load_experiment(tiny_doc(model="Llama-3-8Bx"))


def test_run_experiment_equals_kavier_run_without_opendc(tmp_path):
    path = write(tmp_path, tiny_doc())
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--no-opendc", "--no-plots", "--quiet"]) == 0
    run = ko.run_experiment(path, out=tmp_path / "api", plots=False)
    assert run.out == tmp_path / "api" and (run.out / "report.json").is_file()
    assert not (run.out / "INCOMPLETE").exists() and not (run.out / "opendc").exists()
    cli_report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert run.report["performance"]["num_finished"] == cli_report["performance"]["num_finished"] == 40
    assert run.report["sustainability"] is None
    for name in ("requests.parquet", "timeline.parquet"):
        assert (run.out / "simulation" / name).read_bytes() == (tmp_path / "cli" / "simulation" / name).read_bytes()
    # an Experiment already loaded runs the same
    again = ko.run_experiment(ko.load_experiment(path, opendc=False), out=tmp_path / "again", plots=False)
    assert again.report["performance"]["ttft_s"] == run.report["performance"]["ttft_s"]


def test_readme_example_prints_what_the_readme_says(tmp_path, monkeypatch, capsys):
    """The README's "Python API" example, run as written (its relative paths point into the repository)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    printed = section.split("prints\n\n```\n", 1)[1].split("```", 1)[0]
    (tmp_path / "kavier_opendc").mkdir()
    (tmp_path / "traces").symlink_to(REPO / "traces")
    (tmp_path / "kavier_opendc" / "data").symlink_to(REPO / "kavier_opendc" / "data")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == printed
    assert (tmp_path / "out" / "demo" / "report.json").is_file()
