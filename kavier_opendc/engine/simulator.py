"""A serving simulation (input D): its configuration, its replicas and router, the event loop run over them
(engine/event_loop.py; disaggregated serving: engine/disaggregated.py), and its result.

Events are request arrivals (known in advance from the trace) and replica
iteration boundaries (in a heap). At equal times an arrival is handled first,
so a request arriving exactly at a boundary is seen by that boundary's
scheduling. Every trace row ends as exactly one result row: finished, or
rejected when it can never fit in a replica's KV memory.

Closed-loop clients (engine/closed_loop.py) make an arrival when a request
ends: the arrival list is filled in as the boundaries free clients. A request
sent by a client freed at a boundary arrives at that boundary's time but after
it (it is caused by it): the batch formed there is not changed, the request
joins at that replica's next boundary (an idle replica starts it at once), and
other replicas' boundaries at the same time see it first, by the tie rule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.progress import Progress
from kavier_opendc.engine import knobs
from kavier_opendc.engine.clock import ClockKnob, check_knob
from kavier_opendc.engine.closed_loop import ClientPool, ClosedLoopResults
from kavier_opendc.engine.cost_model import DEFAULT_EFFICIENCY, Efficiency, make_cost_model
from kavier_opendc.engine.disaggregated import DecodeReplica, PrefillReplica, run_disaggregated
from kavier_opendc.engine.event_loop import run_events
from kavier_opendc.engine.kv_link import DECODE_ROUTINGS, TRANSFER_MODES, Disaggregation, LinkSpec, Pool
from kavier_opendc.engine.kv_manager import BLOCK_SIZE, blocks_for
from kavier_opendc.engine.replica import Replica
from kavier_opendc.engine.replica_policies import ReplicaTRTLLM, replica_class
from kavier_opendc.engine.results import Results
from kavier_opendc.engine.router import Router, normalise_router
from kavier_opendc.engine.scheduler_v0 import SchedulerV0
from kavier_opendc.engine.speculative import NOT_SIMULATED as SPEC_NOT_SIMULATED
from kavier_opendc.engine.speculative import POLICIES as SPEC_POLICIES
from kavier_opendc.engine.speculative import Speculative
from kavier_opendc.engine.speculative import resolve as resolve_speculative
from kavier_opendc.specs.catalog import GEMM_PEAK_FIELDS, GPUSpec, ModelSpec
from kavier_opendc.specs.frameworks import FrameworkProfile, framework
from kavier_opendc.workload.prefix import PrefixIndex
from kavier_opendc.workload.trace import ClosedLoop, Trace

PREFIX_POLICIES = knobs.PREFIX_POLICIES
#: routers that read a replica's KV blocks or cached prefixes at an arrival (Replica.kv_load_at,
#: cached_prefix_blocks): with them a replica applies its iterations only at their boundaries
STATE_ROUTERS = ("least-kv", "prefix-affinity")
#: apply prompt chunks that no arrival can change as they are formed (Replica._prefill_run); False: at
#: their boundaries, one event each (tests compare the two)
EAGER_PREFILL = True
#: a replica's boundaries before the next arrival taken at once, without the heap (False: one heap event
#: each; tests compare the two)
CHAIN_BOUNDARIES = True
_d = knobs.default


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
    """A serving setup. The knobs' defaults, bounds and front-end names are declared in engine/knobs.py."""

    model: ModelSpec
    gpu: GPUSpec
    replicas: int = _d("replicas")
    tp: int = _d("tp")
    framework: str | FrameworkProfile = _d("framework")  # a name (specs/frameworks.yaml) or a profile
    max_num_seqs: int | None = _d("max_num_seqs")  # None: the framework's default for GPU and usage
    max_batched_tokens: int | None = _d("max_batched_tokens")  # None: likewise
    usage: str = _d("usage")  # server | offline | auto: from the trace
    gpu_memory_utilization: float = _d("gpu_memory_utilization")
    kv_cache: bool = _d("kv_cache")
    prefix_cache: str = _d("prefix_cache")  # auto | none | block | prefill | full
    prefix_min_tokens: int = _d("prefix_min_tokens")  # shorter prompts never enter the cache
    prefix_capacity_prompts: float = _d("prefix_capacity_prompts")  # prompt-level policies: LRU size in prompts
    prefix_scope: str = _d("prefix_scope")  # global | session
    prefix_capacity_tokens: float | None = _d("prefix_capacity_tokens")  # None: GPU memory bounds it
    host_memory_gb: float = _d("host_memory_gb")  # host-DRAM cache tier per replica (block policy)
    router: str = _d("router")
    seed: int = _d("seed")
    exact: bool = _d("exact")
    efficiency: Efficiency | None = DEFAULT_EFFICIENCY
    timeline_merge_tol: float = 1e-3
    num_kv_blocks: int | None = _d("num_kv_blocks")  # overrides the memory-derived KV capacity
    max_model_len: int | None = _d("max_model_len")  # longer requests are rejected (vLLM max_model_len)
    allow_long_max_model_len: bool = _d("allow_long_max_model_len")  # above the context window: a warning
    weight_dtype: str = _d("weight_dtype")  # auto: the model's catalogue dtype
    kv_cache_dtype: str = _d("kv_cache_dtype")  # auto: the activations' dtype (bf16/fp16)
    weight_only_fallback: bool = _d("weight_only_fallback")  # FP8/FP4 weights without that peak: FP16 compute
    expert_parallel: bool = _d("expert_parallel")  # MoE: experts split whole over the replica's GPUs
    data_parallel_size: int = _d("data_parallel_size")  # MoE: attention DP ranks per replica
    expert_imbalance: float = _d("expert_imbalance")  # MoE EP: busiest GPU's expert work over the mean
    enable_chunked_prefill: bool | None = _d("enable_chunked_prefill")  # None: the framework's chunked_prefill
    async_scheduling: bool | None = _d("async_scheduling")  # None: the framework's async_scheduling
    groups: list[ReplicaGroup] | None = None  # heterogeneous replica groups; None = one group from above
    # disaggregated prefill/decode: the pools and link from the knobs below, or given whole (API callers)
    prefill_replicas: int | None = _d("prefill_replicas")  # both None: co-located serving
    decode_replicas: int | None = _d("decode_replicas")
    prefill_gpu: GPUSpec | None = _d("prefill_gpu")  # None: ``gpu``
    decode_gpu: GPUSpec | None = _d("decode_gpu")
    prefill_tp: int | None = _d("prefill_tp")  # None: ``tp``
    decode_tp: int | None = _d("decode_tp")
    # each role's batching limits (every pool of the role; None: max_num_seqs / max_batched_tokens)
    prefill_max_num_seqs: int | None = _d("prefill_max_num_seqs")
    decode_max_num_seqs: int | None = _d("decode_max_num_seqs")
    prefill_max_batched_tokens: int | None = _d("prefill_max_batched_tokens")
    decode_max_batched_tokens: int | None = _d("decode_max_batched_tokens")
    kv_link_gbs: float = _d("kv_link_gbs")
    kv_link_latency_s: float = _d("kv_link_latency_s")
    kv_link_setup_s: float = _d("kv_link_setup_s")
    kv_transfer_mode: str = _d("kv_transfer_mode")
    decode_routing: str | None = _d("decode_routing")  # None: free-kv (kv_link.DECODE_ROUTINGS)
    disaggregation: Disaggregation | None = None
    # GPU power cap / SM clock (engine/clock.py); the pools' caps default to power_cap_w
    power_cap_w: float | None = _d("power_cap_w")
    sm_clock_mhz: float | None = _d("sm_clock_mhz")
    prefill_power_cap_w: float | None = _d("prefill_power_cap_w")
    decode_power_cap_w: float | None = _d("decode_power_cap_w")
    # closed-loop clients (engine/closed_loop.py): override the trace's arrival process (None: the trace's)
    concurrency: int | None = _d("concurrency")
    think_time_s: float | None = _d("think_time_s")  # None: the trace's closed loop's, else 0
    # speculative decoding (engine/speculative.py); method None: off
    speculative_method: str | None = _d("speculative_method")
    num_speculative_tokens: int | None = _d("num_speculative_tokens")  # None: 3
    spec_acceptance_rate: float | None = _d("spec_acceptance_rate")  # None: the method's assumed default
    draft_model: str | ModelSpec | None = _d("draft_model")  # a catalogue name or a ModelSpec

    def served_model(self, model: ModelSpec) -> ModelSpec:
        """``model`` in the precisions served: its weights in ``weight_dtype`` (auto: its catalogue dtype) and
        its KV cache in ``kv_cache_dtype`` (auto: the activations' dtype, as vLLM's default). Weight bytes, KV
        bytes per token, KV capacity and the GEMMs' peak all follow from these (ModelSpec, IterationTimer)."""
        w = knobs.BY_FIELD["weight_dtype"].normalise(self.weight_dtype)
        kv = knobs.BY_FIELD["kv_cache_dtype"].normalise(self.kv_cache_dtype)
        changes: dict = {}
        if w not in (None, "auto") and w != model.dtype:
            changes["dtype"] = w
        if kv not in (None, "auto"):
            changes["kv_dtype"] = kv
        if changes.get("dtype") and model.expert_dtype:  # a weight dtype given: the experts take it too
            changes["expert_dtype"] = None
        if self.expert_parallel:
            changes["expert_parallel"] = True
        if self.data_parallel_size and self.data_parallel_size > 1:
            changes["attn_dp"] = int(self.data_parallel_size)
        if self.expert_imbalance and self.expert_imbalance != 1.0:
            changes["expert_imbalance"] = float(self.expert_imbalance)
        return dataclasses.replace(model, **changes) if changes else model

    def topology(self) -> Disaggregation | None:
        """The disaggregated topology (None: co-located serving): ``disaggregation``, or built from the knobs;
        its pools' models in the served precisions (:meth:`served_model`)."""
        if self.disaggregation is not None:
            d = self.disaggregation

            def served(pools: tuple[Pool, ...]) -> tuple[Pool, ...]:
                return tuple(dataclasses.replace(p, model=self.served_model(p.model)) for p in pools)

            pre, dec = served(d.prefill_pools), served(d.decode_pools)
            return dataclasses.replace(d, prefill=pre[0], decode=dec[0], more_prefill=pre[1:], more_decode=dec[1:])
        if self.prefill_replicas is None or self.decode_replicas is None:
            return None
        link = LinkSpec(self.kv_link_gbs, self.kv_link_latency_s, self.kv_link_setup_s, self.kv_transfer_mode)
        model = self.served_model(self.model)
        return Disaggregation(
            Pool(
                model,
                self.prefill_gpu or self.gpu,
                self.prefill_replicas,
                self.prefill_tp or self.tp,
                self.num_kv_blocks,
                max_num_seqs=self.prefill_max_num_seqs,
                max_batched_tokens=self.prefill_max_batched_tokens,
            ),
            Pool(
                model,
                self.decode_gpu or self.gpu,
                self.decode_replicas,
                self.decode_tp or self.tp,
                self.num_kv_blocks,
                max_num_seqs=self.decode_max_num_seqs,
                max_batched_tokens=self.decode_max_batched_tokens,
            ),
            link,
            decode_routing=knobs.BY_FIELD["decode_routing"].normalise(self.decode_routing) or "free-kv",
        )

    def replica_groups(self) -> list[ReplicaGroup]:
        """The replicas, group after group (a disaggregated topology: the prefill pool, then the decode pool),
        their models in the served precisions (:meth:`served_model`)."""
        if self.groups:
            return [dataclasses.replace(g, model=self.served_model(g.model)) for g in self.groups]
        topo = self.topology()
        if topo is not None:
            return [ReplicaGroup(p.model, p.gpu, p.replicas, p.tp) for p in (*topo.prefill_pools, *topo.decode_pools)]
        return [ReplicaGroup(self.served_model(self.model), self.gpu, self.replicas, self.tp)]

    def clock_knob(self, role: str | None = None) -> ClockKnob:
        """The power cap / SM clock of a GPU group (``role``: a disaggregated pool, whose own cap wins)."""
        cap = self.power_cap_w
        if role == "prefill" and self.prefill_power_cap_w is not None:
            cap = self.prefill_power_cap_w
        elif role == "decode" and self.decode_power_cap_w is not None:
            cap = self.decode_power_cap_w
        return ClockKnob(cap, self.sm_clock_mhz)

    def cap_field(self, role: str | None = None) -> str:
        """The knob that set a group's power cap, for errors."""
        if role == "prefill" and self.prefill_power_cap_w is not None:
            return "prefill_power_cap_w"
        if role == "decode" and self.decode_power_cap_w is not None:
            return "decode_power_cap_w"
        return "power_cap_w"

    def normalised(self) -> SimConfig:
        """A copy with the choices in their canonical spelling (prefix policy, scope, usage, router);
        raises :class:`KavierInputError` naming the field of an unknown one."""
        changes = {}
        for name, what in (
            ("prefix_cache", "prefix cache policy"),
            ("prefix_scope", "prefix cache scope"),
            ("usage", "usage"),
            ("kv_transfer_mode", "KV transfer mode"),
            ("weight_dtype", "weight dtype"),
            ("kv_cache_dtype", "KV cache dtype"),
        ):
            knob = knobs.BY_FIELD[name]
            value = knob.normalise(getattr(self, name))
            if knob.problem(value):
                raise KavierInputError(f"unknown {what} '{getattr(self, name)}'", location=name, expected=knob.expected)
            changes[name] = value
        changes["router"] = normalise_router(self.router)
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Refuse settings no server could run, before any allocation; never changes the config. Errors name
        SimConfig fields (``groups[i].tp`` for a group's); each front end words them its own way
        (:mod:`kavier_opendc.engine.knobs`)."""
        cfg = self.normalised()
        cfg._check_closed_loop()  # before the knob table: its own words for a client count
        for knob in knobs.KNOBS:
            value = getattr(cfg, knob.field)
            problem = knob.problem(value)
            if problem:
                raise KavierInputError(problem, location=knob.field, expected=knob.expected)
        for i, g in enumerate(cfg.groups or []):
            for name in ("replicas", "tp"):
                problem = knobs.BY_FIELD[name].problem(getattr(g, name))
                if problem:
                    raise KavierInputError(
                        problem, location=f"groups[{i}].{name}", expected=knobs.BY_FIELD[name].expected
                    )
        cfg._check_disaggregation()  # first: its errors name the pools' fields, not the co-located ones
        cfg._check_sizes()
        cfg._check_groups()
        cfg._check_framework()
        cfg._check_precision()
        cfg._check_moe_parallel()
        cfg._check_clock()
        cfg.speculative()

    def _check_clock(self) -> None:
        """Power caps and SM clocks the GPUs cannot set (engine/clock.py), per group or pool."""
        topo = self.topology()
        if topo is not None:
            for role, pool in (("prefill", topo.prefill), ("decode", topo.decode)):
                check_knob(self.clock_knob(role), pool.gpu, self.cap_field(role))
            return
        for g in self.replica_groups():
            knob = self.clock_knob()
            if knob.active:
                check_knob(knob, g.gpu, self.cap_field())

    def _check_moe_parallel(self) -> None:
        """Expert and attention data parallelism: MoE models only, and the GPUs must split evenly.

        Rules as vLLM and SGLang apply them: EP spans all of the replica's GPUs (vllm-project/vllm
        docs/serving/expert_parallel_deployment.md @ 13642f1e: EP_SIZE = TP_SIZE x DP_SIZE), so they must
        split the experts evenly; attention DP ranks split the replica's GPUs (sgl-project/sglang
        docs/advanced_features/dp_dpa_smg_guide.md @ a35bc5aa: --tp 8 --dp-size 8 --enable-dp-attention,
        tp_size % dp_size == 0)."""
        for i, g in enumerate(self.replica_groups()):
            m = g.model
            where = "" if not self.groups else f" (replica group {i})"
            dp = self.data_parallel_size or 1
            if not m.is_moe and (self.expert_parallel or dp > 1):
                knob = "expert_parallel" if self.expert_parallel else "data_parallel_size"
                raise KavierInputError(
                    f"{m.name} is a dense model{where}: expert parallelism and attention data parallelism apply "
                    "to mixture-of-experts models only (a dense model's data parallelism is --replicas)",
                    location=knob,
                    expected="a MoE model (num_experts > 1), or no --enable-expert-parallel / --dp-size",
                )
            if self.expert_parallel and g.tp < 2:
                raise KavierInputError(
                    f"expert parallelism over {g.tp} GPU{where} splits nothing",
                    location="expert_parallel",
                    expected="--tp 2 or more with --enable-expert-parallel",
                )
            if self.expert_parallel and m.num_experts % g.tp != 0:
                raise KavierInputError(
                    f"{m.name} has {m.num_experts} experts per layer, which cannot be split evenly over an EP "
                    f"group of {g.tp} GPUs{where} (EP size = the replica's GPUs, --tp)",
                    location="expert_parallel",
                    expected=f"a --tp that divides {m.num_experts}",
                )
            if g.tp % dp != 0:
                raise KavierInputError(
                    f"{dp} attention data-parallel ranks x {g.tp / dp:g} GPUs each is not the replica's "
                    f"{g.tp} GPUs{where}",
                    location="data_parallel_size",
                    expected=f"a --dp-size that divides --tp ({g.tp})",
                )
            if m.num_attention_heads % (g.tp // dp) != 0:
                raise KavierInputError(
                    f"{m.name} has {m.num_attention_heads} attention heads, which cannot be split evenly over "
                    f"{g.tp // dp} GPUs per attention rank{where}",
                    location="data_parallel_size",
                    expected="a --dp-size whose ranks' GPU count (--tp / --dp-size) divides the attention heads",
                )
            if self.expert_imbalance != 1.0 and not self.expert_parallel:
                raise KavierInputError(
                    "an expert imbalance applies under expert parallelism only (without it every GPU holds a "
                    "slice of every expert)",
                    location="expert_imbalance",
                    expected="--enable-expert-parallel with --expert-imbalance, or no --expert-imbalance",
                )
            if self.expert_parallel and self.expert_imbalance > g.tp:
                # the busiest of EP GPUs takes at most all the tokens: EP x its mean share
                raise KavierInputError(
                    f"an expert imbalance of {self.expert_imbalance:g} would give the busiest GPU more than all "
                    f"the tokens of an EP group of {g.tp} GPUs{where}",
                    location="expert_imbalance",
                    expected=f"an imbalance from 1 (uniform routing) to the EP size {g.tp} (all tokens on one GPU)",
                )

    def _check_closed_loop(self) -> None:
        """A client count is a whole number >= 1, a think time a finite number of seconds >= 0."""
        c = self.concurrency
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1):
            raise KavierInputError(
                f"closed-loop concurrency must be a whole number of clients >= 1, got {c!r}",
                location="concurrency",
                expected="an integer >= 1",
            )
        w = self.think_time_s
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w) or w < 0
        ):
            raise KavierInputError(
                f"closed-loop think time must be a finite number of seconds >= 0, got {w!r}",
                location="think_time_s",
                expected="a number >= 0",
            )

    def closed_loop(self, trace: Trace) -> ClosedLoop | None:
        """The closed-loop clients of a run of ``trace``: ``concurrency`` (with ``think_time_s``, default 0)
        overrides the trace's arrival process; else the trace's own (a synthetic closed-loop workload); None:
        open loop, the trace's arrival times. A think time without any closed loop is an error."""
        spec = trace.closed_loop
        if self.concurrency is not None:
            think = self.think_time_s if self.think_time_s is not None else 0.0
            return ClosedLoop(int(self.concurrency), float(think))
        if spec is not None:
            if self.think_time_s is not None:
                return ClosedLoop(spec.concurrency, float(self.think_time_s))
            return spec
        if self.think_time_s is not None:
            raise KavierInputError(
                "a think time is given but no closed-loop concurrency (open-loop arrivals come from the trace)",
                location="think_time_s",
                expected="--concurrency C with --think-time, or a workload with arrival closed-loop",
            )
        return None

    def _precision_gaps(self) -> list[tuple[ModelSpec, GPUSpec]]:
        """(served model, GPU) of the replica groups whose FP8/FP4 weights have no such peak on their GPU."""
        out = []
        for g in self.replica_groups():
            if g.model.dtype in GEMM_PEAK_FIELDS and not g.gpu.has_gemm_peak(g.model.dtype):
                out.append((g.model, g.gpu))
        return out

    def _check_precision(self) -> None:
        """FP8/FP4 weights on a GPU without FP8/FP4 tensor cores: refused unless ``weight_only_fallback``.

        vLLM runs an FP8 checkpoint on Ampere (no FP8 tensor cores) weight-only, dequantising in its FP8 Marlin
        GEMM (FP8 storage, FP16 compute; vllm/model_executor/layers/quantization/fp8.py and
        utils/marlin_utils_fp8.py, docs/features/quantization/fp8.md: "Ampere GPUs are supported for W8A16
        (weight-only FP8) utilizing Marlin kernels"), and FP4 likewise through Marlin before Blackwell. The
        simulator asks for that choice explicitly, so that an FP8 run on an A100 is never timed at an FP8
        peak the GPU lacks nor silently at FP16."""
        if self.weight_only_fallback:
            return
        for model, gpu in self._precision_gaps():
            field_ = GEMM_PEAK_FIELDS[model.dtype]
            kind = "FP8" if model.dtype == "fp8" else "FP4"
            given = knobs.BY_FIELD["weight_dtype"].normalise(self.weight_dtype)
            whose = "" if given not in (None, "auto") else f" ({model.name}'s catalogue dtype)"
            raise KavierInputError(
                f"{model.dtype} weights{whose} on {gpu.name}, which has no {kind} tensor cores (no {field_} in "
                f"the catalogue); vLLM runs them weight-only ({model.dtype} storage, FP16 compute through its "
                "Marlin kernels): allow that with --weight-only-fallback (serving.weight_only_fallback: true in "
                "an experiment)",
                location="weight_dtype",
                expected=f"a GPU with {field_}, a 16-bit or int8/int4 weight dtype, or the weight-only fallback",
            )

    def _check_disaggregation(self) -> None:
        """A disaggregated topology: both pools, the cluster's one model, a link that carries bytes, and what
        the P/D loop models (vLLM v1's scheduler, a KV cache, one replica group per pool)."""
        if (self.prefill_replicas is None) != (self.decode_replicas is None) and self.disaggregation is None:
            missing = "decode_replicas" if self.decode_replicas is None else "prefill_replicas"
            raise KavierInputError(
                "disaggregated serving needs both a prefill and a decode pool",
                location=missing,
                expected="--prefill-replicas N and --decode-replicas N together",
            )
        role_limits = [f"{r}_{n}" for r in ("prefill", "decode") for n in ("max_num_seqs", "max_batched_tokens")]
        role_limits.append("decode_routing")
        topo = self.topology()
        if topo is None:
            for name in role_limits:
                if getattr(self, name) is not None:
                    what = "a decode routing" if name == "decode_routing" else "a pool's batching limit"
                    raise KavierInputError(
                        f"{what} is set, but serving is co-located (no prefill or decode pool)",
                        location=name,
                        expected="--prefill-replicas/--decode-replicas or --prefill-pool/--decode-pool with it"
                        + ("" if name == "decode_routing" else ", or --max-num-seqs / --max-batched-tokens"),
                    )
            return
        given = self.disaggregation is not None
        for name in ("prefill_replicas", *role_limits):
            if given and getattr(self, name) is not None:
                raise KavierInputError(
                    "a disaggregated topology is given twice (disaggregation and the knobs)",
                    location=name,
                    expected="one of the two (a pool's own max_num_seqs / max_batched_tokens, and decode_routing, "
                    "in disaggregation)",
                )
        if self.groups:
            raise KavierInputError(
                "replica groups and a disaggregated topology cannot be combined yet",
                location="groups",
                expected="no groups with --prefill-replicas/--decode-replicas",
            )
        for role, k, pool in [(r, k, p) for r in ("prefill", "decode") for k, p in enumerate(topo.pools(r))]:

            def where(name: str, role=role, k=k) -> str:
                if len(topo.pools(role)) > 1:
                    return f"disaggregation.{role}_pools[{k}].{name}"
                return f"disaggregation.{role}.{name}" if given else f"{role}_{name}"

            if not isinstance(pool.gpu, GPUSpec):
                raise KavierInputError(
                    f"the {role} pool's GPU must be a catalogue GPU, got {pool.gpu!r}",  # noqa: B023
                    location=where("gpu"),
                    expected="a GPUSpec, e.g. default_catalog().gpu(name)",
                )
            if pool.model.name != self.model.name:
                raise KavierInputError(
                    f"the {role} pool serves {pool.model.name}, the cluster {self.model.name}; disaggregated "
                    "serving moves one model's KV cache between its pools",
                    location=where("model"),
                    expected=self.model.name,
                )
            for name in ("max_num_seqs", "max_batched_tokens"):
                value = getattr(pool, name)
                problem = knobs.BY_FIELD[name].problem(value) if value is not None else None
                if problem:
                    raise KavierInputError(problem, location=where(name), expected=knobs.BY_FIELD[name].expected)
            for name, value, limit in (("replicas", pool.replicas, limits.REPLICAS), ("tp", pool.tp, limits.TP)):
                if value < 1 or limits.check(name, value, limit):
                    raise KavierInputError(
                        limit.above(value) if value >= 1 else "must be at least 1",
                        location=where(name),
                        expected="an integer >= 1",
                    )
            if pool.model.num_attention_heads % pool.tp != 0:
                raise KavierInputError(
                    f"{pool.model.name} has {pool.model.num_attention_heads} attention heads, which cannot be "
                    f"split evenly over {pool.tp} GPUs",
                    location=where("tp"),
                    expected="a TP degree that divides the number of attention heads",
                )
        if topo.decode_routing not in DECODE_ROUTINGS:
            raise KavierInputError(
                f"unknown decode routing {topo.decode_routing!r}",
                location="disaggregation.decode_routing" if given else "decode_routing",
                expected="one of " + ", ".join(DECODE_ROUTINGS),
            )
        self._check_links(topo, given)
        if self.framework_profile().policy != "vllm-v1":
            raise KavierInputError(
                "disaggregated serving is modelled with vLLM v1's scheduler only",
                location="framework",
                expected="vllm-v1",
            )
        if not self.kv_cache:
            raise KavierInputError(
                "disaggregated serving moves the KV cache: it needs one", location="kv_cache", expected="on"
            )
        total = sum(p.replicas * p.tp for p in (*topo.prefill_pools, *topo.decode_pools))
        if limits.check("replicas/tp", total, limits.GPUS):
            raise KavierInputError(limits.GPUS.above(total), location="prefill_replicas/decode_replicas")

    @staticmethod
    def _check_links(topo: Disaggregation, given: bool) -> None:
        """The shared link and each pool pair's own: bytes carried, times and energy finite, known pairs."""
        seen: set[tuple[int, int]] = set()
        for j, pl in enumerate(topo.pair_links):
            pair = (pl.prefill, pl.decode)
            n_pre, n_dec = len(topo.prefill_pools), len(topo.decode_pools)
            if not (0 <= pl.prefill < n_pre and 0 <= pl.decode < n_dec):
                raise KavierInputError(
                    f"a link for the pair (prefill pool {pl.prefill}, decode pool {pl.decode}), which does not "
                    f"exist: there are {n_pre} prefill and {n_dec} decode pools",
                    location=f"disaggregation.pair_links[{j}]",
                    expected=f"prefill pool 0..{n_pre - 1} and decode pool 0..{n_dec - 1}",
                )
            if pair in seen:
                raise KavierInputError(
                    f"the pair (prefill pool {pl.prefill}, decode pool {pl.decode}) has two links",
                    location=f"disaggregation.pair_links[{j}]",
                    expected="one link per pair",
                )
            seen.add(pair)
        specs: list[tuple[LinkSpec, int | None]] = [(topo.link, None)]
        specs += [(pl.spec, k) for k, pl in enumerate(topo.pair_links)]
        for link, at in specs:

            def lwhere(name: str, at=at) -> str:
                if at is not None:
                    return f"disaggregation.pair_links[{at}].{name}"
                if name == "mode" and not given:
                    return "kv_transfer_mode"
                return f"disaggregation.link.{name}" if given else f"kv_link_{name}"

            if not (math.isfinite(link.gbs) and link.gbs > 0):
                raise KavierInputError(
                    f"the KV link's bandwidth must be a positive number of GB/s, got {link.gbs:g}",
                    location=lwhere("gbs"),
                    expected="a number > 0",
                )
            for name, seconds in (("latency_s", link.latency_s), ("setup_s", link.setup_s)):
                if not (math.isfinite(seconds) and seconds >= 0):
                    raise KavierInputError(
                        f"invalid value {seconds!r}", location=lwhere(name), expected="a number >= 0"
                    )
            e = link.energy_j_per_byte
            if e is not None and not (math.isfinite(e) and e >= 0):
                raise KavierInputError(
                    f"invalid energy per byte {e!r}", location=lwhere("energy_j_per_byte"), expected="a number >= 0"
                )
            if link.mode not in TRANSFER_MODES:
                raise KavierInputError(
                    f"unknown KV transfer mode {link.mode!r}",
                    location=lwhere("mode"),
                    expected="one of " + ", ".join(TRANSFER_MODES),
                )

    def speculative(self) -> Speculative | None:
        """The speculative-decoding setup (None: off); raises :class:`KavierInputError` naming the bad field.

        Simulated for co-located vLLM v1 or TensorRT-LLM replicas of one model (the schedulers that count k+1
        tokens per decoding request against the token budget) with the KV cache on."""
        from kavier_opendc.specs.catalog import default_catalog

        spec = resolve_speculative(
            self.speculative_method,
            self.num_speculative_tokens,
            self.spec_acceptance_rate,
            self.draft_model,
            self.served_model(self.model),
            lambda name: default_catalog().model(name),
        )
        if spec is None:
            return None
        fw = self.framework_profile()
        if fw.policy not in SPEC_POLICIES:
            why = SPEC_NOT_SIMULATED.get(fw.policy, "its scheduler does not model it")
            raise KavierInputError(
                f"speculative decoding is not simulated under framework {fw.name} (scheduler {fw.policy}): {why}",
                location="speculative_method",
                expected="a vLLM v1 or TensorRT-LLM framework (--framework vllm-v1, vllm-0.12-server, trtllm-1.0, "
                "trtllm-1.0-server), or no speculative_method",
            )
        if self.topology() is not None or self.groups:
            raise KavierInputError(
                "speculative decoding is simulated for co-located replicas of one model only",
                location="speculative_method",
                expected="no disaggregated pools and no replica groups with speculative decoding",
            )
        if not self.kv_cache:
            raise KavierInputError(
                "speculative decoding needs the KV cache",
                location="speculative_method",
                expected="kv_cache on",
            )
        return spec

    def framework_profile(self) -> FrameworkProfile:
        """The framework in force (``framework`` is a built-in's name, or a profile being calibrated), with
        ``enable_chunked_prefill`` when given."""
        fw = self.framework if isinstance(self.framework, FrameworkProfile) else framework(self.framework)
        if self.enable_chunked_prefill is not None and fw.chunked_prefill != self.enable_chunked_prefill:
            fw = dataclasses.replace(fw, chunked_prefill=bool(self.enable_chunked_prefill))
        if self.async_scheduling is not None and fw.async_scheduling != self.async_scheduling:
            fw = dataclasses.replace(fw, async_scheduling=bool(self.async_scheduling))
        return fw

    def _check_framework(self) -> None:
        """The framework exists, and can run what is asked of it."""
        fw = self.framework_profile()
        if self.enable_chunked_prefill is not None and (fw.policy != "vllm-v0" or fw.scheduler_steps > 1):
            why = {
                "vllm-v1": "vLLM v1 always chunks prompts within the token budget (it has no switch to turn off)",
                "sglang": "SGLang chunks prompts by its own chunked_prefill_size (8,192 tokens)",
            }.get(fw.policy, f"policy {fw.policy} has no such switch")
            if fw.policy == "vllm-v0":
                why = "multi-step scheduling (scheduler_steps > 1) is modelled without chunked prefill"
            raise KavierInputError(
                f"vLLM v0's chunked-prefill switch does not apply to framework {fw.name}: {why}",
                location="enable_chunked_prefill",
                expected="a vLLM v0 framework without multi-step (vllm-0.5-server, vllm-0.5-offline, "
                "vllm-0.9-v0-server), or leave it out",
            )
        if fw.async_scheduling and fw.policy != "vllm-v1":
            raise KavierInputError(
                f"async scheduling is vLLM v1's; framework {fw.name} runs policy {fw.policy}",
                location="async_scheduling",
                expected="a vLLM v1 framework (vllm-v1, vllm-0.11-server, vllm-0.12-server, vllm-0.14-server), "
                "or leave it out",
            )
        if fw.async_scheduling and self.topology() is not None:
            raise KavierInputError(
                "async scheduling is modelled for co-located replicas only, not for prefill/decode pools",
                location="async_scheduling",
                expected="co-located serving, or async_scheduling off",
            )
        if fw.chunked_prefill and fw.policy == "vllm-v0" and fw.scheduler_steps > 1:
            raise KavierInputError(
                f"framework {fw.name}: multi-step scheduling (scheduler_steps {fw.scheduler_steps}) is modelled "
                "without chunked prefill",
                location="framework",
                expected="chunked_prefill: false for a framework with scheduler_steps > 1",
            )
        if self.usage != "auto" and fw.serving_path != "auto" and self.usage != fw.serving_path:
            raise KavierInputError(
                f"framework {fw.name} is the {fw.serving_path} serving path; --usage {self.usage} contradicts it",
                location="usage",
                expected=f"auto or {fw.serving_path}, or a framework of the {self.usage} path",
            )
        if not fw.prefix_caching and self.prefix_cache not in ("auto", "none"):
            raise KavierInputError(
                f"prefix cache policy '{self.prefix_cache}' is not modelled for framework {fw.name} "
                + (
                    f"({fw.versions}: TensorRT-LLM's KV block reuse is not modelled)"
                    if fw.policy == "trtllm"
                    else f"({fw.versions}: automatic prefix caching was off by default there and the simulator "
                    "does not model it for this engine)"
                ),
                location="prefix_cache",
                expected="none or auto, or a framework with prefix caching such as vllm-v1",
            )
        if fw.policy != "vllm-v1" and not self.kv_cache:
            raise KavierInputError(
                f"--kv-cache off (recompute every step) is modelled with vLLM v1's scheduler only, not {fw.name}'s",
                location="kv_cache",
                expected="on, or framework vllm-v1",
            )

    def _check_sizes(self) -> None:
        """Totals over the replica groups (each knob's own bound is checked with the knob)."""
        groups = self.replica_groups()
        for name, value, limit in (
            ("replicas", sum(g.replicas for g in groups), limits.REPLICAS),
            ("replicas/tp", sum(g.replicas * g.tp for g in groups), limits.GPUS),
        ):
            if limits.check(name, value, limit):
                raise KavierInputError(limit.above(value), location=name)

    def _check_groups(self) -> None:
        """Per replica group: the TP degree must split the model's heads, and --max-model-len must fit its
        context window (vLLM refuses a longer one unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set)."""
        for i, g in enumerate(self.replica_groups()):
            where = "tp" if not self.groups else f"groups[{i}].tp"
            if g.tp > limits.TP.value:
                raise KavierInputError(limits.TP.above(g.tp), location=where)
            if g.model.num_attention_heads % g.tp != 0:
                raise KavierInputError(
                    f"{g.model.name} has {g.model.num_attention_heads} attention heads, which cannot be "
                    f"split evenly over {g.tp} GPUs",
                    location=where,
                    expected="a TP degree that divides the number of attention heads",
                )
            if (
                self.max_model_len is not None
                and self.max_model_len > g.model.max_context
                and not self.allow_long_max_model_len
            ):
                raise KavierInputError(
                    f"{self.max_model_len} is longer than {g.model.name}'s context window of "
                    f"{g.model.max_context} tokens; a server refuses it (vLLM unless "
                    "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); allow it explicitly with --allow-long-max-model-len "
                    "(serving.allow_long_max_model_len: true in an experiment)",
                    location="max_model_len",
                )

    def resolved_usage(self, trace: Trace) -> str:
        """``server`` or ``offline``: the framework's serving path, as given, or (auto) offline when every
        request arrives at once."""
        fw = self.framework_profile()
        if fw.serving_path != "auto":
            return fw.serving_path
        if self.usage != "auto":
            return self.usage
        if self.closed_loop(trace) is not None:  # benchmark clients talk to a server
            return "server"
        arrivals = trace.arrival_s
        at_once = not trace.timed or (len(arrivals) > 0 and arrivals.max() == arrivals.min())
        return "offline" if at_once else "server"

    def batch_limits(self, group: ReplicaGroup, usage: str) -> tuple[int, int]:
        """(max_batched_tokens, max_num_seqs) of ``group``'s replicas: the given ones, else the framework's."""
        tokens, seqs = self.framework_profile().batch_limits(
            group.gpu, usage, self.max_model_len or group.model.max_context
        )
        return (
            self.max_batched_tokens if self.max_batched_tokens is not None else tokens,
            self.max_num_seqs if self.max_num_seqs is not None else seqs,
        )

    def warnings(self) -> list[str]:
        """What a run under this configuration should warn about (printed by the CLI)."""
        out = []
        if self.max_model_len is not None and self.allow_long_max_model_len:
            for g in self.replica_groups():
                if self.max_model_len > g.model.max_context:
                    out.append(
                        f"max_model_len {self.max_model_len} is longer than {g.model.name}'s context "
                        f"window of {g.model.max_context} tokens (allowed explicitly); its outputs "
                        "beyond the window would be unreliable on a real server"
                    )
        if self.weight_only_fallback:
            for model, gpu in self._precision_gaps():
                out.append(
                    f"{gpu.name} has no {'FP8' if model.dtype == 'fp8' else 'FP4'} tensor cores: "
                    f"{model.name}'s {model.dtype} weights run weight-only (their bytes, FP16 compute), as "
                    "vLLM's Marlin kernels do"
                )
        return out


@dataclass
class SimulationResult:
    trace: Trace
    config: SimConfig
    results: Results
    replicas: list[Replica]
    capacity_blocks: int  # per replica of the first group (see each replica's .capacity)
    usage: str = "server"  # the usage whose vLLM batch limits apply (SimConfig.resolved_usage)
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def makespan_s(self) -> float:
        f = self.results.finish
        return float(np.nanmax(f)) if np.isfinite(f).any() else 0.0


def simulate(trace: Trace, cfg: SimConfig, progress: bool | None = None) -> SimulationResult:
    """Run the serving simulation of ``trace`` under ``cfg`` (the result holds its normalised copy)."""
    cfg.validate()
    cfg = cfg.normalised()
    topo = cfg.topology()
    if topo is not None:
        return _simulate_disaggregated(trace, cfg, topo, progress)
    t_wall = time.perf_counter()
    n = len(trace)
    clients = _client_pool(trace, cfg)
    res = Results(n) if clients is None else ClosedLoopResults(n, clients)
    prefix = _prefix_setup(trace, cfg)
    reps: list[Replica] = []
    usage = cfg.resolved_usage(trace)
    fw = cfg.framework_profile()
    rep_class = replica_class(fw)
    spec = cfg.speculative()
    for group in cfg.replica_groups():
        cm = make_cost_model(group.model, group.gpu, group.tp, cfg.efficiency, fw, cfg.clock_knob())
        draft_cm = None
        if spec is not None and spec.draft_model is not None:
            draft_cm = make_cost_model(spec.draft_model, group.gpu, group.tp, cfg.efficiency, fw, cfg.clock_knob())
        max_tokens, max_seqs = cfg.batch_limits(group, usage)
        cap = (
            cfg.num_kv_blocks
            if cfg.num_kv_blocks is not None
            else cm.kv_capacity_blocks(cfg.gpu_memory_utilization, max_tokens, max_seqs)
        )
        if cfg.kv_cache and cap <= 0:
            raise KavierInputError(
                f"{group.model.name} ({group.model.weight_bytes / 2**30:.1f} GiB of weights) leaves no room for "
                f"a KV cache on {group.tp} x {group.gpu.name} ({group.gpu.memory_gib:g} GiB each) at "
                f"gpu_memory_utilization={cfg.gpu_memory_utilization}",
                location="model/gpu/tp",
                expected="a larger GPU, more tensor parallelism, or a smaller model",
            )
        for _ in range(group.replicas):
            rep = rep_class(
                len(reps),
                cm,
                int(cap),  # Python ints: a compiled replica (engine/compiled.py) refuses numpy's
                max_num_seqs=int(max_seqs),
                max_batched_tokens=int(max_tokens),
                kv_cache=cfg.kv_cache,
                exact=cfg.exact,
                results=res,
                merge_tol=cfg.timeline_merge_tol,
                prefix=prefix,
            )
            if fw.scheduler_steps > 1:
                rep.scheduler_steps = fw.scheduler_steps
            if fw.async_scheduling:
                rep.async_sched = True
            if spec is not None:
                rep.use_speculative(spec, draft_cm)
            if isinstance(rep, ReplicaTRTLLM):  # TensorRT-LLM's capacity policy and context chunking
                rep.capacity_policy = fw.capacity_scheduler or "guaranteed_no_evict"
                rep.chunked_context = fw.chunked_prefill
            if isinstance(rep, SchedulerV0):
                rep.use_chunked_prefill(fw.chunked_prefill)
            reps.append(rep)
    cap = reps[0].capacity
    router = Router(cfg.router, reps, cfg.seed, sessions=trace.session_id)
    if EAGER_PREFILL and router.policy not in STATE_ROUTERS and spec is None:
        for rep in reps:
            rep.prefill_runs = rep.fast and type(rep) is Replica
    affinity = router.policy == "prefix-affinity" and prefix is not None and prefix.policy == "block"
    # closed loop: the pool's list, filled in as clients are freed (inf: not sent yet)
    arrivals = trace.arrival_s.tolist() if clients is None else clients.arrivals
    prompts = trace.num_input_tokens.tolist()
    outs = trace.num_output_tokens.tolist()
    samples = trace.n.tolist() if trace.n is not None and (trace.n > 1).any() else None
    if samples is not None:
        res.remaining = np.asarray(trace.n, dtype=np.int32).copy()
    # held requests (engine/deferral.py) arrive out of trace order: the loop takes them by release time,
    # each keeping its trace row
    rows = None if trace.held_s is None else np.argsort(trace.arrival_s, kind="stable").tolist()
    if rows is not None:
        arrivals = [arrivals[j] for j in rows]
    bar = Progress(n, "simulate", enabled=progress, unit="req")
    kv_on = cfg.kv_cache
    full_cache = prefix is not None and prefix.policy == "full" and kv_on
    # no request longer than any model's context is ever served (a trace keeps such rows only when asked
    # to, as rejected requests)
    max_len = min(cfg.max_model_len or limits.CONTEXT_TOKENS.value, limits.CONTEXT_TOKENS.value)
    # closed loop: a boundary may free a client that arrives sooner than the next arrival known
    chain = CHAIN_BOUNDARIES and clients is None and not cfg.exact
    run_events(reps, router, res, arrivals, prompts, outs, samples, rows, prefix, affinity, full_cache, kv_on, max_len,
               chain, bar)  # fmt: skip
    bar.close()
    result = SimulationResult(_as_simulated(trace, clients), cfg, res, reps, cap, usage=usage)
    if clients is not None:
        result.extra["closed_loop"] = clients.spec
    end = result.makespan_s
    for rep in reps:  # every replica idles until the last request of the whole system finishes
        if rep.t < end:
            # its cached prefixes stay in memory while it idles
            rep.timeline.add(rep.t, end, 0.0, 0.0, 0.0, 0, 0, rep.kv.cached_load())
    result.wall_s = time.perf_counter() - t_wall
    return result


def _simulate_disaggregated(
    trace: Trace, cfg: SimConfig, topo: Disaggregation, progress: bool | None
) -> SimulationResult:
    """The disaggregated run (engine/disaggregated.py): a prefill pool, a decode pool, the KV link."""
    t_wall = time.perf_counter()
    if trace.n is not None and (trace.n > 1).any():
        raise KavierInputError(
            "branching prompts (n > 1) are not modelled with disaggregated serving yet",
            source=str(trace.source),
            location="n",
            expected="one sample per prompt",
        )
    n = len(trace)
    clients = _client_pool(trace, cfg)
    res = Results(n) if clients is None else ClosedLoopResults(n, clients)
    prefix = _prefix_setup(trace, cfg)
    usage = cfg.resolved_usage(trace)
    fw = cfg.framework_profile()
    max_len = int(min(cfg.max_model_len or limits.CONTEXT_TOKENS.value, limits.CONTEXT_TOKENS.value))
    given = cfg.disaggregation is not None
    pools: dict[str, list] = {"prefill": [], "decode": []}
    idx = 0
    for role, k, pool, cls in [
        (r, k, p, c)
        for r, c in (("prefill", PrefillReplica), ("decode", DecodeReplica))
        for k, p in enumerate(topo.pools(r))
    ]:
        several = len(topo.pools(role)) > 1
        group = ReplicaGroup(pool.model, pool.gpu, pool.replicas, pool.tp)
        cm = make_cost_model(
            pool.model, pool.gpu, pool.tp, cfg.efficiency, fw, cfg.clock_knob(role), cfg.cap_field(role)
        )
        max_tokens, max_seqs = cfg.batch_limits(group, usage)
        max_tokens = pool.max_batched_tokens if pool.max_batched_tokens is not None else max_tokens
        max_seqs = pool.max_num_seqs if pool.max_num_seqs is not None else max_seqs
        cap = (
            pool.num_kv_blocks
            if pool.num_kv_blocks is not None
            else cm.kv_capacity_blocks(cfg.gpu_memory_utilization, max_tokens, max_seqs)
        )
        longest = min(cfg.max_model_len or pool.model.max_context, max_len)
        if cap < blocks_for(longest):
            where = (
                f"disaggregation.{role}_pools[{k}].{'num_kv_blocks' if pool.num_kv_blocks is not None else 'gpu'}"
                if several
                else "num_kv_blocks"
                if pool.num_kv_blocks is not None and not given
                else f"disaggregation.{role}.num_kv_blocks"
                if pool.num_kv_blocks is not None
                else f"disaggregation.{role}.gpu"
                if given
                else f"{role}_gpu/{role}_tp"
            )
            raise KavierInputError(
                f"a {role} replica ({pool.tp} x {pool.gpu.name}, {cap} KV blocks of {BLOCK_SIZE} tokens) cannot "
                f"hold the KV cache of one request of {longest} tokens ({blocks_for(longest)} blocks)",
                location=where,
                expected="a larger GPU, more tensor parallelism, or a shorter --max-model-len",
            )
        for _ in range(pool.replicas):
            pools[role].append(
                cls(
                    idx,
                    cm,
                    int(cap),  # Python ints, as above
                    max_num_seqs=int(max_seqs),
                    max_batched_tokens=int(max_tokens),
                    kv_cache=True,
                    exact=cfg.exact,
                    results=res,
                    merge_tol=cfg.timeline_merge_tol,
                    prefix=prefix if role == "prefill" else None,
                )
            )
            idx += 1
    reps: list[Replica] = [*pools["prefill"], *pools["decode"]]
    full_key = prefix.index.prompt_key if prefix is not None and prefix.policy == "full" else None
    bar = Progress(n, "simulate", enabled=progress, unit="req")
    rec = run_disaggregated(
        topo,
        pools["prefill"],
        pools["decode"],
        res,
        trace.arrival_s.tolist() if clients is None else clients.arrivals,
        trace.num_input_tokens.tolist(),
        trace.num_output_tokens.tolist(),
        max_len,
        full_cache_key=full_key,
        progress=bar,
    )
    bar.close()
    result = SimulationResult(
        _as_simulated(trace, clients), cfg, res, reps, reps[0].capacity, usage=usage, extra={"pd": rec}
    )
    if clients is not None:
        result.extra["closed_loop"] = clients.spec
    end = result.makespan_s
    for rep in reps:
        if rep.t < end:
            rep.timeline.add(rep.t, end, 0.0, 0.0, rep.kv.load(), 0, 0, rep.kv.cached_load())
    result.wall_s = time.perf_counter() - t_wall
    return result


def _client_pool(trace: Trace, cfg: SimConfig) -> ClientPool | None:
    """The closed-loop clients of this run (None: open loop); they start at the trace's first time."""
    spec = cfg.closed_loop(trace)
    if spec is None:
        return None
    return ClientPool(len(trace), spec, float(trace.arrival_s[0]) if len(trace) else 0.0)


def _as_simulated(trace: Trace, clients: ClientPool | None) -> Trace:
    """The trace with the arrival times the run gave it (closed loop: when the clients sent each request),
    so that every output (requests.parquet, the summary's latencies, the OpenDC export) uses them."""
    if clients is None:
        return trace
    return dataclasses.replace(
        trace, arrival_s=np.asarray(clients.arrivals, dtype=np.float64), closed_loop=clients.spec
    )


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
            "(input_tokens), no prefix-block hashes (hash_ids) and no session ids",
            source=str(trace.source),
            location="prefix_cache",
            expected="a trace with input_tokens, hash_ids or session_id, or policy none",
        )
    return PrefixSetup(
        policy,
        index,
        cfg.prefix_min_tokens,
        cfg.prefix_capacity_prompts,
        cfg.prefix_capacity_tokens,
        cfg.host_memory_gb,
    )
