"""The discrete-event loop: arrivals -> router -> replicas (input D).

Events are request arrivals (known in advance from the trace) and replica
iteration boundaries (in a heap). At equal times an arrival is handled first,
so a request arriving exactly at a boundary is seen by that boundary's
scheduling. Every trace row ends as exactly one result row: finished, or
rejected when it can never fit in a replica's KV memory.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.progress import Progress
from kavier_opendc.engine.cost_model import DEFAULT_EFFICIENCY, CostModel, Efficiency
from kavier_opendc.engine.kv_manager import BLOCK_SIZE, blocks_for
from kavier_opendc.engine.replica import REPLICA_CLASSES, Replica
from kavier_opendc.engine.request import Req
from kavier_opendc.engine.results import FINISHED, REJECTED, Results
from kavier_opendc.engine.router import Router, normalise_router
from kavier_opendc.specs.catalog import GPUSpec, ModelSpec
from kavier_opendc.specs.frameworks import DEFAULT_FRAMEWORK, USAGES, FrameworkProfile, framework
from kavier_opendc.workload.prefix import PrefixIndex
from kavier_opendc.workload.trace import Trace

PREFIX_POLICIES = ("auto", "none", "block", "prefill", "full")


@dataclass
class PrefixSetup:
    """What each replica needs to know about prefix caching."""

    policy: str
    index: PrefixIndex
    min_tokens: int = 0
    capacity_prompts: float = math.inf
    capacity_tokens: float | None = None
    host_memory_gb: float = 0.0


@dataclass(frozen=True)
class ReplicaGroup:
    """Replicas of one model on one GPU type (several groups = a heterogeneous ecosystem, DP1)."""

    model: ModelSpec
    gpu: GPUSpec
    replicas: int = 1
    tp: int = 1


@dataclass
class SimConfig:
    model: ModelSpec
    gpu: GPUSpec
    replicas: int = 1
    tp: int = 1
    framework: str | FrameworkProfile = DEFAULT_FRAMEWORK   # serving framework (specs/frameworks.yaml)
    max_num_seqs: int | None = None        # None: the framework's default for the GPU and usage
    max_batched_tokens: int | None = None  # None: likewise
    usage: str = "auto"                    # server (vllm serve) | offline (LLM class) | auto: from the trace
    gpu_memory_utilization: float = 0.9
    kv_cache: bool = True
    prefix_cache: str = "auto"          # auto | none | block | prefill | full
    prefix_min_tokens: int = 0           # prompts shorter than this never enter the cache
    prefix_capacity_prompts: float = math.inf   # prompt-level policies: LRU capacity in prompts
    prefix_scope: str = "global"         # global | session
    prefix_capacity_tokens: float | None = None  # None: bounded by GPU memory; a number or inf: own pool
    host_memory_gb: float = 0.0          # second cache tier in host DRAM per replica (block policy)
    router: str = "round-robin"
    seed: int = 0
    exact: bool = False
    efficiency: Efficiency | None = DEFAULT_EFFICIENCY
    timeline_merge_tol: float = 1e-3
    num_kv_blocks: int | None = None  # override the memory-derived KV capacity
    max_model_len: int | None = None  # reject requests whose prompt + output exceed this (vLLM max_model_len)
    allow_long_max_model_len: bool = False  # accept max_model_len above the model's context window (a warning)
    groups: list[ReplicaGroup] | None = None  # heterogeneous replica groups; None = one group from above

    def replica_groups(self) -> list[ReplicaGroup]:
        if self.groups:
            return list(self.groups)
        return [ReplicaGroup(self.model, self.gpu, self.replicas, self.tp)]

    def validate(self) -> None:
        """Refuse settings no server could run, before any allocation (names as ``kavier simulate``'s flags;
        experiments map them to their ``serving.*`` fields)."""
        checks = [
            ("--replicas", self.replicas >= 1, "an integer >= 1"),
            ("--tp", self.tp >= 1, "an integer >= 1"),
            ("--max-num-seqs", self.max_num_seqs is None or self.max_num_seqs >= 1, "an integer >= 1"),
            ("--max-batched-tokens", self.max_batched_tokens is None or self.max_batched_tokens >= 1,
             "an integer >= 1"),
            ("--usage", self.usage in ("auto",) + USAGES, "auto, server or offline"),
            ("--gpu-memory-utilization", 0.0 < self.gpu_memory_utilization <= 1.0, "a fraction in (0, 1]"),
            ("--max-model-len", self.max_model_len is None or self.max_model_len >= 2, "an integer >= 2"),
        ]
        for i, g in enumerate(self.groups or []):
            checks.append((f"groups[{i}].replicas", g.replicas >= 1, "an integer >= 1"))
            checks.append((f"groups[{i}].tp", g.tp >= 1, "an integer >= 1"))
        for name, ok, expected in checks:
            if not ok:
                raise KavierInputError("invalid value", location=name, expected=expected)
        self._check_sizes()
        self._check_groups()
        self.prefix_cache = {"off": "none", "vllm": "block"}.get(self.prefix_cache.lower(), self.prefix_cache.lower())
        if self.prefix_cache not in PREFIX_POLICIES:
            raise KavierInputError(f"unknown prefix cache policy '{self.prefix_cache}'", location="--prefix-cache",
                                   expected="one of " + ", ".join(PREFIX_POLICIES))
        if self.prefix_scope not in ("global", "session"):
            raise KavierInputError(f"unknown prefix cache scope '{self.prefix_scope}'",
                                   location="--prefix-cache-scope", expected="global or session")
        if self.prefix_min_tokens < 0 or self.host_memory_gb < 0 or self.prefix_capacity_prompts < 0 or (
                self.prefix_capacity_tokens is not None and self.prefix_capacity_tokens < 0):
            raise KavierInputError("prefix cache sizes must be >= 0", location="--prefix-cache-*",
                                   expected="non-negative numbers")
        self.router = normalise_router(self.router)
        self._check_framework()

    def framework_profile(self) -> FrameworkProfile:
        """The framework in force (``framework`` is a built-in's name, or a profile being calibrated)."""
        return self.framework if isinstance(self.framework, FrameworkProfile) else framework(self.framework)

    def _check_framework(self) -> None:
        """The framework exists, and can run what is asked of it."""
        fw = self.framework_profile()
        if self.usage != "auto" and fw.serving_path != "auto" and self.usage != fw.serving_path:
            raise KavierInputError(
                f"framework {fw.name} is the {fw.serving_path} serving path; --usage {self.usage} contradicts it",
                location="--usage", expected=f"auto or {fw.serving_path}, or a framework of the {self.usage} path")
        if not fw.prefix_caching and self.prefix_cache not in ("auto", "none"):
            raise KavierInputError(
                f"prefix cache policy '{self.prefix_cache}' is not modelled for framework {fw.name} "
                f"({fw.versions}: automatic prefix caching was off by default there and the simulator does not "
                "model it for this engine)", location="--prefix-cache",
                expected="none or auto, or a framework with prefix caching such as vllm-v1")
        if fw.policy != "vllm-v1" and not self.kv_cache:
            raise KavierInputError(f"--kv-cache off (recompute every step) is modelled with vLLM v1's scheduler "
                                   f"only, not {fw.name}'s", location="--kv-cache",
                                   expected="on, or framework vllm-v1")


    def _check_sizes(self) -> None:
        sizes = [("--replicas", sum(g.replicas for g in self.replica_groups()), limits.REPLICAS),
                 ("--max-num-seqs", self.max_num_seqs, limits.NUM_SEQS),
                 ("--max-batched-tokens", self.max_batched_tokens, limits.BATCHED_TOKENS),
                 ("--num-kv-blocks", self.num_kv_blocks, limits.KV_BLOCKS),
                 ("--max-model-len", self.max_model_len, limits.CONTEXT_TOKENS),
                 ("--prefix-cache-min-tokens", self.prefix_min_tokens, limits.CONTEXT_TOKENS),
                 ("--host-cache-gb", self.host_memory_gb, limits.MEMORY_GB)]
        if self.prefix_capacity_tokens != math.inf:
            sizes.append(("--prefix-cache-capacity-tokens", self.prefix_capacity_tokens, limits.CACHE_TOKENS))
        gpus = sum(g.replicas * g.tp for g in self.replica_groups())
        sizes.append(("--replicas x --tp", gpus, limits.GPUS))
        for name, value, limit in sizes:
            if limits.check(name, value, limit):
                raise KavierInputError(limit.above(value), location=name)

    def _check_groups(self) -> None:
        """Per replica group: the TP degree must split the model's heads, and --max-model-len must fit its
        context window (vLLM refuses a longer one unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set)."""
        for i, g in enumerate(self.replica_groups()):
            where = "--tp" if not self.groups else f"groups[{i}].tp"
            if g.tp > limits.TP.value:
                raise KavierInputError(limits.TP.above(g.tp), location=where)
            if g.model.num_attention_heads % g.tp != 0:
                raise KavierInputError(
                    f"{g.model.name} has {g.model.num_attention_heads} attention heads, which cannot be "
                    f"split evenly over {g.tp} GPUs", location=where,
                    expected="a TP degree that divides the number of attention heads")
            if (self.max_model_len is not None and self.max_model_len > g.model.max_context
                    and not self.allow_long_max_model_len):
                raise KavierInputError(
                    f"{self.max_model_len} is longer than {g.model.name}'s context window of "
                    f"{g.model.max_context} tokens; a server refuses it (vLLM unless "
                    "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); allow it explicitly with --allow-long-max-model-len "
                    "(serving.allow_long_max_model_len: true in an experiment)", location="--max-model-len")

    def resolved_usage(self, trace: Trace) -> str:
        """``server`` or ``offline``: the framework's serving path, as given, or (auto) offline when every
        request arrives at once."""
        fw = self.framework_profile()
        if fw.serving_path != "auto":
            return fw.serving_path
        if self.usage != "auto":
            return self.usage
        arrivals = trace.arrival_s
        at_once = not trace.timed or (len(arrivals) > 0 and arrivals.max() == arrivals.min())
        return "offline" if at_once else "server"

    def batch_limits(self, group: ReplicaGroup, usage: str) -> tuple[int, int]:
        """(max_batched_tokens, max_num_seqs) of ``group``'s replicas: the given ones, else the framework's."""
        tokens, seqs = self.framework_profile().batch_limits(group.gpu, usage,
                                                             self.max_model_len or group.model.max_context)
        return (self.max_batched_tokens if self.max_batched_tokens is not None else tokens,
                self.max_num_seqs if self.max_num_seqs is not None else seqs)

    def warnings(self) -> list[str]:
        """What a run under this configuration should warn about (printed by the CLI)."""
        out = []
        if self.max_model_len is not None and self.allow_long_max_model_len:
            for g in self.replica_groups():
                if self.max_model_len > g.model.max_context:
                    out.append(f"max_model_len {self.max_model_len} is longer than {g.model.name}'s context "
                               f"window of {g.model.max_context} tokens (allowed explicitly); its outputs "
                               "beyond the window would be unreliable on a real server")
        return out


@dataclass
class SimulationResult:
    trace: Trace
    config: SimConfig
    results: Results
    replicas: list[Replica]
    capacity_blocks: int          # per replica of the first group (see each replica's .capacity)
    usage: str = "server"         # the usage whose vLLM batch limits apply (SimConfig.resolved_usage)
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def makespan_s(self) -> float:
        f = self.results.finish
        return float(np.nanmax(f)) if np.isfinite(f).any() else 0.0


def simulate(trace: Trace, cfg: SimConfig, progress: bool | None = None) -> SimulationResult:
    """Run the serving simulation of ``trace`` under ``cfg``."""
    cfg.validate()
    t_wall = time.perf_counter()
    n = len(trace)
    res = Results(n)
    prefix = _prefix_setup(trace, cfg)
    reps: list[Replica] = []
    usage = cfg.resolved_usage(trace)
    fw = cfg.framework_profile()
    replica_class = REPLICA_CLASSES[fw.policy]
    for group in cfg.replica_groups():
        cm = CostModel(group.model, group.gpu, group.tp, cfg.efficiency,
                       framework=fw)
        max_tokens, max_seqs = cfg.batch_limits(group, usage)
        cap = (cfg.num_kv_blocks if cfg.num_kv_blocks is not None else
               cm.kv_capacity_blocks(cfg.gpu_memory_utilization, max_tokens, max_seqs))
        if cfg.kv_cache and cap <= 0:
            raise KavierInputError(
                f"{group.model.name} ({group.model.weight_bytes / 2**30:.1f} GiB of weights) leaves no room for "
                f"a KV cache on {group.tp} x {group.gpu.name} ({group.gpu.memory_gib:g} GiB each) at "
                f"gpu_memory_utilization={cfg.gpu_memory_utilization}", location="--model/--gpu/--tp",
                expected="a larger GPU, more tensor parallelism, or a smaller model")
        for _ in range(group.replicas):
            reps.append(replica_class(len(reps), cm, cap, max_num_seqs=max_seqs,
                                max_batched_tokens=max_tokens, kv_cache=cfg.kv_cache,
                                exact=cfg.exact, results=res, merge_tol=cfg.timeline_merge_tol, prefix=prefix))
    cap = reps[0].capacity
    router = Router(cfg.router, reps, cfg.seed, sessions=trace.session_id)
    affinity = router.policy == "prefix-affinity" and prefix is not None and prefix.policy == "block"
    arrivals = trace.arrival_s.tolist()
    prompts = trace.num_input_tokens.tolist()
    outs = trace.num_output_tokens.tolist()
    samples = trace.n.tolist() if trace.n is not None and (trace.n > 1).any() else None
    if samples is not None:
        res.remaining = np.asarray(trace.n, dtype=np.int32).copy()
    heap: list = []
    push, pop = heapq.heappush, heapq.heappop
    bar = Progress(n, "simulate", enabled=progress, unit="req")
    inf = math.inf
    i = 0
    kv_on = cfg.kv_cache
    full_cache = prefix is not None and prefix.policy == "full" and kv_on
    # no request longer than any model's context is ever served (a trace keeps such rows only when asked
    # to, as rejected requests)
    max_len = min(cfg.max_model_len or limits.CONTEXT_TOKENS.value, limits.CONTEXT_TOKENS.value)
    while True:
        ta = arrivals[i] if i < n else inf
        if heap and heap[0][0] < ta:
            t, ver, r = pop(heap)
            rep = reps[r]
            if ver != rep.version:
                continue
            nt = rep.boundary(t)
            if nt is not None:
                push(heap, (nt, rep.version, r))
            continue
        if i >= n:
            break
        # arrival
        p, o = prompts[i], outs[i]
        req = Req(i, ta, p, o)
        if samples is not None:
            req.n = samples[i]
        if affinity:  # (affinity and full_cache imply a prefix setup, and full_cache its prompt caches)
            req.uids, req.usizes = prefix.index.prompt_units(i)  # type: ignore[union-attr]
        r = router.choose(ta, req)
        rep = reps[r]
        if (kv_on and blocks_for(p + o - 1) > rep.kv.capacity) or p + o > max_len:
            res.status[i] = REJECTED
            res.replica[i] = r
        elif full_cache and rep.kv.prompt_cache.lookup(prefix.index.prompt_key(i)):  # type: ignore[union-attr]
            # the answer is served from the cache: done on arrival, nothing runs on the GPU
            res.first_sched[i] = res.first_token[i] = res.finish[i] = ta
            res.cached[i] = p
            res.status[i] = FINISHED
            res.replica[i] = r
        else:
            rep.enqueue(req)
            if not rep.busy:
                rep.busy = True
                rep.version += 1
                push(heap, (ta, rep.version, r))
            elif rep.in_decode_run():
                old = rep.version
                nt = rep.cut(ta)
                if rep.version != old:
                    push(heap, (nt, rep.version, r))
        i += 1
        if not i & 0x3FFF:
            bar.update(i)
    bar.close()
    result = SimulationResult(trace, cfg, res, reps, cap, usage=usage)
    end = result.makespan_s
    for rep in reps:  # every replica idles until the last request of the whole system finishes
        if rep.t < end:
            # its cached prefixes stay in memory while it idles
            rep.timeline.add(rep.t, end, 0.0, 0.0, 0.0, 0, 0, rep.kv.cached_load())
    result.wall_s = time.perf_counter() - t_wall
    return result


def _prefix_setup(trace: Trace, cfg: SimConfig) -> PrefixSetup | None:
    policy = cfg.prefix_cache
    if policy == "none" or not cfg.kv_cache or (policy == "auto" and not cfg.framework_profile().prefix_caching):
        return None
    index = PrefixIndex(trace, block_size=BLOCK_SIZE, scope=cfg.prefix_scope)
    if policy == "auto":
        policy = "block" if index.available else "none"
        if policy == "none":
            return None
    elif not index.available:
        raise KavierInputError(
            f"prefix cache policy '{policy}' needs prompt identities, but the trace has no token ids "
            "(input_tokens), no prefix-block hashes (hash_ids) and no session ids", source=str(trace.source),
            location="--prefix-cache", expected="a trace with input_tokens, hash_ids or session_id, or policy none")
    return PrefixSetup(policy, index, cfg.prefix_min_tokens, cfg.prefix_capacity_prompts,
                       cfg.prefix_capacity_tokens, cfg.host_memory_gb)
