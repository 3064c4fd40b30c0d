"""Carbon with and without carbon-aware deferral, through OpenDC, on a real trace and a real carbon trace.

The Azure LLM 2023 conversation trace (19,366 requests, one hour) from 05:00 UTC on 1 June 2022 on the
Netherlands' 2022 grid (NL_2022.parquet), Llama-3-8B on 2 x A100-80GB in one host. Every --every-th request
is offline batch work with a deadline --deadline-h hours after its arrival (deadline_s); the rest is
interactive. `kavier run` runs twice through OpenDC: --deferral none, then lowest-carbon (battery-aware with --battery).

So that both OpenDC runs cover the same hours (the datacenter draws its idle power either way), the trace
written here ends with one marker request (1 prompt token, 1 output token, not deferrable) at --horizon-h
hours, after every deadline; its energy is a few joules. Prints OpenDC's energy and carbon of both runs
and the deferral summary (the engine's carbon, latency added, deadlines missed).

    python bench/deferral_carbon.py
    python bench/deferral_carbon.py --every 2 --deadline-h 12 --horizon-h 13 --out /tmp/dfr
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def write_trace(src: Path, dst: Path, every: int, deadline_h: float, horizon_h: float) -> tuple[int, int]:
    """The trace with a deadline on every ``every``-th request and the horizon marker; (requests, deferrable)."""
    import numpy as np
    import pandas as pd

    from kavier_opendc.workload.trace import load_trace

    tr = load_trace(src)
    n = len(tr)
    deadline = np.where(np.arange(n) % every == 0, tr.arrival_s + deadline_h * 3600.0, np.nan)
    df = pd.DataFrame(
        {
            "arrival_time_s": np.append(tr.arrival_s, horizon_h * 3600.0),
            "num_input_tokens": np.append(tr.num_input_tokens, 1),
            "num_output_tokens": np.append(tr.num_output_tokens, 1),
            "deadline_s": np.append(deadline, np.nan),
        }
    )
    df.to_csv(dst, index=False)
    return n + 1, int(np.isfinite(deadline).sum())


def main(argv: list[str] | None = None) -> int:
    import yaml

    from kavier_opendc.experiments.experiment import load_experiment
    from kavier_opendc.experiments.pipeline import run_experiment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DATA / "traces" / "azure_llm_2023_conv.csv"))
    ap.add_argument("--carbon", default=str(DATA / "carbon" / "NL_2022.parquet"))
    ap.add_argument("--start", default="2022-06-01T05:00:00")
    ap.add_argument("--every", type=int, default=5, help="every N-th request is deferrable (default 5: 20 %%)")
    ap.add_argument("--deadline-h", type=float, default=8.0)
    ap.add_argument("--horizon-h", type=float, default=9.0)
    ap.add_argument("--export-interval-s", type=float, default=10.0)
    ap.add_argument("--out", default=None, help="folder (default: a temporary one)")
    ap.add_argument(
        "--spread", action="store_true", help="lowest-carbon with deferral.spread (README 'Spreading the release')"
    )
    ap.add_argument(
        "--battery",
        default=None,
        metavar="KWH:W:THRESHOLD",
        help="a datacenter battery (capacity kWh, charging W, single-threshold gCO2/kWh) in every run; the "
        "deferred run then uses policy battery-aware",
    )
    args = ap.parse_args(argv)
    tmp = Path(args.out or tempfile.mkdtemp(prefix="kavier-deferral-"))
    tmp.mkdir(parents=True, exist_ok=True)
    n, k = write_trace(Path(args.trace), tmp / "jobs.csv", args.every, args.deadline_h, args.horizon_h)
    exp = {
        "name": "deferral-carbon",
        "model": "Llama-3-8B",
        "gpu": "A100-80GB",
        "seed": 1,
        "trace": "jobs.csv",
        "serving": {"replicas": 2},
        "datacenter": {
            "start": args.start,
            "export_interval_s": args.export_interval_s,
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
        "carbon": {"trace": str(Path(args.carbon).resolve())},
    }
    policy_b = "lowest-carbon"
    if args.battery:
        kwh, w, thr = (float(x) for x in args.battery.split(":"))
        exp["datacenter"]["battery"] = {
            "capacity_kwh": kwh,
            "charging_speed_w": w,
            "policy": {"type": "single", "carbon_threshold": thr},
        }
        policy_b = "battery-aware"
    (tmp / "experiment.yaml").write_text(yaml.safe_dump(exp))
    print(
        f"trace        {args.trace}: {n - 1} requests + 1 horizon marker at {args.horizon_h:g} h; {k} deferrable "
        f"(every {args.every}th), deadline arrival + {args.deadline_h:g} h; start {args.start}, "
        f"{Path(args.carbon).name}"
    )
    reports = {}
    for policy in ("none", policy_b):
        e = load_experiment(tmp / "experiment.yaml")
        e.deferral = policy
        e.deferral_spread = args.spread and policy != "none"
        t0 = time.perf_counter()
        run_experiment(e, tmp / policy, quiet=True, plots=False, command=f"bench/deferral_carbon.py ({policy})")
        rep = json.loads((tmp / policy / "report.json").read_text())
        reports[policy] = rep
        s, p = rep["sustainability"], rep["performance"]
        print(
            f"{policy:<14}OpenDC {s['energy_wh']:.1f} Wh, {s['carbon_g']:.2f} gCO2 over {s['duration_s']:.0f} s; "
            f"deadlines missed {p['deferral']['deadlines_missed']}; {time.perf_counter() - t0:.1f} s wall"
        )
    a, b = reports["none"]["sustainability"], reports[policy_b]["sustainability"]
    saved = a["carbon_g"] - b["carbon_g"]
    print(
        f"OpenDC       carbon saved {saved:.2f} g ({100 * saved / a['carbon_g']:.2f} %), "
        f"energy {b['energy_wh'] - a['energy_wh']:+.2f} Wh"
    )
    d = reports[policy_b]["performance"]["deferral"]
    c0, c1 = d["without_deferral"], d["with_deferral"]
    print(
        f"engine       {c0['carbon_g']:.2f} -> {c1['carbon_g']:.2f} g (above idle {c0['dynamic_g']:.2f} -> "
        f"{c1['dynamic_g']:.2f} g; the deferrable requests' {d['deferrable_dynamic_g']['without_deferral']:.2f} -> "
        f"{d['deferrable_dynamic_g']['with_deferral']:.2f} g)"
    )
    lat = d["latency_added_s"]
    print(
        f"latency      held mean {d['held_s']['mean']:.0f} s (max {d['held_s']['max']:.0f} s); finish later by "
        f"mean {lat['deferrable']['mean']:.0f} s (deferrable), {lat['other']['mean']:+.3f} s (interactive)"
    )
    if d.get("battery"):
        bt = d["battery"]
        print(
            f"battery      predicted draw {bt['estimated_draw_w']:.0f} W, supplies {bt['supplied_s']:.0f} s; "
            f"{bt['fell_back_to_lowest_carbon']} fell back to lowest-carbon; OpenDC battery "
            f"{(b.get('battery') or {}).get('energy_wh')} Wh out"
        )
    for policy in ("none", policy_b):
        pr = reports[policy]["performance"]
        print(
            f"{policy:<14}TTFT p99 {pr['ttft_s']['p99'] * 1e3:.1f} ms, TPOT p99 {pr['tpot_s']['p99'] * 1e3:.1f} ms "
            f"(latencies from the release to the router)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
