"""The datacenter description: host groups, power models, power source, battery (the OpenDC side's input).

A datacenter description (JSON or YAML, validated by
``schemas/datacenter.schema.json``) names host groups (GPUs per host, the GPU
type from the catalogue, CPU, memory, power models), the power source with its
carbon trace, an optional battery, the start date and the export interval.
:func:`load_datacenter` validates it, reporting every problem with its JSON
path. How a description becomes OpenDC's topology is in ``topology.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from kavier_opendc.base import limits
from kavier_opendc.base.documents import parse_document
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import explain_schema_error, json_path, load_schema, non_finite, schema_validator

SCHEMA_FILE = "datacenter.schema.json"
DEFAULT_START = "2022-01-01T00:00:00"
DEFAULT_EXPORT_INTERVAL_S = 1
DEFAULT_ALLOCATION_POLICY = "ProvisionedCpuGpuCores"
#: years a host's embodied carbon is amortised over when the description gives none (a common server life)
DEFAULT_HOST_LIFETIME_YEARS = 4.0
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
    power_w: float | None = None  # 'constant' model only
    calibration_factor: float = 1.0  # 'mse'
    asym_util: float = 0.0  # 'asymptotic'
    dvfs: bool = True  # 'asymptotic'

    def scaled(self, factor: float) -> "PowerModel":
        """The same curve with all powers multiplied by ``factor``."""
        return dataclasses.replace(
            self,
            idle_w=self.idle_w * factor,
            max_w=self.max_w * factor,
            power_w=None if self.power_w is None else self.power_w * factor,
        )

    def power(self, u: float) -> float:
        """Power in W at utilisation ``u`` for the curves whose formula is a
        plain function of u (constant, linear, square, cubic, sqrt)."""
        u = min(max(float(u), 0.0), 1.0)
        if self.model == "constant":
            return float(self.power_w if self.power_w is not None else 0.0)
        f = {"linear": u, "square": u * u, "cubic": u**3, "sqrt": math.sqrt(u)}.get(self.model)
        if f is None:
            raise NotImplementedError(f"power({self.model}) is only computed inside OpenDC")
        return self.idle_w + (self.max_w - self.idle_w) * f

    def under_cap(self, cap_w: float) -> "PowerModel":
        """The curve OpenDC gets for a GPU capped at ``cap_w`` (engine/clock.py): a linear model is left as it is
        (the timeline's utilisation already carries the capped draw, a fraction of idle-to-max); a constant one
        draws at most the cap; a curved one (square, cubic, sqrt, mse, asymptotic) runs from idle to the cap,
        its maximum under the cap, on the utilisation rescaled by :meth:`capped_utilisation`, so that no
        utilisation draws above the cap."""
        if self.model == "linear":
            return self
        if self.model == "constant":
            return dataclasses.replace(self, power_w=min(float(self.power_w or 0.0), cap_w))
        return dataclasses.replace(self, max_w=max(min(self.max_w, cap_w), self.idle_w))

    def capped_utilisation(self, u, cap_w: float):
        """The utilisation a curved model under :meth:`under_cap` is given: the timeline's ``u`` (a fraction of
        idle-to-max, the capped draw) as a fraction of idle-to-cap, at most 1; ``u`` itself for linear and
        constant models."""
        import numpy as np

        top = min(self.max_w, cap_w)
        if self.model in ("linear", "constant") or top <= self.idle_w or top >= self.max_w:
            return u
        return np.minimum(np.asarray(u, dtype=np.float64) * (self.max_w - self.idle_w) / (top - self.idle_w), 1.0)

    @property
    def static_w(self) -> float:
        """Power drawn at zero utilisation."""
        return float(self.power_w or 0.0) if self.model == "constant" else self.idle_w

    def to_opendc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "modelType": self.model,
            "idlePower": opendc_watts(self.idle_w),
            "maxPower": opendc_watts(self.max_w),
        }
        if self.model == "constant":
            out["power"] = opendc_watts(self.power_w or 0.0)
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
class PUE:
    """Power usage effectiveness: a constant, or a step function of time (epoch ms; value k from times_ms[k])."""

    value: float | None = None
    times_ms: Any = None  # numpy int64, ascending
    values: Any = None  # numpy float64, each >= 1
    path: str | None = None
    kind: str = ""  # "trace" (a PUE column) or "temperature" (outside temperatures through the model)
    model: Mapping[str, Any] | None = None  # the temperature model's constants

    def series(self, epoch_ms):
        """PUE at each of ``epoch_ms`` (a numpy array); before the first row: the first value."""
        import numpy as np

        t = np.asarray(epoch_ms, dtype=np.float64)
        if self.value is not None:
            return np.full(t.shape, float(self.value))
        k = np.clip(np.searchsorted(self.times_ms, t, side="right") - 1, 0, len(self.values) - 1)
        return self.values[k]

    def to_dict(self) -> Any:
        if self.value is not None:
            return self.value
        if self.kind == "temperature":
            return {"temperature": {"file": self.path}, **dict(self.model or {})}
        return {"file": self.path}


@dataclass(frozen=True)
class HostGroup:
    """``count`` identical physical hosts as described by the user."""

    name: str
    count: int
    gpus_per_host: int
    gpu: Any | None  # GPUSpec, None = GPU of the simulation
    gpu_power_spec: Mapping[str, Any]  # user's gpu_power_model (may lack idle/max)
    cpu_cores: int  # per CPU
    cpu_mhz: float
    cpu_count: int
    cpu_power: PowerModel
    memory_gib: float
    cpu_model: str = "unknown"
    cpu_vendor: str = "unknown"
    path: str = "hosts[0]"  # JSON path in the description
    embodied_kgco2e: float | None = None  # one host without its GPUs; None: not given
    lifetime_years: float = DEFAULT_HOST_LIFETIME_YEARS
    power_cap_w: float | None = None  # the run's GPU power cap (engine/clock.py), set by the export

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
            power_w=float(s["power_w"])
            if "power_w" in s
            else (float(gpu.max_power_w) if s.get("model") == "constant" else None),
            calibration_factor=float(s.get("calibration_factor", 1.0)),
            asym_util=float(s.get("asym_util", 0.0)),
            dvfs=bool(s.get("dvfs", True)),
        )


@dataclass(frozen=True)
class PowerSource:
    name: str = "PowerSource"
    max_power_w: float | None = None
    carbon_trace: Path | None = None  # absolute


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
        out: dict[str, Any] = {
            "name": self.name,
            "capacity": float(self.capacity_kwh),
            "chargingSpeed": float(self.charging_speed_w),
            "initialCharge": float(self.initial_charge_kwh),
            "batteryPolicy": p,
        }
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
    source: str | None = None  # file it was read from, for messages
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    pue: PUE | None = field(default=None, compare=False)
    embodied_required: bool = False  # embodied_carbon: true (every GPU type used must have its numbers)

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

    def with_power_caps(self, caps: Mapping[str, float]) -> "Datacenter":
        """The host groups of each GPU type in ``caps`` (lower-case name -> W) capped there (the topology's
        curve: :meth:`PowerModel.under_cap`)."""
        hosts = tuple(
            dataclasses.replace(h, power_cap_w=caps[h.gpu.name.lower()])
            if h.gpus_per_host > 0 and h.gpu is not None and h.gpu.name.lower() in caps
            else h
            for h in self.hosts
        )
        return dataclasses.replace(self, hosts=hosts)

    def with_gpu(self, gpu) -> "Datacenter":
        """Fill in ``gpu`` for host groups that have GPUs but name none."""
        hosts = tuple(
            dataclasses.replace(h, gpu=gpu) if (h.gpus_per_host > 0 and h.gpu is None) else h for h in self.hosts
        )
        return dataclasses.replace(self, hosts=hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu_host_limit": self.gpu_host_limit,
            "start": self.start,
            "export_interval_s": self.export_interval_s,
            "allocation_policy": self.allocation_policy,
            "hosts": [
                {
                    "name": h.name,
                    "count": h.count,
                    "gpus_per_host": h.gpus_per_host,
                    "gpu": None if h.gpu is None else h.gpu.name,
                    "gpu_power_model": None if h.gpu_power() is None else h.gpu_power().to_dict(),
                    "cpu": {"cores": h.cpu_cores, "mhz": h.cpu_mhz, "count": h.cpu_count},
                    "cpu_power_model": h.cpu_power.to_dict(),
                    "memory_gib": h.memory_gib,
                }
                for h in self.hosts
            ],
            "power_source": {
                "name": self.power_source.name,
                "max_power_w": self.power_source.max_power_w,
                "carbon_trace": None if self.power_source.carbon_trace is None else str(self.power_source.carbon_trace),
            },
            "battery": None if self.battery is None else dataclasses.asdict(self.battery),
            **({"pue": self.pue.to_dict()} if self.pue is not None else {}),
            **({"embodied_carbon": True} if self.embodied_required else {}),
        }


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def opendc_decimal(x: float) -> str:
    """A decimal literal OpenDC's unit parser accepts (no exponent with '+')."""
    x = float(x)
    if x.is_integer():
        return str(int(x))
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text


def opendc_watts(x: float | None) -> str:
    return f"{opendc_decimal(x or 0.0)} W"


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
            problems.append(
                (
                    path,
                    f"{err.instance!r} is neither a GPU name nor an object "
                    "{name, overrides...} (see schemas/datacenter.schema.json)",
                )
            )
        else:
            problems.extend(explain_schema_error(err))
    return problems


def _read_description(path: Path) -> Any:
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KavierInputError(
            "datacenter file not found", source=src, expected="a JSON or YAML datacenter description"
        ) from None
    except IsADirectoryError:
        raise KavierInputError("is a directory, not a datacenter file", source=src) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"cannot read datacenter file: {exc}", source=src) from None
    return parse_document(text, "json" if path.suffix.lower() == ".json" else "yaml", src)


def _default_catalog():
    from kavier_opendc.specs import default_catalog  # lazy: catalogue loads YAML

    return default_catalog()


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------


def load_datacenter(
    path_or_dict: str | os.PathLike | Mapping[str, Any] | Datacenter,
    *,
    catalog=None,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
) -> Datacenter:
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
        raise KavierInputError(
            f"the document is {type(data).__name__}, not an object",
            source=src,
            expected="a mapping with at least 'hosts' (schemas/datacenter.schema.json)",
        )
    problems = _schema_problems(data) + non_finite(data)
    if not problems:
        problems = _size_problems(data)
    if problems:
        _raise_problems(problems, src)
    cat = catalog
    dc, problems = _build(data, base, src, lambda: cat if cat is not None else _default_catalog())
    if problems:
        _raise_problems(problems, src)
    return dc


def _size_problems(data: dict) -> list[tuple[tuple, str]]:
    """Hosts and GPUs of the whole datacenter within ``base/limits.py`` (each entry is checked by the
    schema; together they could still describe more than any datacenter holds)."""
    hosts = [h for h in data.get("hosts") or [] if isinstance(h, dict)]
    count = sum(int(h.get("count", 1)) for h in hosts)
    gpus = sum(int(h.get("count", 1)) * int(h.get("gpus_per_host", 0)) for h in hosts)
    if count > limits.HOSTS.value:
        return [(("hosts",), f"{count:,} hosts in all: " + limits.HOSTS.above(count))]
    if gpus > limits.GPUS.value:
        return [(("hosts",), f"{gpus:,} GPUs in all: " + limits.GPUS.above(gpus))]
    return []


def _raise_problems(problems: list[tuple[tuple, str]], src: str) -> None:
    unique: dict[tuple[tuple, str], None] = {}
    for path, msg in problems:
        unique.setdefault((tuple(path), msg), None)
    lines = [f"{json_path(p)}: {m}" for p, m in unique]
    n = len(lines)
    exc = KavierInputError(
        f"invalid datacenter description, {n} problem{'s' if n != 1 else ''}: " + "; ".join(lines),
        source=src,
        expected="a description as in schemas/datacenter.schema.json",
    )
    exc.problems = lines  # type: ignore[attr-defined]
    raise exc


def _power_model(spec: Mapping[str, Any] | None, default: Mapping[str, Any], path: tuple, problems: list) -> PowerModel:
    s = dict(default)
    s.update(spec or {})
    model = s.get("model", "linear")
    idle = float(s.get("idle_w", 0.0))
    mx = float(s.get("max_w", idle))
    if model == "constant" and "power_w" not in s:
        problems.append((path + ("power_w",), "required for the 'constant' power model"))
    if mx < idle:
        problems.append((path + ("max_w",), f"{mx:g} W is less than idle_w ({idle:g} W)"))
    return PowerModel(
        model=model,
        idle_w=idle,
        max_w=mx,
        power_w=float(s["power_w"]) if "power_w" in s else None,
        calibration_factor=float(s.get("calibration_factor", 1.0)),
        asym_util=float(s.get("asym_util", 0.0)),
        dvfs=bool(s.get("dvfs", True)),
    )


_GPU_OVERRIDES = (
    "idle_power_w",
    "max_power_w",
    "num_sms",
    "boost_clock_mhz",
    "memory_gib",
    "mem_bandwidth_gbs",
    "vendor",
    "embodied_kgco2e",
    "lifetime_years",
)


def _build(data: dict, base: Path, src: str, get_catalog) -> tuple[Datacenter | None, list]:
    """The Datacenter of a schema-valid description, or every problem of its meaning."""
    problems: list[tuple[tuple, str]] = []
    hosts: list[HostGroup] = []
    names: set[str] = set()
    for i, h in enumerate(data["hosts"]):
        path = ("hosts", i)
        name = h.get("name", f"host{i}")
        if name in names:
            problems.append((path + ("name",), f"duplicate host name {name!r}"))
        names.add(name)
        hosts.append(_host_group(h, name, path, get_catalog, problems))
    start, start_dt = _start(data, problems)
    power_source = _power_source(data, base, start_dt.year, problems)
    battery = _battery(data["battery"], problems) if "battery" in data else None
    pue = _pue(data.get("pue"), base, problems)
    if problems:
        return None, problems
    dc = Datacenter(
        hosts=tuple(hosts),
        name=data.get("name", "datacenter"),
        gpu_host_limit=data.get("gpu_host_limit", "split"),
        power_source=power_source,
        battery=battery,
        start=start,
        export_interval_s=int(data.get("export_interval_s", DEFAULT_EXPORT_INTERVAL_S)),
        allocation_policy=data.get("allocation_policy", DEFAULT_ALLOCATION_POLICY),
        source=src,
        raw=data,
        pue=pue,
        embodied_required=bool(data.get("embodied_carbon", False)),
    )
    return dc, []


def _pue(spec: Any, base: Path, problems: list) -> PUE | None:
    """The PUE: a number (the schema checked it is >= 1), a PUE trace file, or a temperature trace through the
    model of opendc/overheads.py; files are read and checked here."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        return PUE(value=float(spec))
    import numpy as np

    if "temperature" not in spec:
        got = _time_series(spec, ("pue",), "pue", base, problems)
        if got is None:
            return None
        path, times, values, raw, order = got
        bad = np.flatnonzero(~np.isfinite(values) | (values < 1.0))
        if bad.size:
            i = int(bad[0])
            col = spec.get("column", "pue")
            problems.append((("pue", "file"), f"{path} row {i + 1}: {col} = {raw[i]}; a PUE is a number of at least 1"))
            return None
        return PUE(times_ms=times[order], values=values[order], path=str(path), kind="trace")
    from kavier_opendc.opendc.overheads import FREE_COOLING_C, pue_from_temperature

    loc = ("pue", "temperature")
    got = _time_series(spec["temperature"], loc, "temperature_c", base, problems)
    if got is None:
        return None
    path, times, temps, raw, order = got
    col = spec["temperature"].get("column", "temperature_c")
    # outside air on Earth: a value beyond this is a unit mistake (Kelvin, Fahrenheit) or a broken row
    bad = np.flatnonzero(~np.isfinite(temps) | (temps < -90.0) | (temps > 60.0))
    if bad.size:
        i = int(bad[0])
        problems.append(
            (
                loc + ("file",),
                f"{path} row {i + 1}: {col} = {raw[i]}; an outside temperature in degrees Celsius, -90 to 60",
            )
        )
        return None
    model = {
        "free_cooling_pue": float(spec["free_cooling_pue"]),
        "per_degree_c": float(spec["per_degree_c"]),
        "free_cooling_c": float(spec.get("free_cooling_c", FREE_COOLING_C)),
        **({"max_pue": float(spec["max_pue"])} if "max_pue" in spec else {}),
    }
    if model.get("max_pue", math.inf) < model["free_cooling_pue"]:
        problems.append(
            (("pue", "max_pue"), f"{model['max_pue']:g} is below free_cooling_pue ({model['free_cooling_pue']:g})")
        )
        return None
    values = pue_from_temperature(temps[order], **model)
    return PUE(times_ms=times[order], values=values, path=str(path), kind="temperature", model=model)


def _time_series(spec: Mapping[str, Any], loc: tuple, default_col: str, base: Path, problems: list):
    """(path, epoch-ms times, values, the raw cells) of a CSV/Parquet time series, sorted by time; None after
    adding the problems (``loc`` is the JSON path of ``spec``)."""
    import numpy as np
    import pandas as pd

    path = Path(spec["file"])
    path = path if path.is_absolute() else base / path
    col, tcol = spec.get("column", default_col), spec.get("time_column", "timestamp")
    try:
        df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        problems.append((loc + ("file",), f"{path}: cannot be read as CSV/Parquet ({exc})"))
        return None
    for c, key in ((col, "column"), (tcol, "time_column")):
        if c not in df.columns:
            problems.append((loc + (key,), f"{path} has no column {c!r} (columns: {', '.join(map(str, df.columns))})"))
    if problems or not len(df):
        if not len(df):
            problems.append((loc + ("file",), f"{path} has no rows"))
        return None
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    t = df[tcol]
    try:
        if pd.api.types.is_numeric_dtype(t):
            times = t.to_numpy(np.int64)
        else:
            times = pd.to_datetime(t, utc=True).to_numpy("datetime64[ms]").astype(np.int64)
    except (ValueError, TypeError) as exc:
        problems.append((loc + ("time_column",), f"{path}: {tcol} is not ISO date-times or epoch ms ({exc})"))
        return None
    order = np.argsort(times, kind="stable")
    raw = df[col].to_numpy()
    # row numbers in messages are the file's (1-based data rows), so the checks run before sorting
    return path, times, values, raw, order


def _host_group(h: dict, name: str, path: tuple, get_catalog, problems: list) -> HostGroup:
    """One host group: its GPU (catalogue entry with overrides), power models and CPU."""
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
            problems.append((path + (("gpu",) if isinstance(gref, str) else ("gpu", "name")), str(exc)))
        if gpu_spec is not None and isinstance(gref, dict):
            over = {k: gref[k] for k in _GPU_OVERRIDES if k in gref}
            if over:
                gpu_spec = dataclasses.replace(gpu_spec, **over)
        if gpu_spec is not None and gpu_spec.idle_power_w > gpu_spec.max_power_w:
            problems.append(
                (
                    path + ("gpu",),
                    f"idle power {gpu_spec.idle_power_w:g} W exceeds max power {gpu_spec.max_power_w:g} W",
                )
            )
    gpm = h.get("gpu_power_model") or {}
    if gpm and gpus == 0:
        problems.append((path + ("gpu_power_model",), "given for a host without GPUs (gpus_per_host is 0)"))
    if gpm.get("model") == "constant" and "power_w" not in gpm:
        problems.append((path + ("gpu_power_model", "power_w"), "required for the 'constant' power model"))
    if "idle_w" in gpm and "max_w" in gpm and gpm["max_w"] < gpm["idle_w"]:
        problems.append(
            (path + ("gpu_power_model", "max_w"), f"{gpm['max_w']:g} W is less than idle_w ({gpm['idle_w']:g} W)")
        )
    if gpu_spec is not None:
        idle = gpm.get("idle_w", gpu_spec.idle_power_w)
        mx = gpm.get("max_w", gpu_spec.max_power_w)
        if ("idle_w" in gpm) != ("max_w" in gpm) and mx < idle:
            problems.append((path + ("gpu_power_model",), f"max power {mx:g} W is less than idle power {idle:g} W"))
    cpu = h["cpu"]
    cpu_power = _power_model(
        h.get("cpu_power_model"),
        DEFAULT_CPU_POWER if "cpu_power_model" not in h else {"model": "linear"},
        path + ("cpu_power_model",),
        problems,
    )
    cpm = h.get("cpu_power_model")
    if cpm is not None and cpm.get("model", "linear") != "constant" and not ("idle_w" in cpm and "max_w" in cpm):
        problems.append((path + ("cpu_power_model",), "needs both idle_w and max_w"))
    return HostGroup(
        name=name,
        count=int(h.get("count", 1)),
        gpus_per_host=gpus,
        gpu=gpu_spec,
        gpu_power_spec=dict(gpm),
        cpu_cores=int(cpu["cores"]),
        cpu_mhz=float(cpu["mhz"]),
        cpu_count=int(cpu.get("count", 1)),
        cpu_power=cpu_power,
        memory_gib=float(h["memory_gib"]),
        cpu_model=str(cpu.get("model", "unknown")),
        cpu_vendor=str(cpu.get("vendor", "unknown")),
        path=json_path(path),
        embodied_kgco2e=float(h["embodied_kgco2e"]) if "embodied_kgco2e" in h else None,
        lifetime_years=float(h.get("lifetime_years", DEFAULT_HOST_LIFETIME_YEARS)),
    )


def _start(data: dict, problems: list) -> tuple[str, datetime]:
    """The calendar start, normalised to ISO seconds (microseconds kept when given)."""
    start = data.get("start", DEFAULT_START)
    try:
        start_dt = datetime.fromisoformat(start)
        start = start_dt.strftime("%Y-%m-%dT%H:%M:%S") + (
            f".{start_dt.microsecond:06d}".rstrip("0") if start_dt.microsecond else ""
        )
    except ValueError as exc:
        problems.append((("start",), f"{start!r} is not a valid date-time ({exc})"))
        start_dt = datetime.fromisoformat(DEFAULT_START)
    return start, start_dt


def _power_source(data: dict, base: Path, year: int, problems: list) -> PowerSource:
    """The power source and its carbon trace (a file, or a region's trace for the start year)."""
    ps = data.get("power_source", {})
    trace_ref = ps.get("carbon_trace", data.get("region"))
    trace_path = None
    if trace_ref is not None:
        from kavier_opendc.opendc.carbon import read_carbon_trace, resolve_carbon_trace

        loc = "power_source.carbon_trace" if "carbon_trace" in ps else "region"
        try:
            trace_path = resolve_carbon_trace(trace_ref, base, year=year, source=None, location=None)
            read_carbon_trace(trace_path)
        except KavierInputError as exc:
            problems.append(((tuple(loc.split("."))), str(exc)))
            trace_path = None
    power_source = PowerSource(
        name=ps.get("name", "PowerSource"),
        max_power_w=float(ps["max_power_w"]) if "max_power_w" in ps else None,
        carbon_trace=trace_path,
    )
    return power_source


def _battery(b: dict, problems: list) -> Battery:
    """The optional battery and its charging policy."""
    if "initial_charge_kwh" in b and b["initial_charge_kwh"] > b["capacity_kwh"]:
        problems.append(
            (
                ("battery", "initial_charge_kwh"),
                f"{b['initial_charge_kwh']:g} kWh exceeds capacity_kwh ({b['capacity_kwh']:g})",
            )
        )
    pol = b["policy"]
    if (
        pol.get("type") == "double"
        and "lower_threshold" in pol
        and "upper_threshold" in pol
        and pol["lower_threshold"] > pol["upper_threshold"]
    ):
        problems.append((("battery", "policy", "lower_threshold"), "is above upper_threshold"))
    return Battery(
        name=b.get("name", "Battery"),
        capacity_kwh=float(b["capacity_kwh"]),
        charging_speed_w=float(b["charging_speed_w"]),
        policy=dict(pol),
        initial_charge_kwh=float(b.get("initial_charge_kwh", 0.0)),
        embodied_carbon_g=b.get("embodied_carbon_g"),
        expected_lifetime_years=b.get("expected_lifetime_years"),
    )
