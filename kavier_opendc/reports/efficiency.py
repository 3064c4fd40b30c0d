"""Efficiency metrics: energy, carbon and money per token, goodput under SLOs.

Pure functions; every formula is in the docstring and in :data:`DEFINITIONS`
(copied into report.json and report.md).

Conventions
-----------
* Energy comes from OpenDC in joules; 1 Wh = 3600 J (never 1000 J, the Kavier
  prototype's unit error).
* *Tokens* are the input (prompt) plus output tokens of the **finished**
  requests; prompt tokens served from the prefix cache count, because the
  user got them processed. The ``_output`` variants count output tokens only.
* The time window of throughput and GPU cost is the simulated makespan: from
  the first arrival (t = 0) to the last token of the last request. OpenDC's
  hosts draw power over the same window (rounded to milliseconds).
* GPU cost counts the GPUs that serve the replicas (replicas x tp, per GPU
  type) for the whole window at their price per GPU-hour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # frames come in from the caller; importing pandas here would slow every command
    import pandas as pd


@dataclass(frozen=True)
class LatencyTargets:
    """Per-request latency targets (an experiment's ``slo``): a finished request meets them when its TTFT
    and its TPOT are within the targets given; None sets no target."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def given(self) -> bool:
        return self.ttft_s is not None or self.tpot_s is not None

    def to_dict(self) -> dict[str, float | None]:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


@dataclass(frozen=True)
class Prices:
    """What a run costs: the price of a GPU-hour per GPU type, of a kWh (None: electricity not priced)."""

    gpu_hour: Mapping[str, float] = field(default_factory=dict)
    currency: str = "USD"
    electricity_per_kwh: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "gpu_hour": dict(self.gpu_hour),
            "electricity_per_kwh": self.electricity_per_kwh,
        }


J_PER_WH = 3600.0
MILLION = 1e6

DEFINITIONS: dict[str, str] = {
    "tokens": "input (prompt) + output tokens of finished requests; prompt tokens served from the prefix cache count",
    "tokens_output": "output tokens of finished requests",
    "window_s": "the simulated makespan: first arrival (t = 0) to the last token of the last request",
    "throughput_mtokens_per_s": "tokens / window_s / 1e6",
    "energy_wh": "OpenDC's energy of all hosts (GPUs + CPUs, idle included) in J / 3600",
    "wh_per_mtoken": "energy_wh / (tokens / 1e6)",
    "wh_per_mtoken_output": "energy_wh / (tokens_output / 1e6)",
    "gco2_per_mtoken": "carbon_g / (tokens / 1e6), carbon_g = OpenDC's emissions (energy x grid "
    "carbon intensity of each interval)",
    "gco2_per_mtoken_output": "carbon_g / (tokens_output / 1e6)",
    "gpu_hours": "sum over GPU types of the GPUs counted x window_s / 3600; the GPUs counted are those whose "
    "energy is counted (gpu_counts_basis): every GPU of the datacenter when OpenDC ran (idle ones "
    "draw power and are paid for), the GPUs serving the replicas (replicas x tp) without OpenDC",
    "gpu_cost": "sum over GPU types of GPUs x window_s / 3600 x price per GPU-hour",
    "electricity_cost": "energy_wh / 1000 x electricity price per kWh (0 when no price is given)",
    "total_cost": "gpu_cost + electricity_cost",
    "cost_per_mtoken": "total_cost / (tokens / 1e6)",
    "cost_per_mtoken_output": "total_cost / (tokens_output / 1e6)",
    "slo_met": "a finished request with TTFT <= slo.ttft_s and TPOT <= slo.tpot_s (TPOT of a one-token "
    "answer is undefined and passes; a target that is not given is not checked)",
    "goodput_rps": "requests meeting the SLOs / window_s",
    "goodput_tokens_per_s": "input + output tokens of requests meeting the SLOs / window_s",
    "slo_attainment": "requests meeting the SLOs / all requests (rejected requests count as misses)",
    "cost_per_mtoken_per_s": "Kavier paper's financial efficiency: total_cost / throughput_mtokens_per_s "
    "(currency per million tokens per second)",
    "wh_per_mtoken_per_s": "Kavier paper's energy efficiency: energy_wh / throughput_mtokens_per_s "
    "(Wh per million tokens per second)",
    "kgco2_per_mtoken_per_s": "Kavier paper's carbon efficiency: carbon_g / 1000 / throughput_mtokens_per_s "
    "(kgCO2 per million tokens per second)",
    "pue": "facility energy / IT energy (datacenter.pue; 1 when not given)",
    "facility_energy_wh": "energy_wh x PUE (a PUE trace: per OpenDC interval)",
    "facility_wh_per_mtoken": "facility_energy_wh / (tokens / 1e6)",
    "operational_gco2": "carbon_g x PUE (per interval for a PUE trace): the facility's operational emissions",
    "embodied_gco2": "every device's embodied kgCO2e x 1000 x OpenDC's run duration / its lifetime "
    "(opendc/overheads.py)",
    "operational_gco2_per_mtoken": "operational_gco2 / (tokens / 1e6)",
    "embodied_gco2_per_mtoken": "embodied_gco2 / (tokens / 1e6)",
    "total_gco2_per_mtoken": "(operational_gco2 + embodied_gco2) / (tokens / 1e6)",
}


def _per(total: float | None, denominator: float | None) -> float | None:
    """total / denominator, or None when either is missing or the denominator is 0."""
    if total is None or denominator is None or denominator == 0 or not math.isfinite(denominator):
        return None
    return float(total) / float(denominator)


def joules_to_wh(joules: float) -> float:
    """Wh = J / 3600."""
    return float(joules) / J_PER_WH


def wh_per_mtoken(energy_wh: float | None, tokens: float) -> float | None:
    """Energy per million tokens: ``energy_wh / (tokens / 1e6)`` (Wh/Mtoken)."""
    return _per(energy_wh, tokens / MILLION)


def gco2_per_mtoken(carbon_g: float | None, tokens: float) -> float | None:
    """Emissions per million tokens: ``carbon_g / (tokens / 1e6)`` (gCO2/Mtoken)."""
    return _per(carbon_g, tokens / MILLION)


def gpu_hours(gpu_counts: Mapping[str, int], window_s: float) -> dict[str, float]:
    """GPU-hours per GPU type: ``gpus x window_s / 3600``."""
    return {name: n * window_s / 3600.0 for name, n in gpu_counts.items()}


def gpu_cost(gpu_counts: Mapping[str, int], window_s: float, price_per_gpu_hour: Mapping[str, float]) -> float:
    """GPU rental cost: ``sum over types of gpus x window_s / 3600 x price``."""
    return float(sum(h * float(price_per_gpu_hour[name]) for name, h in gpu_hours(gpu_counts, window_s).items()))


def electricity_cost(energy_wh: float | None, price_per_kwh: float | None) -> float:
    """``energy_wh / 1000 x price_per_kwh`` (0 without a price or energy)."""
    if energy_wh is None or price_per_kwh is None:
        return 0.0
    return float(energy_wh) / 1000.0 * float(price_per_kwh)


def cost_per_mtoken(total_cost: float, tokens: float) -> float | None:
    """``total_cost / (tokens / 1e6)`` (currency per million tokens)."""
    return _per(total_cost, tokens / MILLION)


def per_mtoken_per_s(total: float | None, tokens: float, window_s: float) -> float | None:
    """The Kavier paper's efficiency form: a total divided by the throughput in
    million tokens per second, ``total / (tokens / window_s / 1e6)``."""
    if window_s is None or window_s <= 0:
        return None
    return _per(total, tokens / window_s / MILLION)


def slo_mask(
    ttft_s: np.ndarray, tpot_s: np.ndarray, finished: np.ndarray, ttft_target: float | None, tpot_target: float | None
) -> np.ndarray:
    """Requests meeting both SLOs: finished, ``ttft <= ttft_target`` and
    ``tpot <= tpot_target`` (a NaN TPOT, i.e. a one-token answer, passes; a
    None target is not checked)."""
    ok = np.asarray(finished, dtype=bool).copy()
    ttft = np.asarray(ttft_s, dtype=np.float64)
    tpot = np.asarray(tpot_s, dtype=np.float64)
    if ttft_target is not None:
        ok &= np.isfinite(ttft) & (ttft <= ttft_target)
    if tpot_target is not None:
        ok &= np.isnan(tpot) | (tpot <= tpot_target)
    return ok


def goodput(requests: pd.DataFrame, window_s: float, slo: LatencyTargets) -> dict[str, Any]:
    """Goodput and SLO attainment from requests.parquet.

    ``goodput_rps`` = requests meeting the SLOs / window_s;
    ``goodput_tokens_per_s`` = their input + output tokens / window_s;
    ``slo_attainment`` = requests meeting the SLOs / all requests.
    Without any SLO target every value is None.
    """
    ttft_t, tpot_t = slo.ttft_s, slo.tpot_s
    if ttft_t is None and tpot_t is None:
        return {"slo_met_requests": None, "goodput_rps": None, "goodput_tokens_per_s": None, "slo_attainment": None}
    finished = (
        (requests["status"] == "finished").to_numpy()
        if "status" in requests
        else np.isfinite(requests["finish_s"].to_numpy(np.float64))
    )
    ok = slo_mask(
        requests["ttft_s"].to_numpy(np.float64), requests["tpot_s"].to_numpy(np.float64), finished, ttft_t, tpot_t
    )
    n_ok = int(ok.sum())
    toks = float(
        requests["num_input_tokens"].to_numpy(np.int64)[ok].sum()
        + requests["num_output_tokens"].to_numpy(np.int64)[ok].sum()
    )
    n = len(requests)
    return {
        "slo_met_requests": n_ok,
        "goodput_rps": _per(n_ok, window_s),
        "goodput_tokens_per_s": _per(toks, window_s),
        "slo_attainment": _per(n_ok, n),
    }


def efficiency_report(
    performance: Mapping[str, Any],
    requests: pd.DataFrame,
    sustainability: Mapping[str, Any] | None,
    *,
    gpu_counts: Mapping[str, int],
    prices: Prices,
    slo: LatencyTargets,
    datacenter_gpus: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """All efficiency metrics of one run (see :data:`DEFINITIONS`).

    ``performance``: summary.json (``input_tokens``, ``output_tokens``,
    ``makespan_s``); ``requests``: requests.parquet; ``sustainability``:
    OpenDC's summary (``energy_wh``, ``carbon_g``) or None without OpenDC
    (energy and carbon metrics are then None); ``gpu_counts``: GPUs per type
    serving the replicas; ``datacenter_gpus``: every GPU of the datacenter per type (OpenDC's energy
    counts them all, so the cost does too when it is given); ``prices`` and ``slo`` the experiment's.
    """
    window = float(performance["makespan_s"])
    tok_in = int(performance["input_tokens"])
    tok_out = int(performance["output_tokens"])
    tokens = tok_in + tok_out
    energy = None if sustainability is None else sustainability.get("energy_wh")
    carbon = None if sustainability is None else sustainability.get("carbon_g")
    serving = dict(gpu_counts)
    basis = "datacenter" if datacenter_gpus else "replicas"
    if datacenter_gpus:
        gpu_counts = {k: int(n) for k, n in datacenter_gpus.items() if n}
    hours = gpu_hours(gpu_counts, window)
    g_cost = gpu_cost(gpu_counts, window, prices.gpu_hour)
    e_price = prices.electricity_per_kwh
    e_cost = electricity_cost(energy, e_price)
    total = g_cost + e_cost
    out: dict[str, Any] = {
        "tokens": tokens,
        "tokens_input": tok_in,
        "tokens_output": tok_out,
        "window_s": window,
        "throughput_mtokens_per_s": _per(tokens / MILLION, window),
        "energy_wh": energy,
        "carbon_g": carbon,
        "wh_per_mtoken": wh_per_mtoken(energy, tokens),
        "wh_per_mtoken_output": wh_per_mtoken(energy, tok_out),
        "gco2_per_mtoken": gco2_per_mtoken(carbon, tokens),
        "gco2_per_mtoken_output": gco2_per_mtoken(carbon, tok_out),
        "currency": prices.currency,
        "gpu_counts": dict(gpu_counts),
        "gpu_counts_basis": basis,
        "serving_gpu_counts": serving,
        "gpu_hour_price": {k: float(prices.gpu_hour[k]) for k in gpu_counts},
        "electricity_per_kwh": e_price,
        "gpu_hours": float(sum(hours.values())),
        "gpu_cost": g_cost,
        "electricity_cost": e_cost if (e_price is not None and energy is not None) else None,
        "total_cost": total,
        "cost_per_mtoken": cost_per_mtoken(total, tokens),
        "cost_per_mtoken_output": cost_per_mtoken(total, tok_out),
        "slo": slo.to_dict(),
        **goodput(requests, window, slo),
        "cost_per_mtoken_per_s": per_mtoken_per_s(total, tokens, window),
        "wh_per_mtoken_per_s": per_mtoken_per_s(energy, tokens, window),
        "kgco2_per_mtoken_per_s": per_mtoken_per_s(None if carbon is None else carbon / 1000.0, tokens, window),
        **_overhead_metrics(sustainability, energy, carbon, tokens),
        "definitions": dict(DEFINITIONS),
    }
    return out


def _overhead_metrics(
    sustainability: Mapping[str, Any] | None, energy: float | None, carbon: float | None, tokens: float
) -> dict[str, Any]:
    """PUE and embodied carbon per Mtoken (only with OpenDC: its sustainability record has them)."""
    if sustainability is None or energy is None or carbon is None:
        return {}
    fac = sustainability.get("facility") or {}
    emb = sustainability.get("embodied") or {}
    f_wh = fac.get("facility_energy_wh", energy)
    op = fac.get("facility_carbon_g", carbon)
    embodied = emb.get("embodied_g")
    return {
        "pue": fac.get("pue", 1.0),
        "facility_energy_wh": f_wh,
        "facility_wh_per_mtoken": wh_per_mtoken(f_wh, tokens),
        "operational_gco2": op,
        "embodied_gco2": embodied,
        "operational_gco2_per_mtoken": gco2_per_mtoken(op, tokens),
        "embodied_gco2_per_mtoken": gco2_per_mtoken(embodied, tokens),
        "total_gco2_per_mtoken": gco2_per_mtoken(None if embodied is None else op + embodied, tokens),
    }


# --------------------------------------------------------------------------
# The Kavier prototype's efficiency summary (compatibility)
# --------------------------------------------------------------------------

PROTOTYPE_NOTE = (
    "The Kavier prototype converts OpenDC's energy_usage (J) to 'Wh' by dividing by 1000 and then to "
    "'kWh' by dividing by 1000 again, so its 'Wh / million token / s' number is really MJ per (million "
    "tokens/s). Here energy is J / 3600 = Wh; the corrected value is the prototype's x 1e6 / 3600 "
    "(x 277.8). The financial and CO2 formulas have no unit error and are reproduced as they are; note "
    "that the financial one, (GPU price per second) / (tokens per second) x 1e6, is dimensionally a price "
    "per million tokens for one GPU."
)


def prototype_efficiency_summary(
    tasks: pd.DataFrame, power_source: pd.DataFrame, gpu_hour_price: float, total_tokens: float | None = None
) -> dict[str, Any]:
    """The Kavier prototype's efficiency summary from its two Parquet files,
    with the J-to-Wh unit error fixed.

    ``tasks``: the prototype's tasks.parquet (``duration`` in ms per task,
    ``total_tokens`` per task); ``power_source``: OpenDC's
    powerSource.parquet (``energy_usage`` J, ``carbon_emission`` g).

    * total_latency_s = sum(duration) / 1000
    * throughput = total_tokens / total_latency_s (tokens/s)
    * financial = (price / 3600) / throughput x 1e6
    * sustainability_wh = (sum(energy_usage) / 3600) x total_latency_s / (total_tokens / 1e6)
    * sustainability_co2 = (sum(carbon_emission) / 1000) x total_latency_s / (total_tokens / 1e6)
    * prototype_sustainability_wh (as the prototype prints it) =
      (sum(energy_usage) / 1000 / 1000) x total_latency_s / (total_tokens / 1e6)
    """
    if total_tokens is None:
        total_tokens = float(tasks["total_tokens"].sum())
    total_latency_s = float(tasks["duration"].sum()) / 1000.0
    energy_j = float(power_source["energy_usage"].sum())
    co2_kg = float(power_source["carbon_emission"].sum()) / 1000.0
    mtok = total_tokens / MILLION
    throughput = _per(total_tokens, total_latency_s)
    financial = _per(float(gpu_hour_price) / 3600.0, throughput)
    return {
        "financial_efficiency (EUR / million token / s)": None if financial is None else financial * MILLION,
        "sustainability_efficiency (Wh / million token / s)": _per(energy_j / J_PER_WH * total_latency_s, mtok),
        "sustainability_efficiency (kgCO2 / million token / s)": _per(co2_kg * total_latency_s, mtok),
        "total_tokens": total_tokens,
        "total_latency_s": total_latency_s,
        "energy_wh": energy_j / J_PER_WH,
        "carbon_kg": co2_kg,
        "prototype_sustainability_efficiency_as_printed": _per(energy_j / 1000.0 / 1000.0 * total_latency_s, mtok),
        "note": PROTOTYPE_NOTE,
    }


def pool_energy(
    disaggregation: Mapping[str, Any], task_map: list, task_hosts: Mapping[str, str], per_host: list
) -> list[dict]:
    """Energy of each pool of a disaggregated run: the OpenDC energy of the hosts its replicas' tasks ran on.

    ``task_map`` (the export's) gives each task's replica, ``task_hosts`` (OpenDC's) each task's host. A host
    that ran tasks of both pools cannot be split between them without a per-GPU placement OpenDC does not
    report: such a pool's energy is None, with the shared hosts named (never an invented share).
    """
    # each pool (summary's ``pools``; a summary without them: one pool per role, named by its role)
    pools = disaggregation.get("pools") or [
        {"name": role, **(disaggregation.get(f"{role}_pool") or {})} for role in ("prefill", "decode")
    ]
    replica_pool = {r: p["name"] for p in pools for r in p.get("replica_ids", [])}
    hosts_of: dict[str, set] = {p["name"]: set() for p in pools}
    for t in task_map:
        name = replica_pool.get(t.get("replica"))
        host = task_hosts.get(str(t.get("task_id")))
        if name is not None and host is not None:
            hosts_of[name].add(host)
    energy = {h["host_name"]: h for h in per_host}
    out = []
    for pool in pools:
        mine = hosts_of[pool["name"]]
        shared = {h for other, hs in hosts_of.items() if other != pool["name"] for h in hs} & mine
        hosts = sorted(mine)
        exclusive = not shared and all(h in energy for h in hosts) and hosts
        out.append(
            {
                "pool": pool["name"],
                "gpu": pool.get("gpu"),
                "replicas": pool.get("replicas"),
                "tp": pool.get("tp"),
                "busy_fraction": pool.get("busy_fraction"),
                "hosts": hosts,
                "energy_wh": sum(energy[h]["energy_wh"] for h in hosts) if exclusive else None,
                "gpu_energy_wh": sum(energy[h].get("gpu_energy_wh") or 0.0 for h in hosts) if exclusive else None,
                "shared_hosts": sorted(shared),
            }
        )
    return out
