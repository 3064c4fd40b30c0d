"""Experiment files: one JSON/YAML document describing a whole `kavier run`.

An experiment names the LLM and GPU (or several replica groups), the prompt
trace (a file or a synthetic workload description), the serving setup, the
datacenter OpenDC simulates (inline or a file, validated by
``schemas/datacenter.schema.json``), the carbon trace, prices, latency SLOs,
the seed and OpenDC export options. It is validated against
``schemas/experiment.schema.json`` and then checked for meaning (catalogue
names, files that must exist, a datacenter large enough for the replicas);
:func:`experiment_problems` returns *every* problem with its JSON path and
:func:`load_experiment` raises them all in one :class:`KavierInputError`.

Relative paths are resolved against the folder of the experiment file.

Minimal example (YAML)::

    name: chat-on-a100
    model: Llama-3-8B
    gpu: A100-80GB
    trace: workload.yaml            # a trace file or a synthetic description
    serving: {replicas: 2, router: least-kv}
    datacenter:
      hosts: [{name: node, gpus_per_host: 2, cpu: {cores: 32, mhz: 2600}, memory_gib: 512}]
    carbon: {synthetic: {mean: 300, amplitude: 120}}
    slo: {ttft_s: 2.0, tpot_s: 0.1}
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from kavier_opendc.base.documents import SafeDocumentLoader, parse_document
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import (
    Problem,
    explain_schema_error,
    json_path,
    load_schema,
    non_finite,
    schema_validator,
)
from kavier_opendc.engine import knobs
from kavier_opendc.engine.cost_model import DEFAULT_EFFICIENCY, CostModel
from kavier_opendc.engine.router import normalise_router
from kavier_opendc.experiments.engine_config import GROUP_LIMIT_KEYS, sim_config
from kavier_opendc.experiments.serving import DEFAULTS, Serving
from kavier_opendc.opendc import topology as T
from kavier_opendc.opendc.datacenter import DEFAULT_START, load_datacenter
from kavier_opendc.reports.efficiency import LatencyTargets, Prices
from kavier_opendc.specs import Catalog, default_catalog, load_catalog_file

SCHEMA_FILE = "experiment.schema.json"
_PREFIX = knobs.BY_FIELD["prefix_cache"]
#: the policies and their other spellings, each after the policy it names
PREFIX_POLICIES = tuple(
    name for policy in _PREFIX.choices for name in (policy, *(a for a, p in _PREFIX.aliases.items() if p == policy))
)
SERVING_DEFAULTS = DEFAULTS
TRACE_FORMATS = ("kavier", "native", "azure", "mooncake", "vidur", "splitwise", "sarathi")
SYNTHETIC_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSource:
    """Where an experiment's requests come from."""

    kind: str | None  # file | synthetic (None: not given; the schema has said so)
    path: Path | None = None  # the trace file or the synthetic description (None: inline)
    format: str | None = None  # a forced trace layout
    inline: dict | None = None  # an inline synthetic description
    keep_overlong: bool = False  # keep rows longer than any context as rejected requests


@dataclass(frozen=True)
class CarbonSource:
    """The experiment's carbon intensity: a trace file, a region's trace, or a synthetic daily cycle."""

    kind: str  # trace | region | synthetic | datacenter (its own trace, only aligned)
    path: Path | None = None  # the resolved trace (None: synthetic or the datacenter's)
    params: dict = field(default_factory=dict)  # the synthetic cycle's parameters
    align: str = "none"  # how a run outside the trace's dates is mapped (carbon.align)


@dataclass(frozen=True)
class GroupSpec:
    """One replica group after catalogue lookup."""

    model: Any  # ModelSpec
    gpu: Any  # GPUSpec
    replicas: int = 1
    tp: int = 1
    name: str = "group0"
    limits: Mapping[str, Any] = field(default_factory=dict)  # per-group batching overrides
    path: str = "serving"

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp


@dataclass
class Experiment:
    """A validated experiment (see the module docstring)."""

    data: dict  # the document as written (after YAML/JSON parsing)
    source: str  # experiment file, or a label
    base_dir: Path  # relative paths are resolved against it
    name: str
    seed: int
    catalog: Catalog
    groups: list[GroupSpec]
    serving: Serving  # normalised serving options
    trace: TraceSource
    datacenter: dict | None  # datacenter description (carbon keys removed when `carbon` overrides)
    datacenter_base: Path
    datacenter_source: str
    carbon: CarbonSource | None
    prices: Prices  # the GPU-hour price of every GPU type it uses, of a kWh
    slo: LatencyTargets  # per-request TTFT / TPOT targets
    opendc_enabled: bool
    export_opts: dict
    input_files: list[tuple[str, Path]] = field(default_factory=list)
    #: what a run of it should warn about: implausible values, short names standing for one of several
    notes: list[str] = field(default_factory=list)
    #: the deferral policy of requests with a deadline (engine/deferral.py; deferral.policy, kavier run --deferral)
    deferral: str = "none"
    #: spread the requests held at one instant over the carbon step then (deferral.spread; engine/deferral.py)
    deferral_spread: bool = False

    def sim_config(self):
        """The engine's SimConfig for this experiment's serving setup."""
        return sim_config(self.serving, self.groups, self.seed, self.catalog)

    @property
    def path(self) -> Path | None:
        p = Path(self.source)
        return p if p.is_file() else None

    def gpu_counts(self) -> dict[str, int]:
        """GPUs serving the replicas, per GPU type (replicas x tp summed over groups)."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.gpu.name] = out.get(g.gpu.name, 0) + g.gpus
        return out

    def describe(self) -> str:
        parts = [f"{g.replicas} x {g.tp} x {g.gpu.name} ({g.model.name})" for g in self.groups]
        return ", ".join(parts)


# --------------------------------------------------------------------------
# Reading documents
# --------------------------------------------------------------------------


class _Loader(SafeDocumentLoader):
    """Safe YAML loader (duplicate keys and hostile documents refused, see ``base/documents.py``) that
    reads YAML 1.2 floats such as ``1e-3`` (PyYAML's YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)[eE][-+]?\d+$"), list("-+0123456789.")
)


def read_document(path: str | Path, what: str = "experiment") -> Any:
    """Parse a JSON or YAML file (by extension; YAML otherwise), with syntax
    errors reported as :class:`KavierInputError` naming the line and column."""
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KavierInputError(
            f"{what} file not found", source=src, expected=f"an existing JSON or YAML {what} file"
        ) from None
    except IsADirectoryError:
        article = "an" if what[:1] in "aeiou" else "a"
        raise KavierInputError(f"is a directory, not {article} {what} file", source=src) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"cannot read the file: {exc}", source=src) from None
    return parse_text(text, "json" if p.suffix.lower() == ".json" else "yaml", src)


def parse_text(text: str, fmt: str, source: str) -> Any:
    """Parse an input document's text (YAML 1.2 floats such as ``1e-3`` read as numbers)."""
    return parse_document(text, fmt, source, _Loader)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


def experiment_schema() -> dict:
    """The experiment JSON Schema (Draft 2020-12), as a fresh dict."""
    return copy.deepcopy(load_schema(SCHEMA_FILE))


def schema_problems(data: Any, validator: Draft202012Validator, skip: tuple | None = None) -> list[Problem]:
    """Schema violations as (path, message) with readable messages; errors
    under the path ``skip`` are left out (checked elsewhere)."""
    problems: list[Problem] = []
    for err in validator.iter_errors(data):
        problems.extend(explain_schema_error(err))
    if skip is not None:
        problems = [(p, m) for p, m in problems if tuple(p[: len(skip)]) != skip]
    return problems


# --------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------


def raise_problems(problems: list[Problem], source: str, what: str = "experiment") -> None:
    unique: dict[tuple, None] = {}
    for p, m in problems:
        unique.setdefault((tuple(p), m), None)
    lines = [f"{json_path(p)}: {m}" for p, m in unique]
    n = len(lines)
    schema = f"schemas/{what}.schema.json"
    if n == 1:
        exc = KavierInputError(f"invalid {what}: {lines[0]} (see {schema})", source=source)
    else:
        exc = KavierInputError(
            f"invalid {what}, {n} problems:\n  " + "\n  ".join(lines) + f"\n(see {schema})", source=source
        )
    exc.problems = lines  # type: ignore[attr-defined]
    raise exc


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _msg(exc: KavierInputError, drop_source: str | None = None) -> str:
    text = str(exc)
    if drop_source and text.startswith(drop_source + ": "):
        text = text[len(drop_source) + 2 :]
    return text


def experiment_problems(
    data: Any, *, base_dir: str | Path | None = None, source: str = "<experiment>", opendc: bool | None = None
) -> tuple[list[Problem], Experiment | None]:
    """Every problem of an experiment document, and the experiment when there are none.

    ``opendc``: whether OpenDC will run (None: as the document says), which
    makes the datacenter required.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if not isinstance(data, dict):
        return [
            (
                (),
                f"the document is {type(data).__name__ if data is not None else 'empty'}, "
                "not a mapping (expected keys such as model, gpu, trace, serving, datacenter)",
            )
        ], None
    problems: list[Problem] = []
    dc_is_obj = isinstance(data.get("datacenter"), dict)
    problems += schema_problems(data, schema_validator(SCHEMA_FILE), skip=("datacenter",) if dc_is_obj else None)
    problems += non_finite(data)
    inputs: list[tuple[str, Path]] = []

    cat = _catalog(data, base, problems, inputs)

    serving = data.get("serving") if isinstance(data.get("serving"), dict) else {}
    groups = _groups(data, serving, cat, problems)

    norm = _serving(serving, problems, cat)

    _check_kv_room(norm, groups, problems, cat)

    # trace
    trace = _trace(data.get("trace"), base, problems, inputs)

    # OpenDC
    od = data.get("opendc") if isinstance(data.get("opendc"), dict) else {}
    enabled = od.get("enabled", True) if opendc is None else bool(opendc)
    enabled = bool(enabled) if isinstance(enabled, bool) else True
    export_opts = dict(od.get("export") or {}) if isinstance(od.get("export"), dict) else {}

    # carbon
    carbon = _carbon(data.get("carbon"), base, data, problems, inputs)

    dc_data, dc_base, dc_source = _datacenter_document(data.get("datacenter"), base, source, enabled, problems, inputs)
    if dc_data is not None:
        problems += _datacenter(
            dc_data,
            dc_base,
            dc_source,
            source,
            cat,
            groups,
            carbon is not None and carbon.kind != "datacenter",
            enabled,
            export_opts,
            inputs,
            "none" if carbon is None else carbon.align,
        )

    prices = _prices(data, cat, groups, problems)

    slo_in = data.get("slo") if isinstance(data.get("slo"), dict) else {}
    slo = LatencyTargets(ttft_s=slo_in.get("ttft_s"), tpot_s=slo_in.get("tpot_s"))

    dv = data.get("deferral") if isinstance(data.get("deferral"), dict) else {}
    deferral = dv.get("policy", "none") if isinstance(dv.get("policy", "none"), str) else "none"
    deferral_spread = dv.get("spread") is True
    if deferral_spread and deferral == "none":
        problems.append(
            (
                ("deferral", "spread"),
                "spreads the requests a deferral policy holds, and policy none holds none (expected policy "
                "lowest-carbon or battery-aware, or no spread)",
            )
        )
    dc_carbon = isinstance(dc_data, dict) and (
        dc_data.get("region") or (dc_data.get("power_source") or {}).get("carbon_trace")
    )
    if deferral != "none" and carbon is None and not dc_carbon:
        problems.append(
            (
                ("deferral", "policy"),
                f"policy '{deferral}' chooses windows on a carbon trace, and the experiment has none (expected "
                "carbon: {trace | region | synthetic}, or a datacenter with a carbon trace)",
            )
        )

    battery = dc_data.get("battery") if isinstance(dc_data, dict) else None
    if deferral == "battery-aware" and not isinstance(battery, dict):
        problems.append(
            (
                ("deferral", "policy"),
                "policy 'battery-aware' follows the datacenter's battery, and the datacenter has none (expected "
                "datacenter.battery {capacity_kwh, charging_speed_w, policy: {type: single, carbon_threshold}})",
            )
        )
    elif deferral == "battery-aware" and (battery.get("policy") or {}).get("type") != "single":
        problems.append(
            (
                ("datacenter", "battery", "policy", "type"),
                f"'{(battery.get('policy') or {}).get('type')}': deferral policy 'battery-aware' predicts OpenDC's "
                "single-threshold battery (expected type single with carbon_threshold)",
            )
        )

    name = _experiment_name(data, source)
    seed = data.get("seed", 0) if isinstance(data.get("seed"), int) else 0

    problems += _engine_problems(norm, groups, seed, cat)
    if problems:
        return problems, None
    exp = Experiment(
        data=data,
        source=source,
        base_dir=base,
        name=name,
        seed=seed,
        catalog=cat,
        groups=groups,
        serving=norm,
        trace=trace,
        datacenter=dc_data,
        datacenter_base=dc_base,
        datacenter_source=dc_source,
        carbon=carbon,
        prices=prices,
        slo=slo,
        opendc_enabled=enabled,
        export_opts=export_opts,
        input_files=inputs,
        notes=_name_notes(data, cat) + _slo_notes(slo),
        deferral=deferral,
        deferral_spread=deferral_spread,
    )
    return [], exp


#: latency targets beyond these are almost surely milliseconds written as seconds
PLAUSIBLE_SLO_S = {"ttft_s": 60.0, "tpot_s": 2.0}


def _slo_notes(slo: LatencyTargets) -> list[str]:
    """A note for each SLO target too long to be meant in seconds (``ttft_s: 500`` for 500 ms)."""
    out = []
    for key, limit in PLAUSIBLE_SLO_S.items():
        value = getattr(slo, key)
        if value is not None and value > limit:
            out.append(
                f"slo.{key} is {value:g} s, longer than any service level in use (over {limit:g} s); "
                f"SLOs are in seconds: write {value / 1000:g} for {value:g} ms"
            )
    return out


def _name_notes(data: dict, cat) -> list[str]:
    """A note for each GPU or model named by a short name that stands for one of several catalogue entries."""
    out: list[str] = []

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                kind = "gpu" if k in ("gpu", "prefill_gpu", "decode_gpu") else "model" if k == "model" else None
                if kind and isinstance(v, str):
                    note = cat.resolution_note(v, kind)
                    if note:
                        out.append(f"{json_path(path + (k,))}: {note}")
                else:
                    walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk({k: data[k] for k in ("model", "gpu", "serving") if k in data}, ())
    return out


def _engine_problems(norm: Serving, groups: list[GroupSpec], seed: int, catalog) -> list[Problem]:
    """The engine's own checks of the serving setup (TP against the model's heads, max_model_len against
    its context window, sizes), named by their ``serving.*`` paths; run with the other checks, so that
    they are reported before any trace is loaded."""
    if not groups:
        return []
    try:
        sim_config(norm, groups, seed, catalog).validate()
    except KavierInputError as exc:
        loc = exc.location or ""
        if loc.startswith("serving."):  # already named as the experiment names it
            return [(_split(loc), _msg(exc).replace(f"{loc}: ", "", 1))]
        return [(knobs.experiment_path(loc) if loc else ("serving",), _msg(exc.relocated(None)))]
    except (TypeError, ValueError, AttributeError):
        return []  # a value of the wrong type: the schema has reported it
    return []


def _catalog(data: dict, base: Path, problems: list[Problem], inputs: list):
    """The built-in catalogue extended by the experiment's ``catalog`` files."""

    cat = default_catalog()
    for i, f in enumerate(data.get("catalog") or []):
        if not isinstance(f, str):
            continue
        p = _resolve(base, f)
        try:
            cat = load_catalog_file(p, base=cat)
            inputs.append((f"catalog[{i}]", p))
        except KavierInputError as exc:
            problems.append((("catalog", i), str(exc)))
    return cat


def catalog_of(data: dict, base: Path):
    """The catalogue an experiment (or plan) document uses: the built-in one extended by its ``catalog`` files,
    relative to ``base`` (a file that does not load is left out: the document's checks report it)."""
    return _catalog(data, Path(base), [], [])


def _serving(serving: dict, problems: list[Problem], catalog) -> Serving:
    """The serving options with defaults filled in, kv_cache as a bool, prefix_cache as a dict, router normalised."""
    norm = dict(SERVING_DEFAULTS)
    for k in SERVING_DEFAULTS:
        if k in serving:
            norm[k] = serving[k]
    kv = norm["kv_cache"]
    norm["kv_cache"] = (kv == "on") if isinstance(kv, str) else bool(kv)
    pc = serving.get("prefix_cache")  # absent: the engine's default policy
    pc = {"policy": pc} if isinstance(pc, str) else (dict(pc) if isinstance(pc, dict) else {})
    if isinstance(pc.get("policy"), str):
        pc["policy"] = pc["policy"].strip().lower()
        if pc["policy"] not in PREFIX_POLICIES:
            hint = difflib.get_close_matches(pc["policy"], PREFIX_POLICIES, n=1)
            where = ("serving", "prefix_cache") + (("policy",) if isinstance(serving.get("prefix_cache"), dict) else ())
            problems.append(
                (
                    where,
                    f"unknown prefix-cache policy {pc['policy']!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; expected one of {', '.join(PREFIX_POLICIES)}",
                )
            )
    norm["prefix_cache"] = pc
    if isinstance(norm["framework"], str) and "@" in norm["framework"]:  # ENGINE@VERSION: the profile covering it
        try:
            norm["framework"] = catalog.framework(norm["framework"], usage=norm.get("usage")).name
        except KavierInputError as exc:
            problems.append((("serving", "framework"), _msg(exc.relocated(None))))
    elif isinstance(norm["framework"], str):
        names = [n.lower() for n in catalog.frameworks()]
        if norm["framework"].strip().lower() not in names:
            hint = difflib.get_close_matches(norm["framework"].strip().lower(), names, n=1)
            problems.append(
                (
                    ("serving", "framework"),
                    f"unknown serving framework {norm['framework']!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; expected one of {', '.join(names)}",
                )
            )
        else:
            norm["framework"] = norm["framework"].strip().lower()
    if isinstance(norm["router"], str):
        try:
            norm["router"] = normalise_router(norm["router"])
        except KavierInputError as exc:
            problems.append((("serving", "router"), _msg(exc.relocated(None))))
    dis = serving.get("disaggregation")
    norm["disaggregation"] = dict(dis) if isinstance(dis, dict) else None
    sp = serving.get("speculative")
    norm["speculative"] = dict(sp) if isinstance(sp, dict) else None
    return Serving(**norm)


def _check_kv_room(norm: Serving, groups: list[GroupSpec], problems: list[Problem], catalog) -> None:
    """KV memory: does each group's model leave room for a KV cache on its GPUs?"""
    if not norm.kv_cache or norm.num_kv_blocks is not None:
        return
    for g in groups:
        lim = {**{k: norm.get(k) for k in GROUP_LIMIT_KEYS}, **dict(g.limits)}
        try:
            # unset limits are vLLM v1's for the GPU (the trace, which decides auto usage, is not read yet:
            # a server's, whose smaller token budget reserves less activation memory)
            fw = catalog.framework(norm.get("framework"), usage=norm.get("usage"))
            usage = fw.usage("offline" if norm.get("usage") == "offline" else "server")
            tokens, seqs = fw.batch_limits(g.gpu, usage, norm.get("max_model_len") or g.model.max_context)
            if lim["max_batched_tokens"] is None:
                lim["max_batched_tokens"] = tokens
            if lim["max_num_seqs"] is None:
                lim["max_num_seqs"] = seqs
            if not (
                isinstance(lim["gpu_memory_utilization"], (int, float))
                and isinstance(lim["max_batched_tokens"], int)
                and isinstance(lim["max_num_seqs"], int)
            ):
                continue
            cap = CostModel(g.model, g.gpu, g.tp, DEFAULT_EFFICIENCY).kv_capacity_blocks(
                lim["gpu_memory_utilization"], lim["max_batched_tokens"], lim["max_num_seqs"]
            )
        except Exception:  # noqa: BLE001 - a broken spec is reported elsewhere
            continue
        if cap <= 0:
            problems.append(
                (
                    (*_split(g.path), "tp"),
                    f"{g.model.name} ({g.model.weight_bytes / 2**30:.1f} GiB of weights) leaves no "
                    f"room for a KV cache on {g.tp} x {g.gpu.name} ({g.gpu.memory_gib:g} GiB each) at "
                    f"gpu_memory_utilization={lim['gpu_memory_utilization']}; use a larger GPU, "
                    "more tensor parallelism or a smaller model",
                )
            )


def _datacenter_document(
    dcv: Any, base: Path, source: str, enabled: bool, problems: list[Problem], inputs: list
) -> tuple[dict | None, Path, str]:
    """The datacenter description (inline or a file), the folder its paths are relative to, and its source."""
    dc_data, dc_base, dc_source = None, base, source
    if dcv is None:
        if enabled:
            problems.append(
                (
                    ("datacenter",),
                    "required to run OpenDC (or turn OpenDC off: `kavier run --no-opendc` or opendc.enabled: false)",
                )
            )
    elif isinstance(dcv, str):
        p = _resolve(base, dcv)
        try:
            dc_data = read_document(p, "datacenter")
            dc_base, dc_source = p.resolve().parent, str(p)
            inputs.append(("datacenter", p))
        except KavierInputError as exc:
            problems.append((("datacenter",), str(exc)))
    elif isinstance(dcv, dict):
        dc_data = copy.deepcopy(dcv)
    return dc_data, dc_base, dc_source


def _prices(data: dict, cat, groups: list[GroupSpec], problems: list[Problem]) -> Prices:
    """Currency, GPU-hour price per GPU type (the catalogue's unless given) and electricity price."""
    pr = data.get("prices") if isinstance(data.get("prices"), dict) else {}
    currency = pr["currency"] if isinstance(pr.get("currency"), str) else "USD"
    kwh = float(pr["electricity_per_kwh"]) if isinstance(pr.get("electricity_per_kwh"), (int, float)) else None
    given: dict[str, float] = {}
    for name, price in (pr.get("gpu_hour") or {}).items() if isinstance(pr.get("gpu_hour"), dict) else []:
        try:
            given[cat.gpu(name).name] = float(price)
        except KavierInputError as exc:
            problems.append((("prices", "gpu_hour", name), str(exc)))
        except (TypeError, ValueError):
            pass
    gpu_hour: dict[str, float] = {}
    for g in groups:
        gpu_hour[g.gpu.name] = given.get(g.gpu.name, float(g.gpu.price_per_hour))
    for name, price in given.items():
        gpu_hour.setdefault(name, price)
    return Prices(gpu_hour=gpu_hour, currency=currency, electricity_per_kwh=kwh)


def _experiment_name(data: dict, source: str) -> str:
    """The experiment's name, or one made from its file name."""
    name = data.get("name") if isinstance(data.get("name"), str) else None
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source).stem).strip("-.") or "experiment"
        if not name[0].isalnum():
            name = "x" + name
    return name


def _split(path: str) -> tuple:
    out: list = []
    for part in path.split("."):
        m = re.fullmatch(r"([^\[]+)((?:\[\d+\])*)", part)
        if not m:
            out.append(part)
            continue
        out.append(m.group(1))
        out += [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(out)


def _lookup(cat, kind: str, name: Any, path: tuple, problems: list[Problem]):
    if not isinstance(name, str) or not name:
        return None
    try:
        return cat.model(name) if kind == "model" else cat.gpu(name)
    except KavierInputError as exc:
        problems.append((path, str(exc)))
        return None


def _groups(data: dict, serving: dict, cat, problems: list[Problem]) -> list[GroupSpec]:
    groups: list[GroupSpec] = []
    if isinstance(serving.get("disaggregation"), dict):
        return _pool_groups(data, serving, cat, problems)
    rg = serving.get("replica_groups")
    if isinstance(rg, list) and rg:
        for key in ("replicas", "tp"):
            if key in serving:
                problems.append(
                    (
                        ("serving", key),
                        "not allowed together with serving.replica_groups (give replicas and tp per group)",
                    )
                )
        names = set()
        for i, g in enumerate(rg):
            if not isinstance(g, dict):
                continue
            path = ("serving", "replica_groups", i)
            mname = g.get("model", data.get("model"))
            gname = g.get("gpu", data.get("gpu"))
            if mname is None:
                problems.append((path + ("model",), "required field is missing (no top-level model either)"))
            if gname is None:
                problems.append((path + ("gpu",), "required field is missing (no top-level gpu either)"))
            m = _lookup(cat, "model", mname, path + ("model",) if "model" in g else ("model",), problems)
            gp = _lookup(cat, "gpu", gname, path + ("gpu",) if "gpu" in g else ("gpu",), problems)
            name = g.get("name", f"group{i}")
            if name in names:
                problems.append((path + ("name",), f"duplicate group name {name!r}"))
            names.add(name)
            reps, tp = g.get("replicas", 1), g.get("tp", 1)
            if m is not None and gp is not None and isinstance(reps, int) and isinstance(tp, int):
                groups.append(
                    GroupSpec(
                        m, gp, reps, tp, str(name), {k: g[k] for k in GROUP_LIMIT_KEYS if k in g}, json_path(path)
                    )
                )
        return groups
    if "model" not in data:
        problems.append((("model",), "required field is missing (or give serving.replica_groups)"))
    if "gpu" not in data:
        problems.append((("gpu",), "required field is missing (or give serving.replica_groups)"))
    m = _lookup(cat, "model", data.get("model"), ("model",), problems)
    gp = _lookup(cat, "gpu", data.get("gpu"), ("gpu",), problems)
    reps, tp = serving.get("replicas", 1), serving.get("tp", 1)
    if m is not None and gp is not None and _counts(reps, tp):
        groups.append(GroupSpec(m, gp, reps, tp, "group0", {}, "serving"))
    return groups


def _counts(*values: Any) -> bool:
    """Whole numbers, not booleans (the schema reports anything else)."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _pool_groups(data: dict, serving: dict, cat, problems: list[Problem]) -> list[GroupSpec]:
    """A disaggregated cluster's pools as replica groups, prefill pools then decode pools, named by their pools
    (prefill and decode for a role's only pool; the datacenter, costs and the OpenDC export see each pool's
    GPUs); the engine gets the topology itself (engine_config)."""
    for key in ("replicas", "tp", "replica_groups"):
        if key in serving:
            problems.append(
                (("serving", key), "not allowed together with serving.disaggregation (give replicas and tp per pool)")
            )
    if "model" not in data:
        problems.append((("model",), "required field is missing"))
    m = _lookup(cat, "model", data.get("model"), ("model",), problems)
    groups: list[GroupSpec] = []
    wanted = 0
    names: set[str] = set()
    for role in ("prefill", "decode"):
        given = serving["disaggregation"].get(role)
        listed = isinstance(given, list)
        of_role = given if listed else [given]
        wanted += len(of_role)
        for k, pool in enumerate(of_role):
            if not isinstance(pool, dict):
                continue  # the schema has reported it
            path: tuple = ("serving", "disaggregation", role, k) if listed else ("serving", "disaggregation", role)
            name = pool.get("name") or (role if len(of_role) == 1 else f"{role}-{k}")
            if name in names:
                problems.append((path + ("name",), f"the pool name {name!r} is used twice"))
            names.add(str(name))
            group = _pool_group(data, pool, path, str(name), m, cat, problems)
            if group is not None:
                groups.append(group)
    return groups if len(groups) == wanted else []  # all pools or none: the other checks need the topology whole


def _pool_group(data: dict, pool: dict, path: tuple, name: str, m, cat, problems: list[Problem]):
    """One pool of ``serving.disaggregation`` as a replica group named ``name`` (None: a problem reported)."""
    gname = pool.get("gpu", data.get("gpu"))
    if gname is None:
        problems.append((path + ("gpu",), "required field is missing (no top-level gpu either)"))
    gp = _lookup(cat, "gpu", gname, path + ("gpu",) if "gpu" in pool else ("gpu",), problems)
    reps, tp = pool.get("replicas", 1), pool.get("tp", 1)
    if m is not None and gp is not None and _counts(reps, tp):
        return GroupSpec(m, gp, reps, tp, name, {}, json_path(path))
    return None


def _trace(tv: Any, base: Path, problems: list[Problem], inputs: list) -> TraceSource:
    out: dict[str, Any] = {"kind": None, "path": None, "format": None, "inline": None, "keep_overlong": False}
    if isinstance(tv, str):
        p = _resolve(base, tv)
        out.update(kind="synthetic" if p.suffix.lower() in SYNTHETIC_SUFFIXES else "file", path=p)
        loc: tuple = ("trace",)
    elif isinstance(tv, dict) and "file" in tv and isinstance(tv["file"], str):
        p = _resolve(base, tv["file"])
        out.update(
            kind="synthetic" if p.suffix.lower() in SYNTHETIC_SUFFIXES else "file",
            path=p,
            format=tv.get("format"),
            keep_overlong=tv.get("keep_overlong_requests") is True,
        )
        loc = ("trace", "file")
        fmt = tv.get("format")
        if isinstance(fmt, str) and fmt.strip().lower() not in TRACE_FORMATS:
            hint = difflib.get_close_matches(fmt.strip().lower(), TRACE_FORMATS, n=1)
            problems.append(
                (
                    ("trace", "format"),
                    f"unknown trace format {fmt!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; expected one of {', '.join(TRACE_FORMATS)}",
                )
            )
    elif isinstance(tv, dict) and "synthetic" in tv:
        s = tv["synthetic"]
        if isinstance(s, str):
            p = _resolve(base, s)
            out.update(kind="synthetic", path=p)
            loc = ("trace", "synthetic")
        else:
            out.update(kind="synthetic", inline=s if isinstance(s, dict) else None)
            return TraceSource(**out)
    else:
        return TraceSource(**out)
    p = out["path"]
    if not p.exists():
        problems.append((loc, f"file {str(p)!r} not found (paths are relative to the experiment file's folder)"))
    elif p.is_dir():
        problems.append((loc, f"{str(p)!r} is a directory, not a trace file"))
    else:
        inputs.append(("trace", p))
    return TraceSource(**out)


def _carbon(cv: Any, base: Path, data: dict, problems: list[Problem], inputs: list) -> CarbonSource | None:
    if not isinstance(cv, dict):
        return None
    from kavier_opendc.opendc import carbon as C

    align = cv.get("align", "none")
    align = align if align in C.CARBON_ALIGN else "none"  # another value: the schema has reported it
    sources = [k for k in ("trace", "region", "synthetic") if k in cv]
    if len(sources) != 1:  # none: the datacenter's own trace; several: the schema has reported it
        return CarbonSource("datacenter", None, {}, align) if not sources and "align" in cv else None
    kind, value = sources[0], cv[sources[0]]
    if kind == "synthetic":
        params = dict(value) if isinstance(value, dict) else {}
        try:
            C.synthetic_carbon_profile(**{**params, "days": min(float(params.get("days", 1.0)), 0.05)})
        except KavierInputError as exc:
            problems.append((("carbon", "synthetic"), str(exc)))
        except (TypeError, ValueError, OverflowError):
            pass  # a value of the wrong type or size: the schema has reported it
        return CarbonSource("synthetic", None, params)
    if not isinstance(value, str):
        return None
    year = None
    dcv = data.get("datacenter")
    if isinstance(dcv, dict) and isinstance(dcv.get("start"), str):
        try:
            year = datetime.fromisoformat(dcv["start"]).year
        except ValueError:
            pass
    try:
        if kind == "trace":
            p = _resolve(base, value).resolve()
            if not p.is_file():
                raise KavierInputError(
                    f"carbon trace {str(p)!r} not found (paths are relative to the experiment file's folder)"
                )
        else:
            p = C.resolve_carbon_trace(value, base, year=year, location=f"carbon.{kind}")
        if align == "none":  # read, and the start checked (the run's end once the simulation gave its length)
            start = dcv.get("start", DEFAULT_START) if isinstance(dcv, dict) else DEFAULT_START
            try:
                C.fit_trace_to_run(p, start, 0.0, "none", base, location=f"carbon.{kind}")
            except (TypeError, ValueError):  # a malformed start: reported with the datacenter
                C.read_carbon_trace(p)
        else:
            C.read_carbon_trace(p)
    except KavierInputError as exc:
        problems.append((("carbon", kind), str(exc).replace(f"carbon.{kind}: ", "", 1)))
        return None
    inputs.append(("carbon", p))
    return CarbonSource(kind, p, {}, align)


def _datacenter(
    dc: dict,
    dc_base: Path,
    dc_source: str,
    exp_source: str,
    cat,
    groups: list[GroupSpec],
    carbon_override: bool,
    enabled: bool,
    export_opts: dict,
    inputs: list,
    carbon_align: str = "none",
) -> list[Problem]:

    prefix: tuple = ("datacenter",)
    if not isinstance(dc, dict):
        return [(prefix, f"the datacenter description is {type(dc).__name__}, not a mapping")]
    if carbon_override:  # the experiment's `carbon` replaces the datacenter's own trace
        dc.pop("region", None)
        if isinstance(dc.get("power_source"), dict):
            dc["power_source"].pop("carbon_trace", None)
    gpus = sorted({g.gpu.name for g in groups})
    if len(gpus) == 1 and isinstance(dc.get("hosts"), list):
        # host groups that name no GPU run the replicas' GPU (also for user-catalogue GPUs)
        for h in dc["hosts"]:
            if isinstance(h, dict) and "gpu" not in h and h.get("gpus_per_host", 0):
                h["gpu"] = gpus[0]
    where = "" if dc_source == exp_source else f" (in {dc_source})"
    try:
        d = load_datacenter(dc, catalog=cat, base_dir=dc_base, source=dc_source)
    except KavierInputError as exc:
        lines = getattr(exc, "problems", None)
        if not lines:
            return [(prefix, _msg(exc, dc_source))]
        out = []
        for line in lines:
            p, _, m = line.partition(": ")
            out.append((prefix + (_split(p) if p != "(top level)" else ()), m + where))
        return out
    problems: list[Problem] = []
    if d.power_source.carbon_trace is not None:
        inputs.append(("carbon", Path(d.power_source.carbon_trace)))
        if carbon_align == "none":  # the start here, the run's end once the simulation gave its length
            from kavier_opendc.opendc.carbon import fit_trace_to_run

            try:
                fit_trace_to_run(d.power_source.carbon_trace, d.start, 0.0, "none", dc_base)
            except KavierInputError as exc:
                loc = "region" if "region" in dc else "power_source.carbon_trace"
                problems.append((prefix + tuple(loc.split(".")), str(exc).replace("carbon: ", "", 1) + where))
    for i, h in enumerate(d.hosts):
        if h.gpu is not None and gpus and h.gpu.name not in gpus:
            problems.append(
                (
                    prefix + ("hosts", i, "gpu"),
                    f"{h.gpu.name!r} but the replicas run on {', '.join(map(repr, gpus))}{where}; "
                    "leave 'gpu' out to use the replicas' GPU",
                )
            )
    if problems or not enabled or not groups:
        return problems
    try:  # enough GPU slots of each type for every replica: the export's own placement, run ahead
        one_type = len({g.gpu.name for g in groups}) == 1  # host groups naming no GPU take it, as in the export
        T.plan_replicas(
            T.opendc_hosts(d.with_gpu(groups[0].gpu) if one_type else d),
            [(g.gpu.name, g.tp) for g in groups for _ in range(g.replicas)],
            source=dc_source,
        )
    except KavierInputError as exc:
        problems.append((prefix + ("hosts",), _msg(exc, dc_source).replace("hosts: ", "", 1) + where))
    return problems


def load_experiment(
    path_or_dict: str | Path | Mapping,
    *,
    base_dir: str | Path | None = None,
    source: str | None = None,
    opendc: bool | None = None,
) -> Experiment:
    """Read, validate and check an experiment; raise every problem at once.

    ``path_or_dict``: a JSON/YAML file or an already parsed mapping (then
    relative paths are resolved against ``base_dir``, default the current
    folder, and messages name ``source``).
    """
    if isinstance(path_or_dict, Mapping):
        data = copy.deepcopy(dict(path_or_dict))
        src = source or "<experiment>"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        exp_file = None
    else:
        p = Path(path_or_dict)
        data = read_document(p)
        src = source or str(p)
        base = Path(base_dir) if base_dir is not None else p.resolve().parent
        exp_file = p
    problems, exp = experiment_problems(data, base_dir=base, source=src, opendc=opendc)
    if problems:
        raise_problems(problems, src)
    assert exp is not None
    if exp_file is not None:
        exp.input_files.insert(0, ("experiment", exp_file))
    return exp


def load_trace_for(exp: Experiment):
    """The experiment's trace (read from its file or generated)."""
    from kavier_opendc.workload.synthetic import load_synthetic_spec
    from kavier_opendc.workload.trace import load_trace

    t = exp.trace
    if t.kind == "synthetic":
        if t.inline is not None:
            spec = dict(t.inline)
            spec.setdefault("seed", exp.seed)
            try:
                return load_synthetic_spec(spec, base_dir=exp.base_dir)
            except KavierInputError as exc:
                raise KavierInputError(f"trace.synthetic: {exc}", source=exp.source) from None
        return load_synthetic_spec(t.path)
    assert t.path is not None, "a file trace has its path"
    if t.path.suffix.lower() == ".json":
        from kavier_opendc.workload.load import load_workload  # a JSON file is a description or JSON Lines

        return load_workload(str(t.path), t.format, keep_overlong=t.keep_overlong)
    return load_trace(t.path, t.format, keep_overlong=t.keep_overlong)


def synthetic_input_files(exp: Experiment) -> list[tuple[str, Path]]:
    """Files a synthetic description refers to (histograms), for checksums."""
    spec, base = None, exp.base_dir
    if exp.trace.kind == "synthetic":
        if exp.trace.inline is not None:
            spec = exp.trace.inline
        elif exp.trace.path is not None:
            try:
                spec = read_document(exp.trace.path, "workload")
                base = exp.trace.path.resolve().parent
            except KavierInputError:
                spec = None
    out: list[tuple[str, Path]] = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "file" and isinstance(v, str):
                    p = _resolve(base, v)
                    if p.is_file():
                        out.append((f"trace.{path}.file".replace("..", "."), p))
                else:
                    walk(v, f"{path}.{k}" if path else k)

    walk(spec, "")
    return out


def with_overrides(data: Mapping, overrides: Mapping[str, Any]) -> dict:
    """A deep copy of ``data`` with dotted-path overrides applied, e.g.
    ``{"serving.replicas": 4, "serving.prefix_cache.policy": "block"}``.
    Intermediate mappings are created; a string prefix_cache becomes
    ``{"policy": ...}`` when one of its knobs is set."""
    out = copy.deepcopy(dict(data))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cur = out
        for part in parts[:-1]:
            nxt = cur.get(part)
            if part == "prefix_cache" and isinstance(nxt, str):
                nxt = {"policy": nxt}
                cur[part] = nxt
            if not isinstance(nxt, dict):
                nxt = {}
                cur[part] = nxt
            cur = nxt
        last = parts[-1]
        if last in ("region", "trace", "synthetic") and parts[:-1] == ["carbon"]:
            for other in ("region", "trace", "synthetic"):  # carbon takes one source; align stays
                cur.pop(other, None)
        cur[last] = copy.deepcopy(value)
    return out


def to_jsonable(exp: Experiment) -> dict:
    """A summary of the resolved experiment for provenance."""
    return {
        "name": exp.name,
        "source": exp.source,
        "seed": exp.seed,
        "replica_groups": [
            {
                "name": g.name,
                "model": g.model.name,
                "gpu": g.gpu.name,
                "replicas": g.replicas,
                "tp": g.tp,
                **dict(g.limits),
            }
            for g in exp.groups
        ],
        "serving": {
            k: v
            for k, v in dataclasses.asdict(exp.serving).items()
            if k not in ("disaggregation", "speculative") or v is not None
        },
        "trace": {
            "kind": exp.trace.kind,
            "path": None if exp.trace.path is None else str(exp.trace.path),
            "format": exp.trace.format,
            "inline": exp.trace.inline is not None,
        },
        "carbon": None
        if exp.carbon is None
        else {
            "kind": exp.carbon.kind,
            "path": None if exp.carbon.path is None else str(exp.carbon.path),
            "params": exp.carbon.params,
            "align": exp.carbon.align,
        },
        "prices": exp.prices.to_dict(),
        "slo": exp.slo.to_dict(),
        "opendc": {"enabled": exp.opendc_enabled, "export": exp.export_opts},
    }


__all__ = [
    "CarbonSource",
    "catalog_of",
    "Experiment",
    "GroupSpec",
    "TraceSource",
    "experiment_problems",
    "experiment_schema",
    "json_path",
    "load_experiment",
    "load_trace_for",
    "read_document",
    "schema_validator",
    "with_overrides",
]
