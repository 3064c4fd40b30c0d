"""The compiled engine (mypyc, setup.py) against its sources: identical outputs, and the switch between them.

Where the install compiled the engine (CI requires it: ``KAVIER_REQUIRE_COMPILED=1``), a run uses the
compiled modules, and ``KAVIER_PURE_PYTHON=1`` runs the same sources interpreted: every output file must be
the same, byte for byte (JSON but for its wall times).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared
from kavier_opendc.engine import compiled

VOLATILE = ("wall_s", "requests_per_s")


def _python(code: str, pure: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != compiled.ENV}
    if pure:
        env[compiled.ENV] = "1"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300
    ).stdout


def _simulate(out: Path, pure: bool, *args: str) -> None:
    code = (
        "import sys; from kavier_opendc.cli import main; "
        f"sys.exit(main(['simulate', *{list(args)!r}, '--out', {str(out)!r}, '--quiet']))"
    )
    _python(code, pure)


def test_the_compiled_engine_is_used_where_built():
    probe = "from kavier_opendc.engine import compiled, replica; print(compiled.state(), replica.__file__)"
    state, path = _python(probe, pure=False).split()
    if os.environ.get("KAVIER_REQUIRE_COMPILED"):
        assert state == "compiled", f"the install did not compile the engine ({state})"
    if state == "compiled":
        assert not path.endswith(".py")
    pure = _python(probe, pure=True)
    assert pure.startswith("source") and pure.split()[-1].endswith("replica.py")


@pytest.mark.parametrize(
    "args",
    [
        ["--trace", "traces/mooncake_conversation.jsonl", "--prefix-cache", "block", "--replicas", "2"],
        ["--trace", "traces/azure_llm_2023_code.csv", "--replicas", "2", "--router", "least-kv"],
        ["--trace", "traces/azure_llm_2023_code.csv", "--framework", "vllm-0.5-server", "--gpu", "A100-80GB"],
    ],
    ids=["mooncake-block-cache", "azure-code-least-kv", "vllm-v0-policy"],
)
def test_compiled_and_source_give_identical_outputs(tmp_path, args):
    args = [str(shared(a)) if a.startswith("traces/") else a for a in args]
    common = ["--model", "Llama-3-8B", *(["--gpu", "A100-80GB"] if "--gpu" not in args else []), *args]
    _simulate(tmp_path / "compiled", False, *common)
    _simulate(tmp_path / "source", True, *common)
    for name in ("requests.parquet", "timeline.parquet"):
        assert (tmp_path / "compiled" / name).read_bytes() == (tmp_path / "source" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / side / "summary.json").read_text()) for side in ("compiled", "source"))
    for s in (a, b):
        for key in VOLATILE:
            s["engine"].pop(key, None)
    assert a == b


def test_an_edited_source_is_stale(tmp_path):
    for name in compiled.NATIVE:
        shutil.copy(compiled.HERE / f"{name}.py", tmp_path / f"{name}.py")
    stamp = {name: compiled.source_crc(name, tmp_path) for name in compiled.NATIVE}
    (tmp_path / compiled.STAMP).write_text(json.dumps(stamp))
    assert compiled.stale_modules(tmp_path) == []
    with open(tmp_path / "replica.py", "a") as fh:
        fh.write("# edited after the build\n")
    assert compiled.stale_modules(tmp_path) == ["replica"]
    (tmp_path / compiled.STAMP).write_text("not json")
    assert compiled.stale_modules(tmp_path) == list(compiled.NATIVE)
    assert compiled.compiled_files(tmp_path) == []  # sources only: nothing compiled to switch away from


def test_policies_set_no_class_attribute_a_compiled_replica_reads():
    # a compiled Replica reads its scheduler flags from its own slots: an interpreted subclass that set one
    # as a class attribute (``admits_in_decode = False``) would be seen by Python code only (compiled.py)
    from conftest import TOY_EFF, TOY_GPU, TOY_MODEL, make_trace
    from kavier_opendc.engine.disaggregated import DecodeReplica, PrefillReplica
    from kavier_opendc.engine.replica import Replica
    from kavier_opendc.engine.replica_policies import ReplicaSGLang, ReplicaTRTLLM, ReplicaV0, ReplicaV0MultiStep
    from kavier_opendc.engine.scheduler import Scheduler
    from kavier_opendc.engine.simulator import SimConfig, simulate

    cfg = SimConfig(model=TOY_MODEL, gpu=TOY_GPU, efficiency=TOY_EFF, num_kv_blocks=1000)
    rep = simulate(make_trace([0.0], [10], [2]), cfg, progress=False).replicas[0]
    native = set(dir(Scheduler)) | set(dir(Replica)) | set(getattr(rep, "__dict__", {}))
    for cls in (ReplicaV0, ReplicaV0MultiStep, ReplicaSGLang, ReplicaTRTLLM, PrefillReplica, DecodeReplica):
        for base in cls.__mro__:
            if base in (Replica, Scheduler):
                break
            clash = {
                name
                for name, value in vars(base).items()
                if not name.startswith("__") and not callable(value) and not isinstance(value, property)
            } & native
            assert not clash, f"{base.__name__} sets {sorted(clash)} at class level"
