"""Do two checkouts give byte-identical outputs? Runs the same `kavier simulate` cases and `kavier demo` in
each (with its own package on PYTHONPATH) and compares every file.

A refactoring must leave these unchanged. JSON files are compared with their timing and path fields
removed (wall times, dates, the output folder's own path); every Parquet and PNG file byte for byte (Markdown and
HTML pages hold paths and times, and are built from the JSON beside them).

    python bench/same_outputs.py OLD_CHECKOUT [NEW_CHECKOUT]      # NEW defaults to this checkout
    python bench/same_outputs.py /tmp/old --no-demo
    python bench/same_outputs.py /tmp/old --case pd-1p1d-layerwise --case pd-pools
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or HERE.parent / "shared" / "data")

#: name -> `kavier simulate` arguments (the trace first)
CASES: dict[str, list[str]] = {
    "azure-conv": [
        "--trace",
        f"{DATA}/traces/azure_llm_2023_conv.csv",
        "--model",
        "Llama-2-7B",
        "--gpu",
        "A100-80GB",
        "--replicas",
        "2",
    ],
    "mooncake-prefix": [
        "--trace",
        f"{DATA}/traces/mooncake_conversation.jsonl",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "A100-80GB",
        "--prefix-cache",
        "block",
    ],
    "llama70b-preempting": [
        "--trace",
        f"{DATA}/traces/azure_llm_2023_code.csv",
        "--model",
        "Llama-2-70B",
        "--gpu",
        "A100-80GB",
        "--tp",
        "4",
        "--num-kv-blocks",
        "2000",
    ],
    "vllm-0.5-server": [
        "--trace",
        f"{DATA}/traces/azure_llm_2023_conv.csv",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "H100-SXM",
        "--framework",
        "vllm-0.5-server",
    ],
    # the README's disaggregated examples ("Disaggregated prefill/decode", "Several pools per role")
    "pd-1p1d-layerwise": [
        "--trace",
        f"{DATA}/traces/azure_llm_2023_conv.csv",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "A100-80GB",
        "--prefill-replicas",
        "1",
        "--decode-replicas",
        "1",
        "--decode-gpu",
        "H100-SXM",
        "--kv-transfer-mode",
        "layerwise",
        "--max-model-len",
        "8192",
    ],
    "pd-pools": [
        "--trace",
        f"{DATA}/traces/azure_llm_2023_conv.csv",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "A100-80GB",
        "--prefill-pool",
        "H100-SXM:1:1",
        "--decode-pool",
        "A100-80GB:1:1",
        "--decode-pool",
        "H100-SXM:1:1",
        "--kv-link-pair",
        "0:1:450:1e-6",
        "--kv-transfer-mode",
        "layerwise",
        "--max-model-len",
        "8192",
    ],
}
#: JSON keys whose values are times of the run or paths of its folder, not results
VOLATILE = {
    "wall_s",
    "started",
    "finished",
    "started_at",
    "finished_at",
    "command",
    "path",
    "paths",
    "out",
    "raw_output",
    "topology",
    "experiment",
    "created",
    "date",
    "versions",
    "library_versions",
    "wall_time_s",
    "elapsed_s",
    "host",
    "python",
    "source",
    "inputs",
    "input_files",
    "files",
    "carbon_trace",
    "stages",
    "timings",
    "requests_per_s",
    "provenance",
    "cwd",
    "pathToFile",
    "outputFolder",
    "carbonTracePath",
}


def run(checkout: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    r = subprocess.run(
        [sys.executable, "-m", "kavier_opendc.cli", *args], cwd=checkout, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"{checkout}: kavier {' '.join(args)} failed:\n{r.stderr}")


def scrub(value):
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def compare(a: Path, b: Path, roots: tuple[Path, Path]) -> list[str]:
    """The files that differ between folders a and b (or exist in one only); in JSON files the two
    checkouts' paths (``roots``) count as the same."""

    def files(d: Path) -> set[Path]:
        # output/inputs/ holds OpenDC's copies of the inputs with their paths resolved: paths, not results
        return {p.relative_to(d) for p in d.rglob("*") if p.is_file() and "inputs" not in p.relative_to(d).parts}

    fa, fb = files(a), files(b)
    out = [f"only in one: {p}" for p in sorted(fa ^ fb)]
    for rel in sorted(fa & fb):
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if x == y:
            continue
        if rel.suffix == ".json":
            x, y = (t.replace(str(r).encode(), b"<checkout>") for t, r in ((x, roots[0]), (y, roots[1])))
            if scrub(json.loads(x)) == scrub(json.loads(y)):
                continue
        elif rel.suffix in (".md", ".html", ".jsonl", ".log"):
            continue  # text holding paths and times; the JSON beside it carries the numbers
        out.append(f"differs: {rel}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=HERE)
    ap.add_argument("--no-demo", action="store_true", help="only the simulate cases (no JVM)")
    ap.add_argument(
        "--case", action="append", choices=sorted(CASES), help="run only this simulate case (repeatable; no demo)"
    )
    args = ap.parse_args(argv)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="kavier-same-") as tmp:
        picked = args.case or list(CASES)
        cases = {name: ["simulate", *CASES[name], "--quiet"] for name in picked}
        if args.case:
            args.no_demo = True
        if not args.no_demo:
            cases["demo"] = ["demo", "--quiet"]
        for name, cmd in cases.items():
            dirs = []
            for side, checkout in (("old", args.old), ("new", args.new)):
                d = Path(tmp) / side / name
                run(checkout.resolve(), [*cmd, "--out", str(d)])
                dirs.append(d)
            diffs = compare(dirs[0], dirs[1], roots=(args.old.resolve(), args.new.resolve()))
            bad += bool(diffs)
            print(f"{name:22} {'identical' if not diffs else 'DIFFERENT: ' + '; '.join(diffs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
