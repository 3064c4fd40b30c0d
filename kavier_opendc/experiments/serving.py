"""An experiment's ``serving`` section, normalised: a typed record with every option filled in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kavier_opendc.engine import knobs

#: the serving options an experiment sets directly (the prefix cache is its own section), with their defaults
OPTIONS = (
    "framework",
    "max_num_seqs",
    "max_batched_tokens",
    "usage",
    "gpu_memory_utilization",
    "num_kv_blocks",
    "max_model_len",
    "allow_long_max_model_len",
    "kv_cache",
    "router",
    "exact",
    "weight_dtype",
    "kv_cache_dtype",
    "weight_only_fallback",
    "expert_parallel",
    "data_parallel_size",
    "expert_imbalance",
    "enable_chunked_prefill",
    "async_scheduling",
    "power_cap_w",
    "sm_clock_mhz",
)
DEFAULTS: dict[str, Any] = {name: knobs.default(name) for name in OPTIONS}


@dataclass(frozen=True)
class Serving:
    """The serving options of an experiment (defaults filled in; values as written where the schema or the
    checks have reported them wrong)."""

    framework: Any = DEFAULTS["framework"]
    max_num_seqs: Any = None
    max_batched_tokens: Any = None
    usage: Any = DEFAULTS["usage"]
    gpu_memory_utilization: Any = DEFAULTS["gpu_memory_utilization"]
    num_kv_blocks: Any = None
    max_model_len: Any = None
    allow_long_max_model_len: Any = DEFAULTS["allow_long_max_model_len"]
    kv_cache: bool = DEFAULTS["kv_cache"]
    router: Any = DEFAULTS["router"]
    exact: Any = DEFAULTS["exact"]
    weight_dtype: Any = DEFAULTS["weight_dtype"]
    kv_cache_dtype: Any = DEFAULTS["kv_cache_dtype"]
    weight_only_fallback: Any = DEFAULTS["weight_only_fallback"]
    expert_parallel: Any = DEFAULTS["expert_parallel"]
    data_parallel_size: Any = DEFAULTS["data_parallel_size"]
    expert_imbalance: Any = DEFAULTS["expert_imbalance"]
    enable_chunked_prefill: Any = DEFAULTS["enable_chunked_prefill"]  # None: the framework's
    async_scheduling: Any = DEFAULTS["async_scheduling"]  # None: the framework's
    power_cap_w: Any = None  # GPU power cap, W (engine/clock.py); None: the TDP
    sm_clock_mhz: Any = None  # locked SM clock, MHz; None: the boost clock
    prefix_cache: dict = field(default_factory=dict)  # {"policy": ..., option: value}; {} = the engine's default
    disaggregation: dict | None = None  # {prefill: pool, decode: pool, link: {...}} as written; None: co-located
    speculative: dict | None = None  # {method, num_speculative_tokens, acceptance_rate, draft_model}; None: off

    def get(self, name: str) -> Any:
        """The option called ``name`` (a group may override the limits; see GROUP_LIMIT_KEYS)."""
        return getattr(self, name)
