from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kavier_opendc.engine.cost_model import Efficiency
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
# 1 layer, 1 head of 128 dims, 1e9 parameters in fp16 (2e9 weight bytes), KV = 2*1*1*128*2 = 512 B/token;
# 100 TFLOP/s and 1000 GB/s at 100 % efficiency, perfect overlap, 1 ms per-iteration overhead.
TOY_MODEL = ModelSpec(name="toy", num_layers=1, hidden_size=128, num_attention_heads=1, num_kv_heads=1,
                      ffn_size=512, vocab_size=1000, total_params=1e9, active_params=1e9, dtype="fp16")
TOY_GPU = GPUSpec(name="toygpu", vendor="none", peak_fp16_tflops=100.0, mem_bandwidth_gbs=1000.0,
                  memory_gib=80.0, idle_power_w=50.0, max_power_w=300.0, price_per_hour=1.0,
                  interconnect_gbs=100.0, pcie_gbs=32.0, boost_clock_mhz=1000.0, num_sms=100)
TOY_EFF = Efficiency(mfu=1.0, attn_eff=1.0, mbu=1.0, overlap=0.0, overhead_s=0.001)


def make_trace(arrivals, prompts, outputs) -> Trace:
    return Trace(np.asarray(arrivals, dtype=np.float64), np.asarray(prompts, dtype=np.int64),
                 np.asarray(outputs, dtype=np.int64), source="test", format="kavier")
