"""Datacenter overheads beyond OpenDC's IT energy: PUE, and the embodied carbon of the devices.

PUE (``datacenter.pue``): facility energy = IT energy (OpenDC's hosts) x PUE.
A constant multiplies the totals; a trace multiplies each OpenDC export
interval's energy and carbon by the PUE at the middle of that interval (the
value in force then: each row holds until the next). Facility carbon counts
the overhead at the grid intensity of the same interval.

A trace of outside temperatures becomes a PUE trace row by row
(:func:`pue_from_temperature`): while the outside air is at or below
``free_cooling_c`` it cools the halls without chillers and the PUE is the
site's ``free_cooling_pue``; above it the chillers carry the difference, and
their power grows with it, taken as linear: ``per_degree_c`` per degree,
capped at ``max_pue`` (the chillers at full load). Sources: the
free-cooling bound defaults to 18 C, the lower end of ASHRAE TC 9.9's
recommended supply-air range (18-27 C): outside air below it can be supplied
as it is (derived from that range, not measured). ``free_cooling_pue``,
``per_degree_c`` and ``max_pue`` are the site's own numbers and have no
default; the linear rise is a first-order model of chiller power, not a fit.

Embodied carbon: each device's kgCO2e (GPUs: the catalogue's
``embodied_kgco2e`` or the host group's gpu override; hosts: the host group's
``embodied_kgco2e``, the host without its GPUs) amortised linearly over its
lifetime: g = kgCO2e x 1000 x duration_s / (lifetime_years x 365.25 x 86400),
for every device of the datacenter (idle ones too: the run holds them, as
OpenDC counts their idle power). Devices without a value count 0 and are
listed under ``missing``; with ``datacenter.embodied_carbon: true`` a GPU type
without one is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kavier_opendc.base.errors import KavierInputError

SECONDS_PER_YEAR = 365.25 * 86400.0
#: outside temperature up to which free cooling suffices (derived: ASHRAE TC 9.9's recommended 18-27 C)
FREE_COOLING_C = 18.0


def pue_from_temperature(
    temperature_c: np.ndarray,
    free_cooling_pue: float,
    per_degree_c: float,
    free_cooling_c: float = FREE_COOLING_C,
    max_pue: float | None = None,
) -> np.ndarray:
    """The PUE at each outside temperature (see the module doc)."""
    t = np.asarray(temperature_c, dtype=np.float64)
    pue = free_cooling_pue + per_degree_c * np.maximum(t - free_cooling_c, 0.0)
    return pue if max_pue is None else np.minimum(pue, max_pue)


def _gpu_field(h, name: str) -> str:
    return f"{h.path}.gpu.{name} (or gpus[{h.gpu.name}].{name} in the GPU catalogue)"


def check_embodied(dc) -> None:
    """With ``embodied_carbon: true``, every GPU host group's GPU must have embodied_kgco2e and lifetime_years."""
    if not dc.embodied_required:
        return
    for h in dc.gpu_hosts():
        if h.gpu is None:
            continue
        for name in ("embodied_kgco2e", "lifetime_years"):
            if getattr(h.gpu, name, None) is None:
                raise KavierInputError(
                    f"embodied_carbon is true but GPU {h.gpu.name!r} has no {name}",
                    source=dc.source,
                    location=_gpu_field(h, name),
                    expected=f"a number ({'kgCO2e per GPU' if name == 'embodied_kgco2e' else 'years'}) "
                    "with its source, or embodied_carbon: false",
                )


def amortised_g(kgco2e: float, lifetime_years: float, duration_s: float) -> float:
    """Grams of a device's embodied carbon that fall on ``duration_s`` seconds of its life."""
    return kgco2e * 1000.0 * duration_s / (lifetime_years * SECONDS_PER_YEAR)


def embodied_carbon(dc, duration_s: float) -> dict[str, Any]:
    """The datacenter's embodied carbon amortised over ``duration_s`` (see the module doc)."""
    check_embodied(dc)
    devices: list[dict[str, Any]] = []
    missing: list[str] = []
    gpu_g = host_g = 0.0
    for h in dc.hosts:
        if h.embodied_kgco2e is not None:
            g = h.count * amortised_g(h.embodied_kgco2e, h.lifetime_years, duration_s)
            host_g += g
            devices.append(
                {
                    "host_group": h.name,
                    "device": "host",
                    "count": h.count,
                    "kgco2e_each": h.embodied_kgco2e,
                    "lifetime_years": h.lifetime_years,
                    "embodied_g": g,
                }
            )
        else:
            missing.append(f"{h.path}.embodied_kgco2e")
        if h.gpus_per_host > 0 and h.gpu is not None:
            kg, life = getattr(h.gpu, "embodied_kgco2e", None), getattr(h.gpu, "lifetime_years", None)
            if kg is None or life is None:
                missing.append(_gpu_field(h, "embodied_kgco2e" if kg is None else "lifetime_years"))
                continue
            n = h.count * h.gpus_per_host
            g = n * amortised_g(kg, life, duration_s)
            gpu_g += g
            devices.append(
                {
                    "host_group": h.name,
                    "device": h.gpu.name,
                    "count": n,
                    "kgco2e_each": kg,
                    "lifetime_years": life,
                    "embodied_g": g,
                    "source": getattr(h.gpu, "embodied_source", "") or None,
                }
            )
    return {
        "embodied_g": gpu_g + host_g,
        "gpu_embodied_g": gpu_g,
        "host_embodied_g": host_g,
        "duration_s": duration_s,
        "devices": devices,
        "missing": missing,
    }


def facility(pue, power, start_epoch_ms: int | None, it_energy_wh: float, carbon_g: float) -> dict[str, Any] | None:
    """Facility energy and carbon under ``pue`` (a datacenter.PUE or None) from OpenDC's per-interval power."""
    if pue is None:
        return None
    if pue.value is not None:
        f_wh, f_c = it_energy_wh * pue.value, carbon_g * pue.value
    else:
        if power is None or not len(power):
            f_wh, f_c = it_energy_wh * float(pue.values[0]), carbon_g * float(pue.values[0])
        else:
            mid_s = power["timestamp_s"].to_numpy(np.float64) - power["interval_s"].to_numpy(np.float64) / 2.0
            k = pue.series((start_epoch_ms or 0) + mid_s * 1000.0)
            e = np.nan_to_num(power["energy_j"].to_numpy(np.float64))
            c = np.nan_to_num(power["carbon_g"].to_numpy(np.float64)) if "carbon_g" in power else np.zeros(e.size)
            f_wh, f_c = float(np.sum(e * k)) / 3600.0, float(np.sum(c * k))
    return {
        "pue": f_wh / it_energy_wh if it_energy_wh > 0 else (pue.value if pue.value is not None else None),
        "pue_kind": "constant" if pue.value is not None else (pue.kind or "trace"),
        "pue_trace": pue.path,
        **({"pue_model": dict(pue.model)} if pue.model else {}),
        "it_energy_wh": it_energy_wh,
        "facility_energy_wh": f_wh,
        "facility_overhead_wh": f_wh - it_energy_wh,
        "facility_carbon_g": f_c,
    }
