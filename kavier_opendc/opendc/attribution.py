"""OpenDC-consistent per-request energy and carbon (the rules: engine/energy.py).

After OpenDC ran, each request's energy is

* its dynamic GPU energy: ``gpu_busy_s`` (the engine's share of its replica's
  busy GPU time) x (max_w - idle_w) of its GPU type's power model in the
  datacenter, the model OpenDC was given (constant models: 0);
* plus its share of the rest of OpenDC's total (GPU idle power, host CPUs,
  hosts without tasks, what a curved GPU model adds over the linear one),
  shared at each instant by the requests in flight and, where none is,
  spread over all requests by residence.

So the per-request energies sum to OpenDC's total host energy exactly (up to
float rounding). Carbon: each part at the carbon intensity of OpenDC's power
source when it was consumed (the dynamic part at the mean over the request's
residence), then scaled by one factor so the sum equals OpenDC's carbon
(which counts each interval's energy at that interval's intensity); the
factor is reported (``carbon_scale``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kavier_opendc.engine.energy import request_energy


def gpu_dynamic_watts(dc, replica_gpu: list[str]) -> np.ndarray:
    """max_w - idle_w of one GPU of each replica's type under the datacenter's power model (0 if constant)."""
    out = np.zeros(len(replica_gpu))
    for i, name in enumerate(replica_gpu):
        key = str(name).strip().lower()
        for h in dc.gpu_hosts():
            if h.gpu is not None and h.gpu.name.lower() == key:
                pm = h.gpu_power(h.gpu)
                if pm is not None and pm.model != "constant":
                    out[i] = (pm.max_w - pm.idle_w) * pm.calibration_factor
                break
    return out


def carbon_series(power: pd.DataFrame | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """OpenDC's intensity per export interval as a step function: (start times s, gCO2/kWh)."""
    if power is None or not len(power) or "carbon_intensity" not in power:
        return None, None
    p = power[np.isfinite(power["carbon_intensity"].to_numpy(np.float64))]
    if not len(p):
        return None, None
    start = p["timestamp_s"].to_numpy(np.float64) - p["interval_s"].to_numpy(np.float64)
    order = np.argsort(start, kind="stable")
    return start[order], p["carbon_intensity"].to_numpy(np.float64)[order]


def attribute_requests(
    requests: pd.DataFrame, replica_gpu: list[str], dc, sustainability: dict, power: pd.DataFrame | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(energy_j, carbon_g, summary) per row of ``requests`` (requests.parquet) for an OpenDC run."""
    n = len(requests)
    total_j = float(sustainability.get("energy_wh") or 0.0) * 3600.0
    span = float(sustainability.get("duration_s") or 0.0)
    busy = requests["gpu_busy_s"].to_numpy(np.float64) if "gpu_busy_s" in requests else np.zeros(n)
    rep = requests["replica"].to_numpy(np.int64)
    dyn1 = gpu_dynamic_watts(dc, replica_gpu)
    dyn_w = np.where(rep >= 0, dyn1[np.clip(rep, 0, max(len(dyn1) - 1, 0))], 0.0) if len(dyn1) else np.zeros(n)
    finished = requests["status"].to_numpy() == "finished" if "status" in requests else np.ones(n, bool)
    finish = np.where(finished, requests["finish_s"].to_numpy(np.float64), np.nan)
    arrival = requests["arrival_s"].to_numpy(np.float64)
    dyn_total = float(np.sum(np.nan_to_num(busy) * dyn_w))
    scale_dyn = 1.0
    static_j = total_j - dyn_total
    if static_j < 0.0:  # cannot happen with OpenDC's models (idle power is drawn throughout); kept safe
        scale_dyn = total_j / dyn_total if dyn_total > 0 else 0.0
        static_j = 0.0
    ci_t, ci_v = carbon_series(power)
    energy, carbon, dyn = request_energy(busy * scale_dyn, dyn_w, arrival, finish, static_j, span, ci_t, ci_v)
    carbon_total = float(sustainability.get("carbon_g") or 0.0)
    raw_c = float(np.nansum(carbon)) if ci_t is not None else 0.0
    carbon_scale = carbon_total / raw_c if raw_c > 0 else None
    if carbon_scale is not None:
        carbon = carbon * carbon_scale
    else:
        carbon = np.where(finished, 0.0, np.nan) if carbon_total == 0.0 else np.full(n, np.nan)
    # cross-checks that do not hold by construction: the engine's dynamic GPU energy against OpenDC's
    # (its GPUs' energy above idle), and the simulator-side GPU energy (`kavier simulate`'s energy_j)
    # against OpenDC's GPU energy
    per_gpu = sustainability.get("per_gpu") or []
    odc_dyn = (
        sum((g["energy_wh"] - g["idle_energy_wh"]) * 3600.0 for g in per_gpu)
        if per_gpu and all(g.get("idle_energy_wh") is not None for g in per_gpu)
        else None
    )
    odc_gpu = float(sustainability.get("gpu_energy_wh") or 0.0) * 3600.0
    sim_gpu = float(np.nansum(requests["energy_j"].to_numpy(np.float64))) if "energy_j" in requests else None
    summary = {
        "rule": "dynamic GPU energy by each iteration's work shares; the rest by residence (README)",
        "requests_attributed": int(np.sum(energy > 0)),
        "energy_j": float(energy.sum()),
        "opendc_energy_j": total_j,
        "relative_difference": (float(energy.sum()) - total_j) / total_j if total_j > 0 else None,
        "dynamic_j": float(dyn.sum()),
        "static_j": static_j,
        "dynamic_scale": scale_dyn,
        "opendc_gpu_dynamic_j": odc_dyn,
        "dynamic_vs_opendc": dyn_total / odc_dyn if odc_dyn else None,
        "simulator_gpu_energy_j": sim_gpu,
        "opendc_gpu_energy_j": odc_gpu,
        "simulator_gpu_vs_opendc": sim_gpu / odc_gpu if sim_gpu is not None and odc_gpu > 0 else None,
        "carbon_g": float(np.nansum(carbon)),
        "opendc_carbon_g": carbon_total,
        "carbon_scale": carbon_scale,
    }
    return energy, carbon, summary


def session_table(requests: pd.DataFrame, energy: np.ndarray, carbon: np.ndarray) -> pd.DataFrame | None:
    """Per session of the trace (``session_id``): requests, tokens, energy_j, carbon_g; None without sessions."""
    if "session_id" not in requests:
        return None
    df = pd.DataFrame(
        {
            "session_id": requests["session_id"].to_numpy(np.int64),
            "requests": 1,
            "input_tokens": requests["num_input_tokens"].to_numpy(np.int64),
            "output_tokens": requests["num_output_tokens"].to_numpy(np.int64)
            * (requests["n"].to_numpy(np.int64) if "n" in requests else 1),
            "energy_j": energy,
            "carbon_g": carbon,
        }
    )
    out = df.groupby("session_id", sort=True).sum(min_count=1).reset_index()
    tokens = out["input_tokens"] + out["output_tokens"]
    out["wh_per_mtoken"] = np.where(tokens > 0, out["energy_j"] / 3600.0 / (tokens / 1e6), np.nan)
    return out
