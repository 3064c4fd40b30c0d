"""Write the example traces of ``traces/``: small traces the project generates itself, in the native layout.

    python bench/make_traces.py            # (re)write traces/*
    python bench/make_traces.py --check    # exit 1 if a file in traces/ differs from what this writes

Every trace is drawn by the synthetic generator with a fixed seed, so the
files are reproducible byte for byte (tests/test_traces.py checks it):

* ``demo_chat.csv``: the built-in demo's workload (kavier_opendc/data/demo_workload.yaml):
  3000 requests of bursty multi-turn chat with a shared 256-token system prompt;
* ``sessions_prefix.jsonl``: 400 requests of multi-turn sessions whose prompts
  carry the conversation so far, with Mooncake-style prefix-block ``hash_ids``
  (512 tokens per block): prefix caching hits across turns and on the shared
  system prompt;
* ``offline_batch.csv``: 500 independent requests all arriving at 0 (a batch job).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from kavier_opendc.experiments.demo import DEMO_WORKLOAD
from kavier_opendc.workload.synthetic import load_synthetic_spec, synthetic_trace
from kavier_opendc.workload.trace import Trace, write_trace

TRACES_DIR = Path(__file__).resolve().parents[1] / "traces"


def demo_chat() -> Trace:
    return load_synthetic_spec(DEMO_WORKLOAD)


def sessions_prefix() -> Trace:
    return synthetic_trace(
        400,
        rate=2.0,
        arrival="poisson",
        seed=7,
        input={"dist": "lognormal", "median": 200, "sigma": 0.8, "min": 8, "max": 2000},
        output={"dist": "lognormal", "median": 150, "sigma": 0.7, "min": 1, "max": 1000},
        sessions={
            "turns": {"dist": "uniform", "low": 2, "high": 6},
            "think_time_s": {"dist": "exponential", "mean": 30},
            "accumulate_context": True,
        },
        shared_prefix_tokens=1024,
        hash_ids=True,
        hash_block_size=512,
    )


def offline_batch() -> Trace:
    return synthetic_trace(
        500,
        rate=None,
        arrival="batch",
        seed=11,
        input={"dist": "lognormal", "median": 600, "sigma": 0.9, "min": 4, "max": 6000},
        output={"dist": "lognormal", "median": 200, "sigma": 0.9, "min": 1, "max": 2000},
    )


#: file name -> the function that draws it
TRACES = {"demo_chat.csv": demo_chat, "sessions_prefix.jsonl": sessions_prefix, "offline_batch.csv": offline_batch}


def write_all(out_dir: Path) -> list[Path]:
    return [write_trace(make(), out_dir / name) for name, make in TRACES.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write the example traces of traces/")
    ap.add_argument("--out", type=Path, default=TRACES_DIR, help="folder to write into (default: traces/)")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = ap.parse_args(argv)
    if not args.check:
        for p in write_all(args.out):
            print(f"wrote {p}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            name
            for name, p in zip(TRACES, write_all(Path(tmp)), strict=True)
            if not (args.out / name).is_file() or not filecmp.cmp(p, args.out / name, shallow=False)
        ]
    for name in stale:
        print(f"{args.out / name} is missing or out of date; run python bench/make_traces.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
