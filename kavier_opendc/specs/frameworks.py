"""Serving-framework profiles: what the engine software does, apart from what the GPU does.

A GPU profile (profiles.py) times kernels. A :class:`FrameworkProfile` says
how one engine, at one version and driven one way, turns requests into
kernels and how much CPU time it adds:

- ``policy``: the scheduler rules (engine/scheduler.py for vLLM v1,
  engine/scheduler_v0.py for vLLM v0's prefill-first scheduling,
  engine/scheduler_multistep.py for v0 with ``scheduler_steps`` > 1,
  engine/scheduler_sglang.py for SGLang v0.3's extend/decode batches,
  engine/scheduler_trtllm.py for TensorRT-LLM's in-flight batching);
- ``capacity_scheduler``: TensorRT-LLM's capacity policy (policy ``trtllm``
  only): ``guaranteed_no_evict`` (its default: admission reserves a
  request's blocks to completion) or ``max_utilization`` (packs, pauses the
  newest when full); None for other engines;
- ``scheduler_steps``: vLLM 0.6's ``--num-scheduler-steps`` (multi-step
  scheduling, policy ``vllm-v0`` only): a decode batch runs this many steps
  before the scheduler runs again; 1 otherwise;
- ``batch_defaults``: how unset ``max_num_batched_tokens`` / ``max_num_seqs``
  are chosen (vLLM v1 by GPU and usage; vLLM v0 ``max(max_model_len, 2048)``
  and 256; SGLang its chunked-prefill size 8,192 and 2,048 requests;
  TensorRT-LLM ``max_num_tokens`` 8,192 and ``max_batch_size`` 2,048);
- ``serving_path``: ``server`` (an API server), ``offline`` (the ``LLM``
  class) or ``auto`` (``--usage`` decides);
- ``step_overhead``: CPU time per engine step that the GPU waits for, per
  (GPU, TP) where it was fitted: fixed + per running sequence + per token and
  per token² in the step. ``None`` (vLLM v1) uses the GPU profile's own
  ``overhead_*`` numbers, calibrated with ``--default-framework``;
- ``prefix_caching``: whether the simulator models this engine's automatic
  prefix caching (vLLM v0 had it off by default; it is not modelled there);
- ``allreduce``: vLLM's custom all-reduce where it applies, or NCCL always;
- ``async_scheduling``: vLLM v1's async scheduling (``--async-scheduling``,
  on by default from vLLM 0.14, PR #27614; policy ``vllm-v1`` only): the
  engine core schedules step k+1 while step k runs, so a request that
  arrives during a step joins the step after the next one, not the next
  (engine/scheduler.py); the CPU time per step it hides is the step
  overhead's business, not this flag's;
- ``client_latency_s``: a server's time outside the engine steps (request
  handling, tokenisation, hand-off, streaming the tokens back): the TTFT and
  e2e of ``requests.parquet`` and ``summary.json`` are on the client's clock,
  engine clock plus this (0 offline);
- ``covers``: the engine versions (a PEP 440 specifier, e.g. ``>=0.12,<0.14``)
  for which this profile is the pick of its serving path when a user names
  the engine and version instead of a profile (``--framework vllm@0.13``,
  :func:`resolve_framework`); None: never picked that way.

Every number names its source in ``provenance``. The built-in profiles are in
frameworks.yaml.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.snapshot import snapshot_document

POLICIES = ("vllm-v1", "vllm-v0", "sglang", "trtllm")
BATCH_DEFAULTS = ("vllm-v1", "vllm-v0", "sglang", "trtllm")
CAPACITY_SCHEDULERS = ("guaranteed_no_evict", "max_utilization")  # TensorRT-LLM's (policy trtllm)
SERVING_PATHS = ("auto", "server", "offline")
USAGES = ("server", "offline")
ALLREDUCE = ("vllm-custom", "nccl")
DEFAULT_FRAMEWORK = "vllm-v1"
#: other spellings of the engines' names in ENGINE@VERSION (resolve_framework)
ENGINE_ALIASES = {"trtllm": "tensorrt-llm", "trt-llm": "tensorrt-llm", "tensorrt_llm": "tensorrt-llm"}
BUILTIN_FILE = Path(__file__).with_name("frameworks.yaml")


@dataclass(frozen=True)
class StepOverhead:
    """CPU time per engine step not hidden behind GPU work (s): fixed + per sequence + per token (+ token²)."""

    fixed_s: float
    per_seq_s: float = 0.0
    per_token_s: float = 0.0
    per_token_sq_s: float = 0.0


@dataclass(frozen=True)
class FrameworkProfile:
    """One serving engine at one version, driven one way (see the module doc)."""

    name: str
    engine: str
    versions: str
    policy: str
    batch_defaults: str
    serving_path: str = "auto"
    chunked_prefill: bool = True
    prefix_caching: bool = True
    allreduce: str = "vllm-custom"
    # a server's time outside the engine steps that a client's TTFT and e2e include (request handling,
    # tokenisation, hand-off to the engine, delivery of the streamed tokens); 0 offline
    client_latency_s: float = 0.0
    # vLLM's --num-scheduler-steps (multi-step scheduling, vllm-v0 only): decode steps per scheduler call
    scheduler_steps: int = 1
    # vLLM v1's --async-scheduling (policy vllm-v1 only): an arrival joins the step after the next one
    async_scheduling: bool = False
    # TensorRT-LLM's CapacitySchedulerPolicy (policy trtllm only; None there means guaranteed_no_evict)
    capacity_scheduler: str | None = None
    # (GPU name, TP) -> overhead; "*" entries apply to any GPU / TP; None: the GPU profile's overheads
    step_overhead: Mapping[tuple[str, int | str], StepOverhead] | None = None
    # engine versions (PEP 440 specifier) this profile stands for on its serving path (resolve_framework)
    covers: str | None = None
    description: str = ""
    provenance: Mapping[str, str] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------ rules
    def usage(self, requested: str) -> str:
        """The serving path in force: the framework's own, or (``auto``) the requested one."""
        return requested if self.serving_path == "auto" else self.serving_path

    def batch_limits(self, gpu, usage: str, max_model_len: int) -> tuple[int, int]:
        """(max_num_batched_tokens, max_num_seqs) this engine picks when none are given.

        vLLM v1 (``EngineArgs.get_batch_defaults``, vllm/engine/arg_utils.py):
        GPUs with at least 70 GiB that are not A100s get 8,192 tokens per
        iteration as a server and 16,384 offline, and 1,024 sequences; every
        other GPU (A100 included: larger budgets lowered its throughput, vLLM
        PR #17885) 2,048 as a server, 8,192 offline, and 256. vLLM v0
        (``SchedulerConfig``, vllm/config.py of v0.5-v0.6, chunked prefill off):
        ``max(max_model_len, 2048)`` tokens, so a whole prompt always fits in
        one iteration, and 256 sequences, whatever the GPU or usage. SGLang
        v0.3 (``ServerArgs``, python/sglang/srt/server_args.py): prompt chunks
        of ``chunked_prefill_size`` = 8,192 tokens; at most
        ``max_running_requests`` = min(KV tokens // 2, request slots), the
        slots' floor of 2,048 on these GPUs (model_runner.py). TensorRT-LLM
        (``TorchLlmArgs``/``BuildConfig`` defaults, tensorrt_llm/llmapi/llm_args.py):
        ``max_num_tokens`` 8,192, ``max_batch_size`` 2,048.
        """
        if usage not in USAGES:
            raise ValueError(f"usage must be one of {USAGES}, not {usage!r}")
        if self.batch_defaults == "vllm-v0":  # 512 with --enable-chunked-prefill (SchedulerConfig, vLLM 0.5)
            return (512 if self.chunked_prefill else max(max_model_len, 2048)), 256
        if self.batch_defaults == "sglang":
            return 8192, 2048
        if self.batch_defaults == "trtllm":
            return 8192, 2048
        large = gpu.memory_gib >= 70 and "a100" not in gpu.name.lower()
        if large:
            return (8192 if usage == "server" else 16384), 1024
        return (2048 if usage == "server" else 8192), 256

    def overhead_for(self, gpu: str, tp: int) -> StepOverhead | None:
        """The step overhead for ``gpu`` at TP ``tp``: the pair's fitted one, else the GPU's at its nearest
        fitted TP, else a ``*`` entry, else another GPU's at this TP (the first by name), else the first
        entry; None when the framework defers to the GPU profile."""
        table = self.step_overhead
        if table is None:
            return None
        if (gpu, tp) in table:
            return table[(gpu, tp)]
        same_gpu = [k for k in table if k[0] == gpu and k[1] != "*"]
        if same_gpu:
            return table[min(same_gpu, key=lambda k: (abs(int(k[1]) - tp), int(k[1])))]
        for key in ((gpu, "*"), ("*", tp), ("*", "*")):
            if key in table:
                return table[key]
        same_tp = sorted(k for k in table if k[1] == tp)
        return table[same_tp[0]] if same_tp else next(iter(table.values()))

    def summary(self) -> dict[str, Any]:
        """The profile as a run summary shows it."""
        return {
            "name": self.name,
            "engine": self.engine,
            "versions": self.versions,
            "policy": self.policy,
            "batch_defaults": self.batch_defaults,
            "serving_path": self.serving_path,
            "chunked_prefill": self.chunked_prefill,
            "prefix_caching": self.prefix_caching,
            "allreduce": self.allreduce,
            "client_latency_s": self.client_latency_s,
            **({"covers": self.covers} if self.covers else {}),
            **({"scheduler_steps": self.scheduler_steps} if self.scheduler_steps != 1 else {}),  # multi-step
            **({"async_scheduling": True} if self.async_scheduling else {}),  # vLLM v1's one-step look-ahead
            **({"capacity_scheduler": self.capacity_scheduler} if self.capacity_scheduler else {}),  # TensorRT-LLM
            "step_overhead": (
                "the GPU profile's"
                if self.step_overhead is None
                else {f"{g}/tp{t}": vars(o) for (g, t), o in self.step_overhead.items()}
            ),
            "provenance": dict(self.provenance),
        }


# ---------------------------------------------------------------------------
# The built-in file.
# ---------------------------------------------------------------------------


def _overheads(entry: Any, where: str) -> dict | None:
    if entry is None:
        return None
    out = {}
    for row in entry:
        gpu, tp = str(row["gpu"]), row.get("tp", "*")
        vals = {k: float(row.get(k, 0.0)) for k in ("fixed_s", "per_seq_s", "per_token_s", "per_token_sq_s")}
        if any(v < 0 for v in vals.values()):
            raise KavierInputError(
                "a step overhead is negative", source=where, location=f"{gpu} tp {tp}", expected="numbers >= 0"
            )
        out[(gpu, tp if tp == "*" else int(tp))] = StepOverhead(**vals)
    return out


def framework_from_entry(
    entry: Mapping[str, Any], where: str = str(BUILTIN_FILE), bases: Mapping[str, FrameworkProfile] | None = None
) -> FrameworkProfile:
    """A profile from a catalogue entry; ``base: NAME`` starts from that framework (a user's own
    calibration of an engine keeps its rules and changes its overheads)."""
    kw = dict(entry)
    start: dict[str, Any] = {}
    if "base" in kw:
        name = kw.pop("base")
        table = bases if bases is not None else builtin_frameworks()
        found = {k.lower(): v for k, v in table.items()}.get(str(name).strip().lower())
        if found is None:
            raise KavierInputError(
                f"unknown base framework '{name}'",
                source=where,
                location=f"frameworks.{kw.get('name')}.base",
                expected="one of " + ", ".join(table),
            )
        start = dataclasses.asdict(found) | {"step_overhead": found.step_overhead, "provenance": dict(found.provenance)}
    if "step_overhead" in kw:
        kw["step_overhead"] = _overheads(kw["step_overhead"], where)
    own = dict(kw.get("provenance", {}))
    if start:  # what the entry changes is the entry's, not the base's
        prov = dict(start["provenance"])
        for key in kw:
            if key not in ("name", "provenance"):
                prov[key] = own.get(key) or f"given in {where}"
        own = prov | own
    kw = start | kw
    kw["provenance"] = own
    missing = [k for k in ("engine", "versions", "policy", "batch_defaults") if k not in kw]
    if missing:
        raise KavierInputError(
            f"framework '{kw.get('name')}' gives neither a base nor " + ", ".join(missing),
            source=where,
            location=f"frameworks.{kw.get('name')}.{missing[0]}",
            expected="a base framework, or engine, versions, policy and batch_defaults",
        )
    fw = FrameworkProfile(**kw)
    if not (isinstance(fw.client_latency_s, (int, float)) and fw.client_latency_s >= 0):
        raise KavierInputError(
            "client_latency_s must be a number >= 0",
            source=where,
            location=f"{fw.name}.client_latency_s",
            expected="seconds >= 0",
        )
    steps = fw.scheduler_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1024:
        raise KavierInputError(
            f"scheduler_steps must be an integer from 1 to 1024, not {steps!r}",
            source=where,
            location=f"{fw.name}.scheduler_steps",
            expected="an integer 1-1024",
        )
    if steps > 1 and fw.policy != "vllm-v0":
        raise KavierInputError(
            f"scheduler_steps {steps} (multi-step scheduling) is modelled for policy vllm-v0 only, not {fw.policy}",
            source=where,
            location=f"{fw.name}.scheduler_steps",
            expected="1, or policy vllm-v0",
        )
    if not isinstance(fw.async_scheduling, bool):
        raise KavierInputError(
            f"async_scheduling must be true or false, not {fw.async_scheduling!r}",
            source=where,
            location=f"{fw.name}.async_scheduling",
            expected="true or false",
        )
    if fw.async_scheduling and fw.policy != "vllm-v1":
        raise KavierInputError(
            f"async_scheduling is vLLM v1's (policy vllm-v1), not modelled for policy {fw.policy}",
            source=where,
            location=f"{fw.name}.async_scheduling",
            expected="false, or policy vllm-v1",
        )
    cap = fw.capacity_scheduler
    if cap is not None and (fw.policy != "trtllm" or cap not in CAPACITY_SCHEDULERS):
        raise KavierInputError(
            f"capacity_scheduler {cap!r} is TensorRT-LLM's capacity policy: one of "
            + ", ".join(CAPACITY_SCHEDULERS)
            + f" with policy trtllm (this framework's policy is {fw.policy})",
            source=where,
            location=f"{fw.name}.capacity_scheduler",
            expected="policy trtllm and one of " + ", ".join(CAPACITY_SCHEDULERS) + ", or no capacity_scheduler",
        )
    if fw.covers is not None and where != str(BUILTIN_FILE):  # the built-ins' are checked by the tests
        _specifier(fw.covers, where, f"{fw.name}.covers")
    for name, value, allowed in (
        ("policy", fw.policy, POLICIES),
        ("batch_defaults", fw.batch_defaults, BATCH_DEFAULTS),
        ("serving_path", fw.serving_path, SERVING_PATHS),
        ("allreduce", fw.allreduce, ALLREDUCE),
    ):
        if value not in allowed:
            raise KavierInputError(
                f"unknown {name} {value!r}",
                source=where,
                location=f"{fw.name}.{name}",
                expected="one of " + ", ".join(allowed),
            )
    return fw


_BUILTIN: dict[str, FrameworkProfile] | None = None


def parse_builtin_frameworks(text: str) -> Any:
    """frameworks.yaml's document (the file is ours: libyaml's parser where PyYAML has it, 10 x faster)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def builtin_frameworks() -> dict[str, FrameworkProfile]:
    """The built-in framework profiles by name (frameworks.yaml), parsed once: from the built-in snapshot
    (specs/snapshot.py) while it matches the file, so a run imports no YAML parser."""
    global _BUILTIN
    if _BUILTIN is None:
        text = BUILTIN_FILE.read_text(encoding="utf-8")
        found, data = snapshot_document(BUILTIN_FILE.name, text)
        if not found:
            data = parse_builtin_frameworks(text)
        _BUILTIN = {e["name"]: framework_from_entry(e) for e in data["frameworks"]}
    return _BUILTIN


def _specifier(text: str, source: str | None, location: str):
    """``text`` as a PEP 440 version specifier set, or a KavierInputError naming ``location``."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(text)
    except (InvalidSpecifier, TypeError):
        raise KavierInputError(
            f"covers {text!r} is not a version specifier",
            source=source,
            location=location,
            expected="a PEP 440 specifier such as '>=0.12,<0.14'",
        ) from None


def resolve_framework(
    spec: str, extra: Mapping[str, FrameworkProfile] | None = None, usage: str | None = None
) -> FrameworkProfile:
    """The profile for ``ENGINE@VERSION[:PATH]`` (e.g. ``vllm@0.13.1``, ``vllm@0.6:offline``): the one whose
    ``covers`` holds the version, of that engine and serving path (PATH, else ``usage`` when it is server or
    offline, else server: ``vllm serve`` and its kin); a catalogue file's (``extra``) before a built-in, a
    profile of exactly that path before an ``auto`` one. The version counts by its release number (1.0.0rc3
    as 1.0.0). Errors name what the profiles cover."""
    from packaging.version import InvalidVersion, Version

    head, _, path = spec.strip().partition(":")
    engine, _, version_text = head.partition("@")
    engine = engine.strip().lower()
    engine = ENGINE_ALIASES.get(engine, engine)
    path = path.strip().lower() or (usage if usage in USAGES else "server")
    expected = "ENGINE@VERSION[:server|:offline], e.g. vllm@0.13 or trtllm@1.0:offline"
    if path not in USAGES:
        raise KavierInputError(f"unknown serving path '{path}' in '{spec}'", location="framework", expected=expected)
    try:
        # the release number: a pre-release, dev or post build stands for its release (1.0.0rc3 for 1.0.0)
        version = Version(".".join(map(str, Version(version_text.strip()).release)))
    except InvalidVersion:
        raise KavierInputError(
            f"'{version_text.strip()}' in '{spec}' is not a version", location="framework", expected=expected
        ) from None
    tiers = (dict(extra or {}), builtin_frameworks())
    for tier in tiers:
        for want in (path, "auto"):
            hits = [
                fw
                for fw in tier.values()
                if fw.engine == engine
                and fw.serving_path == want
                and fw.covers is not None
                and version in _specifier(fw.covers, None, f"{fw.name}.covers")
            ]
            if len(hits) > 1:
                raise KavierInputError(
                    f"'{spec}' is covered by several {path} profiles: " + ", ".join(f.name for f in hits),
                    location="framework",
                    expected="one of them by name",
                )
            if hits:
                return hits[0]
    known = sorted({fw.engine for t in tiers for fw in t.values()})
    covered = [
        f"{fw.name} ({fw.covers}, {fw.serving_path})"
        for t in tiers
        for fw in t.values()
        if fw.engine == engine and fw.covers is not None
    ]
    raise KavierInputError(
        f"no framework profile covers {engine} {version} as {'a server' if path == 'server' else 'offline use'}",
        location="framework",
        expected=("profiles of " + engine + ": " + "; ".join(covered))
        if covered
        else "an engine among " + ", ".join(known),
    )


def framework(
    name: str | None, extra: Mapping[str, FrameworkProfile] | None = None, usage: str | None = None
) -> FrameworkProfile:
    """The framework called ``name`` (case-insensitive; None: the default, vLLM v1): one of ``extra``
    (a catalogue file's) or a built-in one; ``ENGINE@VERSION[:PATH]`` picks by version
    (:func:`resolve_framework`, the serving path from ``usage`` unless given)."""
    if name is not None and "@" in name:
        return resolve_framework(name, extra, usage)
    fws = {**builtin_frameworks(), **(extra or {})}
    key = (name or DEFAULT_FRAMEWORK).strip().lower()
    for fw in fws.values():
        if fw.name.lower() == key:
            return fw
    raise KavierInputError(
        f"unknown serving framework '{name}'", location="framework", expected="one of " + ", ".join(fws)
    )


def framework_to_entry(fw: FrameworkProfile) -> dict[str, Any]:
    """The profile as a catalogue entry (``frameworks:`` list) that ``framework_from_entry`` reads back."""
    out: dict[str, Any] = {k: v for k, v in dataclasses.asdict(fw).items() if k not in ("step_overhead", "provenance")}
    if out.get("capacity_scheduler") is None:  # TensorRT-LLM's only
        out.pop("capacity_scheduler", None)
    if out.get("covers") is None:
        out.pop("covers", None)
    if fw.step_overhead is not None:
        out["step_overhead"] = [
            {"gpu": g, "tp": t, **{k: float(f"{v:.6g}") for k, v in vars(o).items() if v}}
            for (g, t), o in fw.step_overhead.items()
        ]
        for row in out["step_overhead"]:
            row.setdefault("fixed_s", 0.0)
    else:
        out["step_overhead"] = None
    out["provenance"] = dict(fw.provenance)
    return out
