"""GPU power caps and SM clocks as knobs (``--power-cap-w``, ``--sm-clock-mhz``).

Model (r = f / f_max, f_max the catalogue's ``boost_clock_mhz``):

* time: the SM clock scales what the SMs compute, not the HBM, whose clock is
  fixed. The cost model runs at a compute peak (GEMM and attention FLOP/s)
  of r x the datasheet peak and the datasheet memory bandwidth, so the
  compute side of each roofline term takes 1/r as long and the memory side
  is unchanged (the smooth GEMM roofline of specs/profiles.py combines
  them as before); the all-reduces and the framework's CPU time do not
  change.
* power: P = idle + (max - idle) x u x s(r), s(r) = r x v(r)^2 (dynamic CMOS
  power ~ f V^2), u the iteration's power-relevant activity with its FLOPs
  counted against the clocked peak (a compute-bound GEMM keeps its u when
  the clock falls; its FLOP/s fall with r and s carries that), v = V / V_max
  linear in r from (R_FLOOR, V_FLOOR) to (1, 1) and V_FLOOR below R_FLOOR.
  V_FLOOR = 0.7 and R_FLOOR = 0.6 are *derived* (no shared measurement of
  H100/A100 voltage-frequency curves; typical DVFS tables hold the voltage
  at a floor of about 0.7 of the maximum below 55-65 % of the boost clock).
* ``sm_clock_mhz``: r is fixed for every iteration.
* ``power_cap_w``: each iteration runs at the highest r on a ladder of
  CLOCK_STEPS (0.5 % of f_max down to the GPU's minimum clock) at which its
  power fits the cap (P is monotone in r; found by bisection). A decode run
  advanced in closed form keeps the clock solved for its first iteration.

OpenDC: the timeline's ``gpu_utilization`` under a knob is u x s(r), the
fraction of (max - idle) the GPU draws, so OpenDC's linear GPU power model
(idle to the datasheet TDP, unchanged in the topology) reproduces the capped
draw exactly; per-request energy (engine/energy.py) splits that same number.
Limits: a cap must lie in [the GPU's minimum power limit, its TDP] and a clock
in [its minimum clock, its boost clock] (``extra.min_power_limit_w`` /
``extra.min_clock_mhz`` in specs/gpus.yaml, from nvidia-smi -q); a GPU
without them refuses both knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import GPUSpec

V_FLOOR = 0.7  # derived: V / V_max held below R_FLOOR
R_FLOOR = 0.6  # derived: clock ratio below which the voltage stops falling
CLOCK_STEPS = 200  # ladder of clock ratios 1, 0.995, ... (0.5 % of f_max each)


def voltage(r: float) -> float:
    """V / V_max at clock ratio ``r``: linear from (R_FLOOR, V_FLOOR) to (1, 1), V_FLOOR below."""
    if r <= R_FLOOR:
        return V_FLOOR
    return V_FLOOR + (1.0 - V_FLOOR) * (r - R_FLOOR) / (1.0 - R_FLOOR)


def power_scale(r: float) -> float:
    """s(r) = r v(r)^2: dynamic power at clock ratio ``r`` relative to the full clock."""
    v = voltage(r)
    return r * v * v


@dataclass(frozen=True)
class ClockKnob:
    """One GPU group's knob: a power cap (W) or a fixed SM clock (MHz); ``None`` fields are unset."""

    power_cap_w: float | None = None
    sm_clock_mhz: float | None = None

    @property
    def active(self) -> bool:
        return self.power_cap_w is not None or self.sm_clock_mhz is not None


def gpu_limits(gpu: GPUSpec) -> tuple[float | None, float | None]:
    """The GPU's minimum power limit (W) and minimum SM clock (MHz) from the catalogue, None if unknown."""
    extra = gpu.extra or {}
    lo_w = extra.get("min_power_limit_w")
    lo_f = extra.get("min_clock_mhz")
    return (float(lo_w) if lo_w is not None else None, float(lo_f) if lo_f is not None else None)


def check_knob(knob: ClockKnob, gpu: GPUSpec, cap_field: str = "power_cap_w") -> None:
    """Refuse a cap or clock the GPU cannot set, naming the field (``cap_field``: the knob that set the cap)."""
    if knob.power_cap_w is not None and knob.sm_clock_mhz is not None:
        raise KavierInputError(
            "a power cap and an SM clock were both given",
            location=f"{cap_field}/sm_clock_mhz",
            expected="one of them: the cap sets the clock itself",
        )
    lo_w, lo_f = gpu_limits(gpu)
    if knob.power_cap_w is not None:
        cap = knob.power_cap_w
        if lo_w is None:
            raise KavierInputError(
                f"the catalogue has no minimum power limit for {gpu.name}, so a power cap cannot be checked",
                location=cap_field,
                expected="a GPU with extra.min_power_limit_w in its catalogue entry: A100, H100-SXM, H200",
            )
        if not lo_w <= cap <= gpu.max_power_w:
            raise KavierInputError(
                f"power cap {cap:g} W is outside what {gpu.name} accepts",
                location=cap_field,
                expected=f"{lo_w:g} <= W <= {gpu.max_power_w:g}: its minimum power limit and TDP",
            )
        if cap <= gpu.idle_power_w:
            raise KavierInputError(
                f"power cap {cap:g} W is not above {gpu.name}'s idle power {gpu.idle_power_w:g} W",
                location=cap_field,
                expected="a cap above the idle power",
            )
    if knob.sm_clock_mhz is not None:
        f = knob.sm_clock_mhz
        if lo_f is None:
            raise KavierInputError(
                f"the catalogue has no minimum SM clock for {gpu.name}, so a clock cannot be checked",
                location="sm_clock_mhz",
                expected="a GPU with extra.min_clock_mhz in its catalogue entry: A100, H100-SXM, H200",
            )
        if not lo_f <= f <= gpu.boost_clock_mhz:
            raise KavierInputError(
                f"SM clock {f:g} MHz is outside what {gpu.name} runs at",
                location="sm_clock_mhz",
                expected=f"{lo_f:g} <= MHz <= {gpu.boost_clock_mhz:g}: its minimum and boost clocks",
            )


def clock_ladder(gpu: GPUSpec) -> list[float]:
    """Clock ratios a capped GPU may run at, highest first: 1 - k/CLOCK_STEPS down to its minimum clock."""
    _, lo_f = gpu_limits(gpu)
    r_min = (lo_f or 0.0) / gpu.boost_clock_mhz
    out = [1.0 - k / CLOCK_STEPS for k in range(CLOCK_STEPS) if 1.0 - k / CLOCK_STEPS >= r_min]
    if out[-1] > r_min:
        out.append(r_min)
    return out
