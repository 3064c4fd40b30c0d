"""Every ``kavier`` command: the module that implements it and its one-line help.

This table is all ``kavier --help`` needs, so listing the commands imports none of them; running one
imports only its own module (see :func:`kavier_opendc.cli.build_parser`). A command module passes
``help=HELP[name]`` when it registers the command, so each line is written once.
"""

from __future__ import annotations

#: command -> module of ``kavier_opendc.cli`` that registers and runs it; the order is ``kavier --help``'s
MODULES: dict[str, str] = {
    "simulate": "simulate",
    "run": "experiments",
    "demo": "experiments",
    "sweep": "experiments",
    "efficiency": "experiments",
    "validate": "validate",
    "export-opendc": "opendc",
    "opendc": "opendc",
    "catalog": "catalog",
    "calibrate": "calibrate",
    "bridge": "bridge",
    "trace": "measure",
    "compare": "measure",
    "plan": "plan",
}

HELP: dict[str, str] = {
    "simulate": "simulate serving a trace (performance only, no JVM)",
    "run": "run an experiment end to end: simulation, OpenDC, reports",
    "demo": "run the built-in demo experiment (as `kavier run` would)",
    "validate": "check experiment, sweep or plan files and report every problem",
    "sweep": "run the cartesian product of experiment variations in parallel",
    "efficiency": "the Kavier prototype's efficiency summary, unit error fixed",
    "export-opendc": "turn a simulation's timeline into an OpenDC experiment",
    "opendc": "run an OpenDC experiment directory through the bridge",
    "catalog": "list the models, GPUs and serving frameworks; import a model from its HF config.json",
    "calibrate": "fit GPU efficiency profiles to measurements; write a catalogue file",
    "bridge": "build or check the OpenDC bridge jar: kavier bridge build|check|run ...",
    "trace": "measure an OpenAI-compatible streaming endpoint (sweep or replay)",
    "compare": "errors of a simulation against a measurement",
    "plan": "capacity planning: the configuration meeting latency SLOs at the lowest cost, energy or carbon",
}


def chosen_command(argv: list[str]) -> str | None:
    """The command named on a command line (the first word that is one), or None (``kavier --help``)."""
    for word in argv:
        if word in MODULES:
            return word
        if not word.startswith("-"):
            return None  # a misspelt command: argparse names the choices
    return None
