"""Simulation outputs (CONTRACT.md): requests.parquet, summary.json, timeline.parquet.

The columns of both tables are declared once here (:data:`REQUESTS_COLUMNS`,
:data:`TIMELINE_COLUMNS`, as OpenDC declares its task and fragment columns). A
:class:`SimulationOutput` holds the three outputs in memory: built from a
simulation result, or read back from a folder; a run hands it to the OpenDC
export, the report and the plots, so nothing is read back from disk.

Outputs are staged in a hidden sibling folder and moved into place only when
every file is complete, so a failed run never leaves a half-written result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kavier_opendc import __version__
from kavier_opendc.base import arrow as pa  # pyarrow's names; its pa.array without pandas
from kavier_opendc.base.atomic import staged_output, write_json_atomic, write_parquet_atomic
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.energy import request_energy
from kavier_opendc.engine.itl import itl_of
from kavier_opendc.engine.kv_manager import BLOCK_SIZE
from kavier_opendc.engine.results import FINISHED, REJECTED
from kavier_opendc.specs.profiles import profile_summary

STATUS_NAMES = np.array(["pending", "finished", "rejected"])

#: requests.parquet: one row per trace row: column -> (Arrow type, meaning). session_id and n only when the trace
#: has sessions / samples per prompt, the PD_COLUMNS only in disaggregated runs.
REQUESTS_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "request_id": (pa.int64(), "the trace row"),
    "replica": (pa.int32(), "the replica the router chose"),
    "arrival_s": (pa.float64(), "arrival time, s"),
    "num_input_tokens": (pa.int64(), "prompt tokens"),
    "num_output_tokens": (pa.int64(), "output tokens (per sample)"),
    "cached_tokens": (pa.int64(), "prompt tokens served from the prefix cache"),
    "queue_s": (pa.float64(), "arrival to first scheduled, s"),
    "ttft_s": (pa.float64(), "time to first token, s (client's clock)"),
    "tpot_s": (pa.float64(), "time per output token after the first, s"),
    "e2e_s": (pa.float64(), "arrival to last token, s (client's clock)"),
    "finish_s": (pa.float64(), "time of the last token, s (engine's clock)"),
    "preemptions": (pa.int32(), "times the request was preempted"),
    "status": (pa.string(), "finished | rejected"),
    "session_id": (pa.int64(), "the trace's session (optional)"),
    "n": (pa.int64(), "samples per prompt (optional)"),
    # disaggregated prefill/decode runs only (engine/disaggregated.py)
    "prefill_replica": (pa.int32(), "the prefill replica (disaggregated runs only)"),
    "decode_replica": (pa.int32(), "the decode replica, -1 for none (disaggregated runs only)"),
    "transfer_start_s": (pa.float64(), "first KV byte sent to the decode replica, s (disaggregated runs only)"),
    "transfer_end_s": (pa.float64(), "last KV byte landed on the decode replica, s (disaggregated runs only)"),
    "decode_wait_s": (
        pa.float64(),
        "end of prefill to the transfer's submission (no decode replica had room), plus the time landed KV "
        "waited for a decode slot (max_num_seqs running), s (disaggregated runs only)",
    ),
    # carbon-aware deferral (engine/deferral.py), only for a trace with deadlines; arrival_s is then the
    # release to the router and the latencies count from it
    "submitted_s": (pa.float64(), "the trace's arrival, s (deferral only)"),
    "held_s": (pa.float64(), "held by the deferral policy before the router: arrival_s - submitted_s (deferral only)"),
    "deadline_s": (pa.float64(), "the trace's deadline, s; null: not deferrable (deferral only)"),
    "deadline_missed": (pa.bool_(), "finished after the deadline or never; null: not deferrable (deferral only)"),
    # energy attribution (engine/energy.py); `kavier run` rewrites energy_j and carbon_g from OpenDC's run
    "gpu_busy_s": (pa.float64(), "the request's share of its replicas' busy GPU time, GPU-seconds at full activity"),
    "energy_j": (pa.float64(), "energy attributed to the request, J (simulate: GPUs only, catalogue power)"),
    "carbon_g": (pa.float64(), "operational carbon attributed to the request, gCO2 (null without OpenDC)"),
    # inter-token gaps (engine/itl.py): one per streamed chunk after the first, pooled over a prompt's samples
    "itl_count": (pa.int64(), "gaps between streamed chunks (output tokens - 1, or blocks under multi-step)"),
    "itl_mean_s": (pa.float64(), "mean gap between streamed chunks, s (NaN without gaps)"),
    "itl_max_s": (pa.float64(), "longest gap between streamed chunks (the worst stall), s (NaN without gaps)"),
}
PD_COLUMNS = ("prefill_replica", "decode_replica", "transfer_start_s", "transfer_end_s", "decode_wait_s")
DEFERRAL_COLUMNS = ("submitted_s", "held_s", "deadline_s", "deadline_missed")
REQUESTS_OPTIONAL = ("session_id", "n", *PD_COLUMNS, *DEFERRAL_COLUMNS)
#: timeline.parquet: per replica, segments of constant activity: column -> (Arrow type, meaning)
TIMELINE_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "replica": (pa.int32(), "replica index (numbered group after group)"),
    "start_s": (pa.float64(), "segment start, s"),
    "end_s": (pa.float64(), "segment end, s"),
    "gpu_utilization": (pa.float64(), "power-relevant activity 0..1"),
    "batch_size": (pa.float64(), "mean sequences per iteration"),
    "kv_utilization": (pa.float64(), "KV memory in use, fraction of capacity"),
    "kv_cached": (pa.float64(), "KV memory held by cached prefixes, fraction of capacity"),
    "prefill_tokens": (pa.int64(), "prompt tokens computed in the segment"),
    "decode_tokens": (pa.int64(), "output tokens computed in the segment"),
    "prefill_share": (pa.float64(), "share of the segment's tokens that are prompt tokens"),
    "gpu": (pa.string(), "the replica's GPU type"),
    "tp": (pa.int32(), "the replica's tensor-parallel degree"),
    "model": (pa.string(), "the replica's model"),
}
#: what the OpenDC export needs of a timeline written by another version or by hand
TIMELINE_REQUIRED = ("replica", "start_s", "end_s", "gpu_utilization")
#: what the per-request export needs of requests.parquet
REQUESTS_REQUIRED = ("replica", "arrival_s", "num_input_tokens", "num_output_tokens")
FILES = ("requests.parquet", "timeline.parquet", "summary.json")


def stats(values: np.ndarray) -> dict:
    """mean/p50/p90/p99 (and max) of the finite values; nulls when there are none."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max())}


def client_latency(result) -> float:
    """Seconds a client sees beyond the engine's TTFT and e2e: the framework's serving path (0 offline)."""
    fw = result.config.framework_profile()
    return fw.client_latency_s if result.usage == "server" else 0.0


def requests_table(result) -> pa.Table:
    tr, r = result.trace, result.results
    n = len(tr)
    arrival = tr.arrival_s
    out = tr.num_output_tokens
    ttft = r.first_token - arrival
    e2e = r.finish - arrival
    c = client_latency(result)
    if c:  # latencies on the client's clock
        ttft = ttft + c
        e2e = e2e + c
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (r.finish - r.first_token) / np.maximum(out - 1, 1), np.nan)
    cols = {
        "request_id": pa.array(np.arange(n, dtype=np.int64)),
        "replica": pa.array(r.replica.astype(np.int32)),
        "arrival_s": pa.array(arrival),
        "num_input_tokens": pa.array(tr.num_input_tokens.astype(np.int64)),
        "num_output_tokens": pa.array(out.astype(np.int64)),
        "cached_tokens": pa.array(r.cached),
        "queue_s": pa.array(r.first_sched - arrival),
        "ttft_s": pa.array(ttft),
        "tpot_s": pa.array(tpot),
        "e2e_s": pa.array(e2e),
        "finish_s": pa.array(r.finish),
        "preemptions": pa.array(r.preemptions.astype(np.int32)),
        "status": pa.array(STATUS_NAMES[r.status].tolist(), type=pa.string()),
    }
    if tr.session_id is not None:
        cols["session_id"] = pa.array(np.asarray(tr.session_id, dtype=np.int64))
    if tr.n is not None:
        cols["n"] = pa.array(np.asarray(tr.n, dtype=np.int64))  # samples per prompt; each has num_output_tokens
    pd = result.extra.get("pd")
    if pd is not None:
        cols["prefill_replica"] = pa.array(pd.prefill_replica)
        cols["decode_replica"] = pa.array(pd.decode_replica)
        cols["transfer_start_s"] = pa.array(pd.transfer_start)
        cols["transfer_end_s"] = pa.array(pd.transfer_end)
        cols["decode_wait_s"] = pa.array(pd.decode_wait)
    dfr = result.extra.get("deferral")
    if dfr is not None and dfr.deferrable.any():
        import pyarrow  # masked arrays: pyarrow's own constructor (deferral runs only)

        ok = dfr.deferrable
        cols["submitted_s"] = pa.array(np.asarray(dfr.submitted_s, dtype=np.float64))
        cols["held_s"] = pa.array(np.asarray(dfr.held_s, dtype=np.float64))
        cols["deadline_s"] = pyarrow.array(np.where(ok, dfr.deadline_s, 0.0), type=pa.float64(), mask=~ok)
        cols["deadline_missed"] = pyarrow.array(dfr.missed, type=pa.bool_(), mask=~ok)
    energy, _ = simulated_energy(result)
    cols["gpu_busy_s"] = pa.array(r.busy)
    cols["energy_j"] = pa.array(energy)
    cols["carbon_g"] = pa.nulls(n, pa.float64())  # no carbon trace without OpenDC: unknown
    itl = itl_of(result)
    cols["itl_count"] = pa.array(itl.count)
    cols["itl_mean_s"] = pa.array(itl.mean)
    cols["itl_max_s"] = pa.array(itl.max)
    return pa.table(cols)


def simulated_energy(result) -> tuple[np.ndarray, dict]:
    """Simulator-side per-request GPU energy (J) and its totals: each replica's GPUs under the catalogue's
    linear power model, idle from 0 to the makespan (as OpenDC draws it), split by engine/energy.py's rules."""
    r = result.results
    reps = result.replicas
    idle = np.array([rep.cm.gpu.idle_power_w * rep.cm.tp for rep in reps], dtype=np.float64)
    dyn1 = np.array([rep.cm.gpu.max_power_w - rep.cm.gpu.idle_power_w for rep in reps], dtype=np.float64)
    rep_idx = r.replica.astype(np.int64)
    dyn_w = (
        np.where(rep_idx >= 0, dyn1[np.clip(rep_idx, 0, max(len(reps) - 1, 0))], 0.0)
        if reps
        else np.zeros(rep_idx.size)
    )
    span = result.makespan_s
    static_j = float(idle.sum()) * span
    finish = np.where(r.status == FINISHED, r.finish, np.nan)
    energy, _, dyn = request_energy(r.busy, dyn_w, result.trace.arrival_s, finish, static_j, span)
    return energy, {"dynamic_j": float(dyn.sum()), "static_j": static_j, "energy_j": float(energy.sum())}


def disaggregation_summary(result) -> dict:
    """summary.json's ``disaggregation`` section: each role (``prefill_pool``, ``decode_pool``: all its pools
    together), each pool (``pools``), the shared KV link (``link``) and each pool pair's own (``links``)."""
    pd = result.extra["pd"]
    topo = result.config.topology()
    makespan = result.makespan_s
    reps = {rep.idx: rep for rep in result.replicas}
    served = pd.decode_replica
    finished = result.results.status == FINISHED

    def activity(ids: list[int], role: str) -> dict:
        busy = sum(reps[i].busy_time for i in ids)
        of_pool = pd.prefill_replica if role == "prefill" else served
        return {
            "busy_fraction": busy / (len(ids) * makespan) if makespan > 0 else 0.0,
            "requests": int((finished & np.isin(of_pool, ids)).sum()),
        }

    roles = {}
    pools = []
    for role in ("prefill", "decode"):
        ids_all = pd.prefill_ids if role == "prefill" else pd.decode_ids
        of_role = topo.pools(role)
        roles[role] = {
            "replicas": sum(p.replicas for p in of_role),
            "gpu": "+".join(dict.fromkeys(p.gpu.name for p in of_role)),
            "tp": of_role[0].tp if len({p.tp for p in of_role}) == 1 else "+".join(str(p.tp) for p in of_role),
            "replica_ids": list(ids_all),
            "kv_capacity_blocks": min(reps[i].capacity for i in ids_all),
            **activity(ids_all, role),
        }
        for k, pool in enumerate(of_role):
            ids = [i for i in ids_all if pd.pool_of[i] == (role, k)]
            tl_peak = max(reps[i].peak_used / reps[i].capacity if reps[i].capacity else 0.0 for i in ids)
            pools.append(
                {
                    "name": topo.pool_name(role, k),
                    "role": role,
                    "index": k,
                    "gpu": pool.gpu.name,
                    "tp": pool.tp,
                    "replicas": pool.replicas,
                    "replica_ids": ids,
                    "kv_capacity_blocks": reps[ids[0]].capacity,
                    "kv_utilization_peak": float(tl_peak),
                    "max_num_seqs": reps[ids[0]].max_num_seqs,
                    "max_batched_tokens": reps[ids[0]].budget,
                    "busy_s": float(sum(reps[i].busy_time for i in ids)),
                    "gpu_utilization_mean": _activity_mean([reps[i] for i in ids]),
                    **activity(ids, role),
                }
            )
    moved = np.isfinite(pd.transfer_end)
    times = pd.transfer_end[moved] - pd.transfer_start[moved]
    wait = pd.decode_wait[moved]
    slot = pd.slot_wait[moved] if pd.slot_wait.size else np.zeros(0)
    # what the request waits for after its prefill (and any wait for room before the transfer): all of a whole
    # transfer, what is left of a layerwise one; a wait for a decode slot comes after the landing
    before = wait - slot if slot.any() else wait
    exposed = pd.transfer_end[moved] - result.results.first_token[moved] - before
    pairs = ["shared"] + [
        f"{topo.pool_name('prefill', pl.prefill)}->{topo.pool_name('decode', pl.decode)}" for pl in topo.pair_links
    ]
    return {
        "prefill_pool": roles["prefill"],
        "decode_pool": roles["decode"],
        "link": {
            **_link_stats(pd.link, makespan),
            "transfer_s_mean": float(times.mean()) if times.size else None,
            "transfer_s_p99": float(np.percentile(times, 99)) if times.size else None,
            "exposed_s_mean": float(exposed.mean()) if exposed.size else None,
        },
        "decode_wait_s": stats(wait),
        "pools": pools,
        "replica_pool": {str(i): topo.pool_name(*pd.pool_of[i]) for i in sorted(pd.pool_of)},
        "links": [{"pair": name, **_link_stats(lk, makespan)} for name, lk in zip(pairs, pd.links, strict=True)],
    }


def _activity_mean(reps: list) -> float:
    """The replicas' timeline activity (what OpenDC's power model gets), time-weighted, as the summary's
    ``gpu_utilization_mean``."""
    weighted = total = 0.0
    for rep in reps:
        d = np.asarray(rep.timeline.end) - np.asarray(rep.timeline.start)
        weighted += float(np.sum(d * np.asarray(rep.timeline.util)))  # pairwise sum: no BLAS, same bits anywhere
        total += float(d.sum())
    return weighted / total if total > 0 else 0.0


def _link_stats(link, makespan: float) -> dict:
    """One KV link's settings and traffic (summary.json's ``disaggregation.link`` and ``links``)."""
    return {
        "gbs": link.spec.gbs,
        "latency_s": link.spec.latency_s,
        "setup_s": link.spec.setup_s,
        "mode": link.spec.mode,
        "policy": "fifo",
        "transfers": link.transfers,
        "bytes_moved": link.bytes_moved,
        "busy_fraction": link.busy_s / makespan if makespan > 0 else 0.0,
        "energy_j_per_byte": link.spec.j_per_byte,
        "energy_j": link.bytes_moved * link.spec.j_per_byte,
    }


def kv_transfer_summary(result) -> dict:
    """summary.json's ``kv_transfer``: the energy of moving KV caches, over every link. Not in the GPUs' energy
    (nor in OpenDC's: it has no network power model here)."""
    links = result.extra["pd"].links
    return {
        "energy_j": float(sum(lk.bytes_moved * lk.spec.j_per_byte for lk in links)),
        "bytes_moved": float(sum(lk.bytes_moved for lk in links)),
        "transfers": int(sum(lk.transfers for lk in links)),
        "energy_source": "bytes moved x energy_j_per_byte of each link (default derived from the optics' power, "
        "see engine/kv_link.py DEFAULT_LINK_J_PER_BYTE)",
    }


def timeline_table(result) -> pa.Table:
    parts: dict[str, list] = {
        k: []
        for k in (
            "replica",
            "start_s",
            "end_s",
            "gpu_utilization",
            "batch_size",
            "kv_utilization",
            "kv_cached",
            "prefill_tokens",
            "decode_tokens",
        )
    }
    for rep in result.replicas:
        tl = rep.timeline
        m = len(tl.start)
        parts["replica"].append(np.full(m, rep.idx, dtype=np.int32))
        parts["start_s"].append(np.asarray(tl.start, dtype=np.float64))
        parts["end_s"].append(np.asarray(tl.end, dtype=np.float64))
        parts["gpu_utilization"].append(np.asarray(tl.util, dtype=np.float64))
        parts["batch_size"].append(np.asarray(tl.batch, dtype=np.float64))
        parts["kv_utilization"].append(np.asarray(tl.kv, dtype=np.float64))
        parts["kv_cached"].append(np.asarray(tl.cached, dtype=np.float64))
        parts["prefill_tokens"].append(np.asarray(tl.prefill, dtype=np.int64))
        parts["decode_tokens"].append(np.asarray(tl.decode, dtype=np.int64))
    cols = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
    toks = cols["prefill_tokens"] + cols["decode_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(toks > 0, cols["prefill_tokens"] / np.maximum(toks, 1), 0.0)
    m = len(cols["replica"])
    table = {k: pa.array(v) for k, v in cols.items()}
    table["prefill_share"] = pa.array(share)  # phase mix: share of the segment's tokens that are prompt tokens
    rep_of = cols["replica"]
    names = np.array([r.cm.gpu.name for r in result.replicas], dtype=object)
    tps = np.array([r.cm.tp for r in result.replicas], dtype=np.int32)
    models = np.array([r.cm.model.name for r in result.replicas], dtype=object)
    table["gpu"] = pa.array(names[rep_of].tolist() if m else [], type=pa.string())
    table["tp"] = pa.array(tps[rep_of] if m else np.array([], dtype=np.int32))
    table["model"] = pa.array(models[rep_of].tolist() if m else [], type=pa.string())
    return pa.table(table)


def prefix_summary(result) -> dict:
    """Prefix-cache statistics: hits per tier, evictions, prefill work saved."""
    reps = result.replicas
    policy = reps[0].policy if reps else "none"
    index = reps[0].index if reps else None
    cached = int(result.results.cached.sum(dtype=np.int64))
    flops_per_token = 2.0 * reps[0].cm.model.active_params if reps else 0.0
    out = {
        "policy": policy,
        "identity_source": index.source if index is not None else None,
        "scope": result.config.prefix_scope,
        "min_tokens": result.config.prefix_min_tokens,
        "hit_tokens_gpu": 0,
        "hit_tokens_host": 0,
        "evictions": 0,
        "host_evictions": 0,
        "prompt_hits": 0,
        "prefill_tokens_saved": cached,
        "prefill_flops_saved": cached * flops_per_token,
    }
    for r in reps:
        if r.pc is not None:
            out["hit_tokens_gpu"] += r.pc.hits_gpu_blocks * BLOCK_SIZE
            out["hit_tokens_host"] += r.pc.hits_host_blocks * BLOCK_SIZE
            out["evictions"] += r.pc.evictions
            out["host_evictions"] += r.pc.host_evictions
        if r.prompt_cache is not None:
            out["prompt_hits"] += r.prompt_cache.hits
            out["evictions"] += r.prompt_cache.evictions
    return out


def _speculative_summary(result) -> dict:
    """summary.json's ``speculative`` entry (only when on: the default output is unchanged): the setup, the
    model's mean tokens per verify step E, and the tokens per decoder-step the simulation emitted."""
    spec = getattr(result.replicas[0], "spec", None)
    if spec is None:
        return {}
    steps = sum(rep.spec_seq_steps for rep in result.replicas)
    tokens = sum(rep.spec_tokens for rep in result.replicas)
    return {
        "speculative": {
            **spec.summary(),
            "decode_steps": int(steps),
            "tokens_per_decode_step": tokens / steps if steps else 0.0,
        }
    }


def summary_dict(result) -> dict:
    tr, r, cfg = result.trace, result.results, result.config
    done = r.status == FINISHED
    arrival = tr.arrival_s
    makespan = result.makespan_s
    inp = tr.num_input_tokens[done].sum(dtype=np.int64)
    samples = np.asarray(tr.n, dtype=np.int64) if tr.n is not None else 1
    outp = (tr.num_output_tokens * samples)[done].sum(dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(
            tr.num_output_tokens > 1, (r.finish - r.first_token) / np.maximum(tr.num_output_tokens - 1, 1), np.nan
        )
    busy_weighted = 0.0
    total_time = 0.0
    kv_peak = 0.0
    for rep in result.replicas:
        tl = rep.timeline
        d = np.asarray(tl.end) - np.asarray(tl.start)
        busy_weighted += float(np.sum(d * np.asarray(tl.util)))  # pairwise sum: no BLAS, same bits anywhere
        total_time += float(d.sum())
        kv_peak = max(kv_peak, rep.peak_used / rep.capacity if rep.capacity else 0.0)
    prompt_all = tr.num_input_tokens.sum(dtype=np.int64)
    cached = r.cached.sum(dtype=np.int64)
    wall = result.wall_s
    groups = cfg.replica_groups()
    fw = cfg.framework_profile()
    c = client_latency(result)
    tr_rep = r.replica
    return {
        "num_requests": int(len(tr)),
        "num_finished": int(done.sum()),
        "num_rejected": int((r.status == REJECTED).sum()),
        # requests longer than the model's context window (a real server would refuse them;
        # --max-model-len makes the simulator refuse them too)
        "num_over_model_context": int(
            sum(
                int(((tr.num_input_tokens + tr.num_output_tokens)[tr_rep == rep.idx] > rep.cm.model.max_context).sum())
                for rep in result.replicas
            )
        ),
        "makespan_s": makespan,
        "request_throughput_per_s": float(done.sum() / makespan) if makespan > 0 else 0.0,
        "output_tokens_per_s": float(outp / makespan) if makespan > 0 else 0.0,
        "total_tokens_per_s": float((inp + outp) / makespan) if makespan > 0 else 0.0,
        "input_tokens": int(inp),
        "output_tokens": int(outp),
        "ttft_s": stats(r.first_token - arrival + c if c else r.first_token - arrival),
        "tpot_s": stats(tpot),
        "e2e_s": stats(r.finish - arrival + c if c else r.finish - arrival),
        "queue_s": stats(r.first_sched - arrival),
        # every gap between streamed chunks of every request, pooled (as vLLM's benchmark_serving reports ITL)
        "itl_s": itl_of(result).pooled,
        "prefix_cache_hit_ratio": float(cached / prompt_all) if prompt_all else 0.0,
        "cached_tokens": int(cached),
        "prefix_cache": prefix_summary(result),
        "preemptions": int(r.preemptions.sum()),
        # the timeline's power-relevant activity (what OpenDC's power model gets), time-weighted
        "gpu_utilization_mean": busy_weighted / total_time if total_time > 0 else 0.0,
        # the load a user means by utilisation: the fraction of the makespan the GPUs were computing
        "gpu_busy_fraction_mean": (sum(rep.busy_time for rep in result.replicas) / (len(result.replicas) * makespan))
        if makespan > 0
        else 0.0,
        "kv_utilization_peak": kv_peak,
        "config": {
            "model": groups[0].model.name,
            "gpu": groups[0].gpu.name,
            "replicas": len(result.replicas),
            "tp": groups[0].tp,
            "replica_groups": [
                {"model": g.model.name, "gpu": g.gpu.name, "replicas": g.replicas, "tp": g.tp} for g in groups
            ],
            # the limits of the first group's replicas (each replica's own are under "replicas"); "given", or
            # vLLM v1's defaults for that GPU and usage
            "max_num_seqs": result.replicas[0].max_num_seqs,
            "max_batched_tokens": result.replicas[0].budget,
            "usage": result.usage,
            "batch_limits": (
                "given"
                if cfg.max_num_seqs is not None and cfg.max_batched_tokens is not None
                else f"vLLM v1 defaults ({result.usage})"
                if fw.batch_defaults == "vllm-v1"
                else f"{fw.name} defaults ({result.usage})"
            ),
            "framework": fw.summary(),
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "kv_cache": "on" if cfg.kv_cache else "off",
            "prefix_cache": cfg.prefix_cache,
            "prefix_cache_capacity_tokens": cfg.prefix_capacity_tokens,
            "prefix_cache_capacity_prompts": cfg.prefix_capacity_prompts,
            "host_cache_gb": cfg.host_memory_gb,
            "router": cfg.router,
            "seed": cfg.seed,
            "mode": "exact" if cfg.exact else "fast",
            "kv_capacity_blocks_per_replica": result.capacity_blocks,
            "kv_capacity_tokens_per_replica": result.capacity_blocks * BLOCK_SIZE,
            "max_model_len": cfg.max_model_len,
            "efficiency": profile_summary(result.replicas[0].cm.eff),
            **_moe_parallel_summary(result.replicas[0].cm),
            **_speculative_summary(result),
        },
        "replicas": [
            {
                "replica": rep.idx,
                "model": rep.cm.model.name,
                "gpu": rep.cm.gpu.name,
                "tp": rep.cm.tp,
                "busy_s": rep.busy_time,
                "busy_fraction": rep.busy_time / makespan if makespan > 0 else 0.0,
                "iterations": rep.iterations,
                "preemptions": rep.preemptions,
                "max_num_seqs": rep.max_num_seqs,
                "max_batched_tokens": rep.budget,
                "kv_capacity_blocks": rep.capacity,
                "kv_utilization_peak": rep.peak_used / rep.capacity if rep.capacity else 0.0,
                # a capped replica only (engine/clock.py): what OpenDC's curved power models top out at
                **({"power_cap_w": rep.cm.power_cap_w} if getattr(rep.cm, "power_cap_w", None) is not None else {}),
            }
            for rep in result.replicas
        ],
        "trace": {"source": str(tr.source), "format": tr.format, "offline_batch": not getattr(tr, "timed", True)},
        # closed-loop clients only (open-loop summaries are unchanged): the arrivals are the simulated ones
        **(
            {
                "arrival": {
                    "process": "closed-loop",
                    "concurrency": result.extra["closed_loop"].concurrency,
                    "think_time_s": result.extra["closed_loop"].think_time_s,
                }
            }
            if "closed_loop" in result.extra
            else {}
        ),
        **({"disaggregation": disaggregation_summary(result)} if "pd" in result.extra else {}),
        **({"kv_transfer": kv_transfer_summary(result)} if "pd" in result.extra else {}),
        # carbon-aware deferral (engine/deferral.py): only for a trace with deadlines or a policy other than none
        **({"deferral": result.extra["deferral"].summary} if "deferral" in result.extra else {}),
        "engine": {
            "version": __version__,
            "iterations": int(sum(rep.iterations for rep in result.replicas)),
            "wall_s": wall,
            "requests_per_s": float(len(tr) / wall) if wall > 0 else None,
        },
    }


def batch_limits_origin(config: dict) -> str:
    """Where a run's batch limits came from, for people: "given" or "vLLM v1 <usage> defaults"."""
    origin = config.get("batch_limits", "given")
    if origin == "given":
        return "given"
    if origin.startswith("vLLM v1"):
        return f"vLLM v1 {config.get('usage')} defaults"
    return origin


@dataclass
class SimulationOutput:
    """The three outputs of a simulation, in memory; ``folder`` is where they are (or were written)."""

    summary: dict
    requests: pa.Table | None  # None: a folder without requests.parquet (the export may not need it)
    timeline: pa.Table
    folder: Path | None = None
    _frames: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_result(cls, result) -> SimulationOutput:
        return cls(summary_dict(result), requests_table(result), timeline_table(result))

    @classmethod
    def read(cls, folder: str | Path) -> SimulationOutput:
        """The outputs in ``folder`` (as `kavier simulate` writes them), each with a clear error when it is
        missing or unreadable; requests.parquet may be absent."""
        folder = Path(folder)
        timeline = _read_table(folder / "timeline.parquet", "timeline not found")
        requests = (
            _read_table(folder / "requests.parquet", "requests not found")
            if (folder / "requests.parquet").is_file()
            else None
        )
        summary: Any = {}
        sp = folder / "summary.json"
        if sp.is_file():
            try:
                summary = json.loads(sp.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise KavierInputError(f"invalid JSON ({exc})", source=str(sp)) from None
        if not isinstance(summary, dict):
            raise KavierInputError(
                f"the document is {type(summary).__name__}, not an object",
                source=str(sp),
                expected="summary.json written by `kavier simulate`",
            )
        return cls(summary, requests, timeline, folder)

    def write(self, folder: str | Path) -> None:
        """Write the three files into ``folder`` (staged, all or nothing)."""
        assert self.requests is not None, "a simulation's own output has its requests"
        with staged_output(Path(folder)) as stage:
            write_parquet_atomic(stage / "requests.parquet", self.requests)
            write_parquet_atomic(stage / "timeline.parquet", self.timeline)
            write_json_atomic(stage / "summary.json", self.summary)
        self.folder = Path(folder)

    def path(self, name: str) -> str:
        """How errors name one of the outputs: its file, or the in-memory table."""
        return str(self.folder / name) if self.folder is not None else f"<simulation>/{name}"

    def requests_frame(self):
        """requests as a pandas DataFrame (converted once; callers must not change it)."""
        if "requests" not in self._frames:
            if self.requests is None:
                raise KavierInputError(
                    "requests not found",
                    source=self.path("requests.parquet"),
                    expected="a simulation output folder written by `kavier simulate`",
                )
            self._frames["requests"] = self.requests.to_pandas()
        return self._frames["requests"]

    def timeline_frame(self):
        """timeline as a pandas DataFrame (converted once; callers must not change it)."""
        if "timeline" not in self._frames:
            self._frames["timeline"] = self.timeline.to_pandas()
        return self._frames["timeline"]


def _read_table(path: Path, not_found: str) -> pa.Table:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise KavierInputError(
            not_found, source=str(path), expected="a simulation output folder written by `kavier simulate`"
        )
    try:
        return pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same input error
        raise KavierInputError(f"cannot read Parquet ({exc})", source=str(path)) from None


def write_simulation(result, out_dir: Path) -> dict:
    """Write the three simulation outputs into ``out_dir`` (staged, all or nothing); returns the summary."""
    output = SimulationOutput.from_result(result)
    output.write(out_dir)
    return output.summary


def _moe_parallel_summary(cm) -> dict:
    """The MoE layout of a run with expert or attention data parallelism (absent otherwise: a run without
    them writes what it always wrote)."""
    t = cm.timer
    if not t.split:
        return {}
    out: dict = {
        "moe_parallel": {
            "expert_parallel": t.ep > 1,
            "ep_size": t.ep,
            "data_parallel_size": t.dp,
            "attention_tp": t.attn_tp,
            "expert_imbalance": t.imbalance,
            "expert_imbalance_source": "given"
            if t.imbalance != 1.0
            else "assumed uniform routing (no measured router skew in the shared data)",
        }
    }
    if t.ep > 1:
        out["moe_parallel"]["all_to_all"] = (
            f"derived from datasheet, uncalibrated: {t.a2a_link_gbs:g} GB/s per direction "
            f"({'NVLink' if t.tp <= 8 else 'inter-node port'}) + 10 us per dispatch/combine"
        )
    return out
