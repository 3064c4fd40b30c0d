"""Kavier-OpenDC: a cache-aware LLM inference simulator co-simulated with OpenDC.

The Python API (``api.py``; README, "Python API"), the same code the ``kavier`` command runs::

    load_workload(path_or_description)                a trace file or synthetic workload -> Trace
    simulate(trace, model=, gpu=, **serving)           the serving simulation -> SimulationResult
    summary(result), requests_table(result)            its summary.json (dict) and requests.parquet (Table)
    load_experiment(path_or_document)                  a checked experiment (kavier validate)
    run_experiment(path_or_experiment, out=, opendc=False)   kavier run -> RunResult (.report, .out)

The packages, from the top layer down (pyproject.toml's import-linter contracts hold them):

    api.py         the Python API above
    cli/           the ``kavier`` command: parsing arguments and printing
    experiments/   experiment files, the run pipeline, sweeps, plans
    reports/       performance, sustainability and efficiency reports, plots, comparisons
    opendc/        the datacenter, the export to OpenDC, the JVM bridge, OpenDC's results
    tracer/        measuring a real OpenAI-compatible deployment
    calibration/   fitting GPU and framework profiles to measurements
    engine/        input D: the serving simulation
    workload/      input C: traces and synthetic workloads
    specs/         inputs A and B: model, GPU and framework catalogues
    base/          errors, schema validation, limits, atomic writes, progress
"""

__version__ = "0.1.0"

_API = ("load_workload", "simulate", "summary", "requests_table", "load_experiment", "run_experiment")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # The API is imported on first use (PEP 562): `import kavier_opendc` stays cheap (no numpy, pandas,
    # pyarrow), and the layers below that read __version__ do not pull the pipeline in with it.
    if name in _API:
        from importlib import import_module

        value = getattr(import_module("kavier_opendc.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
