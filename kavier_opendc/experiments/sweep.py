"""`kavier sweep`: the cartesian product of experiment variations, in parallel.

A sweep file (``schemas/sweep.schema.json``) names a base experiment and
axes; each axis is a list of values for a dotted experiment path (``gpu``,
``serving.replicas``, ``serving.prefix_cache.policy``, ``carbon.region``,
...) or of labelled variants that set several paths at once::

    name: gpu-x-replicas-x-cache
    base: experiment.yaml
    axes:
      gpu: [A100-80GB, H100-SXM]
      serving.replicas: [2, 4]
      serving.prefix_cache.policy: [none, block]

Every configuration is validated before anything runs. Runs go to
``DIR/runs/<id>/`` (each a complete `kavier run` output), computed on a Dask
cluster (``executor.py``): ``--jobs`` local worker processes, or an existing
cluster (``--scheduler tcp://HOST:PORT``); each worker keeps one OpenDC JVM
for all its runs.

Run folders are keyed by their configuration, never by their position in the
sweep file: ``<id>`` is the run's varied values followed by its run key, 12
hex digits of the SHA-256 of the canonical JSON of the run's resolved
experiment (``run_folder.run_key``), e.g.
``gpu-A100-80GB_policy-none_replicas-2-22405300a93e`` (the values in the
order of the axes' names, so reordering axes renames nothing). Two
configurations that resolve to the same experiment are refused.

A value that sets ``serving.disaggregation`` (prefill and decode pools, one
or a list per role) on a co-located base drops the base's
``serving.replicas``, ``tp`` and ``replica_groups``: an axis can then vary
pool lists, e.g. H100 prefill with A100 decode against H100 with H100
(``kavier_opendc/data/pd_pools_sweep.yaml``).

Resuming: a finished run gets a marker ``DIR/runs/<id>/DONE`` holding its run
key and a hash of its configuration (the experiment document and its input
files' bytes). A restarted sweep skips runs whose marker matches and redoes
the others (interrupted runs have no marker, failed ones an ``INCOMPLETE``);
a run marked DONE whose files are not whole (report.json or a simulation file missing, empty or cut
short: ``run_folder.run_done_problem``) runs again, with a note; so adding a value to an axis runs only
the new configurations, reordering
values runs nothing, and an edited input file reruns its runs in the same
folders. Folders of configurations no longer in the sweep (a removed value)
are kept, named in a printed note and in ``sweep.json`` (``stale_runs``), and
left out of the comparison. A folder whose ``DONE`` names another run key
than its name (renamed or copied by hand) is refused before anything runs.
``DIR/sweep_log.jsonl`` records every start, finish, failure and skip with
the worker's name, pid and timestamps.

Results: ``DIR/comparison.csv``, ``DIR/comparison.md``, ``DIR/sweep.html`` and plots under
``DIR/plots/`` (energy per token vs p99 TTFT, and bars of the key metrics).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kavier_opendc.base import limits
from kavier_opendc.base.atomic import (
    INCOMPLETE,
    atomic_write_text,
    check_output_root,
    check_writable_dir,
    output_root,
    write_json_atomic,
)
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import json_path, schema_validator
from kavier_opendc.experiments.executor import RunExecutor, RunTask
from kavier_opendc.experiments.experiment import (
    experiment_problems,
    raise_problems,
    read_document,
    schema_problems,
    with_overrides,
)
from kavier_opendc.experiments.run_folder import (
    absolutized,
    clear_done,
    clear_incomplete,
    config_hash,
    is_incomplete,
    mark_done,
    mark_incomplete,
    recorded_key,
    run_done_problem,
    run_is_done,
    run_key,
)
from kavier_opendc.opendc.jvm import check_opendc_available
from kavier_opendc.reports.html import SWEEP_HTML, pareto_flags, write_comparison_html
from kavier_opendc.reports.report import fmt

SCHEMA_FILE = "sweep.schema.json"
#: run_done_problem's answers for a run that never finished (anything else: a DONE run whose files are not whole)
_NOT_FINISHED = ("no DONE marker", "INCOMPLETE", "another configuration", "unreadable DONE marker")
LOG = "sweep_log.jsonl"
#: What makes a sweep folder complete, and every entry a sweep writes (what --overwrite moves aside)
SWEEP_FILES = ("sweep.json", "comparison.csv")
SWEEP_ENTRIES = ("sweep.json", "comparison.csv", "comparison.md", SWEEP_HTML, "plots", "runs", LOG, INCOMPLETE)

TABLE_COLUMNS = [
    ("num_finished", "finished"),
    ("makespan_s", "makespan (s)"),
    ("output_tokens_per_s", "output tok/s"),
    ("ttft_p50_s", "TTFT p50 (s)"),
    ("ttft_p99_s", "TTFT p99 (s)"),
    ("tpot_p50_s", "TPOT p50 (s)"),
    ("tpot_p99_s", "TPOT p99 (s)"),
    ("e2e_p99_s", "E2E p99 (s)"),
    ("prefix_cache_hit_ratio", "prefix hit ratio"),
    ("gpu_utilization_mean", "GPU util"),
    ("slo_attainment", "SLO attainment"),
    ("goodput_rps", "goodput (req/s)"),
    ("energy_wh", "energy (Wh)"),
    ("avg_power_w", "avg power (W)"),
    ("carbon_g", "carbon (g)"),
    ("wh_per_mtoken", "Wh/Mtoken"),
    ("gco2_per_mtoken", "gCO2/Mtoken"),
    ("cost_per_mtoken", "cost/Mtoken"),
    ("wh_per_mtoken_per_s", "Wh/(Mtoken/s)"),
    ("kgco2_per_mtoken_per_s", "kgCO2/(Mtoken/s)"),
    ("cost_per_mtoken_per_s", "cost/(Mtoken/s)"),
]


@dataclass
class Variant:
    label: str
    set: dict[str, Any]


@dataclass
class Axis:
    name: str
    values: list[Variant]


@dataclass
class RunSpec:
    index: int
    id: str
    labels: dict[str, str]  # axis name -> label
    overrides: dict[str, Any]
    document: dict  # the experiment document of this run (absolute paths)
    base_dir: str
    source: str
    config_hash: str = ""
    key: str = ""  # run_key(document): the folder's name ends with it

    @property
    def label(self) -> str:
        return ", ".join(f"{_short_axis(k)}={v}" for k, v in self.labels.items())


@dataclass
class Sweep:
    name: str
    source: str
    axes: list[Axis]
    runs: list[RunSpec]
    opendc: bool | None
    jobs: int | None = None


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)) or value is None:
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._")
    return s[:limit].rstrip("-.") or "run"


def _axes(doc: dict, problems: list) -> list[Axis]:
    axes: list[Axis] = []
    raw = doc.get("axes")
    if isinstance(raw, dict):
        for path, values in raw.items():
            if isinstance(values, list):
                axes.append(Axis(path, [Variant(_label(v), {path: v}) for v in values]))
    elif isinstance(raw, list):
        for i, a in enumerate(raw):
            if not isinstance(a, dict) or not isinstance(a.get("values"), list):
                continue
            vs = []
            for j, v in enumerate(a["values"]):
                if isinstance(v, dict) and "set" in v and isinstance(v["set"], dict):
                    vs.append(Variant(str(v.get("label") or _label(v["set"])), dict(v["set"])))
                elif "path" in a:
                    vs.append(Variant(_label(v), {a["path"]: v}))
                else:
                    problems.append(
                        (
                            ("axes", i, "values", j),
                            "a plain value needs the axis' 'path' (or write {label, set: {path: value}})",
                        )
                    )
            axes.append(Axis(str(a.get("name")), vs))
    names = [a.name for a in axes]
    for n in set(names):
        if names.count(n) > 1:
            problems.append((("axes",), f"axis name {n!r} is used twice"))
    for a in axes:
        labels = [v.label for v in a.values]
        for lab in set(labels):
            if labels.count(lab) > 1:
                problems.append((("axes", a.name), f"value {lab!r} appears twice"))
    return axes


#: the co-located shape of ``serving`` that a disaggregated topology replaces (experiment files refuse both)
COLOCATED_SHAPE = ("replicas", "tp", "replica_groups")


def _disaggregated_overrides(doc: dict, overrides: dict[str, Any]) -> dict:
    """A value that sets ``serving.disaggregation`` (say, a list of pools) on a co-located base replaces the
    base's shape: its ``serving.replicas``, ``tp`` and ``replica_groups`` go, unless the value sets them too
    (then the experiment's own check refuses the mix, naming the field)."""
    if not any(k == "serving.disaggregation" or k.startswith("serving.disaggregation.") for k in overrides):
        return doc
    serving = doc.get("serving")
    if isinstance(serving, dict):
        for key in COLOCATED_SHAPE:
            if f"serving.{key}" not in overrides:
                serving.pop(key, None)
    return doc


def _short_axis(name: str) -> str:
    return name.split(".")[-1]


def run_folder_name(labels: dict[str, str], key: str) -> str:
    """A run's folder under ``runs/``: its varied values (readable, at most 70 characters; axes sorted by name,
    so reordering the axes renames nothing) and its run key, e.g.
    ``gpu-A100-80GB_policy-none_replicas-2-22405300a93e``. The key makes it the configuration's own name: the
    same for the same configuration whatever its position in the sweep file, different for any other."""
    return _slug("_".join(f"{_short_axis(k)}-{labels[k]}" for k in sorted(labels)), 70) + f"-{key}"


def load_sweep(path: str | Path, *, opendc: bool | None = None) -> Sweep:
    """Read and validate a sweep file and every configuration it produces."""
    p = Path(path)
    doc = read_document(p, "sweep")
    src = str(p)
    base_dir = p.resolve().parent
    if not isinstance(doc, dict):
        raise_problems([((), "the document is not a mapping (expected base and axes)")], src, "sweep")
    problems = schema_problems(doc, schema_validator(SCHEMA_FILE))
    axes = _axes(doc, problems)
    base = doc.get("base")
    base_doc, exp_base, exp_src = None, base_dir, src
    if isinstance(base, str):
        bp = (base_dir / base) if not Path(base).is_absolute() else Path(base)
        try:
            base_doc = read_document(bp)
            exp_base, exp_src = bp.resolve().parent, str(bp)
        except KavierInputError as exc:
            problems.append((("base",), str(exc)))
    elif isinstance(base, dict):
        base_doc = copy.deepcopy(base)
    if base_doc is not None and not isinstance(base_doc, dict):
        problems.append((("base",), "the base experiment is not a mapping"))
        base_doc = None
    if problems or base_doc is None:
        raise_problems(problems or [(("base",), "missing")], src, "sweep")

    name = doc.get("name") or _slug(p.stem)
    runs: list[RunSpec] = []
    exp_problems: list = []
    count = math.prod(len(a.values) for a in axes)
    if count > limits.SWEEP_RUNS.value:
        raise_problems(
            [
                (
                    ("axes",),
                    f"{' x '.join(str(len(a.values)) for a in axes)} values give " + limits.SWEEP_RUNS.above(count),
                )
            ],
            src,
            "sweep",
        )
    combos = list(itertools.product(*[a.values for a in axes]))
    by_key: dict[str, str] = {}
    for i, combo in enumerate(combos):
        overrides: dict[str, Any] = {}
        for v in combo:
            overrides.update(v.set)
        labels = {a.name: v.label for a, v in zip(axes, combo, strict=True)}
        rdoc = _disaggregated_overrides(with_overrides(base_doc, overrides), overrides)
        rdoc["name"] = _slug(str(name), 100)
        where = f"configuration {i} ({', '.join(f'{k}={v}' for k, v in labels.items())})"
        probs, exp = experiment_problems(rdoc, base_dir=exp_base, source=f"{exp_src} [{where}]", opendc=opendc)
        if probs:
            for pth, msg in probs:
                exp_problems.append(((f"{where}: {json_path(pth)}",), msg))
            continue
        adoc = absolutized(exp)
        key = run_key(adoc, opendc)
        if key in by_key:
            exp_problems.append(
                (
                    (where,),
                    f"the same experiment as {by_key[key]} (both resolve to one configuration); drop one of the values",
                )
            )
            continue
        by_key[key] = where
        rid = run_folder_name(labels, key)
        # the run's name comes from its key (never its position), so it is the same whatever else the sweep holds
        adoc["name"] = f"{_slug(str(name), max(1, 99 - len(rid)))}-{rid}"
        spec = RunSpec(i, rid, labels, overrides, adoc, str(exp_base), f"{src} [{where}]", key=key)
        spec.config_hash = config_hash(adoc, exp, opendc)
        runs.append(spec)
    if exp_problems:
        raise_problems(exp_problems, src, "sweep")
    return Sweep(str(name), src, axes, runs, opendc, doc.get("jobs"))


# --------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: Path
    table: Any
    done: int = 0
    skipped: int = 0
    failed: int = 0
    ran: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)  # run folders of configurations not in this sweep (kept)

    def summary_text(self, wall_s: float) -> str:
        lines = [
            f"sweep: {self.done} run(s) done now, {self.skipped} skipped (already done), "
            f"{self.failed} failed, in {wall_s:.1f} s"
        ]
        for rid, err in self.errors.items():
            lines.append(f"  FAILED {rid}: {err.splitlines()[0] if err else ''}")
        if self.stale:
            lines.append(
                f"note: {len(self.stale)} run folder(s) in {self.out / 'runs'} not in this sweep were kept "
                "(named above and in sweep.json, stale_runs)"
            )
        lines.append(f"wrote {self.out}/comparison.csv, comparison.md, sweep.html, plots/")
        return "\n".join(lines)


def _log(out: Path, **rec) -> None:
    rec.setdefault("time", time.time())
    check_output_root(out)  # a removed sweep folder is named as such (open() below never makes one)
    with open(out / LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")


def run_sweep(
    sweep: Sweep,
    out: Path,
    *,
    jobs: int | None = None,
    run_plots: bool = False,
    quiet: bool = False,
    retry_failed: bool = True,
    command: str = "kavier sweep",
    scheduler: str | None = None,
) -> SweepResult:
    """Run every configuration not yet done, then write the comparison.

    The runs go to a Dask cluster (``experiments/executor.py``): a local one with ``jobs`` worker processes,
    or the existing one whose scheduler listens at ``scheduler`` (``tcp://HOST:PORT``)."""
    import sys

    out = Path(out)
    check_writable_dir(out)
    check_run_folders(sweep, out)
    # the sweep's own folder: once it is removed no writer (driver or worker) makes it again
    with output_root(out):
        _begin_sweep(out)
        (out / "runs").mkdir(exist_ok=True)
        stale = stale_run_folders(sweep, out)
        write_json_atomic(
            out / "sweep.json",
            {
                "name": sweep.name,
                "source": sweep.source,
                "complete": False,
                "axes": [
                    {"name": a.name, "values": [{"label": v.label, "set": v.set} for v in a.values]} for a in sweep.axes
                ],
                "runs": [
                    {
                        "id": r.id,
                        "key": r.key,
                        "folder": f"runs/{r.id}",
                        "labels": r.labels,
                        "overrides": r.overrides,
                        "config_hash": r.config_hash,
                    }
                    for r in sweep.runs
                ],
                "stale_runs": stale,
            },
        )

        def say(text: str) -> None:
            if not quiet:
                print(text, file=sys.stderr, flush=True)

        todo, skipped = [], []
        for r in sweep.runs:
            problem = run_done_problem(out / "runs" / r.id, r.config_hash)
            (skipped if problem is None else todo).append(r)
            if problem is not None and problem not in _NOT_FINISHED:  # marked DONE, but its files are not whole
                _log(out, event="redo", id=r.id, reason=problem)
                say(f"note: run {r.id} is marked DONE but its {problem}: running it again")
        res = SweepResult(out, None, skipped=len(skipped), stale=stale)

        for r in skipped:
            _log(out, event="skip", id=r.id)
        if stale:
            _log(out, event="stale", ids=stale)
        needs_opendc = _needs_opendc(sweep, todo)
        if todo and needs_opendc and scheduler is None:  # a remote cluster's workers have their own OpenDC
            check_opendc_available()
        n_jobs = max(1, min(jobs or sweep.jobs or 2, len(todo) or 1))
        where = f"on the Dask cluster at {scheduler}" if scheduler else f"in {n_jobs} local worker process(es)"
        say(
            f"sweep {sweep.name}: {len(sweep.runs)} configurations, {len(skipped)} already done, "
            f"{len(todo)} to run {where}"
        )
        if stale:
            say(stale_note(stale, out / "runs"))
        if todo:

            def log(**rec) -> None:
                _log(out, **rec)

            with RunExecutor(
                jobs=n_jobs, scheduler=scheduler, prestart_opendc=bool(needs_opendc), log=log, say=say
            ) as ex:
                for r in todo:
                    rd = out / "runs" / r.id
                    clear_done(rd)
                    _log(out, event="submit", id=r.id)
                    ex.submit(RunTask(r.id, r.document, r.base_dir, r.source, rd, sweep.opendc, run_plots, command))
                by_id = {r.id: r for r in todo}
                try:
                    for rec in ex.completed():
                        r = by_id[rec.task.id]
                        if rec.status == "done":
                            mark_done(
                                rec.task.run_dir,
                                r.config_hash,
                                id=r.id,
                                key=r.key,
                                finished=rec.end,
                                wall_s=rec.wall_s,
                                pid=rec.pid,
                                worker=rec.worker,
                            )
                            res.done += 1
                            res.ran.append(r.id)
                        else:
                            res.failed += 1
                            res.errors[r.id] = rec.error
                        say(ex.progress(rec, total=len(todo)))
                except KeyboardInterrupt:
                    _log(out, event="interrupted")
                    raise
        table = comparison_table(sweep, out)
        res.table = table
        write_comparison(sweep, out, table)
        _end_sweep(out, res)
        return res


def _needs_opendc(sweep: Sweep, todo: list) -> bool:
    return (
        any(r.document.get("opendc", {}).get("enabled", True) for r in todo) if sweep.opendc is None else sweep.opendc
    )


def check_opendc_for(sweep: Sweep, out: Path, *, redo_all: bool = False) -> None:
    """Refuse a sweep whose runs to do need OpenDC when Java 21+ or a whole bridge jar is missing, before
    anything is written (the lock, sweep.json, a folder moved aside). Reads only; ``redo_all``: --overwrite."""
    todo = [r for r in sweep.runs if redo_all or run_done_problem(out / "runs" / r.id, r.config_hash) is not None]
    if todo and _needs_opendc(sweep, todo):
        check_opendc_available()


def check_run_folders(sweep: Sweep, out: Path) -> None:
    """Refuse, before anything runs or is written, a run folder whose ``DONE`` marker names another run key
    than its folder's name (a folder renamed or copied by hand): it holds another configuration's results,
    which a rerun would overwrite and a resume would pass off as this one's."""
    bad = []
    for r in sweep.runs:
        rd = out / "runs" / r.id
        key = recorded_key(rd)
        if key is not None and key != r.key:
            bad.append(f"{rd} (its DONE marker says run key {key})")
    if bad:
        raise KavierInputError(
            f"{len(bad)} run folder(s) hold another configuration than their name says: " + "; ".join(bad),
            source=str(out / "runs"),
            expected="each folder's DONE marker naming the run key its name ends with; move or delete these "
            "folders (kavier never overwrites them), then rerun the sweep",
        )


def stale_run_folders(sweep: Sweep, out: Path) -> list[str]:
    """The folders under ``out/runs`` that are no run of this sweep (a value removed from an axis, an edited
    base experiment, folders of an older kavier): kept, never deleted; sorted."""
    ids = {r.id for r in sweep.runs}
    runs = out / "runs"
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in ids)


def stale_note(stale: list[str], where: Path | None = None, show: int = 10) -> str:
    """One note naming the run folders that are not in this sweep (the first ``show`` of them)."""
    names = ", ".join(stale[:show]) + (f" and {len(stale) - show} more" if len(stale) > show else "")
    return (
        f"note: {len(stale)} run folder(s) {'in ' + str(where) + ' ' if where else ''}are not in this sweep "
        f"and were kept (not in comparison.csv; sweep.json lists them under stale_runs): {names}"
    )


def _begin_sweep(out: Path) -> None:
    """Mark the sweep folder incomplete until every run is done, and drop a previous comparison
    (it is written again at the end), so that a failing sweep never looks complete."""
    mark_incomplete(
        out,
        f"kavier sweep in progress since {time.strftime('%Y-%m-%dT%H:%M:%S')} "
        f"(pid {os.getpid()}); this folder is not complete until this file is gone.\n",
    )
    for name in ("comparison.csv", "comparison.md", SWEEP_HTML):
        (out / name).unlink(missing_ok=True)


def _end_sweep(out: Path, res: SweepResult) -> None:
    """sweep.json says complete and the INCOMPLETE marker goes only when no run failed."""

    if res.failed:
        mark_incomplete(
            out,
            f"kavier sweep finished with {res.failed} failed run(s); rerun it to "
            "retry them (finished runs are kept):\n" + "".join(f"  {rid}: {err}\n" for rid, err in res.errors.items()),
        )
        return
    doc = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    write_json_atomic(out / "sweep.json", {**doc, "complete": True})
    clear_incomplete(out)


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------


def report_row(report: dict) -> dict[str, Any]:
    """The key metrics of one run's report.json, flat (one row of a comparison table)."""
    p, s, e = report["performance"], report.get("sustainability") or {}, report["efficiency"]

    def q(d, k):
        return None if not d or d.get(k) is None else float(d[k])

    return {
        "num_requests": p.get("num_requests"),
        "num_finished": p.get("num_finished"),
        "makespan_s": p.get("makespan_s"),
        "output_tokens_per_s": p.get("output_tokens_per_s"),
        "total_tokens_per_s": p.get("total_tokens_per_s"),
        "ttft_p50_s": q(p.get("ttft_s"), "p50"),
        "ttft_p99_s": q(p.get("ttft_s"), "p99"),
        "tpot_p50_s": q(p.get("tpot_s"), "p50"),
        "tpot_p99_s": q(p.get("tpot_s"), "p99"),
        "e2e_p99_s": q(p.get("e2e_s"), "p99"),
        "prefix_cache_hit_ratio": p.get("prefix_cache_hit_ratio"),
        "gpu_utilization_mean": p.get("gpu_utilization_mean"),
        "preemptions": p.get("preemptions"),
        "slo_attainment": e.get("slo_attainment"),
        "goodput_rps": e.get("goodput_rps"),
        "energy_wh": s.get("energy_wh"),
        "avg_power_w": s.get("avg_power_w"),
        "peak_power_w": s.get("peak_power_w"),
        "carbon_g": s.get("carbon_g"),
        "wh_per_mtoken": e.get("wh_per_mtoken"),
        "gco2_per_mtoken": e.get("gco2_per_mtoken"),
        "total_gco2_per_mtoken": e.get("total_gco2_per_mtoken"),  # operational (PUE) + embodied; OpenDC runs
        "cost_per_mtoken": e.get("cost_per_mtoken"),
        "wh_per_mtoken_per_s": e.get("wh_per_mtoken_per_s"),
        "kgco2_per_mtoken_per_s": e.get("kgco2_per_mtoken_per_s"),
        "cost_per_mtoken_per_s": e.get("cost_per_mtoken_per_s"),
        "currency": e.get("currency"),
        "wall_s": (report.get("provenance") or {}).get("wall_s"),
    }


def comparison_table(sweep: Sweep, out: Path):
    """One row per configuration (finished or not) with the key metrics."""
    import pandas as pd

    rows = []
    for r in sweep.runs:
        rd = out / "runs" / r.id
        row: dict[str, Any] = {"run": r.id, "label": r.label, **{a.name: r.labels[a.name] for a in sweep.axes}}
        if run_is_done(rd, r.config_hash):
            try:
                rep = json.loads((rd / "report.json").read_text(encoding="utf-8"))
                row.update(status="done", **report_row(rep))
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                row.update(status=f"unreadable report ({exc})")
        else:
            row.update(status="failed" if is_incomplete(rd) else "not run")
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return fmt(v)


def write_comparison(sweep: Sweep, out: Path, table) -> None:
    """comparison.csv (every column), comparison.md (the key ones), plots and sweep.html (the key columns,
    sortable, with the plots embedded)."""
    from kavier_opendc.reports import plots as P

    tmp = out / ".comparison.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "comparison.csv")
    axes = [a.name for a in sweep.axes]
    has_energy = "energy_wh" in table and table["energy_wh"].notna().any()
    cols = (
        [
            "ttft_p50_s",
            "ttft_p99_s",
            "tpot_p99_s",
            "e2e_p99_s",
            "prefix_cache_hit_ratio",
            "slo_attainment",
            "goodput_rps",
        ]
        + (["energy_wh", "carbon_g", "wh_per_mtoken", "gco2_per_mtoken"] if has_energy else [])
        + ["cost_per_mtoken"]
    )
    names = dict(TABLE_COLUMNS)
    cur = next((c for c in table.get("currency", []) if isinstance(c, str)), "USD") if len(table) else "USD"
    head = ["run"] + axes + [names.get(c, c).replace("cost", cur) for c in cols] + ["status"]
    unfinished = int((table["status"] != "done").sum()) if len(table) else 0
    lines = (
        [f"# Sweep {sweep.name}", ""]
        + (
            [
                f"**Incomplete: {unfinished} of {len(table)} configurations did not finish** (see INCOMPLETE and "
                "the status column); rerun the sweep to retry them.",
                "",
            ]
            if unfinished
            else []
        )
        + [
            f"{len(table)} configurations ({' x '.join(f'{len(a.values)} {a.name}' for a in sweep.axes)}); "
            f"source {sweep.source}.",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * (1 + len(axes)) + ["---:"] * len(cols) + ["---"]) + "|",
        ]
    )
    for _, row in table.iterrows():
        vals = [str(row["run"])] + [str(row[a]) for a in axes] + [_fmt(row.get(c)) for c in cols] + [str(row["status"])]
        lines.append("| " + " | ".join(vals) + " |")
    stale = stale_run_folders(sweep, out)
    if stale:
        lines += [
            "",
            f"{len(stale)} folder(s) under runs/ belong to no configuration of this sweep and were kept: "
            + ", ".join(f"`{n}`" for n in stale[:50])
            + (f" and {len(stale) - 50} more (sweep.json lists them)" if len(stale) > 50 else "")
            + ".",
        ]
    lines += [
        "",
        "Definitions: as in each run's report.md (tokens = input + output tokens of finished requests; "
        "energy from OpenDC, J / 3600 = Wh; cost = GPU-hours of the GPUs whose energy is counted "
        "(the datacenter's with OpenDC) x price + electricity).",
        "",
        "![trade-off](plots/tradeoff.png)",
        "",
        "![metrics](plots/metrics.png)",
        "",
    ]
    atomic_write_text(out / "comparison.md", "\n".join(lines))
    pd_dir = out / "plots"
    if has_energy:
        P.sweep_tradeoff(table, pd_dir / "tradeoff.png", x="ttft_p99_s", y="wh_per_mtoken")
        P.sweep_tradeoff(
            table,
            pd_dir / "tradeoff_carbon.png",
            x="ttft_p99_s",
            y="gco2_per_mtoken",
            ylabel="carbon per million tokens (gCO2/Mtoken)",
        )
        metrics = [
            ("ttft_p99_s", "p99 TTFT (s)"),
            ("wh_per_mtoken", "energy (Wh/Mtoken)"),
            ("gco2_per_mtoken", "carbon (gCO2/Mtoken)"),
            ("cost_per_mtoken", f"cost ({cur}/Mtoken)"),
        ]
    else:
        P.sweep_tradeoff(
            table,
            pd_dir / "tradeoff.png",
            x="ttft_p99_s",
            y="cost_per_mtoken",
            ylabel=f"cost per million tokens ({cur}/Mtoken)",
        )
        metrics = [
            ("ttft_p99_s", "p99 TTFT (s)"),
            ("tpot_p99_s", "p99 TPOT (s)"),
            ("prefix_cache_hit_ratio", "prefix hit ratio"),
            ("cost_per_mtoken", f"cost ({cur}/Mtoken)"),
        ]
    P.sweep_bars(table, metrics, pd_dir / "metrics.png", title=f"Sweep {sweep.name}")
    y_front = "wh_per_mtoken" if has_energy else "cost_per_mtoken"
    images = [(pd_dir / "tradeoff.png", f"trade-off: ttft_p99_s against {y_front}, one point per configuration")]
    if has_energy:
        images.append((pd_dir / "tradeoff_carbon.png", "trade-off in carbon"))
    images.append((pd_dir / "metrics.png", "key metrics per configuration"))
    columns = (
        [("run", "run")]
        + [(a, a) for a in axes]
        + [(c, names.get(c, c).replace("cost", cur)) for c in cols]
        + [("on_front", f"Pareto front (TTFT p99, {y_front})"), ("status", "status")]
    )
    rows = [{k: row.get(k) for k, _ in columns} for _, row in table.iterrows()]
    for r, on in zip(rows, pareto_flags(rows, "ttft_p99_s", y_front), strict=True):
        r["on_front"] = "yes" if on else ""
    write_comparison_html(
        out / SWEEP_HTML,
        f"Sweep {sweep.name}",
        [lines[i] for i in range(2, len(lines)) if lines[i] and not lines[i].startswith(("|", "!"))][:2],
        columns,
        rows,
        images,
        lambda v: v if isinstance(v, str) else _fmt(v),
    )
