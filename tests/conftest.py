from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kavier_opendc.specs.catalog import GPUSpec, ModelSpec
from kavier_opendc.specs.profiles import KNEE_MAX, GPUProfile
from kavier_opendc.workload.trace import Trace

REPO = Path(__file__).resolve().parents[1]
# The project's shared data (never committed): beside the checkout, or where $KAVIER_SHARED_DATA says.
SHARED_DATA = Path(os.environ.get("KAVIER_SHARED_DATA") or REPO.parent / "shared" / "data")

# ------------------------------------------------------------------------------ OpenDC availability
# One place decides whether the real OpenDC can run. A test that needs it is skipped with a reason that
# starts with OPENDC_SKIP; such skips are counted in one line at the end of the run, and they fail the run
# under KAVIER_REQUIRE_OPENDC=1 (set by .ci/run). Under CI=true no test may be skipped at all.
OPENDC_SKIP = "OpenDC unavailable"


def _opendc_problem() -> str | None:
    from kavier_opendc.base.errors import KavierRuntimeError
    from kavier_opendc.opendc.jvm import BUILD_COMMAND, find_bridge_jar, find_java, jar_flavour

    try:
        jar = find_bridge_jar()
        find_java()
    except KavierRuntimeError as exc:
        return str(exc).split(". ")[0]
    if jar_flavour(jar) == "lite":
        return f"{jar} is a lite build without OpenDC; build the real one with '{BUILD_COMMAND}'"
    return None


OPENDC_PROBLEM = _opendc_problem()
HAVE_OPENDC = OPENDC_PROBLEM is None
needs_opendc = pytest.mark.skipif(not HAVE_OPENDC, reason=f"{OPENDC_SKIP}: {OPENDC_PROBLEM}")


def skip_without_opendc() -> None:
    if not HAVE_OPENDC:
        pytest.skip(f"{OPENDC_SKIP}: {OPENDC_PROBLEM}")


_opendc_skips: list[str] = []


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    is_opendc = OPENDC_SKIP in reason
    if is_opendc:
        _opendc_skips.append(item.nodeid)
    if os.environ.get("CI") == "true" or (is_opendc and os.environ.get("KAVIER_REQUIRE_OPENDC") == "1"):
        report.outcome = "failed"
        report.longrepr = f"skipped where no skip is allowed (CI=true or KAVIER_REQUIRE_OPENDC=1): {reason}"


def pytest_terminal_summary(terminalreporter):
    if _opendc_skips:
        terminalreporter.write_line(
            f"{len(_opendc_skips)} test(s) needing OpenDC did not run: {OPENDC_PROBLEM}"
            + (
                " (a failure under KAVIER_REQUIRE_OPENDC=1)"
                if os.environ.get("KAVIER_REQUIRE_OPENDC") == "1"
                else " (set KAVIER_REQUIRE_OPENDC=1 to make this a failure)"
            )
        )


def shared(rel: str) -> Path:
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared data {p} not available")
    return p


# A toy model and GPU with round numbers, so iteration times can be worked out by hand:
# 1 layer, 1 head of 128 dims, 1e9 parameters in fp16 (2e9 weight bytes, the LM head of 1000 x 128 tied
# to the embedding), KV = 2*1*1*128*2 = 512 B/token; 100 TFLOP/s and 1000 GB/s at 100 % efficiency,
# the ideal roofline max(memory, compute) per GEMM, 1 ms per-iteration overhead (see toy_time).
TOY_MODEL = ModelSpec(
    name="toy",
    num_layers=1,
    hidden_size=128,
    num_attention_heads=1,
    num_kv_heads=1,
    ffn_size=512,
    vocab_size=1000,
    total_params=1e9,
    active_params=1e9,
    dtype="fp16",
    tie_word_embeddings=True,
)
TOY_GPU = GPUSpec(
    name="toygpu",
    vendor="none",
    peak_fp16_tflops=100.0,
    mem_bandwidth_gbs=1000.0,
    memory_gib=80.0,
    idle_power_w=50.0,
    max_power_w=300.0,
    price_per_hour=1.0,
    interconnect_gbs=100.0,
    pcie_gbs=32.0,
    boost_clock_mhz=1000.0,
    num_sms=100,
)
TOY_EFF = GPUProfile(
    gpu="toygpu",
    status="assumed",
    gemm_mbu=1.0,
    gemm_mfu=1.0,
    gemm_knee=KNEE_MAX,
    attn_prefill_eff=1.0,
    attn_decode_mbu=1.0,
    overhead_fixed_s=0.001,
    overhead_per_seq_s=0.0,
)

TOY_HEAD = 1000 * 128  # LM-head parameters (tied: the only embedding matrix)
TOY_BODY = 1e9 - TOY_HEAD  # the other parameters


def toy_time(n_tokens: float, n_seqs: float, pairs: float, kv_tokens: float) -> float:
    """One iteration of TOY_MODEL on TOY_GPU under TOY_EFF, by hand (specs/profiles.py's formula).

    GEMMs: max(weight bytes / 1e12, FLOPs / 1e14) for the body (all tokens) and the LM head
    (sampled sequences); attention: 512 FLOPs per pair / 1e14 + 512 KV bytes per token / 1e12.
    """
    body = max(2 * TOY_BODY / 1e12, 2 * TOY_BODY * n_tokens / 1e14)
    head = max(2 * TOY_HEAD / 1e12, 2 * TOY_HEAD * n_seqs / 1e14)
    return body + head + 512 * pairs / 1e14 + 512 * kv_tokens / 1e12 + 1e-3


def make_trace(arrivals, prompts, outputs) -> Trace:
    return Trace(
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        source="test",
        format="kavier",
    )


def toy_pd_config(topo, **kw):
    """A disaggregated SimConfig of the toy model and GPU over ``topo`` (a kv_link.Disaggregation): 4,096-token
    budget, 400-token context; ``kw`` overrides any field."""
    from kavier_opendc.engine.simulator import SimConfig

    base = dict(
        model=TOY_MODEL,
        gpu=TOY_GPU,
        efficiency=TOY_EFF,
        disaggregation=topo,
        max_batched_tokens=4096,
        max_model_len=400,
    )
    base.update(kw)
    return SimConfig(**base)
