"""Plan files (``schemas/plan.schema.json``): the question `kavier plan` answers, and the experiments it asks.

A plan names the traffic (a trace or a synthetic workload, optionally at a
target rate), the SLOs (TTFT and TPOT at a percentile, optionally a minimum
attainment), the candidates (GPU types or mixes of them, TP degrees, batching
limits, prefix-cache policies, routers, a replica range), the datacenter whose
host groups are templates, the carbon source, prices and the objective::

    name: chat-capacity
    model: Llama-3-8B
    traffic: {workload: chat.yaml, rate: 12}
    slo: {ttft_s: 0.5, tpot_s: 0.05, percentile: 90}
    candidates:
      gpu: [A100-80GB, H100-SXM]
      tp: [1, 2]
      prefix_cache: [none, block]
      replicas: {min: 1, max: 8}
    datacenter: {hosts: [{name: node, gpus_per_host: 4, cpu: {cores: 64, mhz: 2450}, memory_gib: 1024}]}
    carbon: {region: NL}
    objective: carbon

A *shape* is one candidate serving setup without its replica count;
:meth:`Plan.experiment` turns (shape, replicas) into an experiment document
that `kavier run` accepts, with the datacenter sized to its GPUs. Every
problem of the file, and of the experiment of every shape, is reported at
once, as for experiment and sweep files.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import atomic_write_text
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import json_path, schema_validator
from kavier_opendc.experiments.experiment import (
    SYNTHETIC_SUFFIXES,
    experiment_problems,
    raise_problems,
    read_document,
    schema_problems,
    with_overrides,
)

SCHEMA_FILE = "plan.schema.json"
# the built-in example (`kavier plan --example`): multi-turn chat on A100 or H100, TP 1/2, prefix caching on/off
EXAMPLE_PLAN = Path(__file__).resolve().parent.parent / "data" / "plan_example.yaml"
DEFAULT_PERCENTILE = 99.0
DEFAULT_REPLICAS = (1, 8)
DEFAULT_NEAR_FRONT = 0.1
OBJECTIVES = ("cost", "energy", "carbon")


@dataclass(frozen=True)
class Shape:
    """One candidate serving setup; the replica count is what the planner searches."""

    gpus: tuple[tuple[str, int], ...]   # (GPU type, replicas per unit of the mix); one entry: a single type
    tp: int
    prefix_cache: str
    router: str | None
    max_num_seqs: int | None
    max_batched_tokens: int | None

    @property
    def gpu_label(self) -> str:
        if len(self.gpus) == 1:
            return self.gpus[0][0]
        return "+".join(f"{k}x{g}" for g, k in self.gpus)

    @property
    def label(self) -> str:
        parts = [self.gpu_label, f"TP{self.tp}", f"prefix {self.prefix_cache}"]
        if self.router:
            parts.append(self.router)
        if self.max_num_seqs:
            parts.append(f"seqs {self.max_num_seqs}")
        if self.max_batched_tokens:
            parts.append(f"tokens {self.max_batched_tokens}")
        return ", ".join(parts)

    @property
    def slug(self) -> str:
        text = "_".join([self.gpu_label, f"tp{self.tp}", f"pc-{self.prefix_cache}"]
                        + ([self.router] if self.router else [])
                        + ([f"seqs{self.max_num_seqs}"] if self.max_num_seqs else [])
                        + ([f"tok{self.max_batched_tokens}"] if self.max_batched_tokens else []))
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)

    def replicas_of(self, units: int) -> int:
        """Replicas in ``units`` copies of the mix (a single GPU type: ``units`` replicas)."""
        return units * sum(k for _, k in self.gpus)

    def gpus_of(self, units: int) -> dict[str, int]:
        return {g: units * k * self.tp for g, k in self.gpus}


@dataclass
class SLO:
    """When a run meets the plan's service levels."""

    ttft_s: float | None
    tpot_s: float | None
    percentile: float = DEFAULT_PERCENTILE
    min_attainment: float | None = None

    def describe(self) -> str:
        parts = []
        if self.ttft_s is not None:
            parts.append(f"p{self.percentile:g} TTFT <= {self.ttft_s:g} s")
        if self.tpot_s is not None:
            parts.append(f"p{self.percentile:g} TPOT <= {self.tpot_s:g} s")
        if self.min_attainment is not None:
            parts.append(f">= {self.min_attainment:.0%} of requests within both")
        return ", ".join(parts)


@dataclass
class Plan:
    """A validated plan (see the module docstring)."""

    data: dict
    source: str
    base_dir: Path
    name: str
    seed: int
    model: str
    workload: Path
    workload_format: str | None
    rate: float | None
    slo: SLO
    shapes: list[Shape]
    units: tuple[int, int]              # the searched range of replica counts (units of a mix)
    objective: str | dict
    near_front: float
    max_rate: dict

    # ----------------------------------------------------------------- experiments
    def experiment(self, shape: Shape, units: int, traffic: Path, *, opendc: bool) -> dict:
        """The experiment document of ``shape`` at ``units`` replicas (of its mix), on ``traffic``."""
        d = self.data
        serving: dict[str, Any] = {"prefix_cache": {"policy": shape.prefix_cache}}
        for key in ("router", "max_num_seqs", "max_batched_tokens"):
            if getattr(shape, key) is not None:
                serving[key] = getattr(shape, key)
        doc: dict[str, Any] = {"name": f"{self.name}-{shape.slug}-n{units}", "seed": self.seed, "model": self.model,
                               "trace": str(traffic)}
        if self.workload_format and Path(traffic) == self.workload:
            doc["trace"] = {"file": str(traffic), "format": self.workload_format}
        if len(shape.gpus) == 1:
            doc["gpu"] = shape.gpus[0][0]
            serving.update(replicas=units, tp=shape.tp)
        else:
            serving["replica_groups"] = [{"name": g, "gpu": g, "replicas": units * k, "tp": shape.tp}
                                         for g, k in shape.gpus]
        doc["serving"] = serving
        for key in ("catalog", "carbon", "prices"):
            if key in d:
                doc[key] = copy.deepcopy(d[key])
        slo = {k: v for k, v in (("ttft_s", self.slo.ttft_s), ("tpot_s", self.slo.tpot_s)) if v is not None}
        doc["slo"] = slo
        if "datacenter" in d:
            doc["datacenter"] = sized_datacenter(d["datacenter"], shape, units)
        extra = d.get("experiment") or {}
        overrides = {}

        def flatten(prefix: str, x: Any) -> None:
            if isinstance(x, dict) and x:
                for k, v in x.items():
                    flatten(f"{prefix}.{k}" if prefix else k, v)
            else:
                overrides[prefix] = x
        if extra:
            flatten("", extra)
        doc = with_overrides(doc, overrides) if overrides else doc
        doc.setdefault("opendc", {})
        if isinstance(doc["opendc"], dict):
            doc["opendc"]["enabled"] = bool(opendc)
        return doc


def sized_datacenter(dc: dict, shape: Shape, units: int) -> dict:
    """The plan's datacenter with host counts sized to the shape: per GPU type, the first host group that names
    that type (or names none) gets enough hosts for its replicas; the other groups are left out."""
    out = copy.deepcopy(dc)
    templates = [h for h in dc.get("hosts") or [] if isinstance(h, dict)]
    hosts = []
    for gpu, per_unit in shape.gpus:
        tmpl = next((h for h in templates if h.get("gpu") == gpu), None) \
            or next((h for h in templates if "gpu" not in h), None)
        if tmpl is None:
            continue
        h = copy.deepcopy(tmpl)
        per_host = max(1, int(h.get("gpus_per_host", 1)) // shape.tp)   # replicas a host holds whole
        h["count"] = max(1, math.ceil(units * per_unit / per_host))
        if len(shape.gpus) > 1:
            h["gpu"] = gpu
            h["name"] = f"{h.get('name', 'node')}-{gpu}"
        hosts.append(h)
    out["hosts"] = hosts
    return out


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def _shapes(cand: dict) -> list[Shape]:
    gpus: list[tuple[tuple[str, int], ...]] = [((g, 1),) for g in cand.get("gpu") or []]
    gpus += [tuple(sorted((str(g), int(k)) for g, k in mix.items())) for mix in cand.get("mixes") or []
             if isinstance(mix, dict)]
    axes = [gpus, cand.get("tp") or [1], cand.get("prefix_cache") or ["block"], cand.get("router") or [None],
            cand.get("max_num_seqs") or [None], cand.get("max_batched_tokens") or [None]]
    seen, out = set(), []
    for combo in itertools.product(*axes):
        s = Shape(*combo)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _units(cand: dict) -> tuple[int, int]:
    r = cand.get("replicas")
    if isinstance(r, int) and not isinstance(r, bool):
        return (r, r)
    if isinstance(r, dict):
        return (int(r.get("min", 1)), int(r.get("max", DEFAULT_REPLICAS[1])))
    return DEFAULT_REPLICAS


def load_plan(path: str | Path, *, opendc: bool | None = None) -> Plan:
    """Read and validate a plan file and the experiment of every candidate shape (at its largest replica count)."""
    p = Path(path)
    doc = read_document(p, "plan")
    src = str(p)
    base = p.resolve().parent
    if not isinstance(doc, dict):
        raise_problems([((), "the document is not a mapping (expected model, traffic, slo, candidates)")], src, "plan")
    problems = schema_problems(doc, schema_validator(SCHEMA_FILE))
    if problems:
        raise_problems(problems, src, "plan")
    traffic = doc["traffic"]
    wp = Path(traffic["workload"]).expanduser()
    workload = (wp if wp.is_absolute() else base / wp).resolve()
    if not workload.is_file():
        raise_problems([(("traffic", "workload"), f"file {str(workload)!r} not found (paths are relative to the "
                                                  "plan file's folder)")], src, "plan")
    slo_doc = doc["slo"]
    slo = SLO(slo_doc.get("ttft_s"), slo_doc.get("tpot_s"), float(slo_doc.get("percentile", DEFAULT_PERCENTILE)),
              slo_doc.get("min_attainment"))
    cand = doc["candidates"]
    units = _units(cand)
    if units[0] > units[1]:
        problems.append((("candidates", "replicas"), f"min {units[0]} is above max {units[1]}"))
    plan = Plan(data=doc, source=src, base_dir=base, name=str(doc.get("name") or p.stem), seed=int(doc.get("seed", 0)),
                model=doc["model"], workload=workload, workload_format=traffic.get("format"),
                rate=traffic.get("rate"), slo=slo, shapes=_shapes(cand), units=units,
                objective=doc.get("objective", "cost"), near_front=float(doc.get("near_front", DEFAULT_NEAR_FRONT)),
                max_rate=dict(doc.get("max_rate") or {}))
    # every shape's experiment must be valid (catalogue names, policies, routers, a datacenter template per
    # GPU type); only errors that hold at every replica count are the file's fault
    for shape in plan.shapes:
        exp_doc = plan.experiment(shape, units[1], workload, opendc=opendc is not False)
        probs, _ = experiment_problems(exp_doc, base_dir=base, source=f"{src} [{shape.label}]",
                                       opendc=opendc is not False)
        for pth, msg in probs:
            if _depends_on_size(pth, msg):
                continue
            problems.append(((f"candidate {shape.label}: {json_path(pth)}",), msg))
    if problems:
        raise_problems(problems, src, "plan")
    return plan


def _depends_on_size(path: tuple, msg: str) -> bool:
    """Problems that a smaller or larger configuration may not have: too little KV room for the model
    (a shape the planner then reports as infeasible)."""
    return "KV" in msg or "does not fit" in msg or "memory" in msg.lower()


def shape_problems(plan: Plan, shape: Shape, units: int, traffic: Path, opendc: bool) -> list[str]:
    """Why the experiment of ``shape`` at ``units`` replicas cannot run (empty when it can)."""
    doc = plan.experiment(shape, units, traffic, opendc=opendc)
    probs, _ = experiment_problems(doc, base_dir=plan.base_dir, source=plan.source, opendc=opendc)
    return [f"{json_path(p)}: {m}" for p, m in probs]


# --------------------------------------------------------------------------
# Traffic at a rate
# --------------------------------------------------------------------------

def traffic_at(plan: Plan, rate: float | None, folder: Path) -> Path:
    """The plan's workload at ``rate`` requests/s (None: as it is), written under ``folder`` when changed:
    a synthetic description gets ``rate`` set; a trace's arrival times are scaled by its mean rate / ``rate``."""
    if rate is None:
        return plan.workload
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{rate:.6g}".replace(".", "p")
    if plan.workload.suffix.lower() in SYNTHETIC_SUFFIXES:
        spec = read_document(plan.workload, "workload")
        if not isinstance(spec, dict):
            raise KavierInputError("the synthetic workload description is not a mapping", source=str(plan.workload))
        spec = _absolute_files(copy.deepcopy(spec), plan.workload.parent)
        spec["rate"] = float(rate)
        out = folder / f"{plan.workload.stem}-rate{tag}.yaml"
        import yaml


        atomic_write_text(out, yaml.safe_dump(spec, sort_keys=False))
        return out
    from kavier_opendc.workload.trace import load_trace, write_trace

    trace = load_trace(plan.workload, plan.workload_format)
    span = float(trace.arrival_s[-1] - trace.arrival_s[0]) if len(trace) > 1 else 0.0
    if span <= 0:
        raise KavierInputError("cannot scale a trace whose requests all arrive at once to a rate",
                               source=str(plan.workload), location="traffic.rate")
    own = (len(trace) - 1) / span
    scaled = dataclasses.replace(trace, arrival_s=trace.arrival_s * (own / float(rate)))
    out = folder / f"{plan.workload.stem}-rate{tag}.parquet"
    tmp = folder / f".{out.stem}.tmp.parquet"
    write_trace(scaled, tmp)
    tmp.replace(out)
    return out


def _absolute_files(x: Any, base: Path) -> Any:
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "file" and isinstance(v, str) and not Path(v).is_absolute():
                x[k] = str((base / v).resolve())
            else:
                _absolute_files(v, base)
    elif isinstance(x, list):
        for v in x:
            _absolute_files(v, base)
    return x


__all__ = ["EXAMPLE_PLAN", "OBJECTIVES", "Plan", "SLO", "Shape", "load_plan", "shape_problems",
           "sized_datacenter", "traffic_at"]
