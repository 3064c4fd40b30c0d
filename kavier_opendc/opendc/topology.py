"""Datacenter description -> OpenDC topology and experiment JSON.

A datacenter description (JSON or YAML, validated by
``schemas/datacenter.schema.json``) names host groups (GPUs per host, the GPU
type from the catalogue, CPU, memory, power models), the power source with its
carbon trace, an optional battery, the start date and the export interval.
:func:`load_datacenter` validates it (reporting every problem with its JSON
path) and :func:`write_opendc_inputs` turns a simulation's timeline plus the
datacenter into OpenDC's own inputs::

    out_dir/workload/tasks.parquet
    out_dir/workload/fragments.parquet
    out_dir/topology.json
    out_dir/experiment.json

How LLM serving maps onto OpenDC (facts read from OpenDC v2.4u's source and
checked against the real simulator through the bridge):

* OpenDC builds at most 4 GPUs per host (its host GPU distributor has a hard
  limit). A host with n > 4 GPUs is either *split* (default) into ceil(n/4)
  OpenDC hosts that share its GPUs as evenly as possible and its CPU cores,
  CPU idle/max power and memory in proportion to their cores, or
  *aggregated* into one OpenDC host whose single GPU has n times the SMs,
  memory, idle and max power of one GPU (identical power under the linear
  model, because OpenDC spreads a host's GPU demand evenly over its GPUs).
* Each OpenDC GPU has ``coreCount`` = the GPU's SMs and ``coreSpeed`` = its
  boost clock, so one physical GPU has a capacity of SMs x MHz, and a
  fragment's ``gpu_usage`` is utilisation x GPUs held x SMs x MHz.
* OpenDC's task ``gpu_count`` is compared by its GPU host filter
  (``VGpuFilter``) against the sum of the host's GPU *coreCount*s, i.e. it
  counts GPU cores, not GPUs. We therefore write ``gpu_count`` = GPUs held x
  SMs and use the prefab scheduler ``ProvisionedCpuGpuCores`` (its filters
  include VGpuFilter), which keeps every replica's GPUs on one host and never
  puts a GPU task on a host without free GPUs. (The default ``Mem``
  scheduler ignores GPUs entirely.)
* A replica with tp GPUs is one task when tp <= the GPUs of one OpenDC host,
  otherwise ceil(tp / host GPUs) tasks holding its GPUs in parts, each with
  the replica's utilisation over time.

Several GPU types (heterogeneous replica groups)
------------------------------------------------
Each host group names its GPU type with ``gpu`` (a catalogue name, or an
object with the name and overrides). A host group without ``gpu`` runs the
simulation's GPU when the simulation uses one GPU type; when its replicas
run on several types, every host group with GPUs must name one. Each host
group becomes its own OpenDC host entry (or entries, after the 4-GPU split)
with that GPU's ``coreCount`` (SMs), ``coreSpeed`` (boost MHz) and power
model (idle/max watts from the catalogue unless ``gpu_power_model`` or the
``gpu`` overrides say otherwise). :func:`plan_replicas` places every replica
on host entries of its own GPU type (first fit decreasing per type) and
reports a shortage per type. Example::

    hosts:
      - {name: a100, count: 1, gpus_per_host: 4, gpu: A100-80GB,
         cpu: {cores: 32, mhz: 2400}, memory_gib: 512}
      - {name: h100, count: 1, gpus_per_host: 4, gpu: H100-SXM,
         gpu_power_model: {model: linear, idle_w: 90, max_w: 700},
         cpu: {cores: 32, mhz: 2400}, memory_gib: 1024}

Caveat: OpenDC v2.4u's schedulers know nothing of GPU types (the
``ProvisionedCpuGpuCores`` filters compare only free GPU *cores*, CPU cores
and memory, and the experiment's filter specs offer no GPU filter). The
plan is what we intend and what the statistics are computed for; OpenDC
follows it for sure only when no host of another type could take a task.
The export therefore writes the tasks in decreasing order of requested GPU
cores (OpenDC's loader sorts tasks by submission time, stably, and schedules
them FIFO, so the largest requests are placed first, while their own hosts
are still free) and lists in its statistics (``placement.tasks_not_pinned``)
the tasks that a host of another GPU type could also accept.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from kavier_opendc.outputs import write_json_atomic
from kavier_opendc.validation import explain_schema_error, json_path, non_finite, load_schema, schema_validator
from kavier_opendc.errors import KavierInputError

SCHEMA_FILE = "datacenter.schema.json"
MAX_GPUS_PER_OPENDC_HOST = 4
DEFAULT_START = "2022-01-01T00:00:00"
DEFAULT_EXPORT_INTERVAL_S = 1
DEFAULT_ALLOCATION_POLICY = "ProvisionedCpuGpuCores"
POWER_MODEL_TYPES = ("constant", "linear", "square", "cubic", "sqrt", "mse", "asymptotic")
#: OpenDC's own default power model of a host CPU (TopologySpecs.kt PowerModelSpec.DFLT).
DEFAULT_CPU_POWER = {"model": "linear", "idle_w": 200.0, "max_w": 400.0}


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerModel:
    """An OpenDC power model: power = idle + (max - idle) * f(u)."""

    model: str = "linear"
    idle_w: float = 0.0
    max_w: float = 0.0
    power_w: float | None = None          # 'constant' model only
    calibration_factor: float = 1.0       # 'mse'
    asym_util: float = 0.0                # 'asymptotic'
    dvfs: bool = True                     # 'asymptotic'

    def scaled(self, factor: float) -> "PowerModel":
        """The same curve with all powers multiplied by ``factor``."""
        return dataclasses.replace(
            self, idle_w=self.idle_w * factor, max_w=self.max_w * factor,
            power_w=None if self.power_w is None else self.power_w * factor)

    def power(self, u: float) -> float:
        """Power in W at utilisation ``u`` for the curves whose formula is a
        plain function of u (constant, linear, square, cubic, sqrt)."""
        u = min(max(float(u), 0.0), 1.0)
        if self.model == "constant":
            return float(self.power_w if self.power_w is not None else 0.0)
        f = {"linear": u, "square": u * u, "cubic": u ** 3, "sqrt": math.sqrt(u)}.get(self.model)
        if f is None:
            raise NotImplementedError(f"power({self.model}) is only computed inside OpenDC")
        return self.idle_w + (self.max_w - self.idle_w) * f

    @property
    def static_w(self) -> float:
        """Power drawn at zero utilisation."""
        return float(self.power_w or 0.0) if self.model == "constant" else self.idle_w

    def to_opendc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"modelType": self.model,
                               "idlePower": _watts(self.idle_w),
                               "maxPower": _watts(self.max_w)}
        if self.model == "constant":
            out["power"] = _watts(self.power_w or 0.0)
        if self.model == "mse":
            out["calibrationFactor"] = float(self.calibration_factor)
        if self.model == "asymptotic":
            out["asymUtil"] = float(self.asym_util)
            out["dvfs"] = bool(self.dvfs)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {"model": self.model, "idle_w": self.idle_w, "max_w": self.max_w}
        if self.power_w is not None:
            d["power_w"] = self.power_w
        if self.model == "mse":
            d["calibration_factor"] = self.calibration_factor
        if self.model == "asymptotic":
            d["asym_util"] = self.asym_util
            d["dvfs"] = self.dvfs
        return d


@dataclass(frozen=True)
class HostGroup:
    """``count`` identical physical hosts as described by the user."""

    name: str
    count: int
    gpus_per_host: int
    gpu: Any | None                     # GPUSpec, None = GPU of the simulation
    gpu_power_spec: Mapping[str, Any]   # user's gpu_power_model (may lack idle/max)
    cpu_cores: int                      # per CPU
    cpu_mhz: float
    cpu_count: int
    cpu_power: PowerModel
    memory_gib: float
    cpu_model: str = "unknown"
    cpu_vendor: str = "unknown"
    path: str = "hosts[0]"              # JSON path in the description

    @property
    def total_cores(self) -> int:
        return self.cpu_cores * self.cpu_count

    def gpu_power(self, gpu=None) -> PowerModel | None:
        """GPU power model: the user's, with idle/max defaulting to the GPU's
        catalogue watts."""
        gpu = gpu if gpu is not None else self.gpu
        if self.gpus_per_host == 0 or gpu is None:
            return None
        s = dict(self.gpu_power_spec or {})
        return PowerModel(
            model=s.get("model", "linear"),
            idle_w=float(s.get("idle_w", gpu.idle_power_w)),
            max_w=float(s.get("max_w", gpu.max_power_w)),
            power_w=float(s["power_w"]) if "power_w" in s else (
                float(gpu.max_power_w) if s.get("model") == "constant" else None),
            calibration_factor=float(s.get("calibration_factor", 1.0)),
            asym_util=float(s.get("asym_util", 0.0)),
            dvfs=bool(s.get("dvfs", True)),
        )


@dataclass(frozen=True)
class PowerSource:
    name: str = "PowerSource"
    max_power_w: float | None = None
    carbon_trace: Path | None = None    # absolute


@dataclass(frozen=True)
class Battery:
    name: str
    capacity_kwh: float
    charging_speed_w: float
    policy: Mapping[str, Any]
    initial_charge_kwh: float = 0.0
    embodied_carbon_g: float | None = None
    expected_lifetime_years: float | None = None

    def to_opendc(self) -> dict[str, Any]:
        pol = dict(self.policy)
        p: dict[str, Any] = {"type": pol["type"]}
        if pol["type"] == "single":
            p["carbonThreshold"] = float(pol["carbon_threshold"])
        elif pol["type"] == "double":
            p["lowerThreshold"] = float(pol["lower_threshold"])
            p["upperThreshold"] = float(pol["upper_threshold"])
        else:
            p["startingThreshold"] = float(pol["starting_threshold"])
            p["windowSize"] = int(pol["window_size"])
        out: dict[str, Any] = {"name": self.name, "capacity": float(self.capacity_kwh),
                               "chargingSpeed": float(self.charging_speed_w),
                               "initialCharge": float(self.initial_charge_kwh),
                               "batteryPolicy": p}
        if self.embodied_carbon_g is not None:
            out["embodiedCarbon"] = float(self.embodied_carbon_g)
        if self.expected_lifetime_years is not None:
            out["expectedLifetime"] = float(self.expected_lifetime_years)
        return out


@dataclass(frozen=True)
class Datacenter:
    """A validated datacenter description."""

    hosts: tuple[HostGroup, ...]
    name: str = "datacenter"
    gpu_host_limit: str = "split"
    power_source: PowerSource = field(default_factory=PowerSource)
    battery: Battery | None = None
    start: str = DEFAULT_START
    export_interval_s: int = DEFAULT_EXPORT_INTERVAL_S
    allocation_policy: str = DEFAULT_ALLOCATION_POLICY
    source: str | None = None           # file it was read from, for messages
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def start_datetime(self) -> datetime:
        return datetime.fromisoformat(self.start)

    def gpu_hosts(self) -> list[HostGroup]:
        return [h for h in self.hosts if h.gpus_per_host > 0]

    def physical_gpus(self) -> int:
        return sum(h.count * h.gpus_per_host for h in self.hosts)

    def gpu_types(self) -> list[str]:
        """Names of the GPU types the host groups name (in order of first appearance)."""
        out: list[str] = []
        for h in self.gpu_hosts():
            if h.gpu is not None and h.gpu.name not in out:
                out.append(h.gpu.name)
        return out

    def with_gpu(self, gpu) -> "Datacenter":
        """Fill in ``gpu`` for host groups that have GPUs but name none."""
        hosts = tuple(dataclasses.replace(h, gpu=gpu) if (h.gpus_per_host > 0 and h.gpu is None) else h
                      for h in self.hosts)
        return dataclasses.replace(self, hosts=hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu_host_limit": self.gpu_host_limit,
            "start": self.start,
            "export_interval_s": self.export_interval_s,
            "allocation_policy": self.allocation_policy,
            "hosts": [{
                "name": h.name, "count": h.count, "gpus_per_host": h.gpus_per_host,
                "gpu": None if h.gpu is None else h.gpu.name,
                "gpu_power_model": None if h.gpu_power() is None else h.gpu_power().to_dict(),
                "cpu": {"cores": h.cpu_cores, "mhz": h.cpu_mhz, "count": h.cpu_count},
                "cpu_power_model": h.cpu_power.to_dict(),
                "memory_gib": h.memory_gib,
            } for h in self.hosts],
            "power_source": {
                "name": self.power_source.name,
                "max_power_w": self.power_source.max_power_w,
                "carbon_trace": None if self.power_source.carbon_trace is None
                else str(self.power_source.carbon_trace),
            },
            "battery": None if self.battery is None else dataclasses.asdict(self.battery),
        }


@dataclass(frozen=True)
class OpenDCHost:
    """One host entry of OpenDC's topology (after the 4-GPU split/aggregation)."""

    name: str
    count: int
    gpus: int                  # OpenDC GPUs on the host
    physical_gpus: int         # physical GPUs represented (aggregate: n on one OpenDC GPU)
    gpu_core_count: int        # coreCount of one OpenDC GPU
    gpu_mhz: float
    gpu_memory_mib: int
    gpu_bandwidth_gbs: float
    gpu_model: str
    gpu_vendor: str
    gpu_power: PowerModel | None
    cpu_cores: int             # per CPU
    cpu_count: int
    cpu_mhz: float
    cpu_power: PowerModel
    memory_mib: int
    group: int                 # index into Datacenter.hosts
    cpu_model: str = "unknown"
    cpu_vendor: str = "unknown"

    @property
    def gpu_capacity_mhz(self) -> float:
        """Capacity of one OpenDC GPU (coreCount x coreSpeed)."""
        return self.gpu_core_count * self.gpu_mhz

    def to_opendc_entries(self) -> list[dict[str, Any]]:
        """One OpenDC host entry per physical host, named ``<name>-<i>`` when there are several.

        OpenDC names the hosts of a ``count: n`` entry ``name``, ``name-0``, ... , which users cannot map
        back to the topology; explicit entries give every host the name the reports show.
        """
        if self.count <= 1:
            return [self.to_opendc()]
        return [dict(self.to_opendc(), name=opendc_host_name(self, i), count=1) for i in range(self.count)]

    def to_opendc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "count": int(self.count),
            "cpu": {"coreCount": int(self.cpu_cores), "coreSpeed": f"{_num(self.cpu_mhz)} MHz",
                    "count": int(self.cpu_count), "modelName": self.cpu_model,
                    "vendor": self.cpu_vendor},
            "memory": {"memorySize": f"{int(self.memory_mib)} MiB"},
            "cpuPowerModel": self.cpu_power.to_opendc(),
        }
        if self.gpus > 0 and self.gpu_power is not None:
            out["gpu"] = {
                "count": int(self.gpus),
                "coreCount": int(self.gpu_core_count),
                "coreSpeed": f"{_num(self.gpu_mhz)} MHz",
                "memorySize": f"{int(self.gpu_memory_mib)} MiB",
                "memoryBandwidth": f"{_num(self.gpu_bandwidth_gbs)} GB/s",
                "modelName": self.gpu_model,
                "vendor": self.gpu_vendor,
            }
            out["gpuPowerModel"] = self.gpu_power.to_opendc()
        return out


def opendc_host_name(host: OpenDCHost, instance: int) -> str:
    """The name OpenDC reports for physical host ``instance`` of a host entry."""
    return host.name if host.count <= 1 else f"{host.name}-{instance}"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _num(x: float) -> str:
    """A decimal literal OpenDC's unit parser accepts (no exponent with '+')."""
    x = float(x)
    if x.is_integer():
        return str(int(x))
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text


def _watts(x: float | None) -> str:
    return f"{_num(x or 0.0)} W"


def datacenter_schema() -> dict:
    """The JSON Schema (Draft 2020-12) of these files, as a fresh dict."""
    return copy.deepcopy(load_schema(SCHEMA_FILE))


def _validator() -> Draft202012Validator:
    return schema_validator(SCHEMA_FILE)


def _schema_problems(data: Any) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    for err in _validator().iter_errors(data):
        path = tuple(err.absolute_path)
        if err.validator == "oneOf" and path and path[-1] == "gpu":
            problems.append((path, f"{err.instance!r} is neither a GPU name nor an object "
                                   "{name, overrides...} (see schemas/datacenter.schema.json)"))
        else:
            problems.extend(explain_schema_error(err))
    return problems




def _read_description(path: Path) -> Any:
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KavierInputError("datacenter file not found", source=src,
                               expected="a JSON or YAML datacenter description") from None
    except IsADirectoryError:
        raise KavierInputError("is a directory, not a datacenter file", source=src) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"cannot read datacenter file: {exc}", source=src) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise KavierInputError(f"invalid JSON syntax at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                   source=src) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KavierInputError(f"invalid YAML syntax{where}: {exc.problem or exc}", source=src) from None
    except yaml.YAMLError as exc:
        raise KavierInputError(f"invalid YAML: {exc}", source=src) from None


def _default_catalog():
    from kavier_opendc.specs import default_catalog  # lazy: catalogue loads YAML
    return default_catalog()


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------

def load_datacenter(path_or_dict: str | os.PathLike | Mapping[str, Any] | Datacenter, *,
                    catalog=None, base_dir: str | os.PathLike | None = None,
                    source: str | None = None) -> Datacenter:
    """Read and validate a datacenter description.

    ``path_or_dict`` is a JSON/YAML file or an already parsed mapping (then
    relative paths are resolved against ``base_dir``, default the current
    folder, and messages name ``source``). GPU names are looked up in
    ``catalog`` (default: the built-in catalogue). Every problem is reported
    in one :class:`KavierInputError` with its JSON path, e.g.
    ``hosts[0].cpu.cores: 0 is less than the minimum of 1``.
    """
    if isinstance(path_or_dict, Datacenter):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        data = copy.deepcopy(dict(path_or_dict))
        src = source or "<datacenter>"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        p = Path(path_or_dict)
        data = _read_description(p)
        src = source or str(p)
        base = Path(base_dir) if base_dir is not None else p.resolve().parent
    if not isinstance(data, dict):
        raise KavierInputError(f"the document is {type(data).__name__}, not an object", source=src,
                               expected="a mapping with at least 'hosts' (schemas/datacenter.schema.json)")
    problems = _schema_problems(data) + non_finite(data)
    if problems:
        _raise_problems(problems, src)
    cat = catalog
    dc, problems = _build(data, base, src, lambda: cat if cat is not None else _default_catalog())
    if problems:
        _raise_problems(problems, src)
    return dc


def _raise_problems(problems: list[tuple[tuple, str]], src: str) -> None:
    unique: dict[tuple[tuple, str], None] = {}
    for path, msg in problems:
        unique.setdefault((tuple(path), msg), None)
    lines = [f"{json_path(p)}: {m}" for p, m in unique]
    n = len(lines)
    exc = KavierInputError(
        f"invalid datacenter description, {n} problem{'s' if n != 1 else ''}: " + "; ".join(lines),
        source=src, expected="a description as in schemas/datacenter.schema.json")
    exc.problems = lines  # type: ignore[attr-defined]
    raise exc


def _power_model(spec: Mapping[str, Any] | None, default: Mapping[str, Any], path: tuple,
                 problems: list) -> PowerModel:
    s = dict(default)
    s.update(spec or {})
    model = s.get("model", "linear")
    idle = float(s.get("idle_w", 0.0))
    mx = float(s.get("max_w", idle))
    if model == "constant" and "power_w" not in s:
        problems.append((path + ("power_w",), "required for the 'constant' power model"))
    if mx < idle:
        problems.append((path + ("max_w",), f"{mx:g} W is less than idle_w ({idle:g} W)"))
    return PowerModel(model=model, idle_w=idle, max_w=mx,
                      power_w=float(s["power_w"]) if "power_w" in s else None,
                      calibration_factor=float(s.get("calibration_factor", 1.0)),
                      asym_util=float(s.get("asym_util", 0.0)), dvfs=bool(s.get("dvfs", True)))


_GPU_OVERRIDES = ("idle_power_w", "max_power_w", "num_sms", "boost_clock_mhz", "memory_gib",
                  "mem_bandwidth_gbs", "vendor")


def _build(data: dict, base: Path, src: str, get_catalog) -> tuple[Datacenter | None, list]:
    problems: list[tuple[tuple, str]] = []
    hosts: list[HostGroup] = []
    names: set[str] = set()
    for i, h in enumerate(data["hosts"]):
        path = ("hosts", i)
        name = h.get("name", f"host{i}")
        if name in names:
            problems.append((path + ("name",), f"duplicate host name {name!r}"))
        names.add(name)
        gpus = int(h.get("gpus_per_host", 0))
        gpu_spec = None
        gref = h.get("gpu")
        if gref is not None:
            if gpus == 0:
                problems.append((path + ("gpus_per_host",), "must be at least 1 when 'gpu' is given"))
            gname = gref if isinstance(gref, str) else gref["name"]
            try:
                gpu_spec = get_catalog().gpu(gname)
            except KavierInputError as exc:
                problems.append((path + (("gpu",) if isinstance(gref, str) else ("gpu", "name")),
                                 str(exc)))
            if gpu_spec is not None and isinstance(gref, dict):
                over = {k: gref[k] for k in _GPU_OVERRIDES if k in gref}
                if over:
                    gpu_spec = dataclasses.replace(gpu_spec, **over)
            if gpu_spec is not None and gpu_spec.idle_power_w > gpu_spec.max_power_w:
                problems.append((path + ("gpu",), f"idle power {gpu_spec.idle_power_w:g} W exceeds "
                                 f"max power {gpu_spec.max_power_w:g} W"))
        gpm = h.get("gpu_power_model") or {}
        if gpm and gpus == 0:
            problems.append((path + ("gpu_power_model",), "given for a host without GPUs (gpus_per_host is 0)"))
        if gpm.get("model") == "constant" and "power_w" not in gpm:
            problems.append((path + ("gpu_power_model", "power_w"), "required for the 'constant' power model"))
        if "idle_w" in gpm and "max_w" in gpm and gpm["max_w"] < gpm["idle_w"]:
            problems.append((path + ("gpu_power_model", "max_w"),
                             f"{gpm['max_w']:g} W is less than idle_w ({gpm['idle_w']:g} W)"))
        if gpu_spec is not None:
            idle = gpm.get("idle_w", gpu_spec.idle_power_w)
            mx = gpm.get("max_w", gpu_spec.max_power_w)
            if ("idle_w" in gpm) != ("max_w" in gpm) and mx < idle:
                problems.append((path + ("gpu_power_model",),
                                 f"max power {mx:g} W is less than idle power {idle:g} W"))
        cpu = h["cpu"]
        cpu_power = _power_model(h.get("cpu_power_model"), DEFAULT_CPU_POWER if "cpu_power_model" not in h
                                 else {"model": "linear"}, path + ("cpu_power_model",), problems)
        cpm = h.get("cpu_power_model")
        if cpm is not None and cpm.get("model", "linear") != "constant" and not ("idle_w" in cpm and "max_w" in cpm):
            problems.append((path + ("cpu_power_model",), "needs both idle_w and max_w"))
        hosts.append(HostGroup(
            name=name, count=int(h.get("count", 1)), gpus_per_host=gpus, gpu=gpu_spec,
            gpu_power_spec=dict(gpm), cpu_cores=int(cpu["cores"]), cpu_mhz=float(cpu["mhz"]),
            cpu_count=int(cpu.get("count", 1)), cpu_power=cpu_power,
            memory_gib=float(h["memory_gib"]), cpu_model=str(cpu.get("model", "unknown")),
            cpu_vendor=str(cpu.get("vendor", "unknown")), path=json_path(path)))

    start = data.get("start", DEFAULT_START)
    try:
        start_dt = datetime.fromisoformat(start)
        start = start_dt.strftime("%Y-%m-%dT%H:%M:%S") + (
            f".{start_dt.microsecond:06d}".rstrip("0") if start_dt.microsecond else "")
    except ValueError as exc:
        problems.append((("start",), f"{start!r} is not a valid date-time ({exc})"))
        start_dt = datetime.fromisoformat(DEFAULT_START)

    ps = data.get("power_source", {})
    trace_ref = ps.get("carbon_trace", data.get("region"))
    trace_path = None
    if trace_ref is not None:
        from kavier_opendc.opendc.carbon import resolve_carbon_trace, read_carbon_trace
        loc = "power_source.carbon_trace" if "carbon_trace" in ps else "region"
        try:
            trace_path = resolve_carbon_trace(trace_ref, base, year=start_dt.year, source=None, location=None)
            read_carbon_trace(trace_path)
        except KavierInputError as exc:
            problems.append(((tuple(loc.split("."))), str(exc)))
            trace_path = None
    power_source = PowerSource(name=ps.get("name", "PowerSource"),
                               max_power_w=float(ps["max_power_w"]) if "max_power_w" in ps else None,
                               carbon_trace=trace_path)
    battery = None
    if "battery" in data:
        b = data["battery"]
        if "initial_charge_kwh" in b and b["initial_charge_kwh"] > b["capacity_kwh"]:
            problems.append((("battery", "initial_charge_kwh"),
                             f"{b['initial_charge_kwh']:g} kWh exceeds capacity_kwh ({b['capacity_kwh']:g})"))
        pol = b["policy"]
        if pol.get("type") == "double" and "lower_threshold" in pol and "upper_threshold" in pol \
                and pol["lower_threshold"] > pol["upper_threshold"]:
            problems.append((("battery", "policy", "lower_threshold"), "is above upper_threshold"))
        battery = Battery(name=b.get("name", "Battery"), capacity_kwh=float(b["capacity_kwh"]),
                          charging_speed_w=float(b["charging_speed_w"]), policy=dict(pol),
                          initial_charge_kwh=float(b.get("initial_charge_kwh", 0.0)),
                          embodied_carbon_g=b.get("embodied_carbon_g"),
                          expected_lifetime_years=b.get("expected_lifetime_years"))
    if problems:
        return None, problems
    dc = Datacenter(hosts=tuple(hosts), name=data.get("name", "datacenter"),
                    gpu_host_limit=data.get("gpu_host_limit", "split"), power_source=power_source,
                    battery=battery, start=start,
                    export_interval_s=int(data.get("export_interval_s", DEFAULT_EXPORT_INTERVAL_S)),
                    allocation_policy=data.get("allocation_policy", DEFAULT_ALLOCATION_POLICY),
                    source=src, raw=data)
    return dc, []


# --------------------------------------------------------------------------
# OpenDC hosts: the 4-GPU limit
# --------------------------------------------------------------------------

def _even_split(total: int, weights: list[int]) -> list[int]:
    """Split integer ``total`` in proportion to ``weights`` (largest remainder)."""
    s = sum(weights)
    raw = [total * w / s for w in weights]
    out = [int(math.floor(r)) for r in raw]
    rest = total - sum(out)
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - out[k]), k))
    for k in order[:rest]:
        out[k] += 1
    return out


def opendc_hosts(datacenter: Datacenter, gpu=None) -> list[OpenDCHost]:
    """The datacenter's host groups as OpenDC host entries, respecting
    OpenDC's limit of 4 GPUs per host (``gpu_host_limit``: split or aggregate).

    ``gpu`` fills in the GPU type of host groups that name none (the
    simulation's GPU)."""
    if gpu is not None:
        datacenter = datacenter.with_gpu(gpu)
    out: list[OpenDCHost] = []
    for gi, h in enumerate(datacenter.hosts):
        n = h.gpus_per_host
        if n > 0 and h.gpu is None:
            raise KavierInputError("the host group names no GPU type and the simulation does not give exactly "
                                   "one", source=datacenter.source, location=f"{h.path}.gpu",
                                   expected="a GPU name from the catalogue (required for every host group with "
                                            "GPUs when the replicas run on several GPU types)")
        mem_mib = int(round(h.memory_gib * 1024))
        g = h.gpu
        gp = h.gpu_power()
        base = dict(gpu_core_count=int(g.num_sms) if g else 0, gpu_mhz=float(g.boost_clock_mhz) if g else 0.0,
                    gpu_memory_mib=int(round(g.memory_gib * 1024)) if g else 0,
                    gpu_bandwidth_gbs=float(g.mem_bandwidth_gbs) if g else 0.0,
                    gpu_model=g.name if g else "none", gpu_vendor=g.vendor if g else "unknown",
                    gpu_power=gp, group=gi, cpu_model=h.cpu_model, cpu_vendor=h.cpu_vendor)
        if n <= MAX_GPUS_PER_OPENDC_HOST:
            out.append(OpenDCHost(name=h.name, count=h.count, gpus=n, physical_gpus=n,
                                  cpu_cores=h.cpu_cores, cpu_count=h.cpu_count, cpu_mhz=h.cpu_mhz,
                                  cpu_power=h.cpu_power, memory_mib=mem_mib, **base))
        elif datacenter.gpu_host_limit == "aggregate":
            base.update(gpu_core_count=int(g.num_sms) * n, gpu_memory_mib=base["gpu_memory_mib"] * n,
                        gpu_bandwidth_gbs=base["gpu_bandwidth_gbs"] * n, gpu_power=gp.scaled(n),
                        gpu_model=f"{g.name} x{n}")
            out.append(OpenDCHost(name=h.name, count=h.count, gpus=1, physical_gpus=n,
                                  cpu_cores=h.cpu_cores, cpu_count=h.cpu_count, cpu_mhz=h.cpu_mhz,
                                  cpu_power=h.cpu_power, memory_mib=mem_mib, **base))
        else:  # split
            k = math.ceil(n / MAX_GPUS_PER_OPENDC_HOST)
            parts = [n // k + (1 if j < n % k else 0) for j in range(k)]
            total_cores = h.total_cores
            if total_cores < k:
                raise KavierInputError(
                    f"cannot split a host with {n} GPUs into {k} OpenDC hosts: it has only "
                    f"{total_cores} CPU core(s)", source=datacenter.source, location=f"{h.path}.cpu",
                    expected=f"at least {k} cores, or gpu_host_limit: aggregate")
            if h.cpu_count % k == 0 and len(set(parts)) == 1:
                cpu_splits = [(h.cpu_cores, h.cpu_count // k)] * k
            else:
                cores = _even_split(total_cores, parts)
                cpu_splits = [(c, 1) for c in cores]
            mems = _even_split(mem_mib, parts)
            # group identical parts into one entry with a count
            shapes: dict[tuple, int] = {}
            for j in range(k):
                key = (parts[j], cpu_splits[j], mems[j])
                shapes[key] = shapes.get(key, 0) + 1
            for s_idx, ((g_n, (c_cores, c_count), m), times) in enumerate(shapes.items()):
                frac = (c_cores * c_count) / total_cores
                name = h.name if len(shapes) == 1 else f"{h.name}.{s_idx}"
                out.append(OpenDCHost(name=name, count=h.count * times, gpus=g_n, physical_gpus=g_n,
                                      cpu_cores=c_cores, cpu_count=c_count, cpu_mhz=h.cpu_mhz,
                                      cpu_power=h.cpu_power.scaled(frac), memory_mib=m, **base))
    return out


# --------------------------------------------------------------------------
# Replica placement
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskPlan:
    """One OpenDC task: (part of) a serving replica."""

    task_id: int
    replica: int
    part: int
    gpus: int                  # physical GPUs held
    host_entry: int            # planned OpenDC host entry (index into opendc_hosts)
    host_instance: int         # which of that entry's `count` copies
    gpu_type: str | None = None  # GPU type the replica runs on (None: any GPU host)


def _replica_parts(tp: int, largest: int) -> list[int]:
    """GPUs of each task of a replica of ``tp`` GPUs when one OpenDC host holds at most ``largest``."""
    if tp <= largest:
        return [tp]
    k = math.ceil(tp / largest)
    return [tp // k + (1 if j < tp % k else 0) for j in range(k)]


def plan_replicas(hosts: list[OpenDCHost], replicas: list[tuple[str | None, int]], *,
                  source: str | None = None) -> list[TaskPlan]:
    """Place heterogeneous replicas onto the OpenDC hosts of their GPU type.

    ``replicas[r]`` is ``(gpu_type, tp)`` of replica ``r`` (``gpu_type``
    None: any host with GPUs). A replica's task(s) go only to host entries
    whose GPU model is that type. A replica whose tp fits one OpenDC host of
    its type is one task holding all its GPUs on one host; a larger one is
    split into ceil(tp / largest host of the type) tasks. Placement is first
    fit decreasing (larger replicas first, ties in replica order) per GPU
    type; the returned plans are in replica order with task ids 0, 1, ...
    Raises :class:`KavierInputError`, naming the GPU type and the counts,
    when a type has too few GPU slots.
    """
    if not replicas:
        raise KavierInputError("no replicas to place", source=source, location="simulation config",
                               expected="at least one replica")
    for r, (_, tp) in enumerate(replicas):
        if tp < 1:
            raise KavierInputError(f"replica {r} has tp={tp}", source=source, location="simulation config",
                                   expected="a positive tensor-parallel degree")
    free: list[list[int]] = [[h.physical_gpus] * h.count for h in hosts]
    placed: dict[int, list[TaskPlan]] = {}
    types: dict[str, str | None] = {}
    for gtype, _ in replicas:
        types.setdefault("" if gtype is None else gtype.strip().lower(), gtype)
    for key, gtype in types.items():
        members = [r for r, (g, _) in enumerate(replicas) if ("" if g is None else g.strip().lower()) == key]
        eligible = [i for i, h in enumerate(hosts) if h.physical_gpus > 0 and
                    (gtype is None or _same_gpu(h.gpu_model, gtype))]
        label = "" if gtype is None else f" of type {gtype!r}"
        if not eligible:
            present = sorted({re.sub(r" x\d+$", "", h.gpu_model) for h in hosts if h.physical_gpus > 0})
            raise KavierInputError(
                f"the datacenter has no host with GPUs{label} but {len(members)} replica(s) of the simulation "
                f"run on it (host GPU types: {', '.join(present) or 'none'})", source=source,
                location="hosts", expected=f"at least one host group with gpus_per_host > 0 and gpu: {gtype}"
                if gtype else "at least one host group with gpus_per_host > 0")
        largest = max(hosts[i].physical_gpus for i in eligible)
        order = sorted(members, key=lambda r: -replicas[r][1])      # stable: ties keep replica order
        done = 0
        for r in order:
            tp = replicas[r][1]
            parts = _replica_parts(tp, largest)
            got: list[TaskPlan] = []
            for p, g in enumerate(parts):
                spot = next(((i, c) for i in eligible for c in range(hosts[i].count) if free[i][c] >= g), None)
                if spot is None:
                    for t in got:                                       # keep the message's counts exact
                        free[t.host_entry][t.host_instance] += t.gpus
                    raise KavierInputError(_shortage(hosts, eligible, [replicas[m][1] for m in members],
                                                     gtype, done, parts), source=source, location="hosts",
                                           expected="more hosts or GPUs per host (gpus_per_host, count)"
                                           + (f" in host groups with gpu: {gtype}" if gtype else ""))
                i, c = spot
                free[i][c] -= g
                got.append(TaskPlan(-1, r, p, g, i, c, gtype))
            placed[r] = got
            done += 1
    plans: list[TaskPlan] = []
    for r in range(len(replicas)):
        for t in placed[r]:
            plans.append(dataclasses.replace(t, task_id=len(plans)))
    return plans


def _shortage(hosts: list[OpenDCHost], eligible: list[int], tps: list[int], gtype: str | None,
              fitted: int, parts: list[int]) -> str:
    need = sum(tps)
    have = sum(hosts[i].physical_gpus * hosts[i].count for i in eligible)
    by_tp: dict[int, int] = {}
    for tp in tps:
        by_tp[tp] = by_tp.get(tp, 0) + 1
    mix = " + ".join(f"{n} x tp={tp}" for tp, n in sorted(by_tp.items(), reverse=True))
    label = "" if gtype is None else f" of type {gtype!r}"
    where = ", ".join(f"{hosts[i].count} x {hosts[i].physical_gpus} on '{hosts[i].name}'" for i in eligible)
    how = ("each replica's GPUs on one host" if len(parts) == 1 else
           f"a replica in parts of {parts} GPUs, each part on one host")
    return (f"the datacenter has too few GPU slots{label}: the simulation needs {len(tps)} replica(s)"
            f"{label} ({mix}) = {need} GPUs ({how}), but the "
            f"hosts with that GPU have {have} GPU slot(s) ({where}) and only {fitted} of the "
            f"{len(tps)} replica(s) fit")


def plan_tasks(hosts: list[OpenDCHost], replicas: int, tp: int, gpu_name: str | None = None, *,
               source: str | None = None) -> list[TaskPlan]:
    """Place ``replicas`` replicas of ``tp`` GPUs of type ``gpu_name`` onto
    the OpenDC hosts (see :func:`plan_replicas`, the heterogeneous form).

    A replica whose tp fits one OpenDC host (tp <= 4 when split) is one task
    whose GPUs are all on one host; a larger one is split into
    ceil(tp / largest host) tasks. Placement is first fit over host entries;
    OpenDC's GPU-core filter enforces the same capacity. Raises
    :class:`KavierInputError` when the datacenter has too few GPU slots.
    """
    if replicas < 1 or tp < 1:
        raise KavierInputError(f"replicas={replicas}, tp={tp}", source=source,
                               location="simulation config", expected="positive integers")
    return plan_replicas(hosts, [(gpu_name, tp)] * replicas, source=source)


def _same_gpu(model_name: str, gpu_name: str) -> bool:
    a = re.sub(r" x\d+$", "", model_name).strip().lower()
    return a == gpu_name.strip().lower()


# --------------------------------------------------------------------------
# OpenDC JSON files
# --------------------------------------------------------------------------

def topology_dict(datacenter: Datacenter, gpu=None, hosts: list[OpenDCHost] | None = None) -> dict[str, Any]:
    """OpenDC topology JSON (release format, no unknown keys)."""
    hosts = hosts if hosts is not None else opendc_hosts(datacenter, gpu)
    ps = datacenter.power_source
    psj: dict[str, Any] = {"name": ps.name}
    if ps.max_power_w is not None:
        psj["maxPower"] = int(round(ps.max_power_w))
    if ps.carbon_trace is not None:
        psj["carbonTracePath"] = str(Path(ps.carbon_trace).resolve())
    cluster: dict[str, Any] = {"name": datacenter.name,
                               "hosts": [e for h in hosts for e in h.to_opendc_entries()],
                               "powerSource": psj}
    if datacenter.battery is not None:
        cluster["battery"] = datacenter.battery.to_opendc()
    return {"clusters": [cluster]}


def experiment_dict(out_dir: Path, datacenter: Datacenter, *, name: str = "kavier",
                    start: str | None = None) -> dict[str, Any]:
    """OpenDC experiment JSON whose absolute paths point into ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    return {
        "name": name,
        "outputFolder": str(out_dir / "output"),
        "topologies": [{"pathToFile": str(out_dir / "topology.json")}],
        "workloads": [{"pathToFile": str(out_dir / "workload"), "type": "ComputeWorkload",
                       "submissionTime": start or datacenter.start}],
        "allocationPolicies": [{"type": "prefab", "policyName": datacenter.allocation_policy}],
        "exportModels": [{"exportInterval": int(datacenter.export_interval_s)}],
    }


def write_opendc_inputs(sim_dir: str | os.PathLike, datacenter, out_dir: str | os.PathLike,
                        **export_opts) -> dict[str, Any]:
    """Write OpenDC's inputs for a simulation: ``out_dir/workload/tasks.parquet``,
    ``out_dir/workload/fragments.parquet``, ``out_dir/topology.json`` and
    ``out_dir/experiment.json`` (absolute paths), plus ``out_dir/export.json``
    with the export statistics.

    ``datacenter`` is a :class:`Datacenter`, a path or a mapping
    (:func:`load_datacenter`). ``export_opts`` go to
    :func:`kavier_opendc.opendc.export.export_workload` (mode, tolerance,
    interval_s, start, cpu_load_cores, ...). Returns the export statistics with
    the paths written.
    """
    from kavier_opendc.opendc.export import _export  # circular at import time

    dc = load_datacenter(datacenter)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats, dc_used, hosts = _export(sim_dir, out / "workload", dc, **export_opts)
    start = stats["start"]
    topo = topology_dict(dc_used, hosts=hosts)
    exp = experiment_dict(out, dc_used, start=start)
    write_json_atomic(out / "topology.json", topo)
    write_json_atomic(out / "experiment.json", exp)
    stats["topology"] = str((out / "topology.json").resolve())
    stats["experiment"] = str((out / "experiment.json").resolve())
    stats["datacenter"] = dc_used.to_dict()
    stats["opendc_hosts"] = [{"name": h.name, "count": h.count, "gpus": h.gpus,
                              "physical_gpus": h.physical_gpus, "gpu_capacity_mhz": h.gpu_capacity_mhz,
                              "cpu_cores": h.cpu_cores * h.cpu_count, "memory_mib": h.memory_mib}
                             for h in hosts]
    write_json_atomic(out / "export.json", stats)
    return stats
