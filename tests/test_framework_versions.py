"""Picking a serving framework by engine and version (``--framework vllm@0.13``): specs/frameworks.py
``resolve_framework`` and each profile's ``covers``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import load_catalog_file
from kavier_opendc.specs.frameworks import builtin_frameworks, framework, resolve_framework


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        # vLLM servers: V0 before 0.6, V0 with async output processing to 0.7, then the V1 engine's servers
        ("vllm@0.4.2", "vllm-0.5-server"),
        ("vllm@0.5.4", "vllm-0.5-server"),
        ("vllm@0.6.3.post1", "vllm-0.9-v0-server"),
        ("vllm@0.7", "vllm-0.9-v0-server"),
        ("vllm@0.8.0", "vllm-0.11-server"),
        ("VLLM@0.10.1.1", "vllm-0.11-server"),
        ("vllm@0.11.0", "vllm-0.11-server"),
        ("vllm@0.12.0", "vllm-0.12-server"),
        ("vllm@0.13.0", "vllm-0.12-server"),
        ("vllm@0.14.0rc1", "vllm-0.14-server"),  # a pre-release counts as its release
        ("vllm@0.15.1", "vllm-0.14-server"),
        # offline use (the LLM class): V0 before 0.8, the V1 engine's auto profile after
        ("vllm@0.6:offline", "vllm-0.5-offline"),
        ("vllm@0.15:offline", "vllm-v1"),
        ("sglang@0.3.0", "sglang-0.3-server"),
        ("sglang@0.4.6", "sglang-0.5-server"),
        ("sglang@0.5.8.post1", "sglang-0.5-server"),
        ("trtllm@0.17:offline", "trtllm-0.17"),
        ("trtllm@1.0.0rc3:offline", "trtllm-1.0"),
        ("trtllm@1.0.0rc3", "trtllm-1.0-server"),
        ("tensorrt-llm@1.3.0rc1", "trtllm-1.0-server"),
    ],
)
def test_engine_at_version_picks_by_hand(spec, name):
    assert framework(spec).name == name


def test_usage_decides_the_path_unless_the_spec_names_one():
    assert framework("vllm@0.13", usage="offline").name == "vllm-v1"
    assert framework("vllm@0.13", usage="auto").name == "vllm-0.12-server"  # auto: a server
    assert framework("vllm@0.13:server", usage="offline").name == "vllm-0.12-server"
    assert framework("vllm@0.6", usage="offline").name == "vllm-0.5-offline"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("trtllm@0.17", "no framework profile covers tensorrt-llm 0.17 as a server"),
        ("foo@1.0", "an engine among sglang, tensorrt-llm, vllm"),
        ("vllm@x", "'x' in 'vllm@x' is not a version"),
        ("vllm@", "is not a version"),
        ("vllm@0.12:batch", "unknown serving path 'batch'"),
    ],
)
def test_engine_at_version_errors(spec, needle):
    with pytest.raises(KavierInputError, match=needle) as e:
        framework(spec)
    assert e.value.location == "framework"


def test_uncovered_version_error_lists_what_is_covered():
    with pytest.raises(KavierInputError) as e:
        framework("trtllm@0.17")
    assert "trtllm-0.17 (<1.0, offline)" in str(e.value) and "trtllm-1.0-server (>=1.0, server)" in str(e.value)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["vllm", "sglang", "tensorrt-llm"]),
    st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 20)),
    st.sampled_from(["server", "offline"]),
)
def test_builtin_covers_never_overlap(engine, release, path):
    """Per engine and serving path, at most one built-in profile of exactly that path (and at most one auto
    one) covers any version, so a version never picks two; whatever is picked is of that engine and path."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    v = Version(".".join(map(str, release)))
    for want in (path, "auto"):
        hits = [
            f.name
            for f in builtin_frameworks().values()
            if f.engine == engine and f.serving_path == want and f.covers and v in SpecifierSet(f.covers)
        ]
        assert len(hits) <= 1, hits
    try:
        fw = resolve_framework(f"{engine}@{v}:{path}")
    except KavierInputError as e:
        assert "no framework profile covers" in str(e)
    else:
        assert fw.engine == engine and fw.serving_path in (path, "auto")


def test_a_catalogue_files_profile_comes_before_the_builtin_one(tmp_path):
    mine = tmp_path / "fw.yaml"
    mine.write_text(
        'frameworks:\n  - name: my-vllm\n    base: vllm-0.12-server\n    covers: ">=0.13,<0.14"\n'
        "    client_latency_s: 0.03\n"
    )
    cat = load_catalog_file(mine)
    assert cat.framework("vllm@0.13.1").name == "my-vllm"
    assert cat.framework("vllm@0.12").name == "vllm-0.12-server"  # the file's does not cover it
    bad = tmp_path / "bad.yaml"
    bad.write_text('frameworks:\n  - name: x\n    base: vllm-0.12-server\n    covers: "about 0.13"\n')
    with pytest.raises(KavierInputError, match="not a version specifier") as e:
        load_catalog_file(bad)
    assert str(bad) in str(e.value) and "x.covers" in str(e.value)


def test_cli_framework_by_version(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,num_input_tokens,num_output_tokens\n0,100,5\n0.5,50,5\n")
    base = [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", "llama-3-8b", "--gpu", "h100-sxm"]
    ok = subprocess.run(
        [*base, "--trace", str(trace), "--out", str(tmp_path / "o"), "--framework", "vllm@0.13"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["config"]["framework"]["name"] == "vllm-0.12-server"
    assert summary["config"]["framework"]["covers"] == ">=0.12,<0.14"
    bad = subprocess.run(
        [*base, "--trace", str(trace), "--out", str(tmp_path / "b"), "--framework", "trtllm@0.9"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "no framework profile covers tensorrt-llm 0.9 as a server" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b").exists()


def test_catalog_lists_what_each_profile_covers():
    out = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "catalog", "frameworks"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    assert "vllm>=0.12,<0.14" in lines["vllm-0.12-server"] and "tensorrt-llm<1.0" in lines["trtllm-0.17"]
    assert "by name only" in lines["vllm-0.6-multistep-server"]
