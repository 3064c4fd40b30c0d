"""Issue 11's other half: what must still work around the refusals (explicit overrides), nothing
half-written after a failure, and the rough edges a new user hit (summaries, help, validate, plots)."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest

from kavier_opendc.base import limits
from kavier_opendc.cli import main as cli_main
from kavier_opendc.cli.text import latencies

OK_CSV = "num_input_tokens,num_output_tokens\n100,10\n200,20\n"
EXPERIMENT = "model: Llama-3-8B\ngpu: A100-80GB\ntrace: t.csv\nopendc: {enabled: false}\n"
SIM = ["simulate", "--model", "llama-3-8b", "--gpu", "a100-80gb"]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------- 3. rows kept on request
def test_overlong_rows_are_kept_as_rejected_requests_when_asked(tmp_path):
    (tmp_path / "t.csv").write_text("num_input_tokens,num_output_tokens\n100,10\n20000000,5\n")
    rc, _, err = run(SIM + ["--trace", tmp_path / "t.csv", "--out", tmp_path / "o", "--quiet"])
    assert rc == 2 and "row 2" in err
    rc, _, err = run(
        SIM + ["--trace", tmp_path / "t.csv", "--out", tmp_path / "o", "--quiet", "--keep-overlong-requests"]
    )
    assert rc == 0, err
    req = pd.read_parquet(tmp_path / "o" / "requests.parquet")
    assert list(req["status"]) == ["finished", "rejected"]


# ----------------------------------------------------------------- 4. max_model_len override
def test_max_model_len_beyond_the_window_only_with_override_and_a_warning(tmp_path):
    (tmp_path / "t.csv").write_text(OK_CSV)
    argv = SIM + ["--trace", tmp_path / "t.csv", "--out", tmp_path / "o", "--quiet", "--max-model-len", "100000"]
    rc, _, err = run(argv)
    assert rc == 2 and "context window of 8192" in err and not (tmp_path / "o").exists()
    rc, _, err = run(argv + ["--allow-long-max-model-len"])
    assert rc == 0 and "kavier: warning: max_model_len 100000" in err
    (tmp_path / "e.yaml").write_text(EXPERIMENT + "serving: {max_model_len: 100000, allow_long_max_model_len: true}\n")
    rc, _, err = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "r", "--no-plots", "--quiet"])
    assert rc == 0 and "warning: max_model_len 100000" in err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["performance"]["config"]["max_model_len"] == 100000


# ----------------------------------------------------------------- 2. honest documents still load
def test_yaml_anchors_and_aliases_of_normal_size_still_work(tmp_path):
    (tmp_path / "t.csv").write_text(OK_CSV)
    (tmp_path / "e.yaml").write_text(EXPERIMENT + "prices: {electricity_per_kwh: &p 0.2, gpu_hour: {A100-80GB: *p}}\n")
    rc, out, err = run(["validate", tmp_path / "e.yaml"])
    assert rc == 0, err


def test_a_large_description_is_refused_quickly(tmp_path):
    (tmp_path / "w.yaml").write_text("description: '" + "x" * (int(limits.DOCUMENT_BYTES.value) + 10) + "'\n")
    rc, _, err = run(["validate", tmp_path / "w.yaml"])
    assert rc == 2 and "too large" in err and "w.yaml" in err


# ----------------------------------------------------------------- 6. nothing half-written
def test_out_problems_come_before_the_trace_is_read(tmp_path):
    (tmp_path / "t.csv").write_text("bad,columns\n1,2\n")  # would fail if it were read
    (tmp_path / "e.yaml").write_text(EXPERIMENT)
    (tmp_path / "out").write_text("a file")
    rc, _, err = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "out", "--no-plots"])
    assert rc == 2 and "--out" in err and "t.csv" not in err


def test_a_failing_sweep_never_looks_complete(tmp_path):
    (tmp_path / "t.csv").write_text("num_input_tokens,num_output_tokens,num_output_tokens\n5,3,4\n")  # fails at run
    (tmp_path / "e.yaml").write_text(EXPERIMENT)
    (tmp_path / "s.yaml").write_text("base: e.yaml\naxes:\n  seed: [1]\n")
    out = tmp_path / "out"
    rc, _, err = run(["sweep", tmp_path / "s.yaml", "--out", out, "--no-opendc", "--jobs", "1", "--quiet"])
    assert rc == 3
    assert "appears more than once" in (out / "INCOMPLETE").read_text()
    assert json.loads((out / "sweep.json").read_text())["complete"] is False
    runs = list((out / "runs").iterdir())
    assert runs and all((r / "INCOMPLETE").exists() and not (r / "DONE").exists() for r in runs)
    assert "Incomplete: 1 of 1" in (out / "comparison.md").read_text()


def test_a_failing_opendc_run_leaves_no_output_folder(tmp_path):
    d = tmp_path / "odc"
    d.mkdir()
    (d / "experiment.json").write_text(json.dumps({"topologies": [], "workloads": []}))
    rc, _, err = run(["opendc", d, "--quiet"])
    assert rc == 2 and "experiment.json" in err and "topologies" in err
    assert not (d / "output").exists() and not (d / "sustainability.json").exists()


def test_a_directory_as_trace_says_so(tmp_path):
    rc, _, err = run(SIM + ["--trace", tmp_path, "--out", tmp_path / "o"])
    assert rc == 2 and "is a directory" in err


# ----------------------------------------------------------------- 7-9. summaries
def test_summary_notes_an_offline_batch_and_reports_busy_fraction(tmp_path):
    (tmp_path / "t.csv").write_text(OK_CSV)
    rc, out, _ = run(SIM + ["--trace", tmp_path / "t.csv", "--out", tmp_path / "o"])
    assert rc == 0
    assert "offline batch" in out
    assert "GPU busy" in out and "power-relevant activity" in out and "GPU util " not in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert 0.0 < summary["gpu_busy_fraction_mean"] <= 1.0
    assert summary["gpu_utilization_mean"] <= summary["gpu_busy_fraction_mean"] + 1e-9
    assert summary["trace"]["offline_batch"] is True


def test_long_latencies_print_in_human_units():
    assert latencies({"mean": 7580.9142, "p50": 7000.0, "p99": 9000.0}) == "mean 2.11 / p50 1.94 / p99 2.50 h"
    assert latencies({"mean": 0.0847, "p50": 0.05, "p99": 0.4637}) == "mean 84.7 / p50 50.0 / p99 463.7 ms"
    assert latencies({"mean": 21.0, "p50": 20.0, "p99": 42.0}).endswith(" s")
    assert latencies({"mean": None}) == "n/a"


# ----------------------------------------------------------------- 10. help, validate, --no-plots, demo --init
def test_help_lists_every_router_and_every_positional_argument_has_help(capsys):
    from kavier_opendc.cli import build_parser
    from kavier_opendc.engine.router import ROUTERS

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["simulate"].format_help().split())
    for router in ROUTERS:
        assert router in help_text
    for command in ("validate", "sweep", "catalog"):
        sub = build_parser()._subparsers._group_actions[0].choices[command]
        positionals = [a for a in sub._actions if not a.option_strings]
        assert positionals and all(a.help for a in positionals), command


def test_validate_recognises_a_workload_and_says_whether_opendc_is_available(tmp_path):
    from kavier_opendc.experiments.demo import DEMO_EXPERIMENT, DEMO_WORKLOAD

    rc, out, err = run(["validate", DEMO_WORKLOAD])
    assert rc == 0 and "valid synthetic workload, 3000 requests" in out and "unknown key" not in err
    rc, out, _ = run(["validate", DEMO_EXPERIMENT])
    assert rc == 0 and "OpenDC is" in out
    rc, out, _ = run(["validate", DEMO_EXPERIMENT, "--no-opendc"])
    assert rc == 0 and "(OpenDC off)" in out
    (tmp_path / "t.csv").write_text(OK_CSV)
    rc, out, _ = run(["validate", tmp_path / "t.csv"])
    assert rc == 0 and "valid kavier trace, 2 requests" in out and "offline batch" in out


def test_no_plots_does_not_claim_plots(tmp_path):
    (tmp_path / "t.csv").write_text(OK_CSV)
    (tmp_path / "e.yaml").write_text(EXPERIMENT)
    rc, out, _ = run(["run", tmp_path / "e.yaml", "--out", tmp_path / "r", "--no-plots"])
    assert rc == 0 and "report.json, report.md, report.html in" in out and "report.html, plots/" not in out
    assert not (tmp_path / "r" / "plots").exists()


def test_demo_init_sweep_comment_names_the_copy(tmp_path):
    rc, _, _ = run(["demo", "--init", tmp_path / "x"])
    assert rc == 0
    sweep = (tmp_path / "x" / "sweep.yaml").read_text()
    assert f"kavier sweep {tmp_path / 'x' / 'sweep.yaml'}" in sweep and "kavier_opendc/data" not in sweep
    assert f"kavier run {tmp_path / 'x' / 'experiment.yaml'}" in (tmp_path / "x" / "experiment.yaml").read_text()


# ----------------------------------------------------------------- 11. plots
@pytest.mark.parametrize("replicas", [2, 8])
def test_kv_plot_shows_cached_blocks_and_many_replicas_as_a_band(tmp_path, replicas):
    from kavier_opendc.reports import plots as P

    rows = []
    for r in range(replicas):
        rows += [
            {
                "replica": r,
                "start_s": 0.0,
                "end_s": 5.0,
                "gpu_utilization": 0.5,
                "kv_utilization": 0.2,
                "kv_cached": 0.3,
                "gpu": "A100-80GB",
            },
            {
                "replica": r,
                "start_s": 5.0,
                "end_s": 10.0,
                "gpu_utilization": 0.1,
                "kv_utilization": 0.1,
                "kv_cached": 0.6,
                "gpu": "A100-80GB",
            },
        ]
    path = P.gpu_utilization(pd.DataFrame(rows), tmp_path / "g.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_timeline_records_cached_prefix_blocks(tmp_path):
    from kavier_opendc.experiments.demo import DEMO_WORKLOAD

    rc, _, err = run(SIM + ["--trace", DEMO_WORKLOAD, "--out", tmp_path / "o", "--quiet", "--replicas", "2"])
    assert rc == 0, err
    tl = pd.read_parquet(tmp_path / "o" / "timeline.parquet")
    assert "kv_cached" in tl and tl["kv_cached"].max() > 0
    assert ((tl["kv_utilization"] + tl["kv_cached"]) <= 1.0 + 1e-9).all()


# ----------------------------------------------------------------- 1. the limits themselves
def test_limits_are_far_above_real_values_and_name_their_reason():
    from kavier_opendc.specs import default_catalog

    cat = default_catalog()
    assert max(cat.model(m).max_context for m in cat.model_names()) < limits.CONTEXT_TOKENS.value
    assert max(cat.gpu(g).memory_gib for g in cat.gpu_names()) < limits.MEMORY_GB.value
    assert limits.requests_limit().value >= 1_000_000  # the benchmark's million requests fit
    for lim in (limits.CONTEXT_TOKENS, limits.GPUS, limits.DURATION_S, limits.DOCUMENT_DEPTH):
        assert lim.why and lim.text()
