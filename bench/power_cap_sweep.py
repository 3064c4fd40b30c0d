"""Power-cap sweep on a real trace: TTFT, TPOT and GPU energy vs the cap (engine/clock.py).

    PYTHONPATH=. python bench/power_cap_sweep.py OUT_DIR [--trace PATH] [--caps 700,550,450,350,250] [--opendc]

Runs `kavier simulate` once per cap (and once without a knob), prints a
Markdown table and writes ``power_cap_sweep.png`` and ``power_cap_sweep.json``
into OUT_DIR. Energy is the simulator's (no OpenDC): the sum of
requests.parquet ``energy_j`` (GPU power above idle from the timeline's
activity, plus idle power over the makespan, engine/energy.py); the mean and
peak GPU power are read from the timeline under the catalogue's linear model.
``--opendc`` also runs `kavier run` per cap (one host with the one GPU, a
32-core CPU at 120-280 W, a synthetic carbon cycle of mean 300 gCO2/kWh) and
adds OpenDC's energy (host: GPU and CPU), peak power and carbon.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_TRACE = Path(os.environ.get("KAVIER_SHARED_DATA", "/work/shared/data")) / "traces/azure_llm_2023_conv.csv"


def run_one(trace: Path, out: Path, model: str, gpu: str, cap: float | None) -> dict:
    cmd = [sys.executable, "-m", "kavier_opendc.cli", "simulate", "--model", model, "--gpu", gpu]
    cmd += ["--trace", str(trace), "--out", str(out), "--quiet"]
    if cap is not None:
        cmd += ["--power-cap-w", f"{cap:g}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    s = json.loads((out / "summary.json").read_text())
    req = pd.read_parquet(out / "requests.parquet", columns=["energy_j"])
    tl = pd.read_parquet(out / "timeline.parquet", columns=["start_s", "end_s", "gpu_utilization"])
    from kavier_opendc.specs import default_catalog

    g = default_catalog().gpu(gpu)
    w = g.idle_power_w + (g.max_power_w - g.idle_power_w) * tl["gpu_utilization"].to_numpy()
    dt = (tl["end_s"] - tl["start_s"]).to_numpy()
    return {
        "cap_w": cap,
        "ttft_p50_ms": 1e3 * s["ttft_s"]["p50"],
        "ttft_p99_ms": 1e3 * s["ttft_s"]["p99"],
        "tpot_p50_ms": 1e3 * s["tpot_s"]["p50"],
        "tpot_p99_ms": 1e3 * s["tpot_s"]["p99"],
        "makespan_s": s["makespan_s"],
        "energy_kwh": float(np.nansum(req["energy_j"].to_numpy())) / 3.6e6,
        "busy_mean_power_w": float((w * dt).sum() / dt.sum()),
        "peak_power_w": float(w.max()),
    }


EXPERIMENT = """name: power-cap-sweep
model: {model}
gpu: {gpu}
seed: 1
trace: {trace}
serving: {serving}
datacenter:
  start: "2022-06-01T11:45:00"
  export_interval_s: 1
  hosts:
    - name: gpu-node
      gpus_per_host: 1
      cpu: {{cores: 32, mhz: 2450}}
      cpu_power_model: {{model: linear, idle_w: 120, max_w: 280}}
      memory_gib: 512
carbon:
  synthetic: {{mean: 300, amplitude: 120, trough_hour: 13, step_minutes: 15}}
opendc:
  export: {{mode: adaptive, tolerance: 0.02}}
"""


def run_opendc(trace: Path, out: Path, model: str, gpu: str, cap: float | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    serving = "{replicas: 1}" if cap is None else f"{{replicas: 1, power_cap_w: {cap:g}}}"
    exp = out / "experiment.yaml"
    exp.write_text(EXPERIMENT.format(model=model, gpu=gpu, trace=trace.resolve(), serving=serving))
    cmd = [sys.executable, "-m", "kavier_opendc.cli", "run", str(exp), "--out", str(out / "run"), "--overwrite"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    s = json.loads((out / "run" / "report.json").read_text())["sustainability"]
    return {"opendc_energy_wh": s["energy_wh"], "opendc_peak_w": s["peak_power_w"], "carbon_g": s["carbon_g"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--caps", default="700,550,450,350,250")
    ap.add_argument("--opendc", action="store_true", help="also run OpenDC (kavier run) per cap")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    caps: list[float | None] = [None] + [float(c) for c in a.caps.split(",")]
    rows = [run_one(a.trace, a.out / f"cap_{c or 'none'}", a.model, a.gpu, c) for c in caps]
    if a.opendc:
        for r, c in zip(rows, caps, strict=True):
            r.update(run_opendc(a.trace, a.out / f"opendc_{c or 'none'}", a.model, a.gpu, c))
    od = a.opendc
    print(f"{a.trace.name}, {a.model} on {a.gpu}, `kavier simulate --power-cap-w W`\n")
    head = "| cap | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | GPU energy (kWh) | mean / peak GPU power, busy (W) |"
    print(head + (" OpenDC energy (Wh) | OpenDC peak (W) | carbon (gCO2) |" if od else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if od else ""))
    for r in rows:
        cap = "none" if r["cap_w"] is None else f"{r['cap_w']:g} W"
        print(
            f"| {cap} | {r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} | {r['tpot_p50_ms']:.2f} / "
            f"{r['tpot_p99_ms']:.2f} | {r['energy_kwh']:.3f} | {r['busy_mean_power_w']:.0f} / {r['peak_power_w']:.0f} |"
            + (f" {r['opendc_energy_wh']:.1f} | {r['opendc_peak_w']:.0f} | {r['carbon_g']:.1f} |" if od else "")
        )
    (a.out / "power_cap_sweep.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    capped = [r for r in rows if r["cap_w"] is not None]
    x = [r["cap_w"] for r in capped]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    for key, lab in (("ttft_p50_ms", "TTFT p50"), ("ttft_p99_ms", "TTFT p99")):
        ax[0].plot(x, [r[key] for r in capped], "o-", label=lab)
    for key, lab in (("tpot_p50_ms", "TPOT p50"), ("tpot_p99_ms", "TPOT p99")):
        ax[1].plot(x, [r[key] for r in capped], "o-", label=lab)
    ax[2].plot(x, [r["energy_kwh"] for r in capped], "o-", label="GPU energy")
    for axis, unit in zip(ax, ("ms", "ms", "kWh"), strict=True):
        axis.set_xlabel("power cap (W)")
        axis.set_ylabel(unit)
        axis.invert_xaxis()
        axis.legend()
    fig.suptitle(f"{a.model} on {a.gpu}, {a.trace.name}: power cap sweep")
    fig.tight_layout()
    fig.savefig(a.out / "power_cap_sweep.png", dpi=80)
    print(f"\nwrote {a.out / 'power_cap_sweep.png'}, power_cap_sweep.json")


if __name__ == "__main__":
    main()
