"""A run's output folder: what it holds, its markers, its configuration hash, and whether it is done.

This module owns:

- the names in a `kavier run` folder (:data:`RUN_ENTRIES`, :data:`REPORT_JSON`,
  :data:`EXPERIMENT_COPY`) and making a folder ready for a run
  (:func:`prepare_out_dir`);
- the markers: ``INCOMPLETE`` (the folder is not whole: a run, sweep or
  export in progress or failed; the name itself lives in ``base.atomic`` so
  the lower layers use the same one) and ``DONE`` (a sweep's or plan's
  finished run, holding its configuration hash); written atomically
  (:func:`mark_incomplete`, :func:`mark_failed_run`, :func:`mark_done`) and
  cleared (:func:`clear_incomplete`, :func:`clear_done`);
- the hashes: :func:`sha256_file`, :func:`config_hash` (what a ``DONE``
  marker holds) and :func:`run_key` (the short hash a sweep names a run's
  folder by, also in its ``DONE`` marker: :func:`recorded_key`);
- :func:`run_is_done`: a finished run a sweep or plan may reuse, its files verified
  (:func:`run_done_problem` says what is wrong with one that is not);
- the experiment as run (:func:`absolutized`, :func:`write_experiment_copy`):
  ``DIR/experiment.json`` with every path absolute.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from kavier_opendc.base.atomic import INCOMPLETE, atomic_write_text, check_writable_dir, make_dirs, write_json_atomic
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.output_folder import INNER_LOCK
from kavier_opendc.experiments.experiment import Experiment
from kavier_opendc.opendc.carbon import looks_like_path

DONE = "DONE"
REPORT_JSON = "report.json"
EXPERIMENT_COPY = "experiment.json"
#: Everything a `kavier run` writes into its folder (and clears from it before the next run).
RUN_ENTRIES = (
    "simulation",
    "opendc",
    "plots",
    REPORT_JSON,
    "report.md",
    "report.html",
    "sessions.parquet",
    EXPERIMENT_COPY,
    INCOMPLETE,
)


# --------------------------------------------------------------------------
# The folder and its markers
# --------------------------------------------------------------------------


def prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready for a run: create it, or clear an earlier run in it.
    A non-empty folder that does not hold a kavier run is refused."""
    out = Path(out)
    check_writable_dir(out)
    if out.exists():
        entries = [p for p in out.iterdir() if p.name != INNER_LOCK]
        known = {p.name for p in entries} & set(RUN_ENTRIES)
        if entries and not known:
            raise KavierInputError(
                f"output folder {out} is not empty and holds no earlier kavier run",
                location="--out",
                expected="a new or empty folder, or one written by kavier run",
            )
        if known:  # marked first: a kill while the earlier run is cleared leaves no complete-looking folder
            mark_incomplete(out, f"kavier run: clearing an earlier run (pid {os.getpid()})\n")
        for p in entries:
            if p.name in RUN_ENTRIES and p.name != INCOMPLETE:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    make_dirs(out)  # within a sweep's runs/ only while that is still there


def mark_incomplete(folder: Path, text: str) -> None:
    """``folder/INCOMPLETE`` holding ``text``, written atomically (readers never see half of it)."""
    atomic_write_text(Path(folder) / INCOMPLETE, text)


def clear_incomplete(folder: Path, *, missing_ok: bool = True) -> None:
    (Path(folder) / INCOMPLETE).unlink(missing_ok=missing_ok)


def is_incomplete(folder: Path) -> bool:
    return (Path(folder) / INCOMPLETE).exists()


def mark_failed_run(run_dir: Path, error: str) -> None:
    """A run that failed before its own folder was prepared still gets an INCOMPLETE marker
    (an earlier one, with the stage that failed, is kept). Below an output root that is gone (a removed
    sweep folder) nothing is made for it."""
    try:
        make_dirs(run_dir)
        if not is_incomplete(run_dir):
            mark_incomplete(run_dir, f"kavier sweep: this run FAILED before it started:\n{error}\n")
    except OSError:
        pass


def mark_done(run_dir: Path, config_hash: str, **details) -> None:
    """``run_dir/DONE``: the run finished with configuration ``config_hash`` (and ``details``: id, times, worker)."""
    write_json_atomic(Path(run_dir) / DONE, {"config_hash": config_hash, **details})


def clear_done(run_dir: Path) -> None:
    (Path(run_dir) / DONE).unlink(missing_ok=True)


def run_is_done(run_dir: Path, config_hash: str) -> bool:
    """A finished run a sweep or plan may reuse (:func:`run_done_problem` finds nothing wrong with it)."""
    return run_done_problem(run_dir, config_hash) is None


#: The files a finished run must hold whole (besides report.json): the simulation's outputs.
SIMULATION_FILES = ("simulation/requests.parquet", "simulation/timeline.parquet", "simulation/summary.json")


def run_done_problem(run_dir: Path, config_hash: str) -> str | None:
    """Why ``run_dir`` is not a finished run of configuration ``config_hash`` (None: it is one): no DONE
    marker, another hash, an INCOMPLETE marker, or a file it must hold missing, empty or cut short
    (report.json and the simulation's summary.json must parse, the Parquet files end with their footer)."""
    run_dir = Path(run_dir)
    marker = run_dir / DONE
    if not marker.is_file():
        return "no DONE marker"
    if is_incomplete(run_dir):
        return "INCOMPLETE"
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("config_hash") != config_hash:
            return "another configuration"
    except (OSError, ValueError, AttributeError):
        return "unreadable DONE marker"
    for name in (REPORT_JSON, *SIMULATION_FILES):
        problem = _file_problem(run_dir / name)
        if problem:
            return f"{name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """What is wrong with one output file (None: it looks whole)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "is not a file"
        if size == 0:
            return "is empty"
        if path.suffix == ".parquet":
            with open(path, "rb") as fh:
                head = fh.read(4)
                fh.seek(max(0, size - 4))
                tail = fh.read(4)
            return None if size >= 12 and head == tail == b"PAR1" else "is cut short (no Parquet footer)"
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError) as exc:
        return f"is unreadable or cut short ({type(exc).__name__})"
    if path.name == REPORT_JSON and not (
        isinstance(data, dict) and all(k in data for k in ("performance", "efficiency", "provenance"))
    ):
        return "lacks a report's sections"
    return None


# --------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


#: hex digits of a run key: 48 bits, so 100,000 configurations collide with odds of about 1 in 50,000 (a sweep
#: checks: two configurations with the same key are refused)
RUN_KEY_LENGTH = 12


def run_key(document: Mapping, opendc: bool | None) -> str:
    """The short, stable key of a run's configuration: the first :data:`RUN_KEY_LENGTH` hex digits of the
    SHA-256 of the canonical JSON of its experiment document (paths absolute, keys sorted, ASCII, no spaces;
    the ``name`` left out, as a sweep derives the name from this key) and the OpenDC switch. It does not
    depend on dict order, on the run's position in a sweep or on the Python version; the input files' bytes
    are not in it (:func:`config_hash` has them), so an edited trace reruns a run in the same folder."""
    doc = {k: v for k, v in document.items() if k != "name"}
    text = json.dumps(
        {"experiment": doc, "opendc": opendc},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=True,
        default=str,
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:RUN_KEY_LENGTH]


def recorded_key(run_dir: Path) -> str | None:
    """The run key in ``run_dir/DONE`` (None without a marker, or one that names no key)."""
    try:
        key = json.loads((Path(run_dir) / DONE).read_text(encoding="utf-8")).get("key")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def config_hash(document: Mapping, exp, opendc: bool | None) -> str:
    """Hash of a run's configuration: its document, its input files' bytes and the OpenDC switch."""
    h = hashlib.sha256()
    h.update(json.dumps(document, sort_keys=True, default=str).encode())
    h.update(json.dumps({"opendc": opendc}).encode())
    for role, p in exp.input_files:
        try:
            h.update(f"{role}:{sha256_file(Path(p))}".encode())
        except OSError:
            h.update(f"{role}:missing".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------
# The experiment as run
# --------------------------------------------------------------------------


def absolutized(exp: Experiment) -> dict:
    """The experiment document with every relative path made absolute, so the
    copy in the output folder runs from anywhere."""
    d = copy.deepcopy(exp.data)
    base = exp.base_dir

    def ab(v):
        p = Path(v).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    t = d.get("trace")
    if isinstance(t, str):
        d["trace"] = ab(t)
    elif isinstance(t, dict):
        if isinstance(t.get("file"), str):
            t["file"] = ab(t["file"])
        if isinstance(t.get("synthetic"), str):
            t["synthetic"] = ab(t["synthetic"])
        elif isinstance(t.get("synthetic"), dict):
            _abs_files(t["synthetic"], ab)
    if isinstance(d.get("datacenter"), str):
        d["datacenter"] = ab(d["datacenter"])
    elif isinstance(d.get("datacenter"), dict):
        ps = d["datacenter"].get("power_source")
        if isinstance(ps, dict) and isinstance(ps.get("carbon_trace"), str):
            if looks_like_path(ps["carbon_trace"]):
                ps["carbon_trace"] = ab(ps["carbon_trace"])
    if isinstance(d.get("catalog"), list):
        d["catalog"] = [ab(c) if isinstance(c, str) else c for c in d["catalog"]]
    c = d.get("carbon")
    if isinstance(c, dict) and isinstance(c.get("trace"), str):
        c["trace"] = ab(c["trace"])
    return d


def _abs_files(x, ab) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "file" and isinstance(v, str):
                x[k] = ab(v)
            else:
                _abs_files(v, ab)


def write_experiment_copy(out: Path, exp: Experiment) -> None:
    """``out/experiment.json``: the experiment as run, its paths absolute."""
    write_json_atomic(Path(out) / EXPERIMENT_COPY, absolutized(exp))


__all__ = [
    "DONE",
    "EXPERIMENT_COPY",
    "INCOMPLETE",
    "REPORT_JSON",
    "RUN_ENTRIES",
    "RUN_KEY_LENGTH",
    "absolutized",
    "clear_done",
    "clear_incomplete",
    "config_hash",
    "is_incomplete",
    "mark_done",
    "mark_failed_run",
    "mark_incomplete",
    "prepare_out_dir",
    "recorded_key",
    "run_done_problem",
    "run_is_done",
    "run_key",
    "SIMULATION_FILES",
    "sha256_file",
    "write_experiment_copy",
]
