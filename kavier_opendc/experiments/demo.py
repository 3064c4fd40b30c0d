"""The built-in demo: its experiment, workload and sweep files, and copying them as a starting point."""

from __future__ import annotations

from pathlib import Path

from kavier_opendc.base.errors import KavierInputError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_EXPERIMENT = DATA_DIR / "demo_experiment.yaml"
DEMO_WORKLOAD = DATA_DIR / "demo_workload.yaml"
DEMO_SWEEP = DATA_DIR / "demo_sweep.yaml"


def copy_demo_inputs(dest: Path) -> list[Path]:
    """Copy the demo experiment (as experiment.yaml), its workload and a demo
    sweep into ``dest``: a starting point for your own experiment folder,
    e.g. the one docker-compose mounts. Returns the files written; refuses to
    overwrite any of them."""
    dest.mkdir(parents=True, exist_ok=True)
    files = {DEMO_EXPERIMENT: "experiment.yaml", DEMO_WORKLOAD: "demo_workload.yaml"}
    if DEMO_SWEEP.is_file():
        files[DEMO_SWEEP] = "sweep.yaml"
    for name in files.values():
        target = dest / name
        if target.exists():
            raise KavierInputError(
                f"{target} exists; not overwriting it",
                location="--init",
                expected="a folder without experiment.yaml/sweep.yaml/demo_workload.yaml",
            )
    for src, name in files.items():
        text = src.read_text(encoding="utf-8")
        if name == "sweep.yaml":
            text = text.replace("base: demo_experiment.yaml", "base: experiment.yaml")
            # the comment says how to run this copy, not the packaged original
            text = text.replace(
                "kavier sweep kavier_opendc/data/demo_sweep.yaml --out out/sweep",
                f"kavier sweep {dest / name} --out {dest / 'sweep-results'}",
            )
            text = text.replace("over the demo experiment:", "over experiment.yaml (the demo experiment):")
        elif name == "experiment.yaml":
            text = text.replace(
                "# The built-in demo experiment (`kavier demo --out DIR` runs exactly this, as\n# `kavier run` would).",
                f"# A copy of the built-in demo experiment; run it with\n"
                f"#   kavier run {dest / name} --out {dest / 'results'}\n#",
            )
        (dest / name).write_text(text, encoding="utf-8")
    return [dest / name for name in files.values()]
