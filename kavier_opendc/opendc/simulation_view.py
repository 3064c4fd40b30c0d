"""A simulation's outputs as the OpenDC export sees them: checked, with each replica's GPU type, tp and model.

Reads (or is handed, in a run) a :class:`~kavier_opendc.engine.outputs.SimulationOutput`,
checks the timeline and summary a user may have written by hand or with another
version, and numbers the replicas group after group.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.outputs import REQUESTS_REQUIRED, TIMELINE_REQUIRED, SimulationOutput

_UTIL_SLACK = 1e-6


# --------------------------------------------------------------------------
# Reading the simulation output
# --------------------------------------------------------------------------


@dataclass
class Simulation:
    """A simulation's output as the export needs it. Replicas are numbered
    0..replicas-1; ``replica_gpu``/``replica_tp``/``replica_model`` give each
    replica's GPU type (as the simulation spells it; None when the
    simulation does not say), tensor-parallel degree and model."""

    timeline: pd.DataFrame
    summary: dict
    makespan_s: float
    replicas: int
    tp: int | None  # the tp of every replica; None when they differ
    gpu: str | None  # the GPU type of every replica; None when several or unknown
    source: str
    replica_gpu: list = field(default_factory=list)
    replica_tp: list = field(default_factory=list)
    replica_model: list = field(default_factory=list)
    sim_dir: Path | None = None
    output: SimulationOutput | None = None  # the outputs it was read from (requests for the per-request export)

    @property
    def gpu_types(self) -> list[str]:
        """The distinct GPU types (case-insensitive), in replica order."""
        out: dict[str, str] = {}
        for g in self.replica_gpu:
            if g is not None:
                out.setdefault(g.strip().lower(), g)
        return list(out.values())

    @property
    def groups(self) -> list[dict]:
        """Consecutive replicas with the same (model, gpu, tp), as in
        summary.json's ``config.replica_groups``."""
        out: list[dict] = []
        for r in range(self.replicas):
            key = (self.replica_model[r], self.replica_gpu[r], self.replica_tp[r])
            if out and (out[-1]["model"], out[-1]["gpu"], out[-1]["tp"]) == key:
                out[-1]["replicas"] += 1
            else:
                out.append({"model": key[0], "gpu": key[1], "tp": key[2], "replicas": 1, "first_replica": r})
        return out


def _int_value(x) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return int(x)
    return None


def _summary_groups(cfg: dict, src: str) -> list[dict] | None:
    """``config.replica_groups`` of summary.json, checked; None when absent."""
    rg = cfg.get("replica_groups")
    if rg is None:
        return None
    if not isinstance(rg, list) or not rg:
        raise KavierInputError(
            f"{rg!r}",
            source=src,
            location="config.replica_groups",
            expected="a non-empty list of {model, gpu, replicas, tp}",
        )
    out = []
    for i, g in enumerate(rg):
        loc = f"config.replica_groups[{i}]"
        if not isinstance(g, dict):
            raise KavierInputError(f"{g!r}", source=src, location=loc, expected="an object {model, gpu, replicas, tp}")
        gpu = g.get("gpu")
        if not isinstance(gpu, str) or not gpu.strip():
            raise KavierInputError(f"gpu {gpu!r}", source=src, location=f"{loc}.gpu", expected="a GPU catalogue name")
        n, tp = _int_value(g.get("replicas")), _int_value(g.get("tp", 1))
        if n is None or n < 1:
            raise KavierInputError(
                f"replicas {g.get('replicas')!r}", source=src, location=f"{loc}.replicas", expected="an integer >= 1"
            )
        if tp is None or tp < 1:
            raise KavierInputError(f"tp {g.get('tp')!r}", source=src, location=f"{loc}.tp", expected="an integer >= 1")
        model = g.get("model")
        out.append({"model": str(model) if model is not None else None, "gpu": gpu.strip(), "replicas": n, "tp": tp})
    return out


def _per_replica_column(tl: pd.DataFrame, col: str, src: str, conv) -> dict[int, Any]:
    """{replica: value} of a per-replica column; one value per replica."""
    if col not in tl.columns or not len(tl):
        return {}
    pairs = pd.DataFrame({"replica": tl["replica"].to_numpy(), "v": [conv(x) for x in tl[col]]}).drop_duplicates()
    dup = pairs["replica"].duplicated(keep=False)
    if dup.any():
        r = int(pairs.loc[dup, "replica"].iloc[0])
        vals = sorted(str(v) for v in pairs.loc[pairs["replica"] == r, "v"])
        raise KavierInputError(
            f"replica {r} has several values {vals}",
            source=src,
            location=f"column {col}",
            expected=f"one {col} per replica",
        )
    return {int(r): v for r, v in zip(pairs["replica"], pairs["v"], strict=True)}


def _conv_tp(x) -> int:
    v = _int_value(x)
    return v if v is not None else -1


def read_simulation(source: str | os.PathLike | SimulationOutput) -> Simulation:
    """Check a simulation's timeline and summary (a folder's ``timeline.parquet`` and ``summary.json``, or a
    :class:`SimulationOutput` in memory) and describe its replicas for the export.

    Each replica's GPU type and tp come from summary.json's
    ``config.replica_groups`` (replicas numbered group after group), checked
    against the timeline's ``gpu``/``tp`` columns; without groups, from
    those columns, and for replicas without timeline rows from
    ``config.gpu``/``config.tp`` (or the one value all other replicas share).
    """
    output = source if isinstance(source, SimulationOutput) else SimulationOutput.read(source)
    sim_dir = output.folder
    src = output.path("timeline.parquet")
    tl = output.timeline_frame()
    missing = [c for c in TIMELINE_REQUIRED if c not in tl.columns]
    if missing:
        raise KavierInputError(
            f"missing column(s) {missing}", source=src, expected=f"columns {list(TIMELINE_REQUIRED)} (+ gpu, tp)"
        )
    summary = output.summary
    sp = Path(output.path("summary.json"))
    cfg = summary.get("config", {}) if isinstance(summary.get("config"), dict) else {}
    for col in ("start_s", "end_s", "gpu_utilization"):
        v = tl[col].to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise KavierInputError(
                f"value {v[bad[0]]!r} is not finite",
                source=src,
                location=f"row {int(bad[0])}, column {col}",
                expected="a finite number",
            )
    rep = tl["replica"].to_numpy()
    if len(tl):
        repf = rep.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(repf) | (repf < 0) | (repf != np.floor(repf)))
        if bad.size:
            raise KavierInputError(
                f"replica {rep[bad[0]]!r}",
                source=src,
                location=f"row {int(bad[0])}, column replica",
                expected="a replica index >= 0",
            )
    st, en, ut = (tl[c].to_numpy(np.float64) for c in ("start_s", "end_s", "gpu_utilization"))
    bad = np.flatnonzero((st < -1e-9) | (en < st))
    if bad.size:
        raise KavierInputError(
            f"segment [{st[bad[0]]}, {en[bad[0]]}]",
            source=src,
            location=f"row {int(bad[0])}, columns start_s/end_s",
            expected="0 <= start_s <= end_s",
        )
    bad = np.flatnonzero((ut < -_UTIL_SLACK) | (ut > 1 + _UTIL_SLACK))
    if bad.size:
        raise KavierInputError(
            f"utilisation {ut[bad[0]]!r}",
            source=src,
            location=f"row {int(bad[0])}, column gpu_utilization",
            expected="0..1",
        )
    tl = tl.copy()
    tl["gpu_utilization"] = np.clip(ut, 0.0, 1.0)
    tl["start_s"] = np.maximum(st, 0.0)
    if len(tl):
        tl["replica"] = tl["replica"].astype(np.int64)

    groups = _summary_groups(cfg, str(sp))
    tl_gpu = _per_replica_column(
        tl, "gpu", src, lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    )
    tl_tp = _per_replica_column(tl, "tp", src, _conv_tp)
    for r, v in tl_tp.items():
        if v < 1:
            raise KavierInputError(
                f"replica {r} has tp {v}", source=src, location="column tp", expected="an integer >= 1"
            )
    tl_model = _per_replica_column(tl, "model", src, lambda x: None if x is None else str(x))
    n_tl = int(tl["replica"].max()) + 1 if len(tl) else 0
    cfg_replicas = _int_value(cfg.get("replicas")) or 0
    if groups is not None:
        replicas = sum(g["replicas"] for g in groups)
        if n_tl > replicas:
            raise KavierInputError(
                f"the timeline has replica {n_tl - 1} but config.replica_groups describe {replicas} replica(s)",
                source=src,
                location="column replica",
                expected=f"replica indices 0..{replicas - 1} (as in {sp.name})",
            )
        if cfg_replicas and cfg_replicas != replicas:
            raise KavierInputError(
                f"config.replicas is {cfg_replicas} but config.replica_groups add up to {replicas}",
                source=str(sp),
                location="config.replicas",
                expected="the sum of the groups' replicas",
            )
        r_gpu, r_tp, r_model = [], [], []
        for g in groups:
            r_gpu += [g["gpu"]] * g["replicas"]
            r_tp += [g["tp"]] * g["replicas"]
            r_model += [g["model"]] * g["replicas"]
        for r in range(replicas):
            if tl_gpu.get(r) is not None and tl_gpu[r].strip().lower() != r_gpu[r].lower():
                raise KavierInputError(
                    f"replica {r} runs on {tl_gpu[r]!r} in the timeline but on {r_gpu[r]!r} in "
                    f"{sp.name} config.replica_groups (replicas are numbered group after group)",
                    source=src,
                    location=f"replica {r}, column gpu",
                    expected=r_gpu[r],
                )
            if r in tl_tp and tl_tp[r] != r_tp[r]:
                raise KavierInputError(
                    f"replica {r} has tp={tl_tp[r]} in the timeline but tp={r_tp[r]} in {sp.name} "
                    "config.replica_groups",
                    source=src,
                    location=f"replica {r}, column tp",
                    expected=f"tp={r_tp[r]}",
                )
    else:
        replicas = max(cfg_replicas, n_tl)
        cg, ct = cfg.get("gpu"), _int_value(cfg.get("tp"))
        r_gpu = [tl_gpu.get(r) or (str(cg) if cg is not None else None) for r in range(replicas)]
        r_tp = [tl_tp.get(r, ct) for r in range(replicas)]
        r_model = [tl_model.get(r, cfg.get("model")) for r in range(replicas)]
        known = {g.strip().lower(): g for g in r_gpu if g is not None}
        if len(known) == 1:
            r_gpu = [g if g is not None else next(iter(known.values())) for g in r_gpu]
        elif len(known) > 1 and None in r_gpu:
            r = r_gpu.index(None)
            raise KavierInputError(
                f"replica {r} has no timeline rows and the replicas run on several GPU types "
                f"{sorted(known.values())}: its GPU type is unknown",
                source=str(sp),
                location="config.replica_groups",
                expected="config.replica_groups [{model, gpu, replicas, tp}, ...]",
            )
        tps = {t for t in r_tp if t is not None}
        fill = next(iter(tps)) if len(tps) == 1 else 1
        if len(tps) > 1 and None in r_tp:
            r = r_tp.index(None)
            raise KavierInputError(
                f"replica {r} has no timeline rows and the replicas have several tp values "
                f"{sorted(tps)}: its tp is unknown",
                source=str(sp),
                location="config.replica_groups",
                expected="config.replica_groups [{model, gpu, replicas, tp}, ...]",
            )
        r_tp = [int(t) if t is not None else fill for t in r_tp]
    if replicas < 1:
        raise KavierInputError(
            "no replicas in the timeline and none in summary.json config", source=src, expected="at least one replica"
        )
    makespan = summary.get("makespan_s")
    last = float(tl["end_s"].max()) if len(tl) else 0.0
    makespan = float(makespan) if makespan is not None else last
    makespan = max(makespan, last)
    if not (makespan > 0):
        raise KavierInputError(
            "the simulation has zero makespan: nothing to export", source=src, expected="a timeline with activity"
        )
    kinds = {g.strip().lower() for g in r_gpu if g is not None}
    gpu = r_gpu[0] if len(kinds) == 1 and None not in r_gpu else None
    tp = r_tp[0] if len(set(r_tp)) == 1 else None
    return Simulation(tl, summary, makespan, replicas, tp, gpu, src, r_gpu, r_tp, r_model, sim_dir, output)


def read_requests(sim: Simulation) -> tuple[pd.DataFrame, int]:
    """Finished requests of ``SIM_DIR/requests.parquet`` with ``replica``,
    ``arrival_s``, ``e2e_s`` and ``tokens`` (prompt tokens + output tokens x
    samples); also the number of requests left out (not finished)."""
    output = sim.output if sim.output is not None else SimulationOutput.read(sim.sim_dir or ".")
    src = output.path("requests.parquet")
    if output.requests is None:
        raise KavierInputError(
            "requests not found (needed by the per-request export)",
            source=src,
            expected="a simulation output folder written by `kavier simulate`",
        )
    df = output.requests_frame()
    missing = [c for c in REQUESTS_REQUIRED if c not in df.columns]
    if "e2e_s" not in df.columns and "finish_s" not in df.columns:
        missing.append("e2e_s (or finish_s)")
    if missing:
        raise KavierInputError(
            f"missing column(s) {missing}", source=src, expected=f"columns {list(REQUESTS_REQUIRED)} + e2e_s"
        )
    arrival = df["arrival_s"].to_numpy(np.float64)
    e2e = df["e2e_s"].to_numpy(np.float64) if "e2e_s" in df.columns else df["finish_s"].to_numpy(np.float64) - arrival
    if "status" in df.columns:
        done = (df["status"].astype(str).str.lower() == "finished").to_numpy()
    else:
        done = np.isfinite(e2e)
    rep = df["replica"].to_numpy(np.float64)
    for name, v in (("arrival_s", arrival), ("e2e_s", e2e), ("replica", rep)):
        bad = np.flatnonzero(done & ~np.isfinite(v))
        if bad.size:
            raise KavierInputError(
                f"value {v[bad[0]]!r} of a finished request is not finite",
                source=src,
                location=f"row {int(bad[0])}, column {name}",
                expected="a finite number",
            )
    bad = np.flatnonzero(done & ((arrival < -1e-9) | (e2e < 0)))
    if bad.size:
        raise KavierInputError(
            f"arrival_s {arrival[bad[0]]!r}, e2e_s {e2e[bad[0]]!r}",
            source=src,
            location=f"row {int(bad[0])}, columns arrival_s/e2e_s",
            expected="arrival_s >= 0 and e2e_s >= 0",
        )
    bad = np.flatnonzero(done & ((rep < 0) | (rep >= sim.replicas) | (rep != np.floor(rep))))
    if bad.size:
        raise KavierInputError(
            f"replica {rep[bad[0]]!r}",
            source=src,
            location=f"row {int(bad[0])}, column replica",
            expected=f"a replica index 0..{sim.replicas - 1} (the timeline's replicas)",
        )
    n = df["n"].to_numpy(np.float64) if "n" in df.columns else np.ones(len(df))
    n = np.where(np.isfinite(n) & (n >= 1), n, 1.0)
    tokens = (
        np.nan_to_num(df["num_input_tokens"].to_numpy(np.float64))
        + np.nan_to_num(df["num_output_tokens"].to_numpy(np.float64)) * n
    )
    ids = df["request_id"].to_numpy(np.int64) if "request_id" in df.columns else np.arange(len(df), dtype=np.int64)
    out = pd.DataFrame(
        {
            "request_id": ids[done],
            "replica": rep[done].astype(np.int64),
            "arrival_s": np.maximum(arrival[done], 0.0),
            "e2e_s": e2e[done],
            "tokens": np.maximum(tokens[done], 1.0),
        }
    )
    out = out.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)
    return out, int((~done).sum())
