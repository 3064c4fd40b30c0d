"""A user who installs with plain ``pip install .`` (no extras, no source checkout at run time).

The package is installed from a copy of the tracked files into a fresh virtual environment; the bridge jar
is built with ``kavier bridge build`` from the sources the package ships into a per-user folder
($XDG_DATA_HOME), where the launcher finds it; ``kavier demo`` then writes complete outputs, plots and the
OpenDC sustainability numbers included, with no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from conftest import REPO, skip_without_opendc


def _tracked_copy(dest: Path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_symlink():  # kavier_opendc/schemas -> ../schemas: a link, as git checks it out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def pip_installed(tmp_path_factory) -> dict:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test installs the tracked files of a git checkout; git or .git is missing")
    root = tmp_path_factory.mktemp("pip")
    src = _tracked_copy(root / "src")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    proc = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAVIER_BRIDGE_JAR", "PYTHONPATH"))}
    env.update(XDG_DATA_HOME=str(root / "xdg"), MPLBACKEND="Agg", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    return {"bin": bin_dir, "env": env, "root": root}


def _run(pip_installed: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(pip_installed["bin"] / "kavier"), *args],
        capture_output=True,
        text=True,
        env=pip_installed["env"],
        cwd=pip_installed["root"],
        timeout=timeout,
    )


def test_installed_package_is_not_the_checkout(pip_installed):
    proc = subprocess.run(
        [
            str(pip_installed["bin"] / "python"),
            "-c",
            "import kavier_opendc.opendc.jvm as b, matplotlib; "
            "print(b.in_source_checkout(), (b.PACKAGED_BRIDGE_DIR / 'pom.xml').is_file())",
        ],
        capture_output=True,
        text=True,
        env=pip_installed["env"],
        cwd=pip_installed["root"],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]  # no checkout; the bridge's Maven project is shipped


def test_installed_package_holds_real_schema_files(pip_installed):
    """The wheel copies the files behind kavier_opendc/schemas -> ../schemas, every one of them."""
    proc = subprocess.run(
        [
            str(pip_installed["bin"] / "python"),
            "-c",
            "import json, pathlib; from kavier_opendc.base.validation import load_schema, schema_file; "
            "import kavier_opendc; pkg = pathlib.Path(kavier_opendc.__file__).parent / 'schemas'; "
            "names = sorted(p.name for p in pkg.iterdir()); "
            "print(json.dumps([pkg.is_symlink(), names, [str(schema_file(n)) for n in names], "
            "[load_schema(n)['$id'] for n in names]]))",
        ],
        capture_output=True,
        text=True,
        env=pip_installed["env"],
        cwd=pip_installed["root"],
    )
    assert proc.returncode == 0, proc.stderr
    is_link, names, files, ids = json.loads(proc.stdout)
    expected = sorted(p.name for p in (REPO / "schemas").glob("*.schema.json"))
    assert not is_link and names == expected
    assert all("site-packages" in f for f in files)
    assert ids == [json.loads((REPO / "schemas" / n).read_text())["$id"] for n in expected]


def test_demo_without_a_jar_names_only_real_commands(pip_installed):
    out = pip_installed["root"] / "demo-nojar"
    proc = _run(pip_installed, "demo", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "kavier bridge build" in proc.stderr and "make bridge" not in proc.stderr
    assert "site-packages" not in proc.stderr
    assert (out / "report.md").is_file() and any((out / "plots").glob("*.png"))


def test_bridge_build_then_demo_with_real_opendc(pip_installed):
    skip_without_opendc()  # Maven must be able to reach OpenDC (Maven Central or $KAVIER_OPENDC_REPO)
    build = _run(pip_installed, "bridge", "build", timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    jar = pip_installed["root"] / "xdg" / "kavier-opendc" / "kavier-opendc-bridge.jar"
    assert jar.is_file() and str(jar) in build.stdout
    out = pip_installed["root"] / "demo"
    proc = _run(pip_installed, "demo", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "warning" not in proc.stderr.lower()
    report = json.loads((out / "report.json").read_text())
    sus = report["sustainability"]
    assert sus["energy_wh"] > 0 and sus["carbon_g"] > 0
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert len(pngs) >= 3, pngs
    assert not (out / "INCOMPLETE").exists() and (out / "report.md").is_file()
