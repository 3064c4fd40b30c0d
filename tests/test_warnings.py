"""Implausible values warn and short names say what they resolved to (issue 17 item 9)."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from kavier_opendc.cli import main as cli_main
from kavier_opendc.experiments.experiment import load_experiment
from kavier_opendc.specs import default_catalog

TRACE = "arrival_time,num_prefill_tokens,num_decode_tokens\n0.0,100,5\n0.5,120,4\n"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def experiment(tmp_path, **over):
    (tmp_path / "t.csv").write_text(TRACE)
    doc = {"name": "w", "model": "Llama-3-8B", "gpu": "A100-80GB", "trace": "t.csv", "opendc": {"enabled": False}}
    doc.update(over)
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize(
    ("name", "resolved", "others"), [("a100", "A100-80GB", "A100-40GB"), ("h100", "H100-SXM", "H100-PCIe")]
)
def test_a_short_gpu_name_says_which_gpu_it_is_and_which_others_exist(name, resolved, others):
    note = default_catalog().resolution_note(name)
    assert note is not None and f"is the {resolved}" in note and others in note


@pytest.mark.parametrize("name", ["A100-80GB", "a100-80gb", "A10", "a10", "L40S", "no-such-gpu"])
def test_a_full_or_unambiguous_name_has_no_note(name):
    assert default_catalog().resolution_note(name) is None


def test_an_experiment_naming_a_short_gpu_warns_at_its_path(tmp_path):
    exp = load_experiment(experiment(tmp_path, gpu="a100"))
    assert exp.groups[0].gpu.name == "A100-80GB"
    assert len(exp.notes) == 1 and exp.notes[0].startswith("gpu: GPU 'a100' is the A100-80GB")
    rc, out, err = run(["validate", tmp_path / "e.yaml", "--no-opendc"])
    assert rc == 0 and "valid experiment" in out and "warning" in err and "A100-40GB" in err
    exp = load_experiment(
        experiment(
            tmp_path, serving={"replica_groups": [{"gpu": "h100", "replicas": 1}, {"gpu": "A100-80GB", "replicas": 1}]}
        )
    )
    assert [n.split(":")[0] for n in exp.notes] == ["serving.replica_groups[0].gpu"]


def test_an_slo_in_milliseconds_warns_and_says_what_to_write(tmp_path):
    exp = load_experiment(experiment(tmp_path, slo={"ttft_s": 500, "tpot_s": 50}))
    assert len(exp.notes) == 2
    assert "slo.ttft_s is 500 s" in exp.notes[0] and "write 0.5 for 500 ms" in exp.notes[0]
    assert "slo.tpot_s is 50 s" in exp.notes[1] and "write 0.05 for 50 ms" in exp.notes[1]
    rc, out, err = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "o", "--no-opendc", "--no-plots", "--quiet"])
    assert rc == 0 and "kavier: warning: slo.ttft_s is 500 s" in err
    assert load_experiment(experiment(tmp_path, slo={"ttft_s": 2.0, "tpot_s": 0.1})).notes == []


def test_simulate_says_what_a_short_gpu_name_resolved_to(tmp_path):
    (tmp_path / "t.csv").write_text(TRACE)
    base = ["simulate", "--trace", tmp_path / "t.csv", "--model", "Llama-3-8B", "--quiet"]
    rc, _, err = run(base + ["--gpu", "a100", "--out", tmp_path / "a"])
    assert rc == 0 and "--gpu: GPU 'a100' is the A100-80GB" in err
    rc, _, err = run(base + ["--gpu", "A100-80GB", "--out", tmp_path / "b"])
    assert rc == 0 and "warning" not in err


def test_run_and_simulate_both_note_requests_longer_than_the_context_window(tmp_path):
    (tmp_path / "t.csv").write_text("arrival_time,num_prefill_tokens,num_decode_tokens\n0.0,100,5\n0.5,9000,4\n")
    doc = {"name": "w", "model": "Llama-3-8B", "gpu": "A100-80GB", "trace": "t.csv", "opendc": {"enabled": False}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    rc, out, _ = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "o", "--no-opendc", "--no-plots"])
    note = "1 requests are longer than Llama-3-8B's context window; a real server would refuse them"
    assert rc == 0 and f"note         {note}" in out
    rc, out, _ = run(
        [
            "simulate",
            "--trace",
            tmp_path / "t.csv",
            "--model",
            "Llama-3-8B",
            "--gpu",
            "A100-80GB",
            "--out",
            tmp_path / "s",
        ]
    )
    assert rc == 0 and f"note         {note}" in out
    doc["serving"] = {"max_model_len": 8192}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    rc, out, _ = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "o2", "--no-opendc", "--no-plots"])
    assert rc == 0 and "context window" not in out and "1 rejected" in out
