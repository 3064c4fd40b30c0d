"""Calibrate from files, write the catalogue of profiles, and report errors honestly.

``calibrate_files`` is what ``kavier calibrate`` and ``bench/build_profiles.py``
both run. ``error_table`` gives, per source file, GPU and kind of
measurement, the mean absolute percentage error (MAPE) of the fitted
profiles, and the leave-one-source-out MAPE: every profile fitted again
without that file, then asked to predict it (a framework only that file
measured is then unknown, and the profile's default overheads are used). A
third column keeps the held-out kernels but fits the held-out file's own
framework overheads on it: how well the kernel numbers transfer when the
software is known.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import yaml

from kavier_opendc.base.atomic import atomic_write_text
from kavier_opendc.calibration.fit import E2E_KINDS, Fit, calibrate_all, fit_end_to_end, predict
from kavier_opendc.calibration.layouts import KERNEL_KINDS, Observation, ReadOptions, read_measurements
from kavier_opendc.specs.catalog import Catalog
from kavier_opendc.specs.profiles import GPUProfile, profile_to_entry


@dataclass
class Source:
    """One measurement file and what the file does not say itself."""

    path: str
    options: ReadOptions = dataclasses.field(default_factory=ReadOptions)
    layout: str | None = None
    #: the serving framework (or harness) whose timing the file holds, for the error table
    framework: str = ""


@dataclass
class Calibration:
    observations: list[Observation]
    fits: dict[str, Fit]
    catalog: Catalog  # the input catalogue with the fitted profiles merged in
    layouts: dict[str, str]


def calibrate_files(sources: Iterable[Source], catalog: Catalog) -> Calibration:
    obs: list[Observation] = []
    layouts = {}
    for src in sources:
        layout, rows = read_measurements(src.path, catalog, src.options, src.layout)
        layouts[src.path] = layout
        obs += rows
    fits = calibrate_all(obs, catalog)
    merged = _with_profiles(catalog, fits)
    return Calibration(obs, fits, merged, layouts)


def _with_profiles(catalog: Catalog, fits: dict[str, Fit]) -> Catalog:
    base = Catalog(
        models=catalog.models(),
        gpus=[dataclasses.replace(g, profile=None) for g in catalog.gpus()],
        profiles=[p for p in catalog.profile_specs.values()],
        sources=catalog.sources,
    )
    return base.merged(Catalog(profiles=[f.profile for f in fits.values()]))


def all_profiles(cal: Calibration, only_fitted: bool = False) -> list[GPUProfile]:
    """Profiles of the fitted GPUs, then (unless ``only_fitted``) every other catalogue GPU, derived."""
    measured = Catalog(
        models=cal.catalog.models(),
        gpus=[dataclasses.replace(g, profile=None) for g in cal.catalog.gpus()],
        profiles=[f.profile for f in cal.fits.values() if f.profile.status == "measured"],
    )
    out = []
    for g in cal.catalog.gpus():
        if g.name in cal.fits:
            out.append(cal.fits[g.name].profile)
        elif not only_fitted:
            out.append(measured.profile_for(g.name))
    return out


def write_catalog(path: str | Path, profiles: list[GPUProfile], header: str) -> str:
    """The catalogue document (YAML text) with ``profiles``; written to ``path`` atomically."""
    body = yaml.dump(
        {"profiles": [profile_to_entry(p) for p in profiles]},
        Dumper=_Dumper,
        sort_keys=False,
        width=110,
        allow_unicode=True,
    )
    text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + body
    atomic_write_text(Path(path), text)
    return text


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of numbers (the all-reduce curves), which stay on a few lines."""


def _represent_list(dumper: yaml.SafeDumper, data: list):
    flow = bool(data) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


# --------------------------------------------------------------- errors ----


@dataclass
class ErrorRow:
    source: str
    gpu: str
    kind: str
    rows: int
    rejected: int
    mape: float
    loso_mape: float
    loso_own_overheads_mape: float = float("nan")


def _key(o: Observation) -> tuple[str, str, str]:
    return (Path(o.source).name, o.gpu, o.kind)


def _mapes(
    obs: list[Observation], fits: dict[str, Fit], catalog: Catalog, own_overheads: bool = False
) -> dict[tuple, list[float]]:
    """Relative errors per (source, GPU, kind) of ``fits``; GPUs without a fit use a derived profile.

    ``own_overheads``: frameworks that ``fits`` never saw get their overheads fitted on ``obs``
    (kernel numbers stay as they are).
    """
    measured = Catalog(
        models=catalog.models(),
        gpus=[dataclasses.replace(g, profile=None) for g in catalog.gpus()],
        profiles=[f.profile for f in fits.values() if f.profile.status == "measured"],
    )
    errs: dict[tuple, list[float]] = defaultdict(list)
    refitted: dict[str, dict] = {}
    if own_overheads:
        by_gpu: dict[str, list[Observation]] = defaultdict(list)
        for o in obs:
            fit = fits.get(o.gpu)
            if o.kind in E2E_KINDS and not (fit and o.framework in fit.frameworks):
                by_gpu[o.gpu].append(o)
        for name, rows in by_gpu.items():
            gpu = dataclasses.replace(catalog.gpu(name), profile=None)
            prof = fits[name].profile if name in fits else measured.profile_for(name)
            refitted[name] = fit_end_to_end(rows, gpu, prof, fit_attention=False)[1]
    for o in obs:
        gpu = dataclasses.replace(catalog.gpu(o.gpu), profile=None)
        fit = fits.get(o.gpu)
        prof = fit.profile if fit else measured.profile_for(o.gpu)
        fw = fit.frameworks.get(o.framework) if fit else None
        if fw is None and o.framework in refitted.get(o.gpu, {}):
            fw = refitted[o.gpu][o.framework]
        errs[_key(o)].append(abs(predict(o, prof, gpu, fw) - o.measured_s) / o.measured_s)
    return errs


def error_table(cal: Calibration, catalog: Catalog, loso: bool = True) -> list[ErrorRow]:
    """MAPE per (source, GPU, kind); with ``loso`` also refit without each source and predict it.

    Single kernels are left out: each efficiency describes one regime of them (long prompts, large KV
    caches, GEMMs past their launch cost), and bench/build_profiles.py reports them in that regime.
    """
    rejected = {id(o) for f in cal.fits.values() for o, _ in f.rejected}
    kept = [o for o in cal.observations if id(o) not in rejected and o.kind not in KERNEL_KINDS]
    nrej: dict[tuple, int] = defaultdict(int)
    for f in cal.fits.values():
        for o, _ in f.rejected:
            nrej[_key(o)] += 1
    full = _mapes(kept, cal.fits, catalog)
    left_out: dict[tuple, list[float]] = {}
    own: dict[tuple, list[float]] = {}
    for src in sorted({o.source for o in kept}) if loso else ():
        rest = [o for o in cal.observations if o.source != src]
        fits = calibrate_all(rest, catalog) if rest else {}
        held = [o for o in kept if o.source == src]
        left_out.update(_mapes(held, fits, catalog))
        own.update(_mapes(held, fits, catalog, own_overheads=True))

    def pct(table: dict, k: tuple) -> float:
        return 100.0 * float(np.mean(table[k])) if k in table else float("nan")

    return [
        ErrorRow(k[0], k[1], k[2], len(v), nrej[k], 100.0 * float(np.mean(v)), pct(left_out, k), pct(own, k))
        for k, v in sorted(full.items())
    ]


def error_markdown(rows: list[ErrorRow], frameworks: Mapping[str, str] | None = None) -> str:
    """The error table; ``frameworks`` (file name -> the framework that produced it) adds that column."""
    fw_col = frameworks is not None
    lines = [
        "| source | " + ("framework | " if fw_col else "") + "GPU | measurement | rows | MAPE | "
        "leave-one-source-out MAPE | LOSO, own overheads |",
        "|---|" + ("---|" if fw_col else "") + "---|---|---:|---:|---:|---:|",
    ]

    def pct(x: float) -> str:
        return "-" if x != x else f"{x:.1f} %"

    for r in rows:
        n = f"{r.rows}" + (f" (+{r.rejected} rejected)" if r.rejected else "")
        fw = f" {(frameworks or {}).get(r.source, '')} |" if fw_col else ""
        lines.append(
            f"| {r.source} |{fw} {r.gpu} | {r.kind} | {n} | {r.mape:.1f} % | {pct(r.loso_mape)} | "
            f"{pct(r.loso_own_overheads_mape)} |"
        )
    return "\n".join(lines)


def describe_profiles(profiles: list[GPUProfile]) -> str:
    lines = [
        "| GPU | status | GEMM mbu | GEMM mfu | knee p | prefill attn eff | decode KV mbu | attn floor us/layer | "
        "overhead ms/iter | overhead us/seq |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in profiles:
        status = p.status + (f" from {p.derived_from}" if p.derived_from else "")
        lines.append(
            f"| {p.gpu} | {status} | {p.gemm_mbu:.3f} | {p.gemm_mfu:.3f} | {p.gemm_knee:.2f} | "
            f"{p.attn_prefill_eff:.3f} | {p.attn_decode_mbu:.3f} | {p.attn_fixed_s * 1e6:.1f} | "
            f"{p.overhead_fixed_s * 1e3:.2f} | "
            f"{p.overhead_per_seq_s * 1e6:.1f} |"
        )
    return "\n".join(lines)
