"""traces/: the example traces are what bench/make_traces.py writes, and each loads and simulates."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import load_trace

TRACES = REPO / "traces"


def test_example_traces_are_up_to_date():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "make_traces.py"), "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "name, requests, has_sessions, has_hashes, batch",
    [
        ("demo_chat.csv", 3000, True, False, False),
        ("sessions_prefix.jsonl", 400, True, True, False),
        ("offline_batch.csv", 500, False, False, True),
    ],
)
def test_example_trace_loads_as_described(name, requests, has_sessions, has_hashes, batch):
    t = load_trace(TRACES / name)
    assert t.format == "kavier" and len(t) == requests
    assert (t.session_id is not None) == has_sessions
    assert (t.hash_ids is not None and any(t.hash_ids)) == has_hashes
    assert (t.arrival_s.max() == 0.0) == batch


def test_session_trace_with_hash_ids_hits_the_prefix_cache():
    cat = default_catalog()
    res = simulate(
        load_trace(TRACES / "sessions_prefix.jsonl"),
        SimConfig(model=cat.model("Llama-3-8B"), gpu=cat.gpu("A100-80GB")),
        progress=False,
    )
    assert res.results.status.min() == 1  # every request finished
    assert res.results.cached.sum() > 0.5 * res.trace.num_input_tokens.sum()
