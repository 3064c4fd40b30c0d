"""The Python API: what ``kavier simulate`` and ``kavier run`` do, as functions (re-exported by the package).

Each function calls the same code as its command, so a call and the command with the same settings give the
same results, bit for bit::

    import kavier_opendc as ko

    trace = ko.load_workload("traces/demo_chat.csv")
    result = ko.simulate(trace, model="Llama-3-8B", gpu="A100-80GB", replicas=2, seed=1)
    ko.summary(result)["ttft_s"]["p99"]

    report = ko.run_experiment("experiment.yaml", out="out/run").report   # OpenDC off unless opendc=True

Bad input raises :class:`~kavier_opendc.base.errors.KavierInputError` with the same wording the command
prints.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kavier_opendc.engine.deferral import CarbonSteps, check_policy, simulate_deferred
from kavier_opendc.engine.outputs import requests_table as _requests_table
from kavier_opendc.engine.outputs import summary_dict, write_simulation
from kavier_opendc.engine.simulator import SimConfig, SimulationResult
from kavier_opendc.experiments import experiment as _experiment
from kavier_opendc.experiments import pipeline as _pipeline
from kavier_opendc.specs.catalog import Catalog, GPUSpec, ModelSpec, default_catalog, load_catalog_file
from kavier_opendc.workload import load as _load
from kavier_opendc.workload.synthetic import load_synthetic_spec
from kavier_opendc.workload.trace import Trace

__all__ = ["load_workload", "simulate", "summary", "requests_table", "load_experiment", "run_experiment"]

PathLike = str | os.PathLike[str]


def load_workload(
    source: PathLike | Mapping[str, Any], *, trace_format: str | None = None, keep_overlong: bool = False
) -> Trace:
    """A trace, read from a file or generated from a synthetic workload description, as ``kavier simulate
    --trace`` takes it.

    ``source``: a CSV, Parquet or JSON Lines trace (kavier, azure, mooncake or vidur layout, told from its
    columns; ``trace_format`` forces one), a YAML/JSON synthetic workload description
    (schemas/synthetic_workload.schema.json), or such a description as a mapping (relative files in it are
    read from the current folder). ``keep_overlong``: keep rows longer than any model's context as requests
    the engine rejects, instead of refusing the trace.
    """
    if isinstance(source, Mapping):
        return load_synthetic_spec(source, base_dir=Path.cwd())
    return _load.load_workload(os.fspath(source), trace_format, keep_overlong=keep_overlong)


def _catalog(catalog: Catalog | PathLike | Sequence[PathLike] | None) -> Catalog:
    """The built-in catalogue extended by user catalogue files, as ``--catalog FILE`` (repeatable) does."""
    if isinstance(catalog, Catalog):
        return catalog
    files = [catalog] if isinstance(catalog, (str, os.PathLike)) else list(catalog or [])
    cat = default_catalog()
    for f in files:
        cat = load_catalog_file(Path(f), base=cat)
    return cat


def simulate(
    trace: Trace | PathLike | Mapping[str, Any],
    model: str | ModelSpec,
    gpu: str | GPUSpec,
    *,
    catalog: Catalog | PathLike | Sequence[PathLike] | None = None,
    out: PathLike | None = None,
    progress: bool | None = False,
    deferral: str = "none",
    carbon: CarbonSteps | None = None,
    deferral_spread: bool = False,
    **serving: Any,
) -> SimulationResult:
    """Simulate serving ``trace`` (``kavier simulate``, performance only, no JVM); returns the engine's result.

    ``trace``: a :class:`Trace`, or anything :func:`load_workload` reads. ``model``, ``gpu``: catalogue names
    (case-insensitive) or specs; ``catalog``: user catalogue files (or a Catalog) the names are looked up in.
    ``serving``: the fields of :class:`~kavier_opendc.engine.simulator.SimConfig`, named as there
    (``replicas``, ``tp``, ``framework``, ``max_num_seqs``, ``max_batched_tokens``, ``usage``, ``kv_cache``,
    ``prefix_cache``, ``router``, ``seed``, ``exact``, ``num_kv_blocks``, ``max_model_len``, ...) with the
    command's defaults. ``out``: also write requests.parquet, summary.json and timeline.parquet there, as the
    command does. ``progress``: a progress bar on stderr (None: on a terminal only). ``deferral``: the deferral
    policy of the requests with a deadline (``--deferral``; engine/deferral.py), choosing its windows on
    ``carbon`` (a :class:`~kavier_opendc.engine.deferral.CarbonSteps` on the trace's clock);
    ``deferral_spread``: ``--deferral-spread``.

    The configuration's warnings (those the command prints) are issued as :class:`UserWarning`.
    """
    cat = _catalog(catalog)
    if not isinstance(trace, Trace):
        trace = load_workload(trace)
    # a framework name is resolved in the catalogue, whose files may define frameworks of their own
    serving["framework"] = cat.framework(serving.get("framework"), usage=serving.get("usage"))
    cfg = SimConfig(model=cat.model(model), gpu=cat.gpu(gpu), **serving)
    cfg.validate()
    for warning in cfg.warnings():
        warnings.warn(warning, UserWarning, stacklevel=2)
    if out is not None:
        from kavier_opendc.base.atomic import check_writable_dir

        check_writable_dir(Path(out))  # before the simulation, as the command does
    result = simulate_deferred(trace, cfg, check_policy(deferral), carbon, progress=progress, spread=deferral_spread)
    if out is not None:
        write_simulation(result, Path(out))
    return result


def summary(result: SimulationResult) -> dict:
    """summary.json of a simulation as a dict: request counts, makespan, throughput, latency percentiles,
    prefix-cache hit ratio, preemptions, GPU utilisation and the configuration that ran."""
    return summary_dict(result)


def requests_table(result: SimulationResult):
    """requests.parquet of a simulation as a ``pyarrow.Table``, one row per request (``.to_pandas()``)."""
    return _requests_table(result)


def load_experiment(source: PathLike | Mapping[str, Any], *, opendc: bool | None = None) -> _experiment.Experiment:
    """Read and check an experiment (``kavier validate``): every problem is raised at once.

    ``source``: a JSON/YAML experiment file (schemas/experiment.schema.json) or the parsed document (relative
    paths in it then resolve against the current folder). ``opendc``: whether OpenDC will run (None: as the
    file says); when it will, a datacenter is required.
    """
    return _experiment.load_experiment(source if isinstance(source, Mapping) else Path(source), opendc=opendc)


def run_experiment(
    experiment: _experiment.Experiment | PathLike | Mapping[str, Any],
    out: PathLike,
    *,
    opendc: bool | None = False,
    plots: bool = True,
    quiet: bool = True,
) -> _pipeline.RunResult:
    """Run an experiment end to end into ``out`` (``kavier run``); returns its ``RunResult``.

    The result's ``report`` is report.json's content; ``out`` holds what the command writes (simulation/,
    report.json, report.md, report.html, plots/, and opendc/ with OpenDC). ``opendc``: False (the default here) runs
    without the JVM, as ``kavier run --no-opendc``; None follows the file's ``opendc.enabled``, True
    requires OpenDC. ``plots``: write plots/*.png; ``quiet``: no stage lines on stderr.
    """
    if not isinstance(experiment, _experiment.Experiment):
        experiment = load_experiment(experiment, opendc=False if opendc is False else None)
    return _pipeline.run_experiment(experiment, Path(out), opendc=opendc, plots=plots, quiet=quiet)
