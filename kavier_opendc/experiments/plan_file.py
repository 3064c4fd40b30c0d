"""Plan files (``schemas/plan.schema.json``): the question `kavier plan` answers, and the experiments it asks.

A plan names the traffic (a trace or a synthetic workload, optionally at a
target rate), the SLOs (TTFT and TPOT at a percentile, optionally a minimum
attainment), the candidates (GPU types or mixes of them, TP degrees, batching
limits, prefix-cache policies, routers, GPU power caps, MoE expert/attention-data parallelism, deferral
policies for requests with deadlines, a replica range), the datacenter whose
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
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kavier_opendc.base.atomic import atomic_write_text
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import json_path, schema_validator
from kavier_opendc.experiments.experiment import (
    SYNTHETIC_SUFFIXES,
    catalog_of,
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
# total-carbon: operational (PUE included) + embodied gCO2 per Mtoken (OpenDC runs only, as carbon)
OBJECTIVES = ("cost", "energy", "carbon", "total-carbon")


@dataclass(frozen=True)
class Shape:
    """One candidate serving setup; the replica count is what the planner searches."""

    gpus: tuple[tuple[str, int], ...]  # (GPU type, replicas per unit of the mix); one entry: a single type
    tp: int
    prefix_cache: str
    router: str | None
    max_num_seqs: int | None
    max_batched_tokens: int | None
    power_cap_w: float | None = None  # every GPU's power cap (engine/clock.py); None: uncapped (its TDP)
    expert_parallel: bool | None = None  # MoE: experts split whole over a replica's GPUs; None: the default (off)
    data_parallel_size: int | None = None  # MoE: attention DP ranks per replica; None: the default (1)
    deferral: str | None = None  # carbon-aware deferral of requests with deadlines (engine/deferral.py)
    ratio: str | None = None  # P/D "p:d" (prefill:decode); None: co-located
    decode_gpu: str | None = None  # the decode pool's GPU type when it differs from the prefill pool's
    # several decode pools, (GPU type, share of the decode replicas): candidates.disaggregation.decode_gpu's mixes
    decode_mix: tuple[tuple[str, int], ...] = ()
    # (N, prefill replicas, decode replicas) for each searched replica count N this P/D shape exists at
    splits: tuple[tuple[int, int, int], ...] = field(default=(), repr=False)

    @property
    def layout(self) -> str:
        """``colocated``, or the P/D ratio (``1:3``)."""
        return self.ratio or "colocated"

    @property
    def decode_label(self) -> str | None:
        """The decode side of a P/D shape: its GPU type, or its pools' mix (``1xA100-80GB+1xH100-SXM``)."""
        if self.ratio is None:
            return None
        if self.decode_mix:
            return "+".join(f"{k}x{g}" for g, k in self.decode_mix)
        return self.decode_gpu or self.gpus[0][0]

    @property
    def gpu_label(self) -> str:
        if self.ratio is not None and self.decode_mix:
            return f"{self.gpus[0][0]}+[{self.decode_label}] decode"
        if self.ratio is not None and self.decode_gpu:
            return f"{self.gpus[0][0]}+{self.decode_gpu} decode"
        if len(self.gpus) == 1:
            return self.gpus[0][0]
        return "+".join(f"{k}x{g}" for g, k in self.gpus)

    @property
    def label(self) -> str:
        parts = [self.gpu_label, f"TP{self.tp}", f"prefix {self.prefix_cache}"]
        if self.ratio:
            parts.append(f"P/D {self.ratio}")
        if self.router:
            parts.append(self.router)
        if self.max_num_seqs:
            parts.append(f"seqs {self.max_num_seqs}")
        if self.max_batched_tokens:
            parts.append(f"tokens {self.max_batched_tokens}")
        if self.power_cap_w is not None:
            parts.append(f"cap {self.power_cap_w:g} W")
        if self.expert_parallel is not None:
            parts.append("EP" if self.expert_parallel else "no EP")
        if self.data_parallel_size is not None:
            parts.append(f"DP{self.data_parallel_size}")
        if self.deferral is not None:
            parts.append(f"deferral {self.deferral}")
        return ", ".join(parts)

    @property
    def slug(self) -> str:
        text = "_".join(
            [
                self.gpu_label.replace(" decode", "").replace("[", "").replace("]", ""),
                f"tp{self.tp}",
                f"pc-{self.prefix_cache}",
            ]
            + ([f"pd{self.ratio.replace(':', '-')}"] if self.ratio else [])
            + ([self.router] if self.router else [])
            + ([f"seqs{self.max_num_seqs}"] if self.max_num_seqs else [])
            + ([f"tok{self.max_batched_tokens}"] if self.max_batched_tokens else [])
            + ([f"cap{self.power_cap_w:g}W"] if self.power_cap_w is not None else [])
            + ([("ep" if self.expert_parallel else "noep")] if self.expert_parallel is not None else [])
            + ([f"dp{self.data_parallel_size}"] if self.data_parallel_size is not None else [])
            + ([f"defer-{self.deferral}"] if self.deferral is not None else [])
        )
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)

    def replicas_of(self, units: int) -> int:
        """Replicas in ``units`` copies of the mix (a single GPU type, or P/D pools: ``units`` replicas)."""
        return units * sum(k for _, k in self.gpus)

    def split(self, units: int) -> tuple[int, int]:
        """(prefill, decode) replicas of a P/D shape at ``units`` replicas (KeyError: it does not exist there)."""
        for n, p, d in self.splits:
            if n == units:
                return p, d
        raise KeyError(f"{self.label} has no P/D split at {units} replicas")

    def pool_sizes(self, units: int) -> dict[str, int | None]:
        """{prefill_replicas, decode_replicas} at ``units`` (None for a co-located shape): output columns."""
        p, d = self.split(units) if self.ratio is not None else (None, None)
        return {"prefill_replicas": p, "decode_replicas": d}

    def counts(self, lo: int, hi: int) -> list[int]:
        """The replica counts in lo..hi this shape exists at (all, co-located; P/D: those with a split)."""
        if self.ratio is None:
            return list(range(lo, hi + 1))
        return [n for n, _, _ in self.splits if lo <= n <= hi]

    def replicas_per_gpu(self, units: int) -> dict[str, int]:
        """Replicas of each GPU type at ``units`` (P/D: both pools, summed when of one type)."""
        if self.ratio is None:
            return {g: units * k for g, k in self.gpus}
        p, d = self.split(units)
        out = {self.gpus[0][0]: p}
        for dg, n in self.decode_pools(d):
            out[dg] = out.get(dg, 0) + n
        return out

    def decode_pools(self, decode: int) -> list[tuple[str, int]]:
        """(GPU type, replicas) of each decode pool of a P/D shape with ``decode`` decode replicas (a mix:
        in its proportions; its splits are those where they come out whole)."""
        if not self.decode_mix:
            return [(self.decode_gpu or self.gpus[0][0], decode)]
        per = decode // sum(k for _, k in self.decode_mix)
        return [(g, per * k) for g, k in self.decode_mix]

    def gpus_of(self, units: int) -> dict[str, int]:
        return {g: r * self.tp for g, r in self.replicas_per_gpu(units).items()}


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
    units: tuple[int, int]  # the searched range of replica counts (units of a mix)
    objective: str | dict
    near_front: float
    max_rate: dict
    pd_link: dict | None = None  # candidates.disaggregation.link: the KV link of every P/D shape

    # ----------------------------------------------------------------- experiments
    def experiment(self, shape: Shape, units: int, traffic: Path, *, opendc: bool) -> dict:
        """The experiment document of ``shape`` at ``units`` replicas (of its mix), on ``traffic``."""
        d = self.data
        serving: dict[str, Any] = {"prefix_cache": {"policy": shape.prefix_cache}}
        for key in (
            "router",
            "max_num_seqs",
            "max_batched_tokens",
            "power_cap_w",
            "expert_parallel",
            "data_parallel_size",
        ):
            if getattr(shape, key) is not None:
                serving[key] = getattr(shape, key)
        doc: dict[str, Any] = {
            "name": f"{self.name}-{shape.slug}-n{units}",
            "seed": self.seed,
            "model": self.model,
            "trace": str(traffic),
        }
        if self.workload_format and Path(traffic) == self.workload:
            doc["trace"] = {"file": str(traffic), "format": self.workload_format}
        if shape.ratio is not None:
            doc["gpu"] = shape.gpus[0][0]
            p, dd = shape.split(units)
            dis: dict[str, Any] = {
                "prefill": {"replicas": p, "tp": shape.tp},
                "decode": {"replicas": dd, "tp": shape.tp},
            }
            if shape.decode_mix:  # several decode pools, one per GPU type of the mix
                dis["decode"] = [{"replicas": n, "tp": shape.tp, "gpu": g} for g, n in shape.decode_pools(dd)]
            elif shape.decode_gpu:
                dis["decode"]["gpu"] = shape.decode_gpu
            if self.pd_link:
                dis["link"] = copy.deepcopy(self.pd_link)
            serving["disaggregation"] = dis
        elif len(shape.gpus) == 1:
            doc["gpu"] = shape.gpus[0][0]
            serving.update(replicas=units, tp=shape.tp)
        else:
            serving["replica_groups"] = [
                {"name": g, "gpu": g, "replicas": units * k, "tp": shape.tp} for g, k in shape.gpus
            ]
        doc["serving"] = serving
        if shape.deferral is not None:
            doc["deferral"] = {"policy": shape.deferral}
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
    that type (or names none) gets enough hosts for its replicas (a P/D shape: both pools' replicas of that
    type); the other groups are left out."""
    out = copy.deepcopy(dc)
    templates = [h for h in dc.get("hosts") or [] if isinstance(h, dict)]
    hosts = []
    per_gpu = shape.replicas_per_gpu(units)
    for gpu, replicas in per_gpu.items():
        tmpl = next((h for h in templates if h.get("gpu") == gpu), None) or next(
            (h for h in templates if "gpu" not in h), None
        )
        if tmpl is None:
            continue
        h = copy.deepcopy(tmpl)
        per_host = max(1, int(h.get("gpus_per_host", 1)) // shape.tp)  # replicas a host holds whole
        h["count"] = max(1, math.ceil(replicas / per_host))
        if len(per_gpu) > 1:
            h["gpu"] = gpu
            h["name"] = f"{h.get('name', 'node')}-{gpu}"
        hosts.append(h)
    out["hosts"] = hosts
    return out


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def decode_options(dis: dict | None) -> list[str | tuple[tuple[str, int], ...] | None]:
    """candidates.disaggregation.decode_gpu as decode options: a GPU type (one decode pool), a mix
    ((GPU type, share), ...) (one decode pool per type), or None (the prefill pool's type)."""
    out: list[str | tuple[tuple[str, int], ...] | None] = []
    for item in (dis or {}).get("decode_gpu") or [None]:
        if isinstance(item, dict):
            out.append(tuple(sorted((str(g), int(k)) for g, k in item.items())))
        else:
            out.append(item)
    return out


def _shapes(
    cand: dict, units: tuple[int, int] = DEFAULT_REPLICAS, ratios: list[tuple[str, int, int]] | None = None
) -> list[Shape]:
    """The candidate shapes: the product of the candidate lists; with ``ratios`` (label, p, d), every
    single-GPU-type shape (or, with candidates.disaggregation.prefill_gpu, every prefill GPU type listed there)
    also as a P/D shape per ratio and decode option (no router: the P/D engine routes by itself), kept only
    when it has a split at some searched replica count (see :func:`pd_splits`; a decode mix: a split whose
    decode replicas divide into the mix's proportions)."""
    gpus: list[tuple[tuple[str, int], ...]] = [((g, 1),) for g in cand.get("gpu") or []]
    gpus += [
        tuple(sorted((str(g), int(k)) for g, k in mix.items()))
        for mix in cand.get("mixes") or []
        if isinstance(mix, dict)
    ]
    dis = cand.get("disaggregation") if isinstance(cand.get("disaggregation"), dict) else None
    colocated_gpus = set(gpus)
    prefill_gpus = None if dis is None or not dis.get("prefill_gpu") else {((g, 1),) for g in dis["prefill_gpu"]}
    if prefill_gpus:  # prefill-only GPU types: after the co-located ones, in the order listed
        gpus += [((g, 1),) for g in dict.fromkeys(dis["prefill_gpu"]) if ((g, 1),) not in colocated_gpus]
    axes = [
        gpus,
        cand.get("tp") or [1],
        cand.get("prefix_cache") or ["auto"],  # the engine's default: block when the trace has prompt identities
        cand.get("router") or [None],
        cand.get("max_num_seqs") or [None],
        cand.get("max_batched_tokens") or [None],
        cand.get("power_cap_w") or [None],  # null in the list: uncapped
        cand.get("expert_parallel") or [None],
        cand.get("data_parallel_size") or [None],
        cand.get("deferral") or [None],
    ]
    colocated = dis is None or dis.get("colocated", True) is not False
    splits = pd_splits([(p, d) for _, p, d in ratios], *units) if dis is not None and ratios else []
    seen, out = set(), []

    def add(s: Shape) -> None:
        if s not in seen:
            seen.add(s)
            out.append(s)

    for combo in itertools.product(*axes):
        s = Shape(*combo)
        if (colocated and s.gpus in colocated_gpus) or len(s.gpus) != 1:
            add(s)
        if not splits or len(s.gpus) != 1 or (prefill_gpus is not None and s.gpus not in prefill_gpus):
            continue  # mixes are replica groups, which the P/D engine does not take
        for option in decode_options(dis):
            mix = option if isinstance(option, tuple) else ()
            dg = None if mix or option == s.gpus[0][0] else option
            share = sum(k for _, k in mix) or 1
            for (label, _, _), sp in zip(ratios or [], splits, strict=True):
                sp = tuple(x for x in sp if x[2] % share == 0)
                if sp:
                    add(
                        dataclasses.replace(
                            s,
                            router=None,
                            ratio=label,
                            decode_gpu=dg,
                            decode_mix=mix,
                            splits=sp,  # type: ignore[arg-type]
                        )
                    )
    return out


def parse_ratio(text: Any) -> tuple[int, int] | str:
    """``"p:d"`` as (p, d), or why it is not a ratio."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not isinstance(text, str) or m is None:
        return (
            f'{text!r} is not a ratio PREFILL:DECODE of whole numbers (e.g. "1:3": one prefill replica '
            "for three decode replicas)"
        )
    p, d = int(m.group(1)), int(m.group(2))
    if p == 0 or d == 0:
        return f"{text!r} leaves the {'prefill' if p == 0 else 'decode'} pool empty (both sides must be at least 1)"
    return p, d


def pd_splits(ratios: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[tuple[int, int, int], ...]]:
    """Per ratio p:d, the (N, prefill, decode) splits of each replica count N in lo..hi: prefill =
    round(N p / (p + d)) (halves up), decode the rest. N is skipped for a ratio when a pool would be empty,
    or when another ratio gives the same split and is closer to it (the first listed on a tie)."""
    per: list[list[tuple[int, int, int]]] = [[] for _ in ratios]
    for n in range(max(lo, 2), hi + 1):
        owner: dict[tuple[int, int], tuple[Fraction, int]] = {}
        for i, (a, b) in enumerate(ratios):
            p = (2 * n * a + a + b) // (2 * (a + b))
            if p < 1 or n - p < 1:
                continue
            dist = abs(Fraction(p, n) - Fraction(a, a + b))
            if (p, n - p) not in owner or dist < owner[(p, n - p)][0]:
                owner[(p, n - p)] = (dist, i)
        for (p, d), (_, i) in owner.items():
            per[i].append((n, p, d))
    return [tuple(x) for x in per]


def _ratios(cand: dict, problems: list) -> list[tuple[str, int, int]]:
    """candidates.disaggregation.ratios as (label, p, d); a ratio that does not parse, or repeats another's
    proportion, is a problem at its path."""
    dis = cand.get("disaggregation")
    if not isinstance(dis, dict):
        return []
    out: list[tuple[str, int, int]] = []
    seen: dict[Fraction, int] = {}
    for i, text in enumerate(dis.get("ratios") or []):
        r = parse_ratio(text)
        path = ("candidates", "disaggregation", "ratios", i)
        if isinstance(r, str):
            problems.append((path, r))
            continue
        share = Fraction(r[0], r[0] + r[1])
        if share in seen:
            problems.append((path, f"{text!r} is the same proportion as ratios[{seen[share]}]"))
            continue
        seen[share] = i
        out.append((f"{r[0]}:{r[1]}", *r))
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
        raise_problems(
            [
                (
                    ("traffic", "workload"),
                    f"file {str(workload)!r} not found (paths are relative to the plan file's folder)",
                )
            ],
            src,
            "plan",
        )
    slo_doc = doc["slo"]
    slo = SLO(
        slo_doc.get("ttft_s"),
        slo_doc.get("tpot_s"),
        float(slo_doc.get("percentile", DEFAULT_PERCENTILE)),
        slo_doc.get("min_attainment"),
    )
    cand = doc["candidates"]
    units = _units(cand)
    if units[0] > units[1]:
        problems.append((("candidates", "replicas"), f"min {units[0]} is above max {units[1]}"))
    ratios = _ratios(cand, problems)
    dis = cand.get("disaggregation")
    fw_problem = _pd_framework_problem(doc) if isinstance(dis, dict) else None
    if fw_problem:
        problems.append((("candidates", "disaggregation"), fw_problem))
    pool_gpu_problems = _pool_gpu_problems(doc, base) if isinstance(dis, dict) else []
    problems += pool_gpu_problems
    shapes = _shapes(cand, units, ratios)
    if isinstance(dis, dict) and ratios and not any(pd_splits([(a, b) for _, a, b in ratios], *units)):
        problems.append(
            (
                ("candidates", "disaggregation", "ratios"),
                f"no ratio splits any replica count in {units[0]}..{units[1]} into two non-empty pools "
                "(raise candidates.replicas.max)",
            )
        )
    elif isinstance(dis, dict) and ratios:
        for i, option in enumerate(decode_options(dis)):
            if isinstance(option, tuple) and not any(s.decode_mix == option for s in shapes):
                share = sum(k for _, k in option)
                problems.append(
                    (
                        ("candidates", "disaggregation", "decode_gpu", i),
                        f"the decode pools {dis['decode_gpu'][i]} take decode replicas in multiples of {share}, "
                        f"and no ratio gives such a decode pool at {units[0]}..{units[1]} replicas "
                        "(raise candidates.replicas.max, or add a ratio with more decode replicas)",
                    )
                )
    plan = Plan(
        data=doc,
        source=src,
        base_dir=base,
        name=str(doc.get("name") or p.stem),
        seed=int(doc.get("seed", 0)),
        model=doc["model"],
        workload=workload,
        workload_format=traffic.get("format"),
        rate=traffic.get("rate"),
        slo=slo,
        shapes=shapes,
        units=units,
        objective=doc.get("objective", "cost"),
        near_front=float(doc.get("near_front", DEFAULT_NEAR_FRONT)),
        max_rate=dict(doc.get("max_rate") or {}),
        pd_link=dict(dis["link"]) if isinstance(dis, dict) and isinstance(dis.get("link"), dict) else None,
    )
    # every shape's experiment must be valid (catalogue names, policies, routers, a datacenter template per
    # GPU type); only errors that hold at every replica count are the file's fault
    for shape in plan.shapes:
        counts = shape.counts(*units)
        if not counts:
            continue
        exp_doc = plan.experiment(shape, counts[-1], workload, opendc=opendc is not False)
        probs, _ = experiment_problems(
            exp_doc, base_dir=base, source=f"{src} [{shape.label}]", opendc=opendc is not False
        )
        for pth, msg in probs:
            if _depends_on_size(pth, msg) or (fw_problem and shape.ratio and pth == ("serving", "framework")):
                continue
            if pool_gpu_problems and shape.ratio and "unknown GPU" in msg:
                continue  # said once, at the pool's GPU list
            problems.append(((f"candidate {shape.label}: {json_path(pth)}",), msg))
    if problems:
        raise_problems(problems, src, "plan")
    return plan


def _pool_gpu_problems(doc: dict, base: Path) -> list:
    """candidates.disaggregation's prefill_gpu and decode_gpu names the catalogue does not know, at their paths."""
    cat = catalog_of(doc, base)
    dis = doc["candidates"]["disaggregation"]
    out = []
    for key in ("prefill_gpu", "decode_gpu"):
        for i, item in enumerate(dis.get(key) or []):
            for name in item if isinstance(item, dict) else [item]:
                try:
                    cat.gpu(name)
                except KavierInputError as e:
                    out.append((("candidates", "disaggregation", key, i), e.message))
    return out


def _pd_framework_problem(doc: dict) -> str | None:
    """Why the plan's framework (experiment.serving.framework) cannot serve P/D shapes, or None."""
    from kavier_opendc.specs.frameworks import framework

    serving = (doc.get("experiment") or {}).get("serving") if isinstance(doc.get("experiment"), dict) else None
    name = serving.get("framework") if isinstance(serving, dict) else None
    if not isinstance(name, str):
        return None
    try:
        fw = framework(name)
    except KavierInputError:
        return None  # the unknown name is reported by every shape's experiment
    if fw.policy != "vllm-v1":
        return (
            f"framework {name!r} (experiment.serving.framework) cannot run disaggregated prefill/decode: "
            "the engine models it with vLLM v1's scheduler only (use a vllm-v1 scheduler framework, or "
            "drop candidates.disaggregation)"
        )
    return None


def _depends_on_size(path: tuple, msg: str) -> bool:
    """Problems that a smaller or larger configuration may not have: too little KV room for the model
    (a shape the planner then reports as infeasible)."""
    return "KV" in msg or "does not fit" in msg or "memory" in msg.lower()


def uses_objective(objective: str | dict, name: str) -> bool:
    """Whether ``objective`` (a name, or weights) counts the metric ``name``."""
    return objective == name or (isinstance(objective, dict) and name in (objective.get("weights") or {}))


def check_embodied_known(plan: Plan, objective: str | dict) -> None:
    """The total-carbon objective adds the GPUs' embodied carbon: every candidate GPU must have it (a GPU
    without it would count as none, which favours it silently)."""
    if not uses_objective(objective, "total-carbon"):
        return
    cat = catalog_of(plan.data, plan.base_dir)
    names = sorted(
        {g for s in plan.shapes for g, _ in s.gpus}
        | {s.decode_gpu for s in plan.shapes if s.decode_gpu}
        | {g for s in plan.shapes for g, _ in s.decode_mix}
    )
    for name in names:
        gpu = cat.gpu(name)
        for attr in ("embodied_kgco2e", "lifetime_years"):
            if getattr(gpu, attr, None) is None:
                raise KavierInputError(
                    f"the total-carbon objective adds embodied carbon, but GPU {gpu.name!r} has no {attr}",
                    source=plan.source,
                    location="candidates.gpu",
                    expected=f"{attr} for {gpu.name} in a catalogue file (with embodied_source naming where the "
                    "number is from), or objective carbon (operational only)",
                )


def shape_problems(plan: Plan, shape: Shape, units: int, traffic: Path, opendc: bool) -> list[str]:
    """Why the experiment of ``shape`` at ``units`` replicas cannot run (empty when it can)."""
    counts = shape.counts(*plan.units)
    doc = plan.experiment(
        shape, units if shape.ratio is None or units in counts else counts[-1], traffic, opendc=opendc
    )
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
        if spec.get("arrival") == "closed-loop":  # its clients set the pace: a rate would be ignored
            raise KavierInputError(
                "a closed-loop workload (arrival closed-loop) has no request rate to set: its clients send each "
                "request when their previous one ends",
                source=str(plan.workload),
                location="traffic.rate",
                expected="an open-loop workload (poisson, gamma, constant), or no traffic rate",
            )
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
        raise KavierInputError(
            "cannot scale a trace whose requests all arrive at once to a rate",
            source=str(plan.workload),
            location="traffic.rate",
        )
    own = (len(trace) - 1) / span
    arrival = trace.arrival_s * (own / float(rate))
    # a deadline is a window after its request's arrival: it moves with the arrival, unscaled
    deadline = None if trace.deadline_s is None else arrival + (trace.deadline_s - trace.arrival_s)
    scaled = dataclasses.replace(trace, arrival_s=arrival, deadline_s=deadline)
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


__all__ = [
    "EXAMPLE_PLAN",
    "decode_options",
    "OBJECTIVES",
    "check_embodied_known",
    "uses_objective",
    "Plan",
    "SLO",
    "Shape",
    "load_plan",
    "parse_ratio",
    "pd_splits",
    "shape_problems",
    "sized_datacenter",
    "traffic_at",
]
