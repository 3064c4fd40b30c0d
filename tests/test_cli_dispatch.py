"""The ``kavier`` dispatcher imports only the chosen command's module, and lists every command the same way."""

from __future__ import annotations

import json
import subprocess
import sys

from kavier_opendc.cli import build_parser
from kavier_opendc.cli.commands import HELP, MODULES, chosen_command


def _modules_after(argv: list[str]) -> list[str]:
    """The project's modules imported once the parser for ``argv`` is built (in a fresh interpreter)."""
    code = (
        "import json, sys; from kavier_opendc.cli import build_parser; build_parser(%r); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kavier_opendc'))))" % (argv,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _choices(parser) -> dict:
    return parser._subparsers._group_actions[0].choices


def test_listing_the_commands_imports_none_of_them():
    loaded = _modules_after(["--help"])
    assert not [m for m in loaded if m.startswith("kavier_opendc.cli.") and m not in ("kavier_opendc.cli.commands",)], (
        loaded
    )
    assert "kavier_opendc.engine.simulator" not in loaded and "kavier_opendc.experiments.pipeline" not in loaded


def test_a_command_imports_its_own_module_only():
    loaded = _modules_after(["simulate", "--help"])
    assert "kavier_opendc.cli.simulate" in loaded
    others = {f"kavier_opendc.cli.{m}" for m in MODULES.values()} - {"kavier_opendc.cli.simulate"}
    assert not others & set(loaded), others & set(loaded)
    loaded = _modules_after(["validate", "x.yaml"])
    assert "kavier_opendc.cli.validate" in loaded and "kavier_opendc.cli.experiments" not in loaded


def test_every_command_is_listed_in_the_same_order_with_the_same_help_either_way():
    full = _choices(build_parser())
    light = _choices(build_parser(["--help"]))
    assert list(full) == list(light) == list(MODULES)
    listed = {a.dest: a.help for a in build_parser()._subparsers._group_actions[0]._choices_actions}
    assert listed == HELP
    # the chosen command is complete, the others are named only
    chosen = _choices(build_parser(["run", "x.yaml", "--out", "o"]))
    assert any(a.dest == "no_opendc" for a in chosen["run"]._actions)
    assert not any(a.dest == "trace" for a in chosen["simulate"]._actions)


def test_the_chosen_command_is_the_first_word_naming_one():
    assert chosen_command(["simulate", "--trace", "run"]) == "simulate"
    assert chosen_command(["--version"]) is None
    assert chosen_command(["simulat", "run"]) is None  # a misspelt command: argparse names the choices
    assert set(HELP) == set(MODULES)


def test_a_misspelt_command_names_the_choices():
    r = subprocess.run([sys.executable, "-m", "kavier_opendc.cli", "simulat"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'simulat'" in r.stderr and "simulate" in r.stderr
