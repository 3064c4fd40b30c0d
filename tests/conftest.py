from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kavier_opendc.specs.profiles import KNEE_MAX, GPUProfile
from kavier_opendc.specs.catalog import GPUSpec, ModelSpec
from kavier_opendc.workload.trace import Trace

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(rel: str) -> Path:
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared data {p} not available")
    return p


# A toy model and GPU with round numbers, so iteration times can be worked out by hand:
# 1 layer, 1 head of 128 dims, 1e9 parameters in fp16 (2e9 weight bytes, the LM head of 1000 x 128 tied
# to the embedding), KV = 2*1*1*128*2 = 512 B/token; 100 TFLOP/s and 1000 GB/s at 100 % efficiency,
# the ideal roofline max(memory, compute) per GEMM, 1 ms per-iteration overhead (see toy_time).
TOY_MODEL = ModelSpec(name="toy", num_layers=1, hidden_size=128, num_attention_heads=1, num_kv_heads=1,
                      ffn_size=512, vocab_size=1000, total_params=1e9, active_params=1e9, dtype="fp16",
                      tie_word_embeddings=True)
TOY_GPU = GPUSpec(name="toygpu", vendor="none", peak_fp16_tflops=100.0, mem_bandwidth_gbs=1000.0,
                  memory_gib=80.0, idle_power_w=50.0, max_power_w=300.0, price_per_hour=1.0,
                  interconnect_gbs=100.0, pcie_gbs=32.0, boost_clock_mhz=1000.0, num_sms=100)
TOY_EFF = GPUProfile(gpu="toygpu", status="assumed", gemm_mbu=1.0, gemm_mfu=1.0, gemm_knee=KNEE_MAX,
                     attn_prefill_eff=1.0, attn_decode_mbu=1.0, overhead_fixed_s=0.001, overhead_per_seq_s=0.0)

TOY_HEAD = 1000 * 128           # LM-head parameters (tied: the only embedding matrix)
TOY_BODY = 1e9 - TOY_HEAD       # the other parameters


def toy_time(n_tokens: float, n_seqs: float, pairs: float, kv_tokens: float) -> float:
    """One iteration of TOY_MODEL on TOY_GPU under TOY_EFF, by hand (specs/profiles.py's formula).

    GEMMs: max(weight bytes / 1e12, FLOPs / 1e14) for the body (all tokens) and the LM head
    (sampled sequences); attention: 512 FLOPs per pair / 1e14 + 512 KV bytes per token / 1e12.
    """
    body = max(2 * TOY_BODY / 1e12, 2 * TOY_BODY * n_tokens / 1e14)
    head = max(2 * TOY_HEAD / 1e12, 2 * TOY_HEAD * n_seqs / 1e14)
    return body + head + 512 * pairs / 1e14 + 512 * kv_tokens / 1e12 + 1e-3


def make_trace(arrivals, prompts, outputs) -> Trace:
    return Trace(np.asarray(arrivals, dtype=np.float64), np.asarray(prompts, dtype=np.int64),
                 np.asarray(outputs, dtype=np.int64), source="test", format="kavier")
