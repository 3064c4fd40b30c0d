"""Kavier beside Splitwise-sim on one trace, one model and the same P/D machine counts (issue 21).

Given a checkout of Splitwise-sim (github.com/Mutinifni/splitwise-sim, kept outside this project),
this script

1. converts the trace (default: the Azure LLM 2023 conversation trace) to Splitwise-sim's CSV layout,
2. runs Splitwise-sim's Splitwise-HH setup: DGX-H100 machines (8 x H100, TP 8 per machine), the
   ``mixed_pool`` scheduler, its ``db`` performance model, Llama-2-70B, P prompt and D token machines,
3. runs ``kavier simulate`` with ``--prefill-pool H100-SXM:8:P --decode-pool H100-SXM:8:D`` and the
   batch limits and KV bandwidth read from the checkout's own configuration files,
4. runs ours again with the step overheads our calibration fits for the harness behind Splitwise's
   profile (``splitwise-harness``, see :func:`harness_catalog`): the performance models' difference
   without that harness's CPU time,
5. prints one table: TTFT, TPOT/TBT and E2E p50/p99, machine counts and each simulator's wall time.

It also runs one request alone through both (the trace's median lengths) to separate the performance
models from queueing. Splitwise-sim needs its own Python packages (hydra-core, omegaconf, pandas,
scipy, networkx): give an interpreter that has them with ``--splitwise-python``.

    python bench/splitwise_side_by_side.py ../scratch/splitwise-sim \\
        --splitwise-python ../scratch/sw-venv/bin/python --prefill 2 --decode 1

Bench only: nothing in the package or the tests imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from peer_bench import BenchError, finish, ms, pcts  # bench/peer_bench.py, beside this script

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data")
DEFAULT_TRACE = SHARED / "traces" / "azure_llm_2023_conv.csv"

#: Splitwise-sim names -> ours (Llama-2-70B is the only model both catalogues hold;
#: BLOOM-176B, its other profiled model, is not in ours)
SPLITWISE_MODEL = "llama2-70b"
OUR_MODEL = "Llama-2-70B"
OUR_GPU = "H100-SXM"
GPUS_PER_MACHINE = 8  # a DGX-H100; Splitwise-sim runs one TP-8 instance per machine

#: Splitwise-sim starts its instances with events at time 0, after an arrival at 0 would be
#: scheduled ("No instances available"), so its trace is shifted by this much; latencies are
#: relative to each arrival and do not change
ARRIVAL_OFFSET_S = 1.0

#: Hydra top-level config for the run: Splitwise-sim's own config.yaml without its Ray launcher
#: (a plugin that needs Ray and a cluster address), writing into the given folder
HYDRA_CONFIG = """\
defaults:
  - cluster: dgx-a100
  - router: noop
  - arbiter: noop
  - hardware_repo: default
  - model_repo: default
  - orchestrator_repo: default
  - performance_model: constant
  - power_model: constant
  - applications: solo
  - trace: test_trace
  - start_state: orca
  - _self_
end_time: 86400
debug: False
seed: 0
output_dir: {out}
hydra:
  run:
    dir: ${{output_dir}}
  job:
    chdir: True
"""


@dataclass(frozen=True)
class SplitwiseSettings:
    """What the checkout's configuration files say about the Splitwise-HH setup."""

    commit: str
    transfer_gib_s: float  # mixed_pool's transfer_bandwidth, GiB/s per transfer
    max_batch_size: int  # start_state splitwise: per instance, prompt and token alike
    max_batch_tokens: int
    kv_bytes_per_token: int  # its estimate_kv_cache_size: 2 x hidden x layers x dtype bytes


def read_splitwise_settings(checkout: Path) -> SplitwiseSettings:
    """Read the HH setup's numbers from the checkout, so both runs use the same values."""
    files = {
        "scheduler": checkout / "configs/orchestrator_repo/schedulers/mixed_pool.yml",
        "start_state": checkout / "configs/start_state/splitwise.yaml",
        "architecture": checkout / f"configs/model_repo/architectures/{SPLITWISE_MODEL}.yaml",
        "size": checkout / f"configs/model_repo/sizes/{SPLITWISE_MODEL}-fp16.yaml",
    }
    loaded = {}
    for key, path in files.items():
        if not path.is_file():
            raise BenchError(
                f"{checkout}: not a Splitwise-sim checkout: {path.relative_to(checkout)} is missing "
                "(expected the tree of github.com/Mutinifni/splitwise-sim with its configs/ folder)."
            )
        loaded[key] = yaml.safe_load(path.read_text())
    prompt, token = loaded["start_state"]["prompt"], loaded["start_state"]["token"]
    if (prompt["max_batch_size"], prompt["max_batch_tokens"]) != (token["max_batch_size"], token["max_batch_tokens"]):
        raise BenchError(
            f"{files['start_state']}: prompt and token instances have different batch limits; this script "
            "passes one max_batch_size/max_batch_tokens to both of our pools and expects them equal."
        )
    arch, size = loaded["architecture"], loaded["size"]
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return SplitwiseSettings(
        commit=commit or "unknown (not a git checkout)",
        transfer_gib_s=float(loaded["scheduler"]["transfer_bandwidth"]),
        max_batch_size=int(prompt["max_batch_size"]),
        max_batch_tokens=int(prompt["max_batch_tokens"]),
        kv_bytes_per_token=2 * int(arch["hidden_size"]) * int(arch["num_layers"]) * int(size["dtype_size"]),
    )


def splitwise_trace(arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> pd.DataFrame:
    """Requests in Splitwise-sim's trace layout (its README, "Request Traces"), arrivals shifted."""
    n = len(arrival_s)
    return pd.DataFrame(
        {
            "request_id": np.arange(n),
            "request_type": 2,  # generative LLM inference, the only type it runs
            "application_id": 0,
            "arrival_timestamp": np.asarray(arrival_s, dtype=float) + ARRIVAL_OFFSET_S,
            "batch_size": 1,
            "prompt_size": prompt,
            "token_size": output,
        }
    )


def our_trace(arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> pd.DataFrame:
    """The same requests in our native layout."""
    return pd.DataFrame({"arrival_time_s": arrival_s, "num_input_tokens": prompt, "num_output_tokens": output})


def run_splitwise(
    checkout: Path, python: str, trace_csv: Path, work: Path, prefill: int, decode: int
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """One Splitwise-sim run: (per-request rows, per-node rows, wall seconds)."""
    out = work / "out"
    cfg_dir = work / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "side_by_side.yaml").write_text(HYDRA_CONFIG.format(out=out))
    cmd = [
        python,
        "run.py",
        "--config-dir",
        str(cfg_dir),
        "--config-name",
        "side_by_side",
        "applications.0.scheduler=mixed_pool",
        f"applications.0.model_architecture={SPLITWISE_MODEL}",
        f"applications.0.model_size={SPLITWISE_MODEL}-fp16",
        "cluster=half_half",  # its two-SKU cluster: 0 DGX-A100 and P + D DGX-H100
        "cluster.servers.0.count=0",
        f"cluster.servers.1.count={prefill + decode}",
        "start_state=splitwise",
        "start_state.split_type=homogeneous",  # first P machines prompt, next D token
        f"start_state.prompt.num_instances={prefill}",
        f"start_state.token.num_instances={decode}",
        "performance_model=db",
        f"trace.path={trace_csv}",
        "seed=0",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    detailed = out / "detailed" / "0.csv"
    if proc.returncode != 0 or not detailed.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise BenchError(
            f"Splitwise-sim failed in {checkout} (exit {proc.returncode}) with {python}: "
            + " | ".join(tail)
            + " (it needs hydra-core, omegaconf, pandas, scipy and networkx: pass --splitwise-python)"
        )
    return pd.read_csv(detailed), pd.read_csv(out / "request_nodes.csv"), wall


def harness_catalog(path: Path) -> dict:
    """Write a catalogue file with framework ``splitwise-harness``: vLLM v1's scheduling with the step
    overheads our calibration fits for the harness behind Splitwise's profile (H100-SXM, TP 8).

    bench/build_profiles.py fits them on ../shared/data/calibration/splitwise_llama2_70b_dgx.csv
    (Splitwise's measured step times, the same harness as Splitwise-sim's profile) and does not keep
    them: the built-in vLLM v1 framework assumes 1 ms per iteration. The harness is modelled with
    NCCL all-reduces, as the fit does for software that is not vLLM. Returns the overheads.
    """
    import importlib.util

    from kavier_opendc.base.errors import KavierInputError
    from kavier_opendc.calibration.report import calibrate_files

    spec = importlib.util.spec_from_file_location("build_profiles", REPO / "bench" / "build_profiles.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    missing = [s.path for s in build.sources() if not Path(s.path).is_file()]
    if missing:
        raise BenchError(f"calibration data not found: {', '.join(missing)} (set KAVIER_SHARED_DATA).")
    try:
        fit = calibrate_files(build.sources(), build.builtin_catalog_without_profiles())
    except KavierInputError as exc:
        raise BenchError(str(exc)) from None
    over = fit.fits[OUR_GPU].frameworks[f"splitwise_llama2_70b_dgx.csv tp{GPUS_PER_MACHINE}"]
    numbers = {k: float(getattr(over, k)) for k in ("fixed_s", "per_seq_s", "per_token_s", "per_token_sq_s")}
    entry = {
        "name": "splitwise-harness",
        "base": "vllm-v1",
        "allreduce": "nccl",
        "step_overhead": [{"gpu": OUR_GPU, "tp": GPUS_PER_MACHINE, **numbers}],
        "provenance": {"step_overhead": "bench/build_profiles.py's fit on splitwise_llama2_70b_dgx.csv, TP 8"},
    }
    path.write_text(yaml.safe_dump({"frameworks": [entry]}, sort_keys=False))
    return numbers


def run_ours(
    trace_csv: Path, out: Path, prefill: int, decode: int, sw: SplitwiseSettings, harness: Path | None = None
) -> tuple[pd.DataFrame, dict, float]:
    """One `kavier simulate` run as a fresh process: (requests.parquet, summary.json, wall seconds).

    ``harness``: a catalogue file from :func:`harness_catalog`, to run as ``splitwise-harness``.
    """
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
        f"{OUR_GPU}:{GPUS_PER_MACHINE}:{prefill}",
        "--decode-pool",
        f"{OUR_GPU}:{GPUS_PER_MACHINE}:{decode}",
        # Splitwise-sim's transfer bandwidth, GiB/s -> GB/s; whole-request transfers after the
        # prefill, as its mixed_pool scheduler ships them (no layer-wise overlap there)
        "--kv-link-gbs",
        f"{sw.transfer_gib_s * 1024**3 / 1e9:.6g}",
        "--kv-transfer-mode",
        "whole",
        "--max-batched-tokens",
        str(sw.max_batch_tokens),
        "--max-num-seqs",
        str(sw.max_batch_size),
        "--trace",
        str(trace_csv),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
        *(["--catalog", str(harness), "--framework", "splitwise-harness"] if harness else []),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(f"kavier simulate failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return pd.read_parquet(out / "requests.parquet"), json.loads((out / "summary.json").read_text()), wall


def our_latencies(req: pd.DataFrame) -> dict:
    """Finished requests' count and TTFT, TPOT, E2E (p50, p99) from our requests.parquet."""
    done = req[np.isfinite(req["e2e_s"])]
    return {
        "requests": len(done),
        "ttft_s": pcts(done["ttft_s"]),
        "tpot_s": pcts(done.loc[done["num_output_tokens"] > 1, "tpot_s"]),
        "e2e_s": pcts(done["e2e_s"]),
    }


def splitwise_tpot(rows: pd.DataFrame) -> np.ndarray:
    """Per request (e2e - TTFT) / (output - 1), our TPOT's definition, from Splitwise-sim's rows."""
    many = rows[rows["token_sizes"] > 1]
    return ((many["response_times"] - many["ttft_times"]) / (many["token_sizes"] - 1)).to_numpy()


def spillover(nodes: pd.DataFrame, prefill: int) -> tuple[int, int]:
    """(prompts run on token machines, decodes run on prompt machines) in Splitwise-sim's run.

    Its mixed_pool scheduler borrows a machine of the other pool when the prompt queue is long or
    the token machines' memory is full; instance i runs on the i-th machine ("h100-80gb_i").
    """
    machine = nodes["runner"].str.extract(r"_(\d+)$")[0]
    on_prompt = machine.notna() & (machine.astype(float) < prefill)
    prompts_on_token = int(((nodes["node_type"] == "PROMPT") & machine.notna() & ~on_prompt).sum())
    tokens_on_prompt = int(((nodes["node_type"] == "TOKEN") & on_prompt).sum())
    return prompts_on_token, tokens_on_prompt


def side_by_side(args: argparse.Namespace) -> dict:
    """Run both simulators on the trace and on one request alone; the numbers of the table."""
    from kavier_opendc.base.errors import KavierInputError
    from kavier_opendc.workload.trace import load_trace

    checkout = Path(args.splitwise).resolve()
    if not checkout.is_dir():
        raise BenchError(f"{checkout}: no such folder (expected a checkout of github.com/Mutinifni/splitwise-sim).")
    for name in ("prefill", "decode"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} {getattr(args, name)}: give at least one machine.")
    sw = read_splitwise_settings(checkout)
    try:
        trace = load_trace(args.trace)
    except KavierInputError as exc:
        raise BenchError(str(exc)) from None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kavier-splitwise-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = work / "splitwise_harness_catalog.yaml"
    harness_overheads = harness_catalog(harness)

    # one request alone, with the trace's median lengths: the two performance models without queueing
    probe_in = int(np.median(trace.num_input_tokens))
    probe_out = int(np.median(trace.num_output_tokens))
    cases = {
        "trace": (trace.arrival_s, trace.num_input_tokens, trace.num_output_tokens),
        "alone": (np.zeros(1), np.array([probe_in]), np.array([probe_out])),
    }
    result: dict = {
        "splitwise_commit": sw.commit,
        "trace": str(args.trace),
        "requests": len(trace),
        "prefill_machines": args.prefill,
        "decode_machines": args.decode,
        "probe": {"input_tokens": probe_in, "output_tokens": probe_out},
        "settings": sw.__dict__,
        "harness_overheads": harness_overheads,
    }
    for case, (arrival, prompt, output) in cases.items():
        folder = work / case
        folder.mkdir(exist_ok=True)
        splitwise_trace(arrival, prompt, output).to_csv(folder / "splitwise_trace.csv", index=False)
        our_trace(arrival, prompt, output).to_csv(folder / "kavier_trace.csv", index=False)
        sw_rows, sw_nodes, sw_wall = run_splitwise(
            checkout,
            args.splitwise_python,
            folder / "splitwise_trace.csv",
            folder / "splitwise",
            args.prefill,
            args.decode,
        )
        req, summary, our_wall = run_ours(folder / "kavier_trace.csv", folder / "kavier", args.prefill, args.decode, sw)
        h_req, _, h_wall = run_ours(
            folder / "kavier_trace.csv", folder / "kavier_harness", args.prefill, args.decode, sw, harness
        )
        flows = sw_nodes[sw_nodes["node_type"] == "KVCacheTransfer"]
        prompts_on_token, tokens_on_prompt = spillover(sw_nodes, args.prefill)
        result[case] = {
            "splitwise": {
                "requests": len(sw_rows),
                "ttft_s": pcts(sw_rows["ttft_times"]),
                "tbt_s": pcts(sw_rows["tbt_times"]),  # its own: (e2e - TTFT) / output tokens
                "tpot_s": pcts(splitwise_tpot(sw_rows)),
                "e2e_s": pcts(sw_rows["response_times"]),
                "wall_s": sw_wall,
                "transfers": len(flows),
                "transfer_s_mean": float((flows["completion_timestamp"] - flows["start_timestamp"]).mean())
                if len(flows)
                else math.nan,
                "prompts_on_token_machines": prompts_on_token,
                "decodes_on_prompt_machines": tokens_on_prompt,
            },
            "kavier": our_latencies(req)
            | {
                "wall_s": our_wall,
                "transfers": int(summary["disaggregation"]["link"]["transfers"]),
                # time on the link per transfer (its FIFO queue not included), like Splitwise-sim's flows
                "transfer_s_mean": float(summary["disaggregation"]["link"]["transfer_s_mean"]),
                "prompts_on_token_machines": 0,  # our pools never lend replicas to each other
                "decodes_on_prompt_machines": 0,
            },
            "kavier_harness": our_latencies(h_req) | {"wall_s": h_wall},
        }
    return result


def table(r: dict) -> str:
    """The README table (markdown): Splitwise-sim, ours, ours with the harness's step overheads."""
    t, a = r["trace"], r["alone"]
    s, k, h = t["splitwise"], t["kavier"], t["kavier_harness"]
    machines = f"{r['prefill_machines']} + {r['decode_machines']} "
    machines += f"({(r['prefill_machines'] + r['decode_machines']) * GPUS_PER_MACHINE})"
    alone = {name: f"{v['ttft_s'][0] * 1e3:.1f}, {v['tpot_s'][0] * 1e3:.1f}" for name, v in a.items()}
    speed = {name: f"{v['wall_s']:.1f}, {r['requests'] / v['wall_s']:,.0f}" for name, v in t.items()}
    lines = [
        f"Splitwise-HH, Llama-2-70B, {r['prefill_machines']} prompt + {r['decode_machines']} token DGX-H100 "
        f"machines (TP 8), {r['requests']:,} requests; Splitwise-sim commit {r['splitwise_commit'][:12]}",
        "",
        "| | Splitwise-sim | Kavier | Kavier, harness overheads |",
        "|---|---:|---:|---:|",
        f"| machines prefill + decode (GPUs) | {machines} | {machines} | {machines} |",
        f"| requests finished | {s['requests']:,} | {k['requests']:,} | {h['requests']:,} |",
        f"| TTFT p50 / p99 (ms) | {ms(s['ttft_s'])} | {ms(k['ttft_s'])} | {ms(h['ttft_s'])} |",
        f"| TPOT p50 / p99 (ms), (e2e - TTFT) / (output - 1) | {ms(s['tpot_s'])} | {ms(k['tpot_s'])} "
        f"| {ms(h['tpot_s'])} |",
        f"| Splitwise-sim's TBT p50 / p99 (ms), (e2e - TTFT) / output | {ms(s['tbt_s'])} | - | - |",
        f"| E2E p50 / p99 (ms) | {ms(s['e2e_s'])} | {ms(k['e2e_s'])} | {ms(h['e2e_s'])} |",
        f"| KV transfers, mean time (ms) | {s['transfers']:,}, {s['transfer_s_mean'] * 1e3:.2f} | "
        f"{k['transfers']:,}, {k['transfer_s_mean'] * 1e3:.2f} | |",
        f"| prompts on decode machines / decodes on prefill machines | {s['prompts_on_token_machines']:,} / "
        f"{s['decodes_on_prompt_machines']:,} | 0 / 0 | 0 / 0 |",
        f"| one request alone ({r['probe']['input_tokens']} in, {r['probe']['output_tokens']} out): "
        f"TTFT, TPOT (ms) | {alone['splitwise']} | {alone['kavier']} | {alone['kavier_harness']} |",
        f"| wall time (s), requests simulated per second | {speed['splitwise']} | {speed['kavier']} "
        f"| {speed['kavier_harness']} |",
        "",
        "harness overheads (bench/build_profiles.py's fit, H100-SXM TP 8): "
        + ", ".join(f"{k_} {v * 1e3:.6g} ms" for k_, v in r["harness_overheads"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("splitwise", help="path of a Splitwise-sim checkout (github.com/Mutinifni/splitwise-sim)")
    p.add_argument(
        "--splitwise-python", default=sys.executable, help="Python with Splitwise-sim's packages (default: this one)"
    )
    p.add_argument("--prefill", type=int, default=2, help="prompt (prefill) machines, DGX-H100 (default 2)")
    p.add_argument("--decode", type=int, default=1, help="token (decode) machines, DGX-H100 (default 1)")
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="trace file (default: Azure LLM 2023 conversation)")
    p.add_argument("--work", help="folder for the converted traces and both runs' outputs (default: a temp folder)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    return finish(p.parse_args(argv), side_by_side, table)


if __name__ == "__main__":
    sys.exit(main())
