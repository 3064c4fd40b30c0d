"""The JSON Schemas exist once, in ``schemas/``, and the package loads every one of them from there.

``kavier_opendc/schemas`` is a relative symlink to ``../schemas`` (git stores it as one link), so the
package reads the same files through importlib.resources in a checkout; a wheel holds real copies
(tests/test_pip_install.py checks an installed package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO
from kavier_opendc.base.validation import load_schema, schema_file, schema_validator

SCHEMAS = REPO / "schemas"
NAMES = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))


def test_there_are_schemas():
    assert {
        "catalog.schema.json",
        "datacenter.schema.json",
        "experiment.schema.json",
        "plan.schema.json",
        "sweep.schema.json",
        "synthetic_workload.schema.json",
    } <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_package_loads_each_schema_from_schemas(name):
    assert schema_file(name).resolve() == (SCHEMAS / name).resolve()
    assert load_schema(name) == json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema_validator(name).schema["$schema"].startswith("https://json-schema.org/")


def test_the_package_schemas_folder_is_a_link_to_schemas():
    link = REPO / "kavier_opendc" / "schemas"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "schemas")
    assert sorted(p.name for p in link.iterdir()) == sorted(p.name for p in SCHEMAS.iterdir())


def test_git_holds_one_copy_of_each_schema():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-s", "--", "*.schema.json", "kavier_opendc/schemas"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    entries = {line.split("\t", 1)[1]: line.split()[0] for line in tracked}
    assert entries.pop("kavier_opendc/schemas") == "120000"  # git's mode for a symbolic link
    assert sorted(entries) == [f"schemas/{n}" for n in NAMES]
