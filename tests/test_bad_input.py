"""The bad-input corpus: hostile and careless traces, workloads, experiment, sweep, datacenter and
catalogue files and command-line values, each run through the real CLI.

Every case must end with a non-zero exit status, no traceback, a message naming the file (or the option)
and the row or field, and no output that looks complete. Most cases run in-process through
``kavier_opendc.cli.main`` (fast); the ones that used to hang or exhaust memory run as a subprocess
(``python -m kavier_opendc.cli``) under a timeout, so that a hang fails the test instead of the CI job.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kavier_opendc.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT_S = 10  # a hostile input must fail well within this; a hang fails the test

OK_CSV = "num_input_tokens,num_output_tokens\n100,10\n200,20\n"
EXPERIMENT = "model: Llama-3-8B\ngpu: A100-80GB\ntrace: t.csv\nopendc: {enabled: false}\n"
WORKLOAD = "num_requests: 10\nrate: 1.0\ninput: 100\noutput: 10\n"
DATACENTER = (
    "name: dc\nhosts:\n  - name: node\n    count: 1\n    gpus_per_host: 1\n"
    "    cpu: {cores: 8, mhz: 2000, count: 1}\n    memory_gib: 64\n"
)

SIM = ["simulate", "--model", "llama-3-8b", "--gpu", "a100-80gb", "--out", "{d}/out", "--quiet", "--trace"]
RUN = ["run", "{d}/e.yaml", "--out", "{d}/out", "--no-opendc", "--no-plots", "--quiet"]
SWEEP = ["sweep", "{d}/s.yaml", "--out", "{d}/out", "--no-opendc", "--quiet", "--jobs", "1"]


def laughs(levels: int = 12, width: int = 10) -> str:
    """A 'billion laughs' YAML block: each anchor repeats the previous one ``width`` times."""
    lines = ["  l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "description:\n" + "\n".join(lines) + "\n"


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def experiment(**serving) -> str:
    return EXPERIMENT + "serving: " + json.dumps(serving) + "\n"


# (id, files {name: text}, argv, needles that the message must contain)
CASES: list[tuple[str, dict[str, str | bytes], list[str], list[str]]] = [
    # ---------------------------------------------------------------- traces
    (
        "trace-duplicate-column",
        {"t.csv": "num_input_tokens,num_output_tokens,num_output_tokens\n5,3,4\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "columns", "'num_output_tokens' appears more than once"],
    ),
    (
        "trace-duplicate-key-jsonl",
        {"t.jsonl": '{"num_input_tokens": 5, "num_output_tokens": 3, "num_output_tokens": 4}\n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 1", "appears more than once"],
    ),
    (
        "trace-hash-ids-too-few",
        {"t.jsonl": '{"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [1]}\n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 1", "hash_ids has 1 ids", "needs 2"],
    ),
    (
        "trace-hash-ids-too-many",
        {"t.jsonl": '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1, 2, 3]}\n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 1", "hash_ids has 3 ids"],
    ),
    (
        "trace-beyond-any-context",
        {"t.csv": "num_input_tokens,num_output_tokens\n5,3\n20000000,5\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "num_input_tokens + num_output_tokens", "--keep-overlong-requests"],
    ),
    (
        "trace-negative-tokens",
        {"t.csv": "num_input_tokens,num_output_tokens\n-5,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 1", "negative"],
    ),
    (
        "trace-zero-output",
        {"t.csv": "num_input_tokens,num_output_tokens\n5,0\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 1", "num_output_tokens"],
    ),
    (
        "trace-not-a-number",
        {"t.csv": "num_input_tokens,num_output_tokens\n5,3\nabc,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "not a number"],
    ),
    (
        "trace-fractional-tokens",
        {"t.csv": "num_input_tokens,num_output_tokens\n5.5,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 1", "whole number"],
    ),
    (
        "trace-time-backwards",
        {"t.csv": "arrival_time_s,num_input_tokens,num_output_tokens\n5,5,3\n1,5,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "goes backwards"],
    ),
    (
        "trace-span-beyond-ten-years",
        {"t.csv": "arrival_time_s,num_input_tokens,num_output_tokens\n0,5,3\n1e12,5,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "arrival_time_s", "limit"],
    ),
    (
        "trace-missing-cell",
        {"t.csv": "num_input_tokens,num_output_tokens\n5,3\n,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "missing"],
    ),
    (
        "trace-infinite-tokens",
        {"t.csv": "num_input_tokens,num_output_tokens\ninf,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 1", "finite"],
    ),
    (
        "trace-huge-tokens",
        {"t.csv": "num_input_tokens,num_output_tokens\n100000000000000000000,3\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 1"],
    ),
    ("trace-unknown-columns", {"t.csv": "a,b\n1,2\n"}, SIM + ["{d}/t.csv"], ["t.csv", "columns", "cannot recognise"]),
    ("trace-empty-file", {"t.csv": ""}, SIM + ["{d}/t.csv"], ["t.csv", "empty"]),
    (
        "trace-header-only",
        {"t.csv": "num_input_tokens,num_output_tokens\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "no requests"],
    ),
    ("trace-is-a-directory", {"tdir/keep.txt": ""}, SIM + ["{d}/tdir"], ["tdir", "is a directory"]),
    ("trace-missing-file", {}, SIM + ["{d}/nope.csv"], ["nope.csv", "not found"]),
    ("trace-unsupported-extension", {"t.txt": OK_CSV}, SIM + ["{d}/t.txt"], ["t.txt", "unsupported file extension"]),
    (
        "trace-ragged-row",
        {"t.csv": "num_input_tokens,num_output_tokens\n5,3\n5,3,7,8\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row"],
    ),
    (
        "trace-invalid-json-line",
        {"t.jsonl": '{"num_input_tokens": 5, "num_output_tokens": 3}\n{"num_input_tokens": \n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 2 (line 2)", "invalid JSON"],
    ),
    ("trace-json-line-not-object", {"t.jsonl": "[5, 3]\n"}, SIM + ["{d}/t.jsonl"], ["t.jsonl", "row 1", "JSON object"]),
    (
        "trace-input-token-ids-mismatch",
        {"t.jsonl": '{"num_input_tokens": 5, "num_output_tokens": 3, "input_tokens": [1, 2]}\n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 1", "input_tokens has 2 token ids"],
    ),
    (
        "trace-session-missing",
        {"t.csv": "num_input_tokens,num_output_tokens,session_id\n5,3,a\n5,3,\n"},
        SIM + ["{d}/t.csv"],
        ["t.csv", "row 2", "session_id"],
    ),
    (
        "trace-hash-ids-not-a-list",
        {"t.jsonl": '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": "x"}\n'},
        SIM + ["{d}/t.jsonl"],
        ["t.jsonl", "row 1", "hash_ids"],
    ),
    ("trace-deep-json-array", {"t.json": "[" + deep_json(50_000) + "]"}, SIM + ["{d}/t.json"], ["t.json", "nested"]),
    (
        "trace-validate-duplicate-column",
        {"t.csv": "num_input_tokens,num_input_tokens,num_output_tokens\n5,5,3\n"},
        ["validate", "{d}/t.csv"],
        ["t.csv", "columns", "'num_input_tokens' appears more than once"],
    ),
    ("trace-binary-json", {"t.json": b"\x87\xff{\x00"}, SIM + ["{d}/t.json"], ["t.json", "not UTF-8"]),
    ("experiment-binary", {"e.yaml": b"\x87\xff\x00model"}, RUN, ["e.yaml"]),
    ("trace-bad-format-name", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--trace-format", "nope"], ["t.csv", "nope"]),
    # ---------------------------------------------------------------- synthetic workloads
    (
        "workload-absurd-requests",
        {"w.yaml": WORKLOAD.replace("10\n", "1000000000000\n", 1)},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.num_requests", "limit"],
    ),
    (
        "workload-rate-too-small",
        {"w.yaml": WORKLOAD.replace("rate: 1.0", "rate: 0.0000000001")},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.rate", "ten years"],
    ),
    (
        "workload-rate-too-large",
        {"w.yaml": WORKLOAD.replace("rate: 1.0", "rate: 1.0e+15")},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.rate", "limit"],
    ),
    (
        "workload-heavy-tail",
        {"w.yaml": WORKLOAD.replace("input: 100", "input: {dist: lognormal, median: 5000000, sigma: 3}")},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.input", "limit"],
    ),
    (
        "workload-constant-beyond-context",
        {"w.yaml": WORKLOAD.replace("input: 100", "input: 50000000")},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.input", "limit"],
    ),
    (
        "workload-absurd-sessions",
        {"w.yaml": "rate: 1.0\ninput: 100\noutput: 10\nsessions: {num_sessions: 1000000000000, turns: 2}\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "num_sessions", "limit"],
    ),
    (
        "workload-think-time-beyond-limit",
        {"w.yaml": WORKLOAD + "sessions: {turns: 2, think_time_s: {dist: exponential, mean: 1.0e+12}}\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "think_time_s", "limit"],
    ),
    (
        "workload-absurd-cv",
        {"w.yaml": WORKLOAD + "arrival: gamma\ncv: 1.0e+300\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.cv", "limit"],
    ),
    (
        "workload-absurd-turns",
        {"w.yaml": WORKLOAD + "sessions: {turns: 1000000000000000000000000000000}\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.sessions.turns", "limit"],
    ),
    (
        "workload-absurd-integer-length",
        {"w.yaml": WORKLOAD.replace("output: 10", "output: 1000000000000000000000000000000")},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.output", "limit"],
    ),
    (
        "workload-deep-json",
        {"w.json": '{"description": ' + deep_json() + "}"},
        SIM + ["{d}/w.json"],
        ["w.json", "nested deeper"],
    ),
    ("workload-negative-seed", {"w.yaml": WORKLOAD + "seed: -3\n"}, SIM + ["{d}/w.yaml"], ["w.yaml", "seed"]),
    (
        "workload-missing-output",
        {"w.yaml": "num_requests: 10\nrate: 1.0\ninput: 100\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "output"],
    ),
    (
        "workload-duplicate-key",
        {"w.yaml": WORKLOAD + "rate: 2.0\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "duplicate key 'rate'"],
    ),
    ("workload-unknown-key", {"w.yaml": WORKLOAD + "rates: 2.0\n"}, SIM + ["{d}/w.yaml"], ["w.yaml", "rates"]),
    # ---------------------------------------------------------------- experiments
    (
        "experiment-absurd-replicas",
        {"e.yaml": experiment(replicas=10**12), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.replicas", "limit"],
    ),
    (
        "experiment-tp-not-dividing-heads",
        {"e.yaml": experiment(tp=3), "t.csv": "bad,columns\n1,2\n"},
        RUN,
        ["e.yaml", "serving.tp", "attention heads"],
    ),
    ("experiment-absurd-tp", {"e.yaml": experiment(tp=10**9), "t.csv": OK_CSV}, RUN, ["e.yaml", "serving.tp", "limit"]),
    (
        "experiment-max-model-len-beyond-window",
        {"e.yaml": experiment(max_model_len=100_000), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.max_model_len", "context window", "allow_long_max_model_len"],
    ),
    (
        "experiment-absurd-max-num-seqs",
        {"e.yaml": experiment(max_num_seqs=10**12), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.max_num_seqs", "limit"],
    ),
    (
        "experiment-absurd-kv-blocks",
        {"e.yaml": experiment(num_kv_blocks=10**15), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.num_kv_blocks", "limit"],
    ),
    (
        "experiment-absurd-host-cache",
        {"e.yaml": experiment(prefix_cache={"policy": "block", "host_memory_gb": 1e12}), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.prefix_cache.host_memory_gb", "limit"],
    ),
    (
        "experiment-absurd-batched-tokens",
        {"e.yaml": experiment(max_batched_tokens=10**12), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.max_batched_tokens", "limit"],
    ),
    (
        "experiment-unknown-usage",
        {"e.yaml": experiment(usage="batch"), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.usage", "offline"],
    ),
    ("experiment-negative-seed", {"e.yaml": EXPERIMENT + "seed: -1\n", "t.csv": OK_CSV}, RUN, ["e.yaml", "seed"]),
    (
        "experiment-trace-is-a-directory",
        {"e.yaml": EXPERIMENT.replace("t.csv", "tdir"), "tdir/keep.txt": ""},
        RUN,
        ["e.yaml", "trace", "is a directory"],
    ),
    (
        "experiment-unknown-model",
        {"e.yaml": EXPERIMENT.replace("Llama-3-8B", "gpt-9"), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "model", "gpt-9"],
    ),
    (
        "experiment-inline-absurd-workload",
        {
            "e.yaml": EXPERIMENT.replace(
                "trace: t.csv", "trace: {synthetic: {num_requests: 1000000000000, rate: 1, input: 100, output: 10}}"
            )
        },
        RUN,
        ["e.yaml", "trace.synthetic.num_requests", "limit"],
    ),
    (
        "experiment-datacenter-absurd-hosts",
        {
            "e.yaml": EXPERIMENT.replace("opendc: {enabled: false}\n", "") + "datacenter: dc.yaml\n",
            "dc.yaml": DATACENTER.replace("count: 1\n", "count: 1000000000000\n", 1),
            "t.csv": OK_CSV,
        },
        RUN,
        ["e.yaml", "datacenter", "hosts[0].count", "limit"],
    ),
    (
        "experiment-datacenter-absurd-gpus-per-host",
        {
            "e.yaml": EXPERIMENT.replace("opendc: {enabled: false}\n", "") + "datacenter: dc.yaml\n",
            "dc.yaml": DATACENTER.replace("gpus_per_host: 1", "gpus_per_host: 100000"),
            "t.csv": OK_CSV,
        },
        RUN,
        ["e.yaml", "gpus_per_host", "limit"],
    ),
    (
        "experiment-duplicate-key",
        {"e.yaml": EXPERIMENT + "gpu: H100-SXM\n", "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "duplicate key 'gpu'"],
    ),
    (
        "experiment-not-finite",
        {"e.yaml": EXPERIMENT + "slo: {ttft_s: .nan}\n", "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "slo.ttft_s", "finite"],
    ),
    (
        "experiment-absurd-carbon-step",
        {
            "e.yaml": EXPERIMENT + "carbon: {synthetic: {mean: 300, amplitude: 100, step_minutes: 1.0e+300}}\n",
            "t.csv": OK_CSV,
        },
        RUN,
        ["e.yaml", "carbon.synthetic.step_minutes", "limit"],
    ),
    ("experiment-not-a-mapping", {"e.yaml": "- a\n- b\n", "t.csv": OK_CSV}, RUN, ["e.yaml", "not a mapping"]),
    (
        "experiment-deep-yaml",
        {"e.yaml": "description: " + deep_json(), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "nested deeper"],
    ),
    (
        "experiment-out-is-a-file",
        {"e.yaml": EXPERIMENT, "t.csv": "bad,columns\n1,2\n", "out": "a file\n"},
        RUN,
        ["--out", "not a directory"],
    ),
    (
        "experiment-validate-absurd",
        {"e.yaml": experiment(replicas=10**12), "t.csv": OK_CSV},
        ["validate", "{d}/e.yaml"],
        ["e.yaml", "serving.replicas", "limit"],
    ),
    # ---------------------------------------------------------------- sweeps
    (
        "sweep-too-many-configurations",
        {
            "s.yaml": "base: e.yaml\naxes:\n" + "".join(f"  seed_{i}: [1, 2, 3]\n" for i in range(11)),  # 3**11 runs
            "e.yaml": EXPERIMENT,
            "t.csv": OK_CSV,
        },
        SWEEP,
        ["s.yaml", "axes", "limit"],
    ),
    (
        "sweep-absurd-replicas-axis",
        {
            "s.yaml": "base: e.yaml\naxes:\n  serving.replicas: [1, 1000000000000]\n",
            "e.yaml": EXPERIMENT,
            "t.csv": OK_CSV,
        },
        SWEEP,
        ["s.yaml", "configuration 1", "serving.replicas", "limit"],
    ),
    (
        "sweep-absurd-jobs",
        {"s.yaml": "base: e.yaml\njobs: 1000000000\naxes:\n  seed: [1]\n", "e.yaml": EXPERIMENT, "t.csv": OK_CSV},
        SWEEP,
        ["s.yaml", "jobs", "limit"],
    ),
    ("sweep-missing-base", {"s.yaml": "base: nope.yaml\naxes:\n  seed: [1]\n"}, SWEEP, ["s.yaml", "base", "not found"]),
    (
        "sweep-deep-json",
        {"s.json": '{"base": ' + deep_json() + "}"},
        ["sweep", "{d}/s.json", "--out", "{d}/out", "--no-opendc"],
        ["s.json", "nested deeper"],
    ),
    (
        "sweep-duplicate-key",
        {"s.yaml": "base: e.yaml\nbase: e.yaml\naxes:\n  seed: [1]\n", "e.yaml": EXPERIMENT, "t.csv": OK_CSV},
        SWEEP,
        ["s.yaml", "duplicate key 'base'"],
    ),
    # ---------------------------------------------------------------- catalogues and datacenters
    (
        "catalog-absurd-gpu-memory",
        {
            "c.yaml": "gpus:\n  - {name: G, vendor: X, peak_fp16_tflops: 100, mem_bandwidth_gbs: 1000,"
            " memory_gib: 1.0e+12, idle_power_w: 50, max_power_w: 300, price_per_hour: 1, interconnect_gbs: 100,"
            " pcie_gbs: 32, boost_clock_mhz: 1500, num_sms: 100}\n"
        },
        ["catalog", "--catalog", "{d}/c.yaml"],
        ["c.yaml", "gpus[0].memory_gib", "limit"],
    ),
    (
        "catalog-absurd-context",
        {
            "c.yaml": "models:\n  - {name: M, num_layers: 32, hidden_size: 4096, num_attention_heads: 32,"
            " num_kv_heads: 8, ffn_size: 14336, vocab_size: 128256, total_params: 8.0e+9, dtype: bf16,"
            " max_context: 1000000000000}\n"
        },
        ["catalog", "--catalog", "{d}/c.yaml"],
        ["c.yaml", "models[0].max_context", "limit"],
    ),
    (
        "catalog-absurd-params",
        {
            "c.yaml": "models:\n  - {name: M, num_layers: 32, hidden_size: 4096, num_attention_heads: 32,"
            " num_kv_heads: 8, ffn_size: 14336, vocab_size: 128256, total_params: 1.0e+20, dtype: bf16}\n"
        },
        ["catalog", "--catalog", "{d}/c.yaml"],
        ["c.yaml", "models[0].total_params", "limit"],
    ),
    (
        "catalog-deep-yaml",
        {"c.yaml": "models: " + deep_json()},
        ["catalog", "--catalog", "{d}/c.yaml"],
        ["c.yaml", "nested deeper"],
    ),
    (
        "catalog-duplicate-key",
        {"c.yaml": "models: []\nmodels: []\n"},
        ["catalog", "--catalog", "{d}/c.yaml"],
        ["c.yaml", "duplicate key 'models'"],
    ),
    ("catalog-not-a-mapping", {"c.yaml": "- 1\n"}, ["catalog", "--catalog", "{d}/c.yaml"], ["c.yaml"]),
    (
        "datacenter-absurd-total-gpus",
        {
            "dc.yaml": DATACENTER.replace("count: 1\n", "count: 1000000\n", 1).replace(
                "gpus_per_host: 1", "gpus_per_host: 64"
            )
        },
        ["validate", "{d}/dc.yaml"],
        ["dc.yaml", "hosts", "64,000,000 GPUs in all"],
    ),
    (
        "datacenter-absurd-cores",
        {"dc.yaml": DATACENTER.replace("cores: 8", "cores: 100000000")},
        ["validate", "{d}/dc.yaml"],
        ["dc.yaml", "cores", "limit"],
    ),
    (
        "opendc-dir-deep-json",
        {"odc/experiment.json": deep_json()},
        ["opendc", "{d}/odc"],
        ["experiment.json", "nested deeper"],
    ),
    # ---------------------------------------------------------------- command-line values
    ("cli-negative-seed", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--seed", "-1"], ["--seed", ">= 0"]),
    ("cli-seed-not-a-number", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--seed", "abc"], ["--seed", "integer"]),
    ("cli-seed-too-large", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--seed", str(2**64)], ["--seed", "limit"]),
    ("cli-zero-replicas", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--replicas", "0"], ["--replicas", ">= 1"]),
    ("cli-absurd-replicas", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--replicas", str(10**12)], ["--replicas", "limit"]),
    ("cli-zero-tp", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--tp", "0"], ["--tp"]),
    ("cli-tp-not-dividing-heads", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--tp", "3"], ["--tp", "attention heads"]),
    ("cli-negative-max-num-seqs", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--max-num-seqs", "-3"], ["--max-num-seqs"]),
    (
        "cli-absurd-batched-tokens",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--max-batched-tokens", str(10**12)],
        ["--max-batched-tokens", "limit"],
    ),
    ("cli-zero-kv-blocks", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--num-kv-blocks", "0"], ["--num-kv-blocks"]),
    ("cli-unknown-router", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--router", "fastest"], ["--router", "fastest"]),
    (
        "cli-memory-fraction-above-one",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--gpu-memory-utilization", "1.5"],
        ["--gpu-memory-utilization"],
    ),
    (
        "cli-memory-fraction-nan",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--gpu-memory-utilization", "nan"],
        ["--gpu-memory-utilization"],
    ),
    ("cli-negative-host-cache", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--host-cache-gb", "-1"], ["--host-cache-gb"]),
    (
        "cli-infinite-host-cache",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--host-cache-gb", "inf"],
        ["--host-cache-gb", "finite"],
    ),
    (
        "cli-negative-min-tokens",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--prefix-cache-min-tokens", "-1"],
        ["--prefix-cache-min-tokens"],
    ),
    (
        "cli-negative-capacity",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--prefix-cache-capacity-tokens", "-5"],
        ["--prefix-cache-capacity-tokens"],
    ),
    ("cli-max-model-len-one", {"t.csv": OK_CSV}, SIM + ["{d}/t.csv", "--max-model-len", "1"], ["--max-model-len"]),
    (
        "cli-max-model-len-beyond-window",
        {"t.csv": OK_CSV},
        SIM + ["{d}/t.csv", "--max-model-len", "100000"],
        ["--max-model-len", "context window", "--allow-long-max-model-len"],
    ),
    ("cli-sweep-zero-jobs", {}, ["sweep", "{d}/s.yaml", "--out", "{d}/out", "--jobs", "0"], ["--jobs"]),
    (
        "cli-negative-tolerance",
        {},
        ["export-opendc", "{d}/sim", "--datacenter", "{d}/dc.yaml", "--out", "{d}/out", "--tolerance", "-1"],
        ["--tolerance"],
    ),
    (
        "cli-zero-interval",
        {},
        ["export-opendc", "{d}/sim", "--datacenter", "{d}/dc.yaml", "--out", "{d}/out", "--interval", "0"],
        ["--interval"],
    ),
    (
        "cli-price-nan",
        {},
        ["efficiency", "--tasks", "{d}/t.parquet", "--opendc", "{d}/p.parquet", "--price", "nan"],
        ["--price"],
    ),
    (
        "cli-trace-negative-seed",
        {},
        ["trace", "http://127.0.0.1:9", "--model", "m", "--out", "{d}/out", "--seed", "-2"],
        ["--seed"],
    ),
    (
        "calibrate-directory",
        {"mdir/keep.txt": ""},
        ["calibrate", "{d}/mdir", "--out", "{d}/out.yaml"],
        ["mdir", "is a directory"],
    ),
    (
        "sweep-is-a-directory",
        {"sdir/keep.txt": ""},
        ["sweep", "{d}/sdir", "--out", "{d}/out"],
        ["sdir", "is a directory, not a sweep file"],
    ),
    ("cli-calibrate-zero-tp", {}, ["calibrate", "{d}/m.csv", "--out", "{d}/out.yaml", "--tp", "0"], ["--tp"]),
]

#: cases that hung, exhausted memory or recursed before this corpus: run as a subprocess under a timeout
SUBPROCESS_CASES = [
    (
        "hang-experiment-replicas",
        {"e.yaml": experiment(replicas=10**12), "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "serving.replicas", "limit"],
    ),
    (
        "hang-workload-terabytes",
        {"w.yaml": WORKLOAD.replace("10\n", "1000000000000\n", 1)},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "$.num_requests", "limit"],
    ),
    ("laughs-experiment", {"e.yaml": EXPERIMENT + laughs(), "t.csv": OK_CSV}, RUN, ["e.yaml", "aliases", "limit"]),
    ("laughs-workload", {"w.yaml": WORKLOAD + laughs()}, SIM + ["{d}/w.yaml"], ["w.yaml", "aliases", "limit"]),
    ("laughs-catalog", {"c.yaml": laughs()}, ["catalog", "--catalog", "{d}/c.yaml"], ["c.yaml", "aliases"]),
    (
        "laughs-sweep",
        {"s.yaml": "base: e.yaml\naxes:\n  seed: [1]\n" + laughs(), "e.yaml": EXPERIMENT, "t.csv": OK_CSV},
        SWEEP,
        ["s.yaml", "aliases"],
    ),
    ("laughs-datacenter", {"dc.yaml": DATACENTER + laughs()}, ["validate", "{d}/dc.yaml"], ["dc.yaml", "aliases"]),
    (
        "deep-json-experiment",
        {"e.json": deep_json(), "t.csv": OK_CSV},
        ["run", "{d}/e.json", "--out", "{d}/out", "--no-opendc"],
        ["e.json", "nested deeper"],
    ),
    (
        "deep-yaml-block-experiment",
        {"e.yaml": "- " * 100_000 + "x\n", "t.csv": OK_CSV},
        RUN,
        ["e.yaml", "nested deeper"],
    ),
    (
        "deep-yaml-mapping-workload",
        {"w.yaml": "".join(" " * i + f"k{i}:\n" for i in range(3000)) + " " * 3000 + "x\n"},
        SIM + ["{d}/w.yaml"],
        ["w.yaml", "nested deeper"],
    ),
]


def _write(d: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")


def _argv(argv: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in argv]


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, err.getvalue() + out.getvalue()


def _assert_refused(rc: int, text: str, needles: list[str], d: Path) -> None:
    assert rc != 0, f"accepted (exit 0):\n{text}"
    assert "Traceback" not in text, text
    assert "kavier: error:" in text or "error: argument" in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    out = d / "out"
    if out.is_dir():  # nothing that looks like a finished result
        assert (out / "INCOMPLETE").exists() or not any(
            (out / name).exists() for name in ("report.json", "summary.json", "sweep.json", "comparison.csv")
        ), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("name,files,argv,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused(tmp_path, name, files, argv, needles):
    _write(tmp_path, files)
    t0 = time.perf_counter()
    rc, text = _run_in_process(_argv(argv, tmp_path))
    assert time.perf_counter() - t0 < SUBPROCESS_TIMEOUT_S
    _assert_refused(rc, text, needles, tmp_path)


@pytest.mark.parametrize("name,files,argv,needles", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_hostile_input_fails_fast_in_the_real_cli(tmp_path, name, files, argv, needles):
    _write(tmp_path, files)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kavier_opendc.cli", *_argv(argv, tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: still running after {SUBPROCESS_TIMEOUT_S} s (a hang)")
    _assert_refused(proc.returncode, proc.stderr + proc.stdout, needles, tmp_path)


def test_corpus_size():
    """Issue 11's acceptance: at least 60 bad inputs across traces, workloads, experiment, sweep and
    catalogue files and CLI values."""
    assert len(CASES) + len(SUBPROCESS_CASES) >= 60
