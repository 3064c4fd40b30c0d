"""An experiment's serving setup as the engine's SimConfig: the one place that adapts experiments to the engine."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from kavier_opendc.base.errors import KavierInputError

if TYPE_CHECKING:
    from kavier_opendc.experiments.experiment import Experiment

#: experiment prefix-cache knob -> SimConfig field names to try, in order
PREFIX_KNOB_FIELDS = {"min_prompt_tokens": ("prefix_min_tokens",), "capacity_prompts": ("prefix_capacity_prompts",),
                      "scope": ("prefix_scope",), "capacity_tokens": ("prefix_capacity_tokens",),
                      "host_memory_gb": ("host_memory_gb",)}


def sim_config_from_experiment(exp: Experiment):
    """The engine's :class:`SimConfig` for an experiment.

    One replica group maps onto SimConfig's model/gpu/replicas/tp; several
    groups use the engine's ``groups`` (``ReplicaGroup``) when the engine
    has them. Prefix-cache knobs are passed to SimConfig fields named
    ``prefix_cache_<knob>`` (or ``<knob>``); a knob the engine does not know
    is an error naming ``serving.prefix_cache.<knob>``.
    """
    from kavier_opendc.engine import simulator as S

    srv = exp.serving
    groups = exp.groups
    fields = {f.name for f in dataclasses.fields(S.SimConfig)}
    g0 = groups[0]
    for i, g in enumerate(groups):
        for k, v in g.limits.items():
            if v != srv[k] and len(groups) > 1:
                raise KavierInputError(
                    f"per-group {k} ({v}) differs from serving.{k} "
                    f"({'vLLM v1 default' if srv[k] is None else srv[k]}); this engine version applies one "
                    "setting to every group", location=f"serving.replica_groups[{i}].{k}",
                    expected=f"the same value as serving.{k}, or leave it out")
    limits = {k: g0.limits.get(k, srv[k]) for k in ("max_num_seqs", "max_batched_tokens",
                                                     "gpu_memory_utilization")}
    kwargs: dict[str, Any] = dict(model=g0.model, gpu=g0.gpu, replicas=g0.replicas, tp=g0.tp,
                                  kv_cache=bool(srv["kv_cache"]), router=srv["router"], seed=exp.seed,
                                  exact=bool(srv["exact"]), usage=srv.get("usage") or "auto",
                                  framework=exp.catalog.framework(srv.get("framework")), **limits)
    if srv.get("num_kv_blocks") is not None:
        kwargs["num_kv_blocks"] = srv["num_kv_blocks"]
    if srv.get("max_model_len") is not None:
        kwargs["max_model_len"] = srv["max_model_len"]
    if srv.get("allow_long_max_model_len"):
        kwargs["allow_long_max_model_len"] = True
    pc = dict(srv["prefix_cache"])
    if pc.get("policy") is not None:
        kwargs["prefix_cache"] = pc["policy"]
    pc.pop("policy", None)
    for knob, value in pc.items():
        if value == "inf":
            value = math.inf
        for cand in PREFIX_KNOB_FIELDS.get(knob, ()) + (f"prefix_cache_{knob}", f"prefix_{knob}", knob):
            if cand in fields:
                kwargs[cand] = value
                break
        else:
            raise KavierInputError(f"the prefix-cache option {knob!r} is not supported by this engine version",
                                   location=f"serving.prefix_cache.{knob}", expected="policy only")
    if len(groups) > 1:
        if "groups" not in fields or not hasattr(S, "ReplicaGroup"):
            raise KavierInputError(f"{len(groups)} replica groups: heterogeneous replica groups are not yet "
                                   "supported by this engine version", location="serving.replica_groups",
                                   expected="one group")
        kwargs["groups"] = [S.ReplicaGroup(g.model, g.gpu, g.replicas, g.tp) for g in groups]
        kwargs["replicas"] = sum(g.replicas for g in groups)
    return S.SimConfig(**kwargs)
