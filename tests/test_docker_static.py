"""The container pipeline, checked statically (no Docker engine on these machines).

docker-compose.yml must parse and run `kavier run` / `kavier sweep` on an
experiment folder mounted from the host; the Dockerfile must set up the
package the way the README's `make setup` does (pip install of the package
with its extras, then the bridge jar built with Maven on a JDK >= 21).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            instr, _, rest = line.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_compose_services_run_and_sweep_on_a_mounted_folder(compose):
    services = compose["services"]
    assert {"run", "sweep"} <= set(services)
    for svc in services.values():
        assert svc["image"].startswith("kavier-opendc")
        assert svc["build"]["context"] == "." and svc["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        mounts = [v.split(":") for v in svc["volumes"]]
        assert any(m[-1] == "/experiments" for m in mounts), svc["volumes"]
    run = services["run"]["command"]
    assert run[0] == "run" and run[1].startswith("/experiments/") and run[1].endswith((".yaml", ".yml", ".json"))
    assert run[run.index("--out") + 1].startswith("/experiments/")
    sweep = services["sweep"]["command"]
    assert sweep[0] == "sweep" and sweep[1].startswith("/experiments/")
    assert sweep[sweep.index("--out") + 1].startswith("/experiments/")
    assert int(sweep[sweep.index("--jobs") + 1]) >= 1


def test_compose_commands_parse_with_the_real_cli(compose):
    from kavier_opendc.cli import build_parser

    parser = build_parser()
    for svc in compose["services"].values():
        args = parser.parse_args(svc["command"])
        assert args.func.__name__ in ("cmd_run", "cmd_sweep")


def test_dockerfile_base_entrypoint_and_jdk(dockerfile):
    froms = [a for i, a in dockerfile if i == "FROM"]
    assert froms[0].startswith("python:3.11") and "slim" in froms[0]
    copies = " ".join(a for i, a in dockerfile if i == "COPY")
    m = re.search(r"eclipse-temurin:(\d+)", copies)
    assert m and int(m.group(1)) >= 21, "a Temurin JDK >= 21 is copied in"
    assert "maven" in copies
    env = " ".join(a for i, a in dockerfile if i == "ENV")
    assert "JAVA_HOME=/opt/java/openjdk" in env
    entry = [a for i, a in dockerfile if i == "ENTRYPOINT"]
    assert entry and yaml.safe_load(entry[-1]) == ["kavier"]
    assert any(i == "WORKDIR" and a == "/experiments" for i, a in dockerfile)


def test_dockerfile_mirrors_make_setup(dockerfile):
    runs = [a for i, a in dockerfile if i == "RUN"]
    setup = make_recipe("setup")
    pip = next(line for line in setup if "pip install" in line)
    spec = next(w for w in shlex.split(pip.replace("$(PYTHON)", "python")) if w.startswith(".["))
    assert any("pip install" in r and "-e" in shlex.split(r) and spec in shlex.split(r) for r in runs), (spec, runs)
    # make setup builds the bridge (via `make bridge`), whose command the Dockerfile runs too
    assert any("$(MAKE) --no-print-directory bridge" in line or "make bridge" in line for line in setup)
    bridge_cmd = "kavier_opendc.cli bridge build"
    assert any(bridge_cmd in line for line in make_recipe("bridge"))
    assert any(bridge_cmd in r for r in runs)
    # the package is installed before the jar is built, from the files it copies
    i_pip = next(k for k, (i, a) in enumerate(dockerfile) if i == "RUN" and "pip install" in a)
    i_jar = next(k for k, (i, a) in enumerate(dockerfile) if i == "RUN" and bridge_cmd in a)
    assert i_pip < i_jar
    copied = {a.split()[0] for i, a in dockerfile[:i_pip] if i == "COPY" and not a.startswith("--from")}
    for needed in ("pyproject.toml", "kavier_opendc", "schemas", "opendc-bridge"):
        assert any(c.startswith(needed) for c in copied), needed


def test_dockerignore_keeps_outputs_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for p in (".git", "out", "opendc-bridge/target"):
        assert p in ignored
