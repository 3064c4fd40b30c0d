"""An experiment's serving setup as the engine's SimConfig: the one place that adapts experiments to the engine.

Which experiment field sets which SimConfig field is declared once, with the
knob, in :mod:`kavier_opendc.engine.knobs`; this module only assembles them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine import knobs
from kavier_opendc.experiments.serving import Serving

if TYPE_CHECKING:
    from kavier_opendc.engine.simulator import SimConfig

#: serving.* options passed to SimConfig as they are (the prefix-cache options go through PREFIX_OPTION_FIELDS)
_DIRECT = (
    "max_num_seqs",
    "max_batched_tokens",
    "gpu_memory_utilization",
    "usage",
    "num_kv_blocks",
    "max_model_len",
    "allow_long_max_model_len",
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
#: limits a replica group may set for itself
GROUP_LIMIT_KEYS = ("max_num_seqs", "max_batched_tokens", "gpu_memory_utilization")


def sim_config(serving: Serving, groups: list, seed: int, catalog) -> SimConfig:
    """The engine's :class:`SimConfig` for an experiment's normalised ``serving`` options and replica
    ``groups`` (:class:`~kavier_opendc.experiments.experiment.GroupSpec`), its seed and catalogue.

    One replica group maps onto SimConfig's model/gpu/replicas/tp; several use its ``groups``. Per-group
    limits must equal the serving-wide ones when there are several groups (the engine applies one setting).
    """
    # the engine module (numpy, the trace reader's pandas) is imported when a config is built, not when an
    # experiment file is only checked: `kavier validate` stays quick
    from kavier_opendc.engine.simulator import ReplicaGroup, SimConfig

    g0 = groups[0]
    for i, g in enumerate(groups if serving.disaggregation is None else ()):
        for k, v in g.limits.items():
            if v != serving.get(k) and len(groups) > 1:
                raise KavierInputError(
                    f"per-group {k} ({v}) differs from serving.{k} "
                    f"({'vLLM v1 default' if serving.get(k) is None else serving.get(k)}); this engine version applies "
                    "one setting to every group",
                    location=f"serving.replica_groups[{i}].{k}",
                    expected=f"the same value as serving.{k}, or leave it out",
                )
    kwargs: dict[str, Any] = {k: serving.get(k) for k in _DIRECT if serving.get(k) is not None}
    kwargs.update({k: g0.limits[k] for k in GROUP_LIMIT_KEYS if g0.limits.get(k) is not None})
    kwargs.update(
        model=g0.model,
        gpu=g0.gpu,
        replicas=g0.replicas,
        tp=g0.tp,
        kv_cache=bool(serving.kv_cache),
        seed=seed,
        exact=bool(serving.exact),
        usage=serving.get("usage") or "auto",
        allow_long_max_model_len=bool(serving.get("allow_long_max_model_len")),
        framework=catalog.framework(serving.get("framework"), usage=serving.get("usage")),
    )
    for option, value in serving.prefix_cache.items():
        if option == "policy":
            if value is not None:
                kwargs["prefix_cache"] = value
            continue
        if option not in knobs.PREFIX_OPTION_FIELDS:
            raise KavierInputError(
                f"the prefix-cache option {option!r} is not supported by this engine version",
                location=f"serving.prefix_cache.{option}",
                expected="one of policy, " + ", ".join(knobs.PREFIX_OPTION_FIELDS),
            )
        kwargs[knobs.PREFIX_OPTION_FIELDS[option]] = math.inf if value == "inf" else value
    if serving.speculative is not None:  # serving.speculative.* -> the knobs whose path it is
        for knob in knobs.KNOBS:
            if knob.path is not None and knob.path[:2] == ("serving", "speculative"):
                value = serving.speculative.get(knob.path[2])
                if value is not None:
                    kwargs[knob.field] = value
        draft = kwargs.get("draft_model")
        if isinstance(draft, str):  # looked up in the experiment's catalogues
            try:
                kwargs["draft_model"] = catalog.model(draft)
            except KavierInputError as exc:
                raise exc.relocated("serving.speculative.draft_model") from None
    if serving.disaggregation is not None:
        kwargs["disaggregation"] = _topology(serving.disaggregation, groups)
        kwargs["replicas"] = sum(g.replicas for g in groups)
    elif len(groups) > 1:
        kwargs["groups"] = [ReplicaGroup(g.model, g.gpu, g.replicas, g.tp) for g in groups]
        kwargs["replicas"] = sum(g.replicas for g in groups)
    return SimConfig(**kwargs)


def _topology(spec: dict, groups: list):
    """The engine's disaggregated topology from ``serving.disaggregation`` and its pools' groups (prefill pools,
    then decode pools, in the file's order)."""
    from kavier_opendc.engine.kv_link import Disaggregation, LinkSpec, PairLink, Pool

    defaults = LinkSpec()

    def link_of(d: dict, mode: str) -> LinkSpec:
        return LinkSpec(
            d.get("gbs", defaults.gbs),
            d.get("latency_s", defaults.latency_s),
            d.get("setup_s", defaults.setup_s),
            mode,
            d.get("energy_j_per_byte"),
        )

    built: dict[str, list] = {}
    at = 0
    for role in ("prefill", "decode"):
        given = spec[role]
        of_role = given if isinstance(given, list) else [given]
        built[role] = []
        for pool in of_role:
            g = groups[at]
            at += 1
            name = pool.get("name") if isinstance(given, list) else None
            built[role].append(
                Pool(
                    g.model,
                    g.gpu,
                    g.replicas,
                    g.tp,
                    pool.get("num_kv_blocks"),
                    name or None,
                    pool.get("max_num_seqs"),
                    pool.get("max_batched_tokens"),
                )
            )
    link = spec.get("link") or {}
    mode = link.get("mode", defaults.mode)
    pairs = tuple(PairLink(int(x["prefill"]), int(x["decode"]), link_of(x, mode)) for x in spec.get("links") or [])
    return Disaggregation(
        built["prefill"][0],
        built["decode"][0],
        link_of(link, mode),
        tuple(built["prefill"][1:]),
        tuple(built["decode"][1:]),
        pairs,
        spec.get("decode_routing", "free-kv"),
    )
