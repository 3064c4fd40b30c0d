"""TPOT vs batch with and without speculative decoding (README table): B requests at t=0, 512-token prompts,
256 output tokens, max_num_seqs = B, Llama-3-8B on one H100-SXM (catalogue profile)."""

from __future__ import annotations

import sys

import numpy as np

from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs import default_catalog
from kavier_opendc.workload.trace import Trace


def tpot(batch: int, model: str = "Llama-3-8B", gpu: str = "H100-SXM", **spec) -> float:
    cat = default_catalog()
    n = batch
    tr = Trace(np.zeros(n), np.full(n, 512), np.full(n, 256))
    cfg = SimConfig(model=cat.model(model), gpu=cat.gpu(gpu), max_num_seqs=batch, max_batched_tokens=16384, **spec)
    r = simulate(tr, cfg, progress=False).results
    return float(np.mean((r.finish - r.first_token) / 255.0))


SETUPS = {
    "off": {},
    "ngram k=3 a=0.7": dict(speculative_method="ngram", num_speculative_tokens=3, spec_acceptance_rate=0.7),
    "ngram k=3 a=0.5": dict(speculative_method="ngram", num_speculative_tokens=3, spec_acceptance_rate=0.5),
    "eagle k=3 (a=0.75)": dict(speculative_method="eagle", num_speculative_tokens=3),
    "draft Llama-3.2-1B k=3 (a=0.6)": dict(
        speculative_method="draft", num_speculative_tokens=3, draft_model="Llama-3.2-1B"
    ),
}

if __name__ == "__main__":
    batches = [int(b) for b in sys.argv[1:]] or [1, 8, 32, 64, 128, 256, 512, 1024]
    print("| batch | " + " | ".join(SETUPS) + " |")
    print("|---:|" + "---:|" * len(SETUPS))
    for b in batches:
        print(f"| {b} | " + " | ".join(f"{tpot(b, **s) * 1e3:.2f}" for s in SETUPS.values()) + " |")
