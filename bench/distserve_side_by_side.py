"""Kavier beside DistServe's simulator (simdistserve) on OPT-13B, one A100 prefill + one A100 decode (issue 21).

Given a checkout of DistServe (github.com/LLMServe/DistServe, kept outside this project), this script

1. draws a workload of ShareGPT prompt/answer lengths (``sharegpt_lengths_llama2.csv`` of the shared
   data; pairs longer than OPT-13B's 2,048 positions left out) at a fixed rate,
2. runs ``simdistserve.benchmarks.simulate_dist`` with backend ``distserve``, OPT-13B, TP 1 prefill
   and TP 1 decode (its A100-80GB SXM profile), the workload given as its "custom" JSON,
3. runs ``kavier simulate`` with ``--prefill-pool A100-80GB:1:1 --decode-pool A100-80GB:1:1`` on the
   same requests, whole-request KV transfers over NVLink (300 GB/s one way, where DistServe puts a
   1P1D pair of one node),
4. prints one table: TTFT and TPOT p50/p99, SLO attainment at DistServe's OPT-13B targets (its README:
   200 ms TTFT, 100 ms TPOT), each simulator's wall time.

It also runs one request alone (the workload's median lengths) through both, which shows the two
performance models without queueing. simdistserve needs ``simpy``: give an interpreter that has it
with ``--distserve-python``.

    python bench/distserve_side_by_side.py ../scratch/distserve \\
        --distserve-python ../scratch/ds-venv/bin/python --requests 1000 --rate 2

Bench only: nothing in the package or the tests imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from peer_bench import BenchError, finish, ms, pcts  # bench/peer_bench.py, beside this script

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data")
DEFAULT_LENGTHS = SHARED / "traces" / "sharegpt_lengths_llama2.csv"

DISTSERVE_MODEL = "facebook/opt-13b"
OUR_MODEL = "OPT-13B"
OUR_GPU = "A100-80GB"  # simdistserve's profile is "profiler-a100-80g" (A100 80 GB SXM)
MAX_POSITIONS = 2048  # OPT-13B's max_position_embeddings: longer pairs cannot run on either
#: A100 NVLink 3: 600 GB/s both ways together, 300 GB/s one way; simdistserve itself moves KV in zero time
NVLINK_GBS = 300.0
#: DistServe's README targets for OPT-13B (its simulate example): TTFT and TPOT, ms
PREFILL_SLO_MS = 200.0
DECODE_SLO_MS = 100.0

PROFILE = "simdistserve/estimators/profile_data/profiler-a100-80g.distserve.json"
MAX_TOKENS = "simdistserve/estimators/profile_data/max_num_tokens.csv"
ENTRY = "simdistserve/benchmarks/simulate_dist.py"


@dataclass(frozen=True)
class DistServeSettings:
    """What the checkout says about OPT-13B at TP 1."""

    commit: str
    prefill_coeffs_ms: tuple[float, float, float]  # a + b * tokens + c * sum(len^2)
    max_num_tokens: int  # its KV capacity in tokens at TP 1, PP 1 (also its prefill batch limit)


def read_distserve_settings(checkout: Path) -> DistServeSettings:
    """Check the checkout and read OPT-13B's TP 1 numbers from its profile files."""
    for rel in (ENTRY, PROFILE, MAX_TOKENS):
        if not (checkout / rel).is_file():
            raise BenchError(
                f"{checkout}: not a DistServe checkout: {rel} is missing "
                "(expected the tree of github.com/LLMServe/DistServe with its simdistserve/ folder)."
            )
    profile = json.loads((checkout / PROFILE).read_text())
    params = profile.get(DISTSERVE_MODEL, {}).get("1")
    tokens = pd.read_csv(checkout / MAX_TOKENS)
    row = tokens[(tokens["model"] == DISTSERVE_MODEL) & (tokens["tp"] == 1) & (tokens["pp"] == 1)]
    if params is None or row.empty:
        raise BenchError(
            f"{checkout}: {PROFILE} or {MAX_TOKENS} has no {DISTSERVE_MODEL} entry at TP 1 "
            "(this script runs the OPT-13B TP 1 setup and needs both)."
        )
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    a, b, c = (float(x) for x in params["prefill"])
    return DistServeSettings(
        commit=commit or "unknown (not a git checkout)",
        prefill_coeffs_ms=(a, b, c),
        max_num_tokens=int(row["max_num_tokens"].iloc[0]),
    )


def draw_workload(lengths_csv: Path, n: int, rate: float, seed: int) -> pd.DataFrame:
    """n requests of ShareGPT lengths that fit OPT-13B, one every 1/rate s from 0, in our trace layout."""
    try:
        lengths = pd.read_csv(lengths_csv)
    except (OSError, ValueError) as exc:
        raise BenchError(f"{lengths_csv}: cannot read the length file ({exc}).") from None
    need = {"num_prefill_tokens", "num_decode_tokens"}
    if not need <= set(lengths.columns):
        raise BenchError(
            f"{lengths_csv}: expected columns num_prefill_tokens and num_decode_tokens "
            f"(the layout of sharegpt_lengths_llama2.csv), found {', '.join(map(str, lengths.columns))}."
        )
    # at least 2 output tokens so that every request has a TPOT in both simulators
    fits = lengths[
        (lengths["num_prefill_tokens"] >= 1)
        & (lengths["num_decode_tokens"] >= 2)
        & (lengths["num_prefill_tokens"] + lengths["num_decode_tokens"] <= MAX_POSITIONS)
    ]
    if len(fits) < n:
        raise BenchError(f"{lengths_csv}: only {len(fits)} pairs fit {MAX_POSITIONS} positions, --requests {n}.")
    drawn = fits.sample(n, random_state=seed)
    return pd.DataFrame(
        {
            "arrival_time_s": np.arange(n) / rate,
            "num_input_tokens": drawn["num_prefill_tokens"].to_numpy(dtype=int),
            "num_output_tokens": drawn["num_decode_tokens"].to_numpy(dtype=int),
        }
    )


def distserve_workload(trace: pd.DataFrame) -> list[dict]:
    """simdistserve's custom workload JSON: start_time in seconds, prompt_len, output_len."""
    return [
        {"start_time": float(t), "prompt_len": int(p), "output_len": int(o)}
        for t, p, o in zip(trace["arrival_time_s"], trace["num_input_tokens"], trace["num_output_tokens"], strict=True)
    ]


def run_distserve(
    checkout: Path, python: str, trace: pd.DataFrame, work: Path
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """One simdistserve run: (per-request latencies in ms, its per-iteration worker log, wall seconds)."""
    work.mkdir(parents=True, exist_ok=True)
    workload = work / "workload.json"
    workload.write_text(json.dumps(distserve_workload(trace)))
    latency = work / "request_latency.csv"
    worker = work / "worker.csv"
    cmd = [
        python,
        "-m",
        "simdistserve.benchmarks.simulate_dist",
        "--backend",
        "distserve",
        "--model",
        DISTSERVE_MODEL,
        "--N",
        str(len(trace)),
        "--arrival",
        "custom",
        "--workload",
        str(workload),
        "--tp-prefill",
        "1",
        "--pp-prefill",
        "1",
        "--tp-decode",
        "1",
        "--pp-decode",
        "1",
        "--output-request-latency",
        str(latency),
        "--output-worker",
        str(worker),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not latency.is_file() or not worker.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise BenchError(
            f"simdistserve failed in {checkout} (exit {proc.returncode}) with {python}: "
            + " | ".join(tail)
            + " (it needs simpy, pandas and numpy: pass --distserve-python)"
        )
    return pd.read_csv(latency), pd.read_csv(worker), wall


def run_ours(trace_csv: Path, out: Path) -> tuple[pd.DataFrame, dict, float]:
    """One `kavier simulate` run as a fresh process: (requests.parquet, summary.json, wall seconds)."""
    cmd = [
        sys.executable,
        "-m",
        "kavier_opendc.cli",
        "simulate",
        "--model",
        OUR_MODEL,
        "--gpu",
        OUR_GPU,
        "--prefill-pool",
        f"{OUR_GPU}:1:1",
        "--decode-pool",
        f"{OUR_GPU}:1:1",
        "--kv-link-gbs",
        f"{NVLINK_GBS:g}",
        "--kv-transfer-mode",
        "whole",  # DistServe ships a request's KV after its prefill
        "--trace",
        str(trace_csv),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"kavier simulate failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return pd.read_parquet(out / "requests.parquet"), json.loads((out / "summary.json").read_text()), wall


def attainment(ttft_s: np.ndarray, tpot_s: np.ndarray, n: int) -> dict:
    """Percent of all n requests within DistServe's targets: TTFT, TPOT and both (its definition)."""
    ok_p = np.asarray(ttft_s) <= PREFILL_SLO_MS / 1e3
    ok_d = np.asarray(tpot_s) <= DECODE_SLO_MS / 1e3
    return {
        "prefill": 100.0 * ok_p.sum() / n,
        "decode": 100.0 * ok_d.sum() / n,
        "both": 100.0 * (ok_p & ok_d).sum() / n,
    }


def distserve_numbers(lat: pd.DataFrame, n: int, wall: float) -> dict:
    """simdistserve's latencies in seconds. Its TPOT is decoding time / output tokens: it runs one decode
    step per output token after the prefill's token, so that is the time of one decode step."""
    ttft = lat["first_token_latency"].to_numpy() / 1e3
    tpot = lat["tpot"].to_numpy() / 1e3
    return {
        "requests": len(lat),
        "ttft_s": pcts(ttft),
        "tpot_s": pcts(tpot),
        "e2e_s": pcts(lat["total_latency"].to_numpy() / 1e3),
        "slo_attainment_pct": attainment(ttft, tpot, n),
        "wall_s": wall,
    }


def our_numbers(req: pd.DataFrame, summary: dict, n: int, wall: float) -> dict:
    """Ours from requests.parquet: TPOT is (e2e - TTFT) / (output - 1), also the time of one decode step."""
    done = req[np.isfinite(req["e2e_s"])]
    link = summary["disaggregation"]["link"]
    return {
        "requests": len(done),
        "ttft_s": pcts(done["ttft_s"]),
        "tpot_s": pcts(done["tpot_s"]),
        "e2e_s": pcts(done["e2e_s"]),
        "slo_attainment_pct": attainment(done["ttft_s"].to_numpy(), done["tpot_s"].to_numpy(), n),
        "wall_s": wall,
        "transfer_s_mean": float(link["transfer_s_mean"]),
        "decode_busy_fraction": float(summary["disaggregation"]["decode_pool"]["busy_fraction"]),
    }


#: simdistserve's Worker._enter_decodes puts at most this many context tokens in one decode batch
DISTSERVE_DECODE_BATCH_TOKENS = 50_000


def distserve_decode(log: pd.DataFrame) -> dict:
    """Its decode iterations from the worker log (one row per iteration, durations in ms): how many,
    the mean step, the time-weighted batch, and the share of steps within one OPT-13B context
    (2,048 tokens) of its per-batch token cap, where the next request may not have fitted."""
    steps = log[log["event_type"] == "do_decode"]
    if steps.empty:
        return {"decode_steps": 0}
    context = steps["decode_batch"].map(lambda text: sum(json.loads(text)))
    near_cap = context > DISTSERVE_DECODE_BATCH_TOKENS - MAX_POSITIONS
    dur = steps["duration"]
    return {
        "decode_steps": len(steps),
        "decode_step_s_mean": float(dur.mean()) / 1e3,
        "decode_batch_mean": float((steps["decode_bs"] * dur).sum() / dur.sum()),
        "decode_steps_near_cap": float(near_cap.mean()),
    }


def our_decode(timeline: pd.DataFrame, summary: dict) -> dict:
    """The decode replica's iterations from our timeline (a row may hold several iterations of one
    batch: decode_tokens / batch_size of them), its peak KV use, the decode-admission wait."""
    pool = summary["disaggregation"]["decode_pool"]
    rows = timeline[timeline["replica"].isin(pool["replica_ids"]) & (timeline["batch_size"] > 0)]
    dur = rows["end_s"] - rows["start_s"]
    steps = float((rows["decode_tokens"] / rows["batch_size"]).sum())
    decode_pool = next(p for p in summary["disaggregation"]["pools"] if p["role"] == "decode")
    return {
        "decode_steps": round(steps),
        "decode_step_s_mean": float(dur.sum() / steps) if steps else float("nan"),
        "decode_batch_mean": float((rows["batch_size"] * dur).sum() / dur.sum()) if len(rows) else 0.0,
        "decode_kv_peak": float(decode_pool["kv_utilization_peak"]),
        "decode_wait_s_mean": float(summary["disaggregation"]["decode_wait_s"]["mean"]),
    }


def side_by_side(args: argparse.Namespace) -> dict:
    """Run both simulators on the workload and on one request alone; the numbers of the table."""
    checkout = Path(args.distserve).resolve()
    if not checkout.is_dir():
        raise BenchError(f"{checkout}: no such folder (expected a checkout of github.com/LLMServe/DistServe).")
    if args.requests < 1:
        raise BenchError(f"--requests {args.requests}: give at least one request.")
    if not args.rate > 0:
        raise BenchError(f"--rate {args.rate}: give a positive arrival rate, requests per second.")
    ds = read_distserve_settings(checkout)
    trace = draw_workload(Path(args.lengths), args.requests, args.rate, args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kavier-distserve-"))
    work.mkdir(parents=True, exist_ok=True)

    probe_in = int(np.median(trace["num_input_tokens"]))
    probe_out = int(np.median(trace["num_output_tokens"]))
    cases = {
        "trace": trace,
        "alone": pd.DataFrame(
            {"arrival_time_s": [0.0], "num_input_tokens": [probe_in], "num_output_tokens": [probe_out]}
        ),
    }
    result: dict = {
        "distserve_commit": ds.commit,
        "lengths": str(args.lengths),
        "requests": len(trace),
        "rate": args.rate,
        "seed": args.seed,
        "probe": {"input_tokens": probe_in, "output_tokens": probe_out},
        "settings": ds.__dict__,
        "slo_ms": {"ttft": PREFILL_SLO_MS, "tpot": DECODE_SLO_MS},
    }
    for case, frame in cases.items():
        folder = work / case
        folder.mkdir(exist_ok=True)
        frame.to_csv(folder / "kavier_trace.csv", index=False)
        lat, log, ds_wall = run_distserve(checkout, args.distserve_python, frame, folder / "distserve")
        req, summary, our_wall = run_ours(folder / "kavier_trace.csv", folder / "kavier")
        result[case] = {
            "distserve": distserve_numbers(lat, len(frame), ds_wall) | distserve_decode(log),
            "kavier": our_numbers(req, summary, len(frame), our_wall)
            | our_decode(pd.read_parquet(folder / "kavier" / "timeline.parquet"), summary),
        }
    return result


def table(r: dict) -> str:
    """The README table (markdown): simdistserve beside ours."""
    t, a = r["trace"], r["alone"]
    d, k = t["distserve"], t["kavier"]

    def slo(v: dict) -> str:
        s = v["slo_attainment_pct"]
        return f"{s['prefill']:.1f} / {s['decode']:.1f} / {s['both']:.1f}"

    alone = {name: f"{v['ttft_s'][0] * 1e3:.1f}, {v['tpot_s'][0] * 1e3:.1f}" for name, v in a.items()}
    speed = {name: f"{v['wall_s']:.1f}, {r['requests'] / v['wall_s']:,.0f}" for name, v in t.items()}
    lines = [
        f"OPT-13B, 1 prefill + 1 decode A100-80GB (TP 1), {r['requests']:,} ShareGPT-length requests at "
        f"{r['rate']:g} req/s; DistServe commit {r['distserve_commit'][:12]}",
        "",
        "| | simdistserve | Kavier |",
        "|---|---:|---:|",
        f"| requests finished | {d['requests']:,} | {k['requests']:,} |",
        f"| TTFT p50 / p99 (ms) | {ms(d['ttft_s'])} | {ms(k['ttft_s'])} |",
        f"| TPOT p50 / p99 (ms), time of one decode step | {ms(d['tpot_s'])} | {ms(k['tpot_s'])} |",
        f"| E2E p50 / p99 (ms) | {ms(d['e2e_s'])} | {ms(k['e2e_s'])} |",
        f"| SLO attainment % (TTFT <= {r['slo_ms']['ttft']:g} ms / TPOT <= {r['slo_ms']['tpot']:g} ms / both) "
        f"| {slo(d)} | {slo(k)} |",
        f"| KV transfer, mean (ms) | 0 (not modelled) | {k['transfer_s_mean'] * 1e3:.2f} |",
        f"| decode steps, mean step (ms), time-weighted batch | {d['decode_steps']:,}, "
        f"{d['decode_step_s_mean'] * 1e3:.1f}, {d['decode_batch_mean']:.1f} | {k['decode_steps']:,}, "
        f"{k['decode_step_s_mean'] * 1e3:.1f}, {k['decode_batch_mean']:.1f} |",
        f"| decode steps within 2,048 tokens of simdistserve's 50,000-token batch cap | "
        f"{d['decode_steps_near_cap'] * 100:.0f} % | - |",
        f"| decode KV peak, mean decode-admission wait (s) | not modelled | {k['decode_kv_peak'] * 100:.0f} %, "
        f"{k['decode_wait_s_mean']:.2f} |",
        f"| one request alone ({r['probe']['input_tokens']} in, {r['probe']['output_tokens']} out): "
        f"TTFT, TPOT (ms) | {alone['distserve']} | {alone['kavier']} |",
        f"| wall time (s), requests simulated per second | {speed['distserve']} | {speed['kavier']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("distserve", help="path of a DistServe checkout (github.com/LLMServe/DistServe)")
    p.add_argument(
        "--distserve-python", default=sys.executable, help="Python with simdistserve's packages (default: this one)"
    )
    p.add_argument("--requests", type=int, default=1000, help="requests to draw (default 1000)")
    p.add_argument("--rate", type=float, default=2.0, help="fixed arrival rate, requests per second (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the length draw (default 0)")
    p.add_argument("--lengths", default=str(DEFAULT_LENGTHS), help="prompt/answer length file (default: ShareGPT)")
    p.add_argument("--work", help="folder for the workloads and both runs' outputs (default: a temp folder)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    return finish(p.parse_args(argv), side_by_side, table)


if __name__ == "__main__":
    sys.exit(main())
