"""`kavier plan`: a hand-checkable answer, resuming, validation, max-rate mode, the Pareto front.

The hand-checkable case: bursts of 3 requests arrive at the same instant, every 20 s (the system is empty
again long before the next burst); each replica serves one request at a time (max_num_seqs 1) and the
round-robin router sends the 3 requests of a burst to replicas 0, 1, 2 (mod the replica count). With 3 or
more replicas every request starts at once: TTFT = one 100-token prefill (tens of ms). With 2, the third
request of a burst waits for the first to finish its 200 output tokens (> 1 s). The SLO (max TTFT <= 0.5 s)
therefore holds from exactly 3 replicas. Runs without OpenDC (the search is the point, not energy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.experiments.plan import pareto_front
from kavier_opendc.experiments.plan_file import EXAMPLE_PLAN, load_plan

REPO = Path(__file__).resolve().parents[1]


def bursts_plan(tmp: Path, **over) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    rows = [
        {"arrival_time_s": 20.0 * b, "num_input_tokens": 100, "num_output_tokens": 200}
        for b in range(4)
        for _ in range(3)
    ]
    pd.DataFrame(rows).to_csv(tmp / "bursts.csv", index=False)
    doc = {
        "name": "bursts",
        "model": "Llama-3-8B",
        "traffic": {"workload": "bursts.csv"},
        "slo": {"ttft_s": 0.5, "percentile": 100},
        "candidates": {
            "gpu": ["A100-80GB"],
            "tp": [1],
            "prefix_cache": ["none"],
            "router": ["round-robin"],
            "max_num_seqs": [1],
            "replicas": {"min": 1, "max": 6},
        },
        "datacenter": {
            "hosts": [{"name": "node", "gpus_per_host": 4, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}]
        },
        "carbon": {"synthetic": {"mean": 250, "amplitude": 0}},
        "objective": "cost",
    }
    doc.update(over)
    p = tmp / "plan.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def plan_cli(*args, timeout=300, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "plan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    plan = bursts_plan(tmp)
    out = tmp / "out"
    r = plan_cli(plan, "--out", out, "--no-opendc")
    assert r.returncode == 0, r.stderr
    return plan, out, r


def test_plan_finds_exactly_three_replicas(planned):
    _, out, r = planned
    summary = json.loads((out / "plan.json").read_text())
    [shape] = summary["shapes"]
    assert shape["status"] == "feasible" and shape["replicas"] == 3
    assert summary["chosen"]["replicas"] == 3
    assert "chosen (cost): A100-80GB, TP1, prefix none, round-robin, seqs 1, 3 replica(s) = 3 GPU(s)" in r.stdout
    evals = pd.read_csv(out / "evaluations.csv").set_index("replicas")
    # bisection: 6 (meets), then 2 and 3 (or 3 and 2); never the whole range
    assert len(evals) <= 4 and set(evals.index) >= {2, 3, 6}
    assert not evals.loc[2, "meets_slo"] and evals.loc[3, "meets_slo"]
    assert evals.loc[3, "ttft_q_s"] < 0.2 < 1.0 < evals.loc[2, "ttft_q_s"]
    # each evaluated run is a complete `kavier run` output
    for run in evals["run"]:
        rd = out / "runs" / run
        assert (rd / "report.json").is_file() and (rd / "DONE").is_file() and not (rd / "INCOMPLETE").exists()
    for f in ("plan.md", "candidates.csv", "candidates.md", "front.csv"):
        assert (out / f).is_file()


def test_rerun_with_another_objective_reuses_every_run(planned):
    plan, out, _ = planned
    r = plan_cli(plan, "--out", out, "--no-opendc", "--objective", "energy")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "plan.json").read_text())
    assert summary["simulations"]["run_now"] == {"no_opendc": 0, "opendc": 0}
    assert summary["simulations"]["reused"] == summary["simulations"]["total"] >= 3
    assert summary["objective"] == "energy" and summary["chosen"]["replicas"] == 3


def test_a_shape_that_never_meets_the_slo_is_pruned_after_one_run(tmp_path):
    plan = bursts_plan(
        tmp_path,
        slo={"ttft_s": 0.001, "percentile": 100},
        candidates={
            "gpu": ["A100-80GB"],
            "max_num_seqs": [1],
            "router": ["round-robin"],
            "prefix_cache": ["none"],
            "replicas": {"max": 4},
        },
    )
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 3, r.stderr
    summary = json.loads((tmp_path / "out" / "plan.json").read_text())
    [shape] = summary["shapes"]
    assert shape["status"] == "infeasible" and shape["search_runs"] == 1
    assert "misses the SLOs even at 4 replicas" in shape["why"]
    assert "no candidate meets the SLOs" in r.stdout


def test_max_sustainable_rate(tmp_path):
    # a steady trace (one request a second); its arrival times are scaled to each probed rate
    tmp_path.mkdir(exist_ok=True)
    pd.DataFrame(
        [{"arrival_time_s": float(i), "num_input_tokens": 1000, "num_output_tokens": 300} for i in range(300)]
    ).to_csv(tmp_path / "steady.csv", index=False)
    plan = bursts_plan(
        tmp_path,
        traffic={"workload": "steady.csv", "rate": 1.0},
        candidates={"gpu": ["A100-80GB"], "prefix_cache": ["none"], "replicas": 1},
        slo={"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 90},
        max_rate={"low": 0.5, "high": 200, "tolerance": 0.25},
    )
    # a relative --out: the scaled traces it holds are still found
    r = plan_cli(plan, "--out", "out", "--no-opendc", "--max-rate", "--jobs", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "max_rate.json").read_text())
    rate = res["max_rate_rps"]
    assert 0.5 <= rate < 200
    probes = {p["rate"]: p["meets"] for p in res["probes"]}
    assert all(m for q, m in probes.items() if q <= rate) and not any(m for q, m in probes.items() if q > rate * 1.25)
    assert "max sustainable rate of A100-80GB" in r.stdout


def test_validate_knows_plan_files(tmp_path):
    plan = bursts_plan(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "validate", str(plan), str(EXAMPLE_PLAN)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "valid plan 'bursts', 1 candidate shapes x replicas 1..6" in r.stdout
    assert "valid plan 'chat-capacity', 8 candidate shapes" in r.stdout
    bad = bursts_plan(tmp_path / "bad", candidates={"gpu": ["A100-80GB", "NoSuchGPU"], "tp": [0]}, objective="speed")
    with pytest.raises(KavierInputError) as ei:
        load_plan(bad)
    text = str(ei.value)
    assert "candidates.tp[0]" in text and "objective" in text
    bad2 = bursts_plan(tmp_path / "bad2", candidates={"gpu": ["NoSuchGPU"]})
    with pytest.raises(KavierInputError, match="candidate NoSuchGPU, TP1, prefix auto: gpu: unknown GPU 'NoSuchGPU'"):
        load_plan(bad2)


def test_pareto_front():
    rows = [{"a": 1, "b": 3}, {"a": 2, "b": 2}, {"a": 3, "b": 1}, {"a": 3, "b": 3}, {"a": 2, "b": None}]
    assert pareto_front(rows, ("a", "b")) == [0, 1, 2]


def test_gpu_mixes_become_replica_groups_on_sized_host_groups(tmp_path):
    plan = load_plan(
        bursts_plan(
            tmp_path, candidates={"mixes": [{"A100-80GB": 1, "H100-SXM": 2}], "tp": [2], "replicas": {"max": 3}}
        )
    )
    [shape] = plan.shapes
    assert shape.gpu_label == "1xA100-80GB+2xH100-SXM" and shape.replicas_of(3) == 9
    doc = plan.experiment(shape, 3, plan.workload, opendc=True)
    assert doc["serving"]["replica_groups"] == [
        {"name": "A100-80GB", "gpu": "A100-80GB", "replicas": 3, "tp": 2},
        {"name": "H100-SXM", "gpu": "H100-SXM", "replicas": 6, "tp": 2},
    ]
    # 4-GPU hosts hold two TP2 replicas each
    assert [(h["gpu"], h["count"]) for h in doc["datacenter"]["hosts"]] == [("A100-80GB", 2), ("H100-SXM", 3)]


def test_power_caps_are_a_searched_axis(tmp_path):
    # candidates.power_cap_w: each cap (null: uncapped) is a shape of its own, run with serving.power_cap_w; a
    # capped A100 prefills slower (compute-bound: the clock falls under the cap), so its TTFT is higher and it
    # still meets the SLO at 3 replicas
    plan = bursts_plan(
        tmp_path,
        candidates={
            "gpu": ["A100-80GB"],
            "prefix_cache": ["none"],
            "router": ["round-robin"],
            "max_num_seqs": [1],
            "power_cap_w": [None, 150],
            "replicas": {"min": 1, "max": 6},
        },
        objective="energy",
    )
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "plan.json").read_text())
    by_cap = {s["power_cap_w"]: s for s in summary["shapes"]}
    assert set(by_cap) == {None, 150}
    assert by_cap[150]["shape"].endswith("cap 150 W") and "cap" not in by_cap[None]["shape"]
    assert by_cap[150]["replicas"] == by_cap[None]["replicas"] == 3
    assert by_cap[150]["ttft_p50_s"] > by_cap[None]["ttft_p50_s"]
    run = by_cap[150]["run"]
    exp = json.loads((tmp_path / "out" / "runs" / run / "experiment.json").read_text())
    assert exp["serving"]["power_cap_w"] == 150
    cands = pd.read_csv(tmp_path / "out" / "candidates.csv")
    assert "power_cap_w" in cands.columns


def test_a_power_cap_outside_a_gpus_range_is_refused(tmp_path):
    plan = bursts_plan(
        tmp_path,
        candidates={"gpu": ["A100-80GB"], "power_cap_w": [None, 50], "replicas": {"max": 2}},
    )
    with pytest.raises(KavierInputError, match="power_cap_w") as exc:
        load_plan(plan, opendc=False)
    assert "100" in str(exc.value)  # the A100's minimum cap (nvidia-smi's Min Power Limit)
    bad = bursts_plan(tmp_path / "b", candidates={"gpu": ["A100-80GB"], "power_cap_w": [0]})
    with pytest.raises(KavierInputError, match="power_cap_w"):
        load_plan(bad, opendc=False)


def test_total_carbon_needs_every_gpus_embodied_carbon(tmp_path):
    # a user's GPU without embodied_kgco2e would count as carbon-free under total-carbon: refused up front
    gpus = yaml.safe_load((REPO / "kavier_opendc" / "specs" / "gpus.yaml").read_text())["gpus"]
    entry = {k: v for k, v in next(g for g in gpus if g["name"] == "A100-80GB").items() if "embodied" not in k}
    entry.update(name="A100-noemb", aliases=[])
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"gpus": [entry]}))
    plan = bursts_plan(
        tmp_path,
        catalog=["cat.yaml"],
        candidates={"gpu": ["A100-noemb"], "replicas": {"max": 2}},
        objective="total-carbon",
    )
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "total-carbon objective adds embodied carbon, but GPU 'A100-noemb' has no embodied_kgco2e" in r.stderr
    assert "candidates.gpu" in r.stderr and not (tmp_path / "out").exists()


def test_the_power_cap_example_plan_is_valid():
    plan = load_plan(REPO / "kavier_opendc" / "data" / "plan_power_caps.yaml")
    assert [s.power_cap_w for s in plan.shapes] == [None, 500, 400, 300] and plan.objective == "total-carbon"
    assert plan.experiment(plan.shapes[2], 1, plan.workload, opendc=True)["serving"]["power_cap_w"] == 400


def test_expert_parallelism_is_a_searched_axis(tmp_path):
    # candidates.expert_parallel / data_parallel_size: MoE layouts as shapes of their own (Mixtral-8x7B, TP 2)
    plan = bursts_plan(
        tmp_path,
        model="Mixtral-8x7B",
        slo={"ttft_s": 5.0, "percentile": 100},
        candidates={
            "gpu": ["H100-SXM"],
            "tp": [2],
            "prefix_cache": ["none"],
            "router": ["round-robin"],
            "expert_parallel": [False, True],
            "data_parallel_size": [1, 2],
            "replicas": {"min": 1, "max": 2},
        },
    )
    loaded = load_plan(plan, opendc=False)
    assert {(s.expert_parallel, s.data_parallel_size) for s in loaded.shapes} == {
        (False, 1),
        (False, 2),
        (True, 1),
        (True, 2),
    }
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "plan.json").read_text())
    rows = {(s["expert_parallel"], s["data_parallel_size"]): s for s in summary["shapes"]}
    assert all(s["status"] == "feasible" for s in rows.values())
    assert rows[(True, 2)]["shape"].endswith("EP, DP2") and rows[(False, 1)]["shape"].endswith("no EP, DP1")
    exp = json.loads((tmp_path / "out" / "runs" / rows[(True, 2)]["run"] / "experiment.json").read_text())
    assert exp["serving"]["expert_parallel"] is True and exp["serving"]["data_parallel_size"] == 2
    # the layouts are simulated differently (the all-to-all and the attention ranks change the step times)
    assert len({round(s["tpot_q_s"], 9) for s in rows.values()}) > 1


def test_deferral_policies_are_a_searched_axis(tmp_path):
    # candidates.deferral: the batch requests (with a deadline) held for the low-carbon hours or run at once;
    # both meet the interactive SLOs (judged on the requests without a deadline) and every deadline
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [{"arrival_time_s": 20.0 * b, "num_input_tokens": 100, "num_output_tokens": 50} for b in range(4)]
    rows += [
        {"arrival_time_s": 20.0 * b + 1, "num_input_tokens": 100, "num_output_tokens": 50, "deadline_s": 43200.0}
        for b in range(4)
    ]
    pd.DataFrame(sorted(rows, key=lambda r: r["arrival_time_s"])).to_csv(tmp_path / "jobs.csv", index=False)
    plan = bursts_plan(
        tmp_path,
        traffic={"workload": "jobs.csv"},
        slo={"ttft_s": 0.5, "percentile": 100},
        candidates={
            "gpu": ["A100-80GB"],
            "prefix_cache": ["none"],
            "deferral": ["none", "lowest-carbon"],
            "replicas": {"max": 2},
        },
        # a daily sine with its trough at 13:00; the run starts at midnight
        carbon={"synthetic": {"mean": 300, "amplitude": 150, "trough_hour": 13, "step_minutes": 15}},
        datacenter={
            "start": "2022-06-01T00:00:00",
            "hosts": [{"name": "node", "gpus_per_host": 4, "cpu": {"cores": 16, "mhz": 2000}, "memory_gib": 256}],
        },
    )
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "plan.json").read_text())
    by = {s["deferral"]: s for s in summary["shapes"]}
    assert set(by) == {"none", "lowest-carbon"} and all(s["status"] == "feasible" for s in by.values())
    assert by["lowest-carbon"]["shape"].endswith("deferral lowest-carbon")
    run = tmp_path / "out" / "runs" / by["lowest-carbon"]["run"]
    assert json.loads((run / "experiment.json").read_text())["deferral"] == {"policy": "lowest-carbon"}
    held = pd.read_parquet(run / "simulation" / "requests.parquet")
    assert (held["held_s"][held["deadline_s"].notna()] > 3600).all()  # moved towards the trough
    assert not held["deadline_missed"].fillna(False).any()
    # a deadline that cannot be met makes the shape miss the SLOs, and says why
    rows = [{"arrival_time_s": 0.0, "num_input_tokens": 4000, "num_output_tokens": 500, "deadline_s": 0.01}]
    pd.DataFrame(rows).to_csv(tmp_path / "jobs.csv", index=False)
    r = plan_cli(plan, "--out", tmp_path / "out2", "--no-opendc")
    assert r.returncode == 3, r.stderr
    summary = json.loads((tmp_path / "out2" / "plan.json").read_text())
    assert all("1 of 1 deadlines missed" in s["why"] for s in summary["shapes"])


def test_a_plan_without_prefix_cache_candidates_runs_a_plain_trace(tmp_path):
    # the default is the engine's auto (block only where the trace has prompt identities): a plain trace's
    # runs do not all fail for want of token ids
    plan = bursts_plan(
        tmp_path,
        candidates={"gpu": ["A100-80GB"], "router": ["round-robin"], "max_num_seqs": [1], "replicas": {"max": 4}},
    )
    assert [s.prefix_cache for s in load_plan(plan, opendc=False).shapes] == ["auto"]
    r = plan_cli(plan, "--out", tmp_path / "out", "--no-opendc")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "plan.json").read_text())["chosen"]["replicas"] == 3
