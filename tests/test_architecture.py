"""The package layout holds: imports point down the layers, no cycles, no private names across modules.

The layers are declared once, in pyproject.toml ([tool.importlinter]); these
tests run the linter and add the two rules it does not state itself.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kavier_opendc"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def test_import_linter_contracts_are_kept():
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not installed; it is in the 'test' extra: pip install -e '.[test]'")
    exe = shutil.which("lint-imports")
    cmd = (
        [exe]
        if exe
        else [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    )
    r = subprocess.run(
        cmd + ["--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_import_cycle_between_modules():
    """Counting every import: module level, inside functions and under TYPE_CHECKING."""
    grimp = pytest.importorskip("grimp")  # installed with import-linter
    sys.path.insert(0, str(REPO))
    try:
        graph = grimp.build_graph("kavier_opendc", exclude_type_checking_imports=False, cache_dir=None)
    finally:
        sys.path.remove(str(REPO))
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # iterative depth-first search; a grey module reached again closes a cycle
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(modules, WHITE)
    cycles = []
    for root in modules:
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(edges[root]))]
        path = [root]
        colour[root] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour.get(nxt, BLACK) == GREY:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif colour.get(nxt, BLACK) == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(edges[nxt])))
                path.append(nxt)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_from_another_module():
    """Neither ``from m import _x`` nor ``m._x`` / ``Imported._x`` on something another module defines."""
    modules = _modules()
    found = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = {}  # local name -> the kavier_opendc module (or module.name) it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kavier_opendc"):
                for alias in node.names:
                    imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    if _private(alias.name) and node.module != mod:
                        found.append(f"{mod}:{node.lineno} imports {alias.name} from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kavier_opendc") and alias.asname:
                        imported[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
                and _private(node.attr)
                and not imported[node.value.id].startswith(mod + ".")
            ):
                found.append(f"{mod}:{node.lineno} uses {node.value.id}.{node.attr} ({imported[node.value.id]})")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_every_module_says_what_it_is_for():
    missing = [mod for mod, path in _modules().items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, "modules without a docstring: " + ", ".join(missing)


def test_command_line_entry_points():
    """`kavier` (kavier_opendc.cli:main) and `python -m kavier_opendc.cli` both work."""
    from kavier_opendc.cli import main

    assert callable(main)
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith("kavier-opendc "), r.stdout + r.stderr


def test_every_package_docstring_lists_its_modules():
    """Each package's docstring names every module (and subpackage) in it, one line each:
    ``name.py  what`` (``name/  what``)."""
    missing = []
    for init in [PACKAGE / "__init__.py", *sorted(PACKAGE.glob("*/__init__.py"))]:
        doc = ast.get_docstring(ast.parse(init.read_text()), clean=False) or ""
        # one line per entry, ``name.py  what`` (ruff format takes away the common indentation)
        listed = {line.split()[0] for line in doc.splitlines() if line.strip()}
        entries = [m.name for m in sorted(init.parent.glob("*.py")) if m.name != "__init__.py"]
        entries += [d.name + "/" for d in sorted(init.parent.iterdir()) if (d / "__init__.py").is_file()]
        missing += [f"{init.parent.relative_to(REPO)}/{name}" for name in entries if name not in listed]
    assert not missing, "modules missing from their package's docstring: " + ", ".join(missing)
