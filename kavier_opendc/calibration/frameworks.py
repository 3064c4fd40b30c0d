"""Fit a serving framework's CPU time per step from end-to-end measurements, the GPU profiles held fixed.

The kernel times come from the catalogue's GPU profiles (fitted on kernel and
step measurements); what a framework adds on top (scheduling, input
preparation, sampling and detokenisation per sequence, the TP workers'
coordination) is what is left of each measured end-to-end time. Per (GPU,
TP) an overhead per step and per running sequence is fitted by bounded least
squares on relative errors (``fit.fit_end_to_end`` with the attention
efficiencies fixed). No per-token term: an engine's CPU work per step is its
scheduler, input preparation and sampler, which grow with the sequences, not
with the prompt tokens (and the shared sources are predicted within 10 %
without one). frameworks.yaml's numbers are made this way
(``bench/build_frameworks.py``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.calibration.fit import E2E_KINDS, Overheads, fit_end_to_end, predict
from kavier_opendc.calibration.layouts import Observation, ReadOptions, read_measurements
from kavier_opendc.specs.catalog import Catalog


@dataclass
class FrameworkFit:
    """Fitted overheads per (GPU, TP), the relative error of every row, and the rows left out."""

    overheads: dict[tuple[str, int], Overheads] = field(default_factory=dict)
    errors: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)  # (file, GPU, TP) -> errors
    skipped: list[tuple[str, int, str]] = field(default_factory=list)

    def mape(self) -> dict[tuple[str, str, int], float]:
        return {k: float(np.mean(v)) for k, v in sorted(self.errors.items())}


def fit_framework(paths: list[str | Path], catalog: Catalog, options: ReadOptions | None = None) -> FrameworkFit:
    """Overheads per (GPU, TP) of the framework that produced the files' end-to-end times."""
    opts = options or ReadOptions()
    obs: list[Observation] = []
    for p in paths:
        obs += [o for o in read_measurements(p, catalog, opts)[1] if o.kind in E2E_KINDS]
    out = FrameworkFit(skipped=list(opts.skipped))
    groups: dict[tuple[str, int], list[Observation]] = defaultdict(list)
    for o in obs:
        groups[(o.gpu, o.tp)].append(o)
    for (gpu_name, tp), rows in sorted(groups.items()):
        seqs = {round(s.n_seqs, 6) for o in rows for _, s in o.iterations}
        if len(seqs) < 2:
            raise KavierInputError(
                f"the rows of {gpu_name} at TP {tp} have one batch size only: the overhead per step and the "
                "overhead per sequence cannot be told apart",
                source=", ".join(sorted({o.source for o in rows})),
                location="batch_size",
                expected="rows of at least two batch sizes per GPU and TP",
            )
        gpu = dataclasses.replace(catalog.gpu(gpu_name), profile=None)
        profile = catalog.profile_for(gpu_name)
        # one framework per (GPU, TP): relabel so the fit gives one set of overheads
        relabelled = [dataclasses.replace(o, framework="fw") for o in rows]
        over = fit_end_to_end(relabelled, gpu, profile, fit_attention=False, per_step_only=True)[1]["fw"]
        out.overheads[(gpu_name, tp)] = over
        for o in rows:
            err = abs(predict(o, profile, gpu, over) - o.measured_s) / o.measured_s
            out.errors.setdefault((Path(o.source).name, gpu_name, tp), []).append(err)
    return out


def overhead_entries(fit: FrameworkFit) -> list[dict]:
    """The fitted overheads as frameworks.yaml's ``step_overhead`` entries (4 significant digits)."""
    rows = []
    for (gpu, tp), o in sorted(fit.overheads.items()):
        row: dict = {"gpu": gpu, "tp": tp, "fixed_s": float(f"{o.fixed_s:.4g}")}
        for name in ("per_seq_s", "per_token_s", "per_token_sq_s"):
            v = getattr(o, name)
            if v:
                row[name] = float(f"{v:.4g}")
        rows.append(row)
    return rows
