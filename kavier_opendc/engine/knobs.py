"""Every serving knob of the engine, declared once.

A knob is a :class:`~kavier_opendc.engine.simulator.SimConfig` field with what
the front ends need to offer it: the `kavier simulate` flag, the place an
experiment file sets it, the bounds (from ``base/limits.py``), the values it
takes and their aliases, and its help. The CLI builds its flags from this
table, the engine checks its configuration against it and names fields in
its errors, and each front end words a field its own way (a flag, or a
``serving.*`` path) through :func:`flag_of` and :func:`experiment_path`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from kavier_opendc.base import limits
from kavier_opendc.base.limits import Limit
from kavier_opendc.engine.kv_link import DECODE_ROUTINGS, TRANSFER_MODES
from kavier_opendc.engine.router import ROUTERS
from kavier_opendc.engine.speculative import METHODS as SPEC_METHODS
from kavier_opendc.specs.frameworks import DEFAULT_FRAMEWORK

#: how a value is read and checked: a whole number, a real number, a fraction in (0, 1], a count or inf,
#: one of ``choices``, a name looked up elsewhere (catalogue, router table), a switch
Kind = Literal["int", "float", "fraction", "count_or_inf", "choice", "name", "switch"]

PREFIX_POLICIES = ("auto", "none", "block", "prefill", "full")
USAGE_CHOICES = ("auto", "server", "offline")
#: the weights' datatypes (auto: the model's catalogue dtype) and the KV cache's (auto: the activations')
WEIGHT_DTYPES = ("auto", "fp16", "bf16", "fp8", "int8", "int4", "mxfp4", "nvfp4")
KV_CACHE_DTYPES = ("auto", "fp16", "bf16", "fp8")
_DTYPE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}


@dataclass(frozen=True)
class Knob:
    """One serving knob: a SimConfig field and how each front end offers it."""

    field: str  # SimConfig field
    kind: Kind
    flag: str | None  # kavier simulate's flag (None: not offered there)
    path: tuple[str, ...] | None  # where an experiment file sets it (None: not there)
    help: str = ""
    default: Any = None  # SimConfig's default (it reads it from here)
    minimum: float | None = None  # smallest valid value (int/float kinds)
    limit: Limit | None = None  # largest valid value, with its reason
    choices: tuple[str, ...] = ()  # the values a choice takes
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # other spellings -> a choice
    metavar: str | None = None

    @property
    def expected(self) -> str:
        """The valid values, as an error's "expected ..." words them."""
        if self.kind == "fraction":
            return "a fraction in (0, 1]"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "count_or_inf":
            return "a whole number >= 0 or inf"
        what = "an integer" if self.kind == "int" else "a number"
        return f"{what} >= {self.minimum:g}" if self.minimum is not None else what

    def normalise(self, value: Any) -> Any:
        """A choice's canonical spelling (case and aliases folded); other values as given."""
        if self.kind == "choice" and isinstance(value, str):
            v = value.strip().lower()
            return self.aliases.get(v, v)
        return value

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already normalised), or None. ``None`` means "the default"."""
        if value is None or self.kind in ("name", "switch"):
            return None
        if self.kind == "choice":
            return None if value in self.choices else f"unknown value {value!r}"
        if self.kind == "fraction":
            return None if 0.0 < value <= 1.0 else "invalid value"
        if self.minimum is not None and value < self.minimum:
            return "invalid value"
        if self.limit is not None and value != float("inf") and value > self.limit.value:
            return self.limit.above(value)
        return None


def _k(field_: str, kind: Kind, flag: str | None, path: tuple[str, ...] | None, help: str = "", **kw) -> Knob:
    return Knob(field_, kind, flag, path, help, **kw)


_PC = ("serving", "prefix_cache")
KNOBS: tuple[Knob, ...] = (
    _k(
        "replicas",
        "int",
        "--replicas",
        ("serving", "replicas"),
        "number of serving replicas (default 1)",
        default=1,
        minimum=1,
        limit=limits.REPLICAS,
    ),
    _k(
        "tp",
        "int",
        "--tp",
        ("serving", "tp"),
        "tensor-parallel GPUs per replica (default 1)",
        minimum=1,
        limit=limits.TP,
        default=1,
    ),
    _k(
        "max_num_seqs",
        "int",
        "--max-num-seqs",
        ("serving", "max_num_seqs"),
        "most sequences running at once per replica (vLLM max_num_seqs; default vLLM v1's: 1024 on GPUs of "
        "70 GiB or more other than A100, else 256)",
        minimum=1,
        limit=limits.NUM_SEQS,
    ),
    _k(
        "max_batched_tokens",
        "int",
        "--max-batched-tokens",
        ("serving", "max_batched_tokens"),
        "token budget per iteration, prefill chunks plus decodes (vLLM max_num_batched_tokens; default vLLM "
        "v1's: as a server 8192 on GPUs of 70 GiB or more other than A100, else 2048; offline 16384 and 8192)",
        minimum=1,
        limit=limits.BATCHED_TOKENS,
    ),
    _k(
        "framework",
        "name",
        "--framework",
        ("serving", "framework"),
        "serving framework whose scheduler rules, batch defaults and CPU time per step are simulated: vllm-v1 "
        "(default), vllm-0.5-server, vllm-0.5-offline, ...; or ENGINE@VERSION[:server|:offline] (vllm@0.13, "
        "sglang@0.4.6, trtllm@1.0:offline) for the profile covering that version; 'kavier catalog' lists them",
        metavar="NAME",
        default=DEFAULT_FRAMEWORK,
    ),
    _k(
        "enable_chunked_prefill",
        "switch",
        "--enable-chunked-prefill",
        ("serving", "enable_chunked_prefill"),
        "vLLM v0's --enable-chunked-prefill: prompts in chunks within the token budget beside the running "
        "decodes (default budget 512 tokens) instead of whole prompts in iterations of their own; for vLLM v0 "
        "frameworks only (default: the framework's)",
        default=None,
    ),
    _k(
        "async_scheduling",
        "switch",
        "--async-scheduling",
        ("serving", "async_scheduling"),
        "vLLM v1's --async-scheduling (on by default from vLLM 0.14, framework vllm-0.14-server): step k+1 is "
        "scheduled while step k runs, so a request arriving during a step joins the step after the next one; for "
        "vLLM v1 frameworks, co-located (default: the framework's)",
        default=None,
    ),
    _k(
        "usage",
        "choice",
        "--usage",
        ("serving", "usage"),
        "whose vLLM v1 batch defaults apply: server (vllm serve), offline (the LLM class), or auto: offline "
        "when every request arrives at once (default)",
        choices=USAGE_CHOICES,
        default="auto",
    ),
    _k(
        "gpu_memory_utilization",
        "fraction",
        "--gpu-memory-utilization",
        ("serving", "gpu_memory_utilization"),
        "fraction of GPU memory vLLM may use for weights, activations and KV cache (default 0.9)",
        default=0.9,
    ),
    _k(
        "num_kv_blocks",
        "int",
        "--num-kv-blocks",
        ("serving", "num_kv_blocks"),
        "override the KV capacity per replica, in 16-token blocks (default: derived from memory)",
        minimum=1,
        limit=limits.KV_BLOCKS,
    ),
    _k(
        "max_model_len",
        "int",
        "--max-model-len",
        ("serving", "max_model_len"),
        "reject requests whose prompt plus output exceed N tokens, as a server with this context length "
        "would (default: no limit; summary.json counts the requests longer than the model's context window)",
        minimum=2,
        limit=limits.CONTEXT_TOKENS,
        metavar="N",
    ),
    _k(
        "allow_long_max_model_len",
        "switch",
        "--allow-long-max-model-len",
        ("serving", "allow_long_max_model_len"),
        "accept a --max-model-len longer than the model's context window (refused otherwise, as vLLM does "
        "without VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); a warning is printed",
        default=False,
    ),
    _k(
        "weight_dtype",
        "choice",
        "--weight-dtype",
        ("serving", "weight_dtype"),
        "datatype of the weights: auto (default: the model's catalogue dtype), fp16, bf16, fp8, int8, int4, mxfp4 "
        "or nvfp4; sets the weight bytes held and read; fp8 (W8A8) and mxfp4/nvfp4 compute at the GPU's FP8/FP4 "
        "peak, int8/int4 are weight-only (GPTQ/AWQ, FP16 compute); refused on a GPU without that peak unless "
        "--weight-only-fallback",
        choices=WEIGHT_DTYPES,
        aliases=dict(_DTYPE_ALIASES),
        metavar="DTYPE",
        default="auto",
    ),
    _k(
        "kv_cache_dtype",
        "choice",
        "--kv-cache-dtype",
        ("serving", "kv_cache_dtype"),
        "datatype of the KV cache (vLLM --kv-cache-dtype): auto (default: the activations', bf16/fp16, also for "
        "an FP8 checkpoint), fp16, bf16 or fp8 (fp8_e4m3/fp8_e5m2: half the bytes, twice the KV capacity)",
        choices=KV_CACHE_DTYPES,
        aliases=dict(_DTYPE_ALIASES),
        metavar="DTYPE",
        default="auto",
    ),
    _k(
        "weight_only_fallback",
        "switch",
        "--weight-only-fallback",
        ("serving", "weight_only_fallback"),
        "run FP8/FP4 weights on a GPU without FP8/FP4 tensor cores (A100, A10; FP4 before Blackwell) weight-only, "
        "as vLLM does with its Marlin kernels: the weights' bytes, FP16 compute; a warning is printed "
        "(refused otherwise)",
        default=False,
    ),
    _k(
        "expert_parallel",
        "switch",
        "--enable-expert-parallel",
        ("serving", "expert_parallel"),
        "MoE models: split the experts whole over all the replica's GPUs (EP size = --tp, as vLLM's "
        "--enable-expert-parallel makes it TP x DP) instead of TP-sharding each expert; the tokens go to their "
        "experts' GPUs and back by an all-to-all per MoE layer (refused on a dense model)",
        default=False,
    ),
    _k(
        "data_parallel_size",
        "int",
        "--dp-size",
        ("serving", "data_parallel_size"),
        "MoE models: attention data parallelism over N ranks of --tp/N GPUs each (SGLang --dp-size with "
        "--enable-dp-attention; vLLM --data-parallel-size N with --tensor-parallel-size tp/N): each rank holds "
        "the attention weights, its own KV cache and an even share of the batch; the experts span all the GPUs "
        "(default 1)",
        default=1,
        minimum=1,
        limit=limits.TP,
        metavar="N",
    ),
    _k(
        "expert_imbalance",
        "float",
        "--expert-imbalance",
        ("serving", "expert_imbalance"),
        "MoE with expert parallelism: the busiest GPU's expert work (tokens, experts touched, all-to-all bytes) "
        "over the mean; the step waits for it (default 1.0: uniform routing; no measured router skew is in the "
        "shared data)",
        default=1.0,
        minimum=1.0,
        metavar="X",
    ),
    _k(
        "kv_cache",
        "switch",
        "--kv-cache",
        ("serving", "kv_cache"),
        "'off' recomputes the whole context at every decode step (seed paper, experiment 2)",
        default=True,
    ),
    _k(
        "prefix_cache",
        "choice",
        "--prefix-cache",
        _PC,
        "prefix-cache policy: block (vLLM automatic prefix caching over 16-token KV blocks), prefill / full "
        "(the Kavier paper's prompt cache: a repeated prompt skips prefill / prefill and decode), none, or "
        "auto (default: block when the trace has token ids, hash_ids or session ids, else none)",
        choices=PREFIX_POLICIES,
        aliases={"off": "none", "vllm": "block"},
        metavar="POLICY",
        default="auto",
    ),
    _k(
        "prefix_min_tokens",
        "int",
        "--prefix-cache-min-tokens",
        _PC + ("min_prompt_tokens",),
        "prompts shorter than N tokens never enter the prefix cache (default 0)",
        minimum=0,
        limit=limits.CONTEXT_TOKENS,
        metavar="N",
        default=0,
    ),
    _k(
        "prefix_scope",
        "choice",
        "--prefix-cache-scope",
        _PC + ("scope",),
        "share cached prefixes across all users (global) or only within a session",
        default="global",
        choices=("global", "session"),
    ),
    _k(
        "prefix_capacity_prompts",
        "count_or_inf",
        "--prefix-cache-capacity-prompts",
        _PC + ("capacity_prompts",),
        "prefill/full policies: prompts kept in the LRU prompt cache (default inf)",
        minimum=0,
        limit=limits.CACHE_TOKENS,
        metavar="N|inf",
        default=math.inf,
    ),
    _k(
        "prefix_capacity_tokens",
        "count_or_inf",
        "--prefix-cache-capacity-tokens",
        _PC + ("capacity_tokens",),
        "block policy: keep evictable cached blocks in a pool of N tokens (or inf: never evict) instead of in "
        "the GPU's free KV memory (default: GPU memory bounds the cache)",
        minimum=0,
        limit=limits.CACHE_TOKENS,
        metavar="N|inf",
    ),
    _k(
        "host_memory_gb",
        "float",
        "--host-cache-gb",
        _PC + ("host_memory_gb",),
        "block policy: a second cache tier in host memory per replica; blocks evicted from the GPU go there "
        "and come back over PCIe instead of being recomputed (default 0)",
        minimum=0.0,
        limit=limits.MEMORY_GB,
        metavar="GB",
        default=0.0,
    ),
    _k(
        "router",
        "name",
        "--router",
        ("serving", "router"),
        f"{', '.join(ROUTERS[:-1])} or {ROUTERS[-1]} (default round-robin; the last two are cache-aware: a session "
        "stays on one replica, or the replica holding the longest cached prefix among the less loaded ones)",
        default="round-robin",
    ),
    _k(
        "seed",
        "int",
        "--seed",
        ("seed",),
        "seed for the random router and synthetic workloads",
        minimum=0,
        limit=limits.SEED,
        default=0,
    ),
    # disaggregated prefill/decode (engine/kv_link.py, engine/disaggregated.py); not in experiment files yet
    _k(
        "prefill_replicas",
        "int",
        "--prefill-replicas",
        None,
        "disaggregated serving: replicas of the prefill pool (with --decode-replicas; default: co-located)",
        minimum=1,
        limit=limits.REPLICAS,
        metavar="N",
    ),
    _k(
        "decode_replicas",
        "int",
        "--decode-replicas",
        None,
        "disaggregated serving: replicas of the decode pool (with --prefill-replicas)",
        minimum=1,
        limit=limits.REPLICAS,
        metavar="N",
    ),
    _k("prefill_gpu", "name", "--prefill-gpu", None, "GPU of the prefill pool (default: --gpu)", metavar="GPU"),
    _k("decode_gpu", "name", "--decode-gpu", None, "GPU of the decode pool (default: --gpu)", metavar="GPU"),
    _k(
        "prefill_tp",
        "int",
        "--prefill-tp",
        None,
        "tensor-parallel GPUs per prefill replica (default: --tp)",
        minimum=1,
        limit=limits.TP,
    ),
    _k(
        "decode_tp",
        "int",
        "--decode-tp",
        None,
        "tensor-parallel GPUs per decode replica (default: --tp)",
        minimum=1,
        limit=limits.TP,
    ),
    *(
        _k(
            f"{role}_{name}",
            "int",
            f"--{role}-{name.replace('_', '-')}",
            None,
            f"disaggregated serving: {what} per {role} replica, for every {role} pool (default: "
            f"--{name.replace('_', '-')}, else the framework's)",
            minimum=1,
            limit=limit,
            metavar="N",
        )
        for role in ("prefill", "decode")
        for name, what, limit in (
            ("max_num_seqs", "most sequences running at once", limits.NUM_SEQS),
            ("max_batched_tokens", "token budget per iteration", limits.BATCHED_TOKENS),
        )
    ),
    _k(
        "kv_link_gbs",
        "float",
        "--kv-link-gbs",
        None,
        "bandwidth of the link that moves KV caches from prefill to decode replicas, GB/s, shared FIFO by all "
        "transfers (default 25: a 200 Gb/s RDMA NIC)",
        minimum=0.0,
        metavar="GB/s",
        default=25.0,
    ),
    _k(
        "kv_link_latency_s",
        "float",
        "--kv-link-latency-s",
        None,
        "propagation latency of a KV transfer, s (default 1e-5)",
        minimum=0.0,
        limit=limits.DURATION_S,
        metavar="S",
        default=1e-5,
    ),
    _k(
        "kv_link_setup_s",
        "float",
        "--kv-link-setup-s",
        None,
        "per-transfer setup time on the KV link, s (default 0)",
        minimum=0.0,
        limit=limits.DURATION_S,
        metavar="S",
        default=0.0,
    ),
    _k(
        "kv_transfer_mode",
        "choice",
        "--kv-transfer-mode",
        None,
        "whole: a request's KV moves after its prefill (DistServe); layerwise: sent layer by layer while the "
        "prefill runs, only the last layer's share left after it (Splitwise) (default whole)",
        choices=TRANSFER_MODES,
        default="whole",
    ),
    _k(
        "decode_routing",
        "choice",
        "--decode-routing",
        None,
        "disaggregated serving: the decode replica a prefilled request's KV goes to: free-kv, the most free KV "
        "blocks, then the fewest requests (Splitwise-sim, Dynamo); free-slots, the most free sequence slots "
        "(max_num_seqs less its requests), then the most free blocks (DistServe, llm-d's queue scorer) "
        "(default free-kv)",
        choices=DECODE_ROUTINGS,
    ),
    # closed-loop clients (engine/closed_loop.py); a synthetic workload can declare them too (arrival closed-loop)
    _k(
        "concurrency",
        "int",
        "--concurrency",
        None,
        "closed-loop clients, as benchmark clients (vllm bench serve --max-concurrency, aiperf) run: C clients "
        "each send the next request of the trace when their previous one ends; the trace's arrival times are "
        "replaced by the simulated ones (default: the trace's arrivals)",
        minimum=1,
        metavar="C",
    ),
    _k(
        "think_time_s",
        "float",
        "--think-time",
        None,
        "closed loop: seconds a client waits after an answer before sending its next request (default 0)",
        minimum=0.0,
        limit=limits.DURATION_S,
        metavar="S",
    ),
    # GPU power caps and SM clocks (engine/clock.py): one of the two per GPU group
    _k(
        "power_cap_w",
        "float",
        "--power-cap-w",
        ("serving", "power_cap_w"),
        "GPU power cap, W (nvidia-smi -pl): each iteration runs at the highest SM clock whose power fits; "
        "between the GPU's minimum power limit and its TDP (default: none, the TDP)",
        minimum=0.0,
        metavar="W",
    ),
    _k(
        "sm_clock_mhz",
        "float",
        "--sm-clock-mhz",
        ("serving", "sm_clock_mhz"),
        "locked SM clock, MHz (nvidia-smi -lgc): compute slows by boost/clock, memory time stays; between the "
        "GPU's minimum and boost clocks (default: none, the boost clock)",
        minimum=0.0,
        metavar="MHZ",
    ),
    _k(
        "prefill_power_cap_w",
        "float",
        "--prefill-power-cap-w",
        None,
        "disaggregated serving: power cap of the prefill pool's GPUs, W (default: --power-cap-w)",
        minimum=0.0,
        metavar="W",
    ),
    _k(
        "decode_power_cap_w",
        "float",
        "--decode-power-cap-w",
        None,
        "disaggregated serving: power cap of the decode pool's GPUs, W (default: --power-cap-w)",
        minimum=0.0,
        metavar="W",
    ),
    # speculative decoding (engine/speculative.py); vLLM's --speculative-config as separate flags
    _k(
        "speculative_method",
        "choice",
        "--speculative-method",
        ("serving", "speculative", "method"),
        "speculative decoding: ngram (prompt lookup), draft (a smaller draft model, --draft-model), eagle or mtp "
        "(one extra decoder layer drafting); each decode step verifies k drafted tokens (default: off)",
        choices=SPEC_METHODS,
        metavar="METHOD",
    ),
    _k(
        "num_speculative_tokens",
        "int",
        "--num-speculative-tokens",
        ("serving", "speculative", "num_speculative_tokens"),
        "speculative decoding: tokens drafted per step, k (default 3)",
        minimum=1,
        metavar="K",
    ),
    _k(
        "spec_acceptance_rate",
        "float",
        "--spec-acceptance-rate",
        ("serving", "speculative", "acceptance_rate"),
        "speculative decoding: per-token acceptance probability in [0, 1) (default: assumed per method, "
        "ngram 0.5, draft 0.6, eagle 0.75, mtp 0.85; see README)",
        minimum=0.0,
        metavar="A",
    ),
    _k(
        "draft_model",
        "name",
        "--draft-model",
        ("serving", "speculative", "draft_model"),
        "speculative method draft: the draft model, a catalogue model smaller than --model (same tokenizer "
        "family not checked)",
        metavar="MODEL",
    ),
    _k(
        "exact",
        "switch",
        "--exact",
        ("serving", "exact"),
        "step every iteration instead of advancing decode runs in closed form (same results, slower)",
        default=False,
    ),
)
BY_FIELD: dict[str, Knob] = {k.field: k for k in KNOBS}


def default(name: str) -> Any:
    """The default of the knob ``name``."""
    return BY_FIELD[name].default


#: where an experiment's ``serving.prefix_cache`` options go: option name -> SimConfig field
PREFIX_OPTION_FIELDS: dict[str, str] = {
    k.path[-1]: k.field for k in KNOBS if k.path is not None and len(k.path) == 3 and k.path[:2] == _PC
}

_GROUP = re.compile(r"groups\[(\d+)\]\.(\w+)")


def flag_of(location: str) -> str:
    """An engine error's location (fields, ``a/b`` for several, ``groups[i].f``) as `kavier simulate` names it."""
    if _GROUP.fullmatch(location) or location.startswith("disaggregation."):
        return location
    return "/".join(
        f if f.startswith("--") else BY_FIELD[f].flag or f if f in BY_FIELD else f"--{f.replace('_', '-')}"
        for f in location.split("/")
    )


_POOL_ITEM = re.compile(r"(prefill_pools|decode_pools|pair_links)\[(\d+)\]")
_POOL_LISTS = {"prefill_pools": "prefill", "decode_pools": "decode", "pair_links": "links"}


def experiment_path(location: str) -> tuple:
    """An engine error's location as the path of the experiment field that sets it."""
    m = _GROUP.fullmatch(location)
    if m:
        return ("serving", "replica_groups", int(m.group(1)), m.group(2))
    if location.startswith("disaggregation."):
        path: list = ["serving"]
        for part in location.split("/")[0].split("."):
            m = _POOL_ITEM.fullmatch(part)  # decode_pools[1] -> decode, 1; pair_links[0] -> links, 0
            path += [_POOL_LISTS[m.group(1)], int(m.group(2))] if m else [part]
        return tuple(path)
    first = location.split("/")[0]
    knob = BY_FIELD.get(first)
    if knob is not None and knob.path is not None:
        return knob.path
    return ("serving",)
