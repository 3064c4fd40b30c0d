"""Serving knobs are declared once (engine/knobs.py): the CLI, the experiment file and the engine agree on them."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine import knobs
from kavier_opendc.engine.simulator import SimConfig
from kavier_opendc.experiments.experiment import experiment_problems
from kavier_opendc.specs import default_catalog

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "traces" / "demo_chat.csv"


def _config(**kw) -> SimConfig:
    cat = default_catalog()
    return SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-80GB"), **kw)


def test_every_knob_is_a_simconfig_field_and_its_default_is_simconfigs():
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    for knob in knobs.KNOBS:
        assert knob.field in fields, knob.field
        assert fields[knob.field].default == knob.default, knob.field


def test_every_flag_is_offered_by_kavier_simulate():
    out = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for knob in knobs.KNOBS:
        assert knob.flag in out, knob.flag


def test_every_experiment_path_is_in_the_experiment_schema():
    defs = json.loads((REPO / "schemas" / "experiment.schema.json").read_text())["$defs"]
    serving = set(defs["serving"]["properties"])
    prefix = set(defs["prefix_cache"]["oneOf"][1]["properties"])
    for knob in knobs.KNOBS:
        if knob.path is None or knob.path == ("seed",):
            continue
        if len(knob.path) == 2:
            assert knob.path[1] in serving, knob.path
        elif knob.path[:2] == ("serving", "speculative"):
            assert knob.path[2] in defs["speculative"]["properties"], knob.path
        else:
            assert knob.path[:2] == ("serving", "prefix_cache") and knob.path[2] in prefix, knob.path
    # and the other way round: every serving option the schema offers is a knob (or the groups list)
    assert serving - {k.path[1] for k in knobs.KNOBS if k.path and len(k.path) >= 2} == {
        "replica_groups",
        "disaggregation",
    }


def test_validate_does_not_change_the_config_and_normalised_returns_a_copy():
    cfg = _config(prefix_cache="VLLM", router="rr", prefix_scope="Session", usage="Server")
    before = dataclasses.asdict(cfg)
    cfg.validate()
    assert dataclasses.asdict(cfg) == before
    norm = cfg.normalised()
    assert norm is not cfg
    assert (norm.prefix_cache, norm.router, norm.prefix_scope, norm.usage) == (
        "block",
        "round-robin",
        "session",
        "server",
    )
    assert cfg.prefix_cache == "VLLM"


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("max_num_seqs", 0, "invalid value (expected an integer >= 1)"),
        ("gpu_memory_utilization", 1.5, "invalid value (expected a fraction in (0, 1])"),
        ("prefix_cache", "lru", "unknown prefix cache policy 'lru' (expected one of auto, none, block, prefill, full)"),
        ("host_memory_gb", -1.0, "invalid value (expected a number >= 0)"),
        ("num_kv_blocks", 10**12, "is above the limit of"),
        ("seed", -1, "invalid value (expected an integer >= 0)"),
    ],
)
def test_engine_errors_name_the_field(field, value, words):
    with pytest.raises(KavierInputError) as err:
        _config(**{field: value}).validate()
    assert err.value.location == field
    assert words in str(err.value)


def test_a_group_error_is_named_by_its_group():
    from kavier_opendc.engine.simulator import ReplicaGroup

    cat = default_catalog()
    g = ReplicaGroup(cat.model("Llama-3-8B"), cat.gpu("A100-80GB"), replicas=1, tp=3)
    with pytest.raises(KavierInputError) as err:
        _config(groups=[g, g]).validate()
    assert err.value.location == "groups[0].tp"


def test_front_ends_word_a_field_their_own_way():
    assert knobs.flag_of("max_num_seqs") == "--max-num-seqs"
    assert knobs.flag_of("host_memory_gb") == "--host-cache-gb"
    assert knobs.flag_of("model/gpu/tp") == "--model/--gpu/--tp"
    assert knobs.flag_of("groups[1].tp") == "groups[1].tp"
    assert knobs.flag_of("--out") == "--out"  # a location a front end already named stays
    assert knobs.experiment_path("host_memory_gb") == ("serving", "prefix_cache", "host_memory_gb")
    assert knobs.experiment_path("groups[1].tp") == ("serving", "replica_groups", 1, "tp")
    assert knobs.experiment_path("model/gpu/tp") == ("serving",)


def test_the_same_engine_check_is_a_flag_on_the_cli_and_a_path_in_an_experiment(tmp_path):
    # 3 GPUs cannot split Llama-3-8B's 32 heads: argparse accepts --tp 3, the engine refuses it
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "simulate",
            "--model",
            "Llama-3-8B",
            "--gpu",
            "A100-80GB",
            "--tp",
            "3",
            "--trace",
            str(DEMO),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "--tp: Llama-3-8B has 32 attention heads, which cannot be split evenly over 3 GPUs" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "requests.parquet").exists()
    doc = {"model": "Llama-3-8B", "gpu": "A100-80GB", "trace": str(DEMO), "serving": {"tp": 3}}
    problems, exp = experiment_problems(doc, base_dir=tmp_path, opendc=False)
    assert exp is None
    assert [p for p, _ in problems] == [("serving", "tp")]
    assert problems[0][1].startswith("Llama-3-8B has 32 attention heads")


def test_prefix_options_map_onto_fields():
    assert knobs.PREFIX_OPTION_FIELDS == {
        "min_prompt_tokens": "prefix_min_tokens",
        "scope": "prefix_scope",
        "capacity_prompts": "prefix_capacity_prompts",
        "capacity_tokens": "prefix_capacity_tokens",
        "host_memory_gb": "host_memory_gb",
    }
    assert knobs.default("prefix_capacity_prompts") == math.inf
