"""A datacenter description as OpenDC's topology: hosts under the 4-GPU limit, replica placement, topology and
experiment JSON.

The description itself is read by ``datacenter.py``;
:func:`kavier_opendc.opendc.inputs.write_opendc_inputs` uses this module and
``export.py`` to turn a simulation's timeline plus the datacenter into
OpenDC's own inputs::

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

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.opendc.datacenter import Datacenter, PowerModel, opendc_decimal

MAX_GPUS_PER_OPENDC_HOST = 4


@dataclass(frozen=True)
class OpenDCHost:
    """One host entry of OpenDC's topology (after the 4-GPU split/aggregation)."""

    name: str
    count: int
    gpus: int  # OpenDC GPUs on the host
    physical_gpus: int  # physical GPUs represented (aggregate: n on one OpenDC GPU)
    gpu_core_count: int  # coreCount of one OpenDC GPU
    gpu_mhz: float
    gpu_memory_mib: int
    gpu_bandwidth_gbs: float
    gpu_model: str
    gpu_vendor: str
    gpu_power: PowerModel | None
    cpu_cores: int  # per CPU
    cpu_count: int
    cpu_mhz: float
    cpu_power: PowerModel
    memory_mib: int
    group: int  # index into Datacenter.hosts
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
            "cpu": {
                "coreCount": int(self.cpu_cores),
                "coreSpeed": f"{opendc_decimal(self.cpu_mhz)} MHz",
                "count": int(self.cpu_count),
                "modelName": self.cpu_model,
                "vendor": self.cpu_vendor,
            },
            "memory": {"memorySize": f"{int(self.memory_mib)} MiB"},
            "cpuPowerModel": self.cpu_power.to_opendc(),
        }
        if self.gpus > 0 and self.gpu_power is not None:
            out["gpu"] = {
                "count": int(self.gpus),
                "coreCount": int(self.gpu_core_count),
                "coreSpeed": f"{opendc_decimal(self.gpu_mhz)} MHz",
                "memorySize": f"{int(self.gpu_memory_mib)} MiB",
                "memoryBandwidth": f"{opendc_decimal(self.gpu_bandwidth_gbs)} GB/s",
                "modelName": self.gpu_model,
                "vendor": self.gpu_vendor,
            }
            out["gpuPowerModel"] = self.gpu_power.to_opendc()
        return out


def opendc_host_name(host: OpenDCHost, instance: int) -> str:
    """The name OpenDC reports for physical host ``instance`` of a host entry."""
    return host.name if host.count <= 1 else f"{host.name}-{instance}"


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
            raise KavierInputError(
                "the host group names no GPU type and the simulation does not give exactly one",
                source=datacenter.source,
                location=f"{h.path}.gpu",
                expected="a GPU name from the catalogue (required for every host group with "
                "GPUs when the replicas run on several GPU types)",
            )
        mem_mib = int(round(h.memory_gib * 1024))
        g = h.gpu
        gp = h.gpu_power()
        if gp is not None and h.power_cap_w is not None:
            gp = gp.under_cap(h.power_cap_w)  # a curved model tops out at the cap (datacenter.PowerModel)
        base = dict(
            gpu_core_count=int(g.num_sms) if g else 0,
            gpu_mhz=float(g.boost_clock_mhz) if g else 0.0,
            gpu_memory_mib=int(round(g.memory_gib * 1024)) if g else 0,
            gpu_bandwidth_gbs=float(g.mem_bandwidth_gbs) if g else 0.0,
            gpu_model=g.name if g else "none",
            gpu_vendor=g.vendor if g else "unknown",
            gpu_power=gp,
            group=gi,
            cpu_model=h.cpu_model,
            cpu_vendor=h.cpu_vendor,
        )
        if n <= MAX_GPUS_PER_OPENDC_HOST:
            out.append(
                OpenDCHost(
                    name=h.name,
                    count=h.count,
                    gpus=n,
                    physical_gpus=n,
                    cpu_cores=h.cpu_cores,
                    cpu_count=h.cpu_count,
                    cpu_mhz=h.cpu_mhz,
                    cpu_power=h.cpu_power,
                    memory_mib=mem_mib,
                    **base,
                )
            )
        elif datacenter.gpu_host_limit == "aggregate":
            base.update(
                gpu_core_count=int(g.num_sms) * n,
                gpu_memory_mib=base["gpu_memory_mib"] * n,
                gpu_bandwidth_gbs=base["gpu_bandwidth_gbs"] * n,
                gpu_power=gp.scaled(n),
                gpu_model=f"{g.name} x{n}",
            )
            out.append(
                OpenDCHost(
                    name=h.name,
                    count=h.count,
                    gpus=1,
                    physical_gpus=n,
                    cpu_cores=h.cpu_cores,
                    cpu_count=h.cpu_count,
                    cpu_mhz=h.cpu_mhz,
                    cpu_power=h.cpu_power,
                    memory_mib=mem_mib,
                    **base,
                )
            )
        else:  # split
            k = math.ceil(n / MAX_GPUS_PER_OPENDC_HOST)
            parts = [n // k + (1 if j < n % k else 0) for j in range(k)]
            total_cores = h.total_cores
            if total_cores < k:
                raise KavierInputError(
                    f"cannot split a host with {n} GPUs into {k} OpenDC hosts: it has only {total_cores} CPU core(s)",
                    source=datacenter.source,
                    location=f"{h.path}.cpu",
                    expected=f"at least {k} cores, or gpu_host_limit: aggregate",
                )
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
                out.append(
                    OpenDCHost(
                        name=name,
                        count=h.count * times,
                        gpus=g_n,
                        physical_gpus=g_n,
                        cpu_cores=c_cores,
                        cpu_count=c_count,
                        cpu_mhz=h.cpu_mhz,
                        cpu_power=h.cpu_power.scaled(frac),
                        memory_mib=m,
                        **base,
                    )
                )
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
    gpus: int  # physical GPUs held
    host_entry: int  # planned OpenDC host entry (index into opendc_hosts)
    host_instance: int  # which of that entry's `count` copies
    gpu_type: str | None = None  # GPU type the replica runs on (None: any GPU host)


def _replica_parts(tp: int, largest: int) -> list[int]:
    """GPUs of each task of a replica of ``tp`` GPUs when one OpenDC host holds at most ``largest``."""
    if tp <= largest:
        return [tp]
    k = math.ceil(tp / largest)
    return [tp // k + (1 if j < tp % k else 0) for j in range(k)]


def plan_replicas(
    hosts: list[OpenDCHost], replicas: list[tuple[str | None, int]], *, source: str | None = None
) -> list[TaskPlan]:
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
        raise KavierInputError(
            "no replicas to place", source=source, location="simulation config", expected="at least one replica"
        )
    for r, (_, tp) in enumerate(replicas):
        if tp < 1:
            raise KavierInputError(
                f"replica {r} has tp={tp}",
                source=source,
                location="simulation config",
                expected="a positive tensor-parallel degree",
            )
    free: list[list[int]] = [[h.physical_gpus] * h.count for h in hosts]
    placed: dict[int, list[TaskPlan]] = {}
    types: dict[str, str | None] = {}
    for gtype, _ in replicas:
        types.setdefault("" if gtype is None else gtype.strip().lower(), gtype)
    for key, gtype in types.items():
        members = [r for r, (g, _) in enumerate(replicas) if ("" if g is None else g.strip().lower()) == key]
        eligible = [
            i for i, h in enumerate(hosts) if h.physical_gpus > 0 and (gtype is None or same_gpu(h.gpu_model, gtype))
        ]
        label = "" if gtype is None else f" of type {gtype!r}"
        if not eligible:
            present = sorted({re.sub(r" x\d+$", "", h.gpu_model) for h in hosts if h.physical_gpus > 0})
            raise KavierInputError(
                f"the datacenter has no host with GPUs{label} but {len(members)} replica(s) of the simulation "
                f"run on it (host GPU types: {', '.join(present) or 'none'})",
                source=source,
                location="hosts",
                expected=f"at least one host group with gpus_per_host > 0 and gpu: {gtype}"
                if gtype
                else "at least one host group with gpus_per_host > 0",
            )
        largest = max(hosts[i].physical_gpus for i in eligible)
        order = sorted(members, key=lambda r: -replicas[r][1])  # stable: ties keep replica order
        done = 0
        for r in order:
            tp = replicas[r][1]
            parts = _replica_parts(tp, largest)
            got: list[TaskPlan] = []
            for p, g in enumerate(parts):
                spot = next(((i, c) for i in eligible for c in range(hosts[i].count) if free[i][c] >= g), None)
                if spot is None:
                    for t in got:  # keep the message's counts exact
                        free[t.host_entry][t.host_instance] += t.gpus
                    raise KavierInputError(
                        _shortage(hosts, eligible, [replicas[m][1] for m in members], gtype, done, parts),
                        source=source,
                        location="hosts",
                        expected="more hosts or GPUs per host (gpus_per_host, count)"
                        + (f" in host groups with gpu: {gtype}" if gtype else ""),
                    )
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


def _shortage(
    hosts: list[OpenDCHost], eligible: list[int], tps: list[int], gtype: str | None, fitted: int, parts: list[int]
) -> str:
    need = sum(tps)
    have = sum(hosts[i].physical_gpus * hosts[i].count for i in eligible)
    by_tp: dict[int, int] = {}
    for tp in tps:
        by_tp[tp] = by_tp.get(tp, 0) + 1
    mix = " + ".join(f"{n} x tp={tp}" for tp, n in sorted(by_tp.items(), reverse=True))
    label = "" if gtype is None else f" of type {gtype!r}"
    where = ", ".join(f"{hosts[i].count} x {hosts[i].physical_gpus} on '{hosts[i].name}'" for i in eligible)
    how = (
        "each replica's GPUs on one host"
        if len(parts) == 1
        else f"a replica in parts of {parts} GPUs, each part on one host"
    )
    return (
        f"the datacenter has too few GPU slots{label}: the simulation needs {len(tps)} replica(s)"
        f"{label} ({mix}) = {need} GPUs ({how}), but the "
        f"hosts with that GPU have {have} GPU slot(s) ({where}) and only {fitted} of the "
        f"{len(tps)} replica(s) fit"
    )


def plan_tasks(
    hosts: list[OpenDCHost], replicas: int, tp: int, gpu_name: str | None = None, *, source: str | None = None
) -> list[TaskPlan]:
    """Place ``replicas`` replicas of ``tp`` GPUs of type ``gpu_name`` onto
    the OpenDC hosts (see :func:`plan_replicas`, the heterogeneous form).

    A replica whose tp fits one OpenDC host (tp <= 4 when split) is one task
    whose GPUs are all on one host; a larger one is split into
    ceil(tp / largest host) tasks. Placement is first fit over host entries;
    OpenDC's GPU-core filter enforces the same capacity. Raises
    :class:`KavierInputError` when the datacenter has too few GPU slots.
    """
    if replicas < 1 or tp < 1:
        raise KavierInputError(
            f"replicas={replicas}, tp={tp}", source=source, location="simulation config", expected="positive integers"
        )
    return plan_replicas(hosts, [(gpu_name, tp)] * replicas, source=source)


def same_gpu(model_name: str, gpu_name: str) -> bool:
    a = re.sub(r" x\d+$", "", model_name).strip().lower()
    return a == gpu_name.strip().lower()


# --------------------------------------------------------------------------
# OpenDC JSON files
# --------------------------------------------------------------------------


def topology_dict(
    datacenter: Datacenter, gpu=None, hosts: list[OpenDCHost] | None = None, *, carbon_trace_path: str | None = None
) -> dict[str, Any]:
    """OpenDC topology JSON (release format, no unknown keys). The power source's
    ``carbonTracePath`` is ``carbon_trace_path`` when given (the exported folder
    names its own copy, relative to the topology file), else the trace's absolute path."""
    hosts = hosts if hosts is not None else opendc_hosts(datacenter, gpu)
    ps = datacenter.power_source
    psj: dict[str, Any] = {"name": ps.name}
    if ps.max_power_w is not None:
        psj["maxPower"] = int(round(ps.max_power_w))
    if ps.carbon_trace is not None:
        psj["carbonTracePath"] = carbon_trace_path or str(Path(ps.carbon_trace).resolve())
    cluster: dict[str, Any] = {
        "name": datacenter.name,
        "hosts": [e for h in hosts for e in h.to_opendc_entries()],
        "powerSource": psj,
    }
    if datacenter.battery is not None:
        cluster["battery"] = datacenter.battery.to_opendc()
    return {"clusters": [cluster]}


def experiment_dict(datacenter: Datacenter, *, name: str = "kavier", start: str | None = None) -> dict[str, Any]:
    """OpenDC experiment JSON for an exported folder: its paths are relative to the
    folder (``output``, ``topology.json``, ``workload``), so the folder can be
    copied or moved and still run (``kavier opendc`` resolves them against the
    folder; OpenDC's own runner resolves them against its working directory)."""
    return {
        "name": name,
        "outputFolder": "output",
        "topologies": [{"pathToFile": "topology.json"}],
        "workloads": [
            {"pathToFile": "workload", "type": "ComputeWorkload", "submissionTime": start or datacenter.start}
        ],
        "allocationPolicies": [{"type": "prefab", "policyName": datacenter.allocation_policy}],
        "exportModels": [{"exportInterval": int(datacenter.export_interval_s)}],
    }
