"""The container pipeline, checked statically (tests/test_docker_e2e.py runs it on a real engine).

docker-compose.yml must parse and run `kavier run` / `sweep` / `plan` on an experiment folder mounted
from the host, as the caller's UID/GID, plus a Dask profile whose sweep goes to its scheduler; the
Dockerfile must set up the package the way the README's `make setup` does (pip install of the package,
then the bridge jar built with Maven on a JDK >= 21), with the public base images as the defaults.
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


def dockerfile_args(dockerfile) -> dict[str, str]:
    """The build arguments' defaults (ARG NAME=VALUE)."""
    return dict(a.split("=", 1) for i, a in dockerfile if i == "ARG" and "=" in a)


def test_compose_services_run_sweep_plan_on_a_mounted_folder(compose):
    services = compose["services"]
    assert {"run", "sweep", "plan", "dask-scheduler", "dask-worker", "sweep-dask"} <= set(services)
    for svc in services.values():
        assert "kavier-opendc" in svc["image"]
        assert svc["build"]["context"] == "." and svc["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        # the image is built for, and runs as, the caller's UID:GID
        assert svc["user"] == "${KAVIER_UID:-1000}:${KAVIER_GID:-1000}"
        assert svc["build"]["args"]["UID"] == "${KAVIER_UID:-1000}"
    for name in ("run", "sweep", "plan", "sweep-dask"):
        (mount,) = services[name]["volumes"]
        # long syntax: a missing host folder is an error instead of an empty folder made by the engine
        assert mount["type"] == "bind" and mount["target"] == "/experiments", mount
    for name in ("run", "sweep", "plan", "sweep-dask"):
        cmd = services[name]["command"]
        assert cmd[1].startswith("/experiments/") and cmd[cmd.index("--out") + 1].startswith("/experiments/")
    assert "profiles" not in services["run"]  # `docker-compose up` runs it alone
    sweep = services["sweep"]["command"]
    assert sweep[0] == "sweep" and int(sweep[sweep.index("--jobs") + 1]) >= 1


def test_compose_dask_profile_sends_the_sweep_to_its_scheduler(compose):
    services = compose["services"]
    assert services["dask-scheduler"]["entrypoint"][:2] == ["dask", "scheduler"]
    worker = services["dask-worker"]["entrypoint"]
    assert worker[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker[worker.index("--nthreads") + 1] == "1"
    sweep = services["sweep-dask"]["command"]
    assert sweep[sweep.index("--scheduler") + 1] == "tcp://dask-scheduler:8786"
    assert set(services["sweep-dask"]["depends_on"]) == {"dask-scheduler", "dask-worker"}
    assert all(services[s]["profiles"] == ["dask"] for s in ("dask-scheduler", "dask-worker", "sweep-dask"))


def test_compose_commands_parse_with_the_real_cli(compose):
    from kavier_opendc.cli import build_parser

    parser = build_parser()
    for svc in compose["services"].values():
        if "entrypoint" in svc:
            continue  # the Dask services run `dask`, not kavier
        args = parser.parse_args(svc["command"])
        assert args.func.__name__ in ("cmd_run", "cmd_sweep", "cmd_plan")


def test_dockerfile_bases_entrypoint_jdk_and_user(dockerfile):
    args = dockerfile_args(dockerfile)
    # the base images' default names are the public ones; stand-ins come in through these arguments
    assert args["PYTHON_IMAGE"].startswith("python:3.11") and "slim" in args["PYTHON_IMAGE"]
    m = re.fullmatch(r"eclipse-temurin:(\d+)-jdk", args["JDK_IMAGE"])
    assert m and int(m.group(1)) >= 21, "a Temurin JDK >= 21"
    assert args["MAVEN_IMAGE"].startswith("maven:3.9")
    froms = [a for i, a in dockerfile if i == "FROM"]
    assert froms[:3] == ["${JDK_IMAGE} AS jdk", "${MAVEN_IMAGE} AS maven", "${PYTHON_IMAGE} AS base"]
    copies = " ".join(a for i, a in dockerfile if i == "COPY")
    assert "--from=jdk /opt/java/openjdk" in copies and "--from=maven /usr/share/maven" in copies
    env = " ".join(a for i, a in dockerfile if i == "ENV")
    assert "JAVA_HOME=/opt/java/openjdk" in env
    entry = [a for i, a in dockerfile if i == "ENTRYPOINT"]
    assert entry and yaml.safe_load(entry[-1]) == ["kavier"]
    assert [a for i, a in dockerfile if i == "WORKDIR"][-1] == "/experiments"
    # a non-root user whose UID/GID are build arguments
    assert args["UID"] == "1000" and args["GID"] == "1000"
    assert [a for i, a in dockerfile if i == "USER"][-1] == "${UID}:${GID}"


def test_dockerfile_mirrors_make_setup(dockerfile):
    runs = [a for i, a in dockerfile if i == "RUN"]
    setup = make_recipe("setup")
    assert any("pip install" in line and "-e" in shlex.split(line) for line in setup)
    # the package installed editable from its folder, its dependencies from pyproject.toml first
    i_deps = next(k for k, (i, a) in enumerate(dockerfile) if i == "RUN" and "tomllib" in a)
    i_pip = next(k for k, (i, a) in enumerate(dockerfile) if i == "RUN" and "pip install" in a and " -e ." in a)
    assert i_deps < i_pip
    copied = {a.split()[0] for i, a in dockerfile[i_deps:i_pip] if i == "COPY"}
    for needed in ("setup.py", "kavier_opendc", "schemas", "opendc-bridge/src"):
        assert any(c.startswith(needed) for c in copied), needed
    # the jar is built by Maven as `kavier bridge build` builds it (package, OpenDC from a local
    # repository when one is given), and checked by `kavier bridge check` where the package finds it
    mvn = next(r for r in runs if r.startswith("mvn") and " package" in r)
    assert "-Dopendc.repo=file:///opendc-repo" in next(r for r in runs if "repo.flag" in r)
    assert "-DskipTests" in mvn
    assert any(
        "COPY" == i and "--from=bridge" in a and "opendc-bridge/target/kavier-opendc-bridge.jar" in a
        for i, a in dockerfile
    )
    i_check = next(k for k, (i, a) in enumerate(dockerfile) if i == "RUN" and "kavier_opendc.cli bridge check" in a)
    assert i_pip < i_check


def test_dockerignore_keeps_outputs_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for p in (".git", "out", "opendc-bridge/target"):
        assert p in ignored
