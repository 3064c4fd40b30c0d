"""Per-request energy against the real OpenDC's total on a whole trace (default: the Azure LLM 2023
conversation trace, 19,366 requests in one hour, Llama-3-8B on 2 x A100-80GB in one host).

Runs `kavier run` (simulation + OpenDC + reports) on an experiment written here and prints the checks of
sustainability.json's ``attribution``: the per-request sum against OpenDC's total (by construction), the
engine's dynamic GPU energy against OpenDC's GPUs above idle and the simulator-side GPU energy against
OpenDC's GPU energy (these two do not hold by construction), and the carbon scale.

    python bench/energy_attribution.py
    python bench/energy_attribution.py --trace ../shared/data/traces/azure_llm_2023_code.csv --out /tmp/ea
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import yaml

    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DATA / "traces" / "azure_llm_2023_conv.csv"))
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--pue", type=float, default=1.2)
    args = ap.parse_args(argv)
    tmp = Path(args.out or tempfile.mkdtemp(prefix="kavier-energy-"))
    tmp.mkdir(parents=True, exist_ok=True)
    exp = {
        "name": "energy-attribution",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "seed": 1,
        "trace": str(Path(args.trace).resolve()),
        "serving": {"replicas": 2},
        "datacenter": {
            "start": "2022-06-01T00:00:00",
            "export_interval_s": 1,
            "pue": args.pue,
            "hosts": [
                {
                    "name": "node",
                    "gpus_per_host": 2,
                    "cpu": {"cores": 32, "mhz": 2450},
                    "cpu_power_model": {"model": "linear", "idle_w": 120, "max_w": 280},
                    "memory_gib": 512,
                }
            ],
        },
        "carbon": {"synthetic": {"mean": 300, "amplitude": 120, "trough_hour": 13, "step_minutes": 15}},
    }
    (tmp / "experiment.yaml").write_text(yaml.safe_dump(exp))
    out = tmp / "run"
    t0 = time.perf_counter()
    run_experiment(load_experiment(tmp / "experiment.yaml"), out, quiet=True, command="bench/energy_attribution.py")
    wall = time.perf_counter() - t0
    rep = json.loads((out / "report.json").read_text())
    s = rep["sustainability"]
    a = s["attribution"]
    req = pd.read_parquet(out / "simulation" / "requests.parquet")
    total = s["energy_wh"] * 3600
    print(f"trace        {args.trace}: {len(req)} requests, OpenDC run {s['duration_s']:.0f} s, {wall:.1f} s wall")
    print(
        f"energy       per-request sum {req['energy_j'].sum():.1f} J, OpenDC {total:.1f} J, "
        f"difference {(req['energy_j'].sum() - total) / total:+.2e}"
    )
    print(
        f"dynamic      engine {a['dynamic_j']:.1f} J, OpenDC GPUs above idle {a['opendc_gpu_dynamic_j']:.1f} J, "
        f"ratio {a['dynamic_vs_opendc']:.6f}"
    )
    print(
        f"simulator    GPU energy {a['simulator_gpu_energy_j']:.1f} J, OpenDC GPUs {a['opendc_gpu_energy_j']:.1f} J, "
        f"ratio {a['simulator_gpu_vs_opendc']:.6f}"
    )
    print(
        f"carbon       per-request sum {req['carbon_g'].sum():.3f} g, OpenDC {s['carbon_g']:.3f} g, "
        f"scale {a['carbon_scale']:.6f}"
    )
    f, e = s["facility"], rep["efficiency"]
    print(f"facility     PUE {f['pue']:.3f}: {f['facility_energy_wh']:.1f} Wh, {f['facility_carbon_g']:.1f} g")
    print(
        f"per Mtoken   operational {e['operational_gco2_per_mtoken']:.3f} + embodied "
        f"{e['embodied_gco2_per_mtoken']:.3f} = {e['total_gco2_per_mtoken']:.3f} gCO2"
    )
    print(f"run folder   {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
