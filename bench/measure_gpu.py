"""Measure on one GPU the kernel times that Kavier's cost model predicts.

Runs plain PyTorch kernels (no vLLM, no flash-attn package) with the shapes of
Llama-2-7B, Llama-3-8B and Llama-2-70B and writes, into ``--out DIR``:

``operators.csv`` (section ``ops``)
    One decoder layer's non-attention kernels on one GPU, weights sharded as for
    ``tp`` GPUs, no communication: the QKV, output, up and down projections, the
    SiLU-and-multiply, the two RMSNorms, rotary embedding and the residual add,
    in ms. Same layout as Vidur's operator profile, which ``kavier calibrate``
    reads (the ``operator`` layout).
``attention_prefill.csv`` (section ``prefill``)
    One layer's causal prefill attention (``scaled_dot_product_attention``,
    flash backend when it runs), time and TFLOP/s.
``attention_decode.csv`` (section ``decode``)
    One layer's decode attention (one query token per sequence over a contiguous
    KV cache), time and the KV-cache read bandwidth it reaches.
``decode_step.csv`` (section ``step``)
    A whole Llama-3-8B-shaped model with random weights: one decode step of a
    batch (in a CUDA graph, as vLLM runs decode) and one prompt's prefill.
``device.json``
    Versions, the device, and two measured ceilings: copy bandwidth and a large
    matmul's TFLOP/s.

Each kernel time is the median over 5 timed loops of k back-to-back calls
(k such that a loop lasts about 1 ms, at most 200), after 3 warm-up calls. With
``--graphs`` (the default) each loop is captured in a CUDA graph and replayed,
so CPU launch overhead is excluded; where capture fails the loop runs eagerly.

Each CSV is rewritten (atomically) after every configuration group, so a run
that is stopped keeps what it finished. A section that fails prints one line
and the run goes on; the exit code is 0 when at least one CSV was written.

Usage (one GPU; about one to two minutes for --quick on an H200):

    python bench/measure_gpu.py --out results/h200 --quick
    python bench/measure_gpu.py --out results/h200 --sections ops,step --dtype bf16
    OMP_NUM_THREADS=1 python bench/measure_gpu.py --out /tmp/mg --device cpu --tiny   # smoke test, no GPU

Needs only Python >= 3.11 and PyTorch (>= 2.5 for grouped-query SDPA; older
versions fall back to expanded K/V or the hand-written attention).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

WARMUP_CALLS = 3
TIMED_LOOPS = 5
TARGET_LOOP_MS = 1.0
MAX_CALLS_PER_LOOP = 200
NORM_EPS = 1e-5
WEIGHT_SCALE = 0.02  # random weights this small keep 32 layers of fp16 finite
DECODE_KV_LIMIT_BYTES = 20e9
STEP_MEMORY_LIMIT_BYTES = 50e9
MATH_SCORES_LIMIT_BYTES = 8e9  # the math SDPA backend materialises the score matrix
MAX_CONSECUTIVE_ERRORS = 3  # a section gives up after this many failed groups in a row

GPU_NAMES = {
    "NVIDIA H200": "H200",
    "NVIDIA H100 80GB HBM3": "H100-SXM",
    "NVIDIA H100 PCIe": "H100-PCIe",
    "NVIDIA A100-SXM4-80GB": "A100-80GB",
    "NVIDIA A100-SXM4-40GB": "A100-40GB",
    "NVIDIA A10": "A10",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
    "NVIDIA B200": "B200",
}

OPERATOR_HEADER = [
    "gpu",
    "model",
    "tp",
    "num_tokens",
    "n_head",
    "n_kv_head",
    "hidden",
    "ffn",
    "vocab",
    "gated_mlp",
    "attn_pre_proj_ms",
    "attn_post_proj_ms",
    "mlp_up_proj_ms",
    "mlp_act_ms",
    "mlp_down_proj_ms",
    "input_layernorm_ms",
    "post_attention_layernorm_ms",
    "attn_rope_ms",
    "add_ms",
]
PREFILL_HEADER = [
    "gpu",
    "n_head",
    "n_kv_head",
    "head_dim",
    "batch",
    "context",
    "causal",
    "time_ms",
    "tflops",
    "backend",
    "note",
]
DECODE_HEADER = ["gpu", "n_head", "n_kv_head", "head_dim", "batch", "context", "time_ms", "kv_bytes", "gbps", "method"]
STEP_HEADER = ["gpu", "model", "batch", "context", "phase", "tokens", "time_ms", "graph"]
SECTIONS = ("ops", "prefill", "decode", "step")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_head: int
    n_kv_head: int
    hidden: int
    ffn: int
    vocab: int
    layers: int = 32

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head


LLAMA2_7B = ModelShape("Llama-2-7B", 32, 32, 4096, 11008, 32000)
LLAMA3_8B = ModelShape("Llama-3-8B", 32, 8, 4096, 14336, 128256)
LLAMA2_70B = ModelShape("Llama-2-70B", 64, 8, 8192, 28672, 32000, layers=80)
TINY = ModelShape("tiny", 4, 2, 256, 512, 1000, layers=2)


@dataclass(frozen=True)
class Plan:
    """Which shapes each section measures."""

    op_models: tuple[tuple[ModelShape, tuple[int, ...]], ...]  # (model, tp degrees)
    op_tokens: tuple[int, ...]
    head_dim: int
    attn_heads: tuple[tuple[int, int], ...]  # (n_head, n_kv_head) on one GPU
    prefill_shapes: tuple[tuple[int, int], ...]  # (batch, context)
    decode_heads: tuple[tuple[int, int], ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    step_model: ModelShape
    step_decode: tuple[tuple[int, int], ...]  # (batch, context)
    step_prefill: tuple[int, ...]  # prompt lengths
    copy_bytes: int
    matmul_size: int


def make_plan(quick: bool, tiny: bool) -> Plan:
    if tiny:
        return Plan(
            op_models=((TINY, (1, 2)),),
            op_tokens=(1, 4, 16),
            head_dim=TINY.head_dim,
            attn_heads=((TINY.n_head, TINY.n_kv_head),),
            prefill_shapes=((1, 64), (1, 128), (2, 64), (2, 128)),
            decode_heads=((TINY.n_head, TINY.n_kv_head),),
            decode_batches=(1, 2),
            decode_contexts=(64, 128),
            step_model=TINY,
            step_decode=((1, 64), (2, 64), (1, 128), (2, 128)),
            step_prefill=(64, 128),
            copy_bytes=64 * 2**20,
            matmul_size=512,
        )
    if quick:
        op_models = ((LLAMA3_8B, (1, 2)), (LLAMA2_70B, (2, 4, 8)), (LLAMA2_7B, (1,)))
        op_tokens = (1, 4, 16, 64, 256, 1024, 4096, 8192)
        contexts = (256, 512, 1024, 2048, 4096, 8192)
    else:
        op_models = tuple((m, (1, 2, 4, 8)) for m in (LLAMA2_7B, LLAMA3_8B, LLAMA2_70B))
        op_tokens = tuple(2**i for i in range(15))  # 1 ... 16384
        contexts = (256, 512, 1024, 2048, 4096, 8192, 16384)
    return Plan(
        op_models=op_models,
        op_tokens=op_tokens,
        head_dim=128,
        attn_heads=((32, 8), (8, 1), (16, 2)),  # Llama-3-8B tp1, Llama-2-70B tp8 and tp4
        prefill_shapes=tuple((1, c) for c in contexts) + ((8, 512), (4, 2048)),
        decode_heads=((32, 8), (8, 1)),
        decode_batches=(1, 8, 32, 128, 256),
        decode_contexts=(512, 2048, 8192),
        step_model=LLAMA3_8B,
        step_decode=tuple((b, 1024) for b in (1, 8, 32, 64, 128, 256)) + ((1, 4096), (64, 4096)),
        step_prefill=(512, 1024, 2048, 4096),
        copy_bytes=4 * 2**30,
        matmul_size=8192,
    )


# ---------------------------------------------------------------- timing


def _repeat(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def loop() -> None:
        for _ in range(calls):
            fn()

    return loop


def _calls_for(per_call_ms: float) -> int:
    return max(1, min(MAX_CALLS_PER_LOOP, math.ceil(TARGET_LOOP_MS / max(per_call_ms, 1e-6))))


class Timer:
    """Median time per call of a function, in ms, on the GPU (events) or CPU (perf_counter)."""

    def __init__(self, device: torch.device, graphs: bool):
        self.cuda = device.type == "cuda"
        self.graphs = graphs and self.cuda
        self.graph_runs = 0
        self.eager_runs = 0

    def measure(self, fn: Callable[[], object]) -> tuple[float, bool]:
        """(median ms per call, whether the calls ran as a CUDA graph)."""
        if not self.cuda:
            self.eager_runs += 1
            return self._cpu(fn), False
        if self.graphs:
            try:
                ms = self._graph(fn)
                self.graph_runs += 1
                return ms, True
            except Exception:  # some kernels cannot be captured: time them eagerly
                torch.cuda.synchronize()
        self.eager_runs += 1
        return self._eager(fn), False

    def counts(self) -> str:
        return f"{self.graph_runs} in graphs, {self.eager_runs} eager" if self.cuda else f"{self.eager_runs} on CPU"

    @staticmethod
    def _loop_ms(run: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def _eager(self, fn: Callable[[], object]) -> float:
        for _ in range(WARMUP_CALLS):
            fn()
        torch.cuda.synchronize()
        calls = _calls_for(self._loop_ms(_repeat(fn, 3)) / 3)
        return statistics.median(self._loop_ms(_repeat(fn, calls)) / calls for _ in range(TIMED_LOOPS))

    @staticmethod
    def _capture(fn: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()  # the first replay uploads the graph: keep it out of the timing
        torch.cuda.synchronize()
        return graph

    def _graph(self, fn: Callable[[], object]) -> float:
        # warm up on a side stream, as capture needs (cuBLAS workspaces, lazy init)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        calls = _calls_for(self._loop_ms(_repeat(fn, 3)) / 3)
        graph = self._capture(fn, calls)
        loop_ms = self._loop_ms(graph.replay)
        if loop_ms < TARGET_LOOP_MS and calls < MAX_CALLS_PER_LOOP:
            # without launch overhead a call is faster than the eager probe said: lengthen the loop
            del graph
            calls = _calls_for(loop_ms / calls)
            graph = self._capture(fn, calls)
        times = [self._loop_ms(graph.replay) / calls for _ in range(TIMED_LOOPS)]
        del graph
        return statistics.median(times)

    @staticmethod
    def _cpu(fn: Callable[[], object]) -> float:
        for _ in range(WARMUP_CALLS):
            fn()
        start = time.perf_counter()
        fn()
        calls = _calls_for((time.perf_counter() - start) * 1e3)
        times = []
        for _ in range(TIMED_LOOPS):
            start = time.perf_counter()
            _repeat(fn, calls)()
            times.append((time.perf_counter() - start) * 1e3 / calls)
        return statistics.median(times)


# ---------------------------------------------------------------- kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps=NORM_EPS)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS)).to(x.dtype) * weight


def rope_tables(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, [len(positions), 1, head_dim / 2], broadcast over heads."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos()[:, None, :].to(dtype), angles.sin()[:, None, :].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style rotary embedding of x [tokens, heads, head_dim]: rotate the two halves."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def gqa_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query per sequence, q [B, H, 1, D], over K, V [B, KVH, C, D], without expanding K/V.

    Query head h uses KV head h // (H / KVH), the usual grouped-query layout.
    """
    batch, heads, _, dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, k.transpose(-1, -2)) * (1.0 / math.sqrt(dim))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(batch, heads, 1, dim)


_BACKENDS = ("flash", "efficient", "math")


@dataclass(frozen=True)
class AttentionChoice:
    """An SDPA backend that ran, and whether K/V had to be expanded to all query heads."""

    backend: str
    native_gqa: bool
    groups: int

    @property
    def note(self) -> str:
        return "" if self.native_gqa or self.groups == 1 else "kv expanded to n_head heads before timing"

    def prepare(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.native_gqa or self.groups == 1:
            return k, v
        return k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }[self.backend]
        extra = {"enable_gqa": True} if self.native_gqa and self.groups > 1 else {}
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **extra)


def choose_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> AttentionChoice:
    """The first of flash, memory-efficient, math that runs these shapes (native GQA first)."""
    groups = q.shape[1] // k.shape[1]
    batch, heads, length, _ = q.shape
    errors = []
    for backend in _BACKENDS:
        if backend == "math" and batch * heads * length * k.shape[2] * 4 > MATH_SCORES_LIMIT_BYTES:
            errors.append("math: score matrix too large")
            continue
        for native in (True, False) if groups > 1 else (True,):
            choice = AttentionChoice(backend, native, groups)
            try:
                with warnings.catch_warnings():  # a refused backend warns why; we only need to know it refused
                    warnings.simplefilter("ignore")
                    kk, vv = choice.prepare(k, v)
                    choice(q, kk, vv, causal)
                    del kk, vv
                return choice
            except (RuntimeError, TypeError, NotImplementedError) as exc:
                errors.append(f"{backend}{'' if native else '+expanded'}: {str(exc).splitlines()[0][:80]}")
    raise RuntimeError("no SDPA backend ran: " + "; ".join(errors))


def require_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"{what}: output has inf or NaN")


# ---------------------------------------------------------------- output


def fmt(value: float) -> str:
    return f"{value:.6g}"


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def progress(section: str, message: str) -> None:
    print(f"[{section}] {message}", flush=True)


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    gpu: str
    plan: Plan
    timer: Timer
    out: Path

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        t = torch.empty(*shape, device=self.device, dtype=self.dtype)
        return t.normal_(0.0, scale)

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


class Section:
    """Collects a section's rows, rewrites its CSV after each group, and survives failed groups."""

    def __init__(self, ctx: Context, name: str, filename: str, header: list[str]):
        self.ctx, self.name, self.header = ctx, name, header
        self.path = ctx.out / filename
        self.rows: list[dict] = []
        self.failures_in_a_row = 0

    def group(self, label: str, measure: Callable[[], list[dict]]) -> None:
        if self.failures_in_a_row >= MAX_CONSECUTIVE_ERRORS:
            return
        start = time.perf_counter()
        try:
            rows = measure()
        except Exception as exc:  # one shape failing (OOM, unsupported kernel) must not lose the others
            self.failures_in_a_row += 1
            progress(self.name, f"{label}: FAILED {one_line(exc)}")
            if self.failures_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                progress(self.name, f"{MAX_CONSECUTIVE_ERRORS} groups failed in a row: giving up on this section")
        else:
            self.failures_in_a_row = 0
            self.rows.extend(rows)
            write_csv(self.path, self.header, self.rows)
            progress(self.name, f"{label}: {len(rows)} rows in {time.perf_counter() - start:.1f} s")
        finally:
            self.ctx.free()

    def finish(self) -> bool:
        if not self.rows:
            raise RuntimeError("no configuration could be measured")
        return True


# ---------------------------------------------------------------- section: ops


class LayerWeights:
    """One decoder layer's weights on one of ``tp`` GPUs, stored [out, in] like real frameworks."""

    def __init__(self, ctx: Context, model: ModelShape, tp: int):
        self.q_heads = model.n_head // tp
        self.kv_heads = max(1, model.n_kv_head // tp)
        self.head_dim = model.head_dim
        self.ffn = model.ffn // tp
        hidden = model.hidden
        self.qkv = ctx.randn((self.q_heads + 2 * self.kv_heads) * self.head_dim, hidden, scale=WEIGHT_SCALE)
        self.o = ctx.randn(hidden, self.q_heads * self.head_dim, scale=WEIGHT_SCALE)
        self.up = ctx.randn(2 * self.ffn, hidden, scale=WEIGHT_SCALE)  # gate and up, one GEMM
        self.down = ctx.randn(hidden, self.ffn, scale=WEIGHT_SCALE)
        self.norm = torch.ones(hidden, device=ctx.device, dtype=ctx.dtype)


def layer_op_times(ctx: Context, w: LayerWeights, tokens: int) -> dict[str, str]:
    hidden = w.qkv.shape[1]
    x, residual = ctx.randn(tokens, hidden), ctx.randn(tokens, hidden)
    attn_out = ctx.randn(tokens, w.q_heads * w.head_dim)
    gate, up = F.linear(x, w.up).chunk(2, dim=-1)  # views into one [T, 2*ffn] output, as the fused GEMM gives
    mlp_in = ctx.randn(tokens, w.ffn)
    q, k = ctx.randn(tokens, w.q_heads, w.head_dim), ctx.randn(tokens, w.kv_heads, w.head_dim)
    cos, sin = rope_tables(torch.arange(tokens, device=ctx.device), w.head_dim, ctx.dtype)
    ops: dict[str, Callable[[], object]] = {
        "attn_pre_proj_ms": lambda: F.linear(x, w.qkv),
        "attn_post_proj_ms": lambda: F.linear(attn_out, w.o),
        "mlp_up_proj_ms": lambda: F.linear(x, w.up),
        "mlp_act_ms": lambda: F.silu(gate) * up,
        "mlp_down_proj_ms": lambda: F.linear(mlp_in, w.down),
        "input_layernorm_ms": lambda: rms_norm(x, w.norm),
        "post_attention_layernorm_ms": lambda: rms_norm(x, w.norm),
        "attn_rope_ms": lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin)),
        "add_ms": lambda: x + residual,
    }
    return {column: fmt(ctx.timer.measure(fn)[0]) for column, fn in ops.items()}


def section_ops(ctx: Context) -> bool:
    section = Section(ctx, "ops", "operators.csv", OPERATOR_HEADER)
    for model, tps in ctx.plan.op_models:
        for tp in tps:

            def measure(model: ModelShape = model, tp: int = tp) -> list[dict]:
                weights = LayerWeights(ctx, model, tp)
                rows = []
                for tokens in ctx.plan.op_tokens:
                    row = {
                        "gpu": ctx.gpu,
                        "model": model.name,
                        "tp": tp,
                        "num_tokens": tokens,
                        "n_head": model.n_head,
                        "n_kv_head": model.n_kv_head,
                        "hidden": model.hidden,
                        "ffn": model.ffn,
                        "vocab": model.vocab,
                        "gated_mlp": "True",
                    }
                    row.update(layer_op_times(ctx, weights, tokens))
                    rows.append(row)
                return rows

            section.group(
                f"{model.name} tp={tp}, {len(ctx.plan.op_tokens)} token counts ({ctx.timer.counts()} so far)", measure
            )
    return section.finish()


# ---------------------------------------------------------------- section: prefill attention


def section_prefill(ctx: Context) -> bool:
    section = Section(ctx, "prefill", "attention_prefill.csv", PREFILL_HEADER)
    dim = ctx.plan.head_dim
    for heads, kv_heads in ctx.plan.attn_heads:
        for batch, context in ctx.plan.prefill_shapes:

            def measure(
                heads: int = heads, kv_heads: int = kv_heads, batch: int = batch, context: int = context
            ) -> list[dict]:
                q = ctx.randn(batch, heads, context, dim)
                k, v = ctx.randn(batch, kv_heads, context, dim), ctx.randn(batch, kv_heads, context, dim)
                choice = choose_attention(q, k, v, causal=True)
                k, v = choice.prepare(k, v)  # outside the timed region
                require_finite(choice(q, k, v, True), "prefill attention")
                ms, _ = ctx.timer.measure(lambda: choice(q, k, v, True))
                flops = 2 * 2 * batch * heads * dim * context**2 / 2  # QK^T and PV, causal half
                return [
                    {
                        "gpu": ctx.gpu,
                        "n_head": heads,
                        "n_kv_head": kv_heads,
                        "head_dim": dim,
                        "batch": batch,
                        "context": context,
                        "causal": "True",
                        "time_ms": fmt(ms),
                        "tflops": fmt(flops / (ms / 1e3) / 1e12),
                        "backend": choice.backend,
                        "note": choice.note,
                    }
                ]

            section.group(f"heads {heads}/{kv_heads} batch {batch} context {context}", measure)
    return section.finish()


# ---------------------------------------------------------------- section: decode attention


def sdpa_gqa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA's own choice among its fused backends; the math one is left out on a GPU because it
    expands K/V to every query head, several times the cache's memory at the large shapes."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def section_decode(ctx: Context) -> bool:
    section = Section(ctx, "decode", "attention_decode.csv", DECODE_HEADER)
    dim = ctx.plan.head_dim
    element = torch.finfo(ctx.dtype).bits // 8
    for heads, kv_heads in ctx.plan.decode_heads:
        for batch in ctx.plan.decode_batches:
            for context in ctx.plan.decode_contexts:
                kv_bytes = 2 * batch * context * kv_heads * dim * element
                if kv_bytes > DECODE_KV_LIMIT_BYTES:
                    progress(
                        "decode",
                        f"heads {heads}/{kv_heads} batch {batch} context {context}: skipped, "
                        f"KV {kv_bytes / 1e9:.1f} GB",
                    )
                    continue

                def measure(
                    heads: int = heads,
                    kv_heads: int = kv_heads,
                    batch: int = batch,
                    context: int = context,
                    kv_bytes: int = kv_bytes,
                ) -> list[dict]:
                    q = ctx.randn(batch, heads, 1, dim)
                    k, v = ctx.randn(batch, kv_heads, context, dim), ctx.randn(batch, kv_heads, context, dim)
                    require_finite(gqa_decode_attention(q, k, v), "decode attention")
                    results = {"manual-gqa": ctx.timer.measure(lambda: gqa_decode_attention(q, k, v))[0]}
                    try:
                        with warnings.catch_warnings():  # a refused backend warns why
                            warnings.simplefilter("ignore")
                            require_finite(sdpa_gqa_decode(q, k, v), "decode SDPA")
                        results["sdpa"] = ctx.timer.measure(lambda: sdpa_gqa_decode(q, k, v))[0]
                    except (RuntimeError, TypeError, ImportError, FloatingPointError):  # manual one stands
                        pass
                    method, ms = min(results.items(), key=lambda item: item[1])
                    return [
                        {
                            "gpu": ctx.gpu,
                            "n_head": heads,
                            "n_kv_head": kv_heads,
                            "head_dim": dim,
                            "batch": batch,
                            "context": context,
                            "time_ms": fmt(ms),
                            "kv_bytes": kv_bytes,
                            "gbps": fmt(kv_bytes / (ms / 1e3) / 1e9),
                            "method": method,
                        }
                    ]

                section.group(f"heads {heads}/{kv_heads} batch {batch} context {context}", measure)
    return section.finish()


# ---------------------------------------------------------------- section: whole decode step / prefill


class RandomLlama:
    """A Llama-shaped model with random weights: enough to time one iteration, not to generate text."""

    def __init__(self, ctx: Context, shape: ModelShape):
        self.ctx, self.shape = ctx, shape
        self.layers = [LayerWeights(ctx, shape, tp=1) for _ in range(shape.layers)]
        self.final_norm = torch.ones(shape.hidden, device=ctx.device, dtype=ctx.dtype)
        self.lm_head = ctx.randn(shape.vocab, shape.hidden, scale=WEIGHT_SCALE)

    def weight_bytes(self) -> int:
        tensors = [self.lm_head] + [t for w in self.layers for t in (w.qkv, w.o, w.up, w.down)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.shape
        tokens = qkv.shape[0]
        q, k, v = qkv.split([s.n_head * s.head_dim, s.n_kv_head * s.head_dim, s.n_kv_head * s.head_dim], dim=-1)
        return (
            q.view(tokens, s.n_head, s.head_dim),
            k.view(tokens, s.n_kv_head, s.head_dim),
            v.view(tokens, s.n_kv_head, s.head_dim),
        )

    def _mlp(self, x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
        gate, up = F.linear(rms_norm(x, w.norm), w.up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, w.down)

    def decode(
        self, x: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]], cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """One token per sequence, x [B, hidden]; its K/V go to the last slot of each [B, KVH, C, D] cache."""
        s = self.shape
        batch = x.shape[0]
        for w, (k_cache, v_cache) in zip(self.layers, caches, strict=True):
            q, k, v = self._split_qkv(F.linear(rms_norm(x, w.norm), w.qkv))
            k_cache[:, :, -1].copy_(apply_rope(k, cos, sin))
            v_cache[:, :, -1].copy_(v)
            q = apply_rope(q, cos, sin).view(batch, s.n_head, 1, s.head_dim)
            attn = gqa_decode_attention(q, k_cache, v_cache).view(batch, s.n_head * s.head_dim)
            x = self._mlp(x + F.linear(attn, w.o), w)
        return F.linear(rms_norm(x, self.final_norm), self.lm_head)

    def prefill(
        self,
        x: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: AttentionChoice,
    ) -> torch.Tensor:
        """One prompt, x [T, hidden]; K/V are stored into [T, KVH, D] caches; logits of the last token only."""
        tokens = x.shape[0]
        for w, (k_cache, v_cache) in zip(self.layers, caches, strict=True):
            q, k, v = self._split_qkv(F.linear(rms_norm(x, w.norm), w.qkv))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k_cache.copy_(k)
            v_cache.copy_(v)
            kk, vv = attention.prepare(k.transpose(0, 1)[None], v.transpose(0, 1)[None])
            attn = attention(q.transpose(0, 1)[None], kk, vv, True)  # [1, H, T, D]
            x = self._mlp(x + F.linear(attn[0].transpose(0, 1).reshape(tokens, -1), w.o), w)
        return F.linear(rms_norm(x[-1:], self.final_norm), self.lm_head)


def section_step(ctx: Context) -> bool:
    section = Section(ctx, "step", "decode_step.csv", STEP_HEADER)
    shape = ctx.plan.step_model
    model = RandomLlama(ctx, shape)
    kv_bytes_per_token = 2 * shape.layers * shape.n_kv_head * shape.head_dim * torch.finfo(ctx.dtype).bits // 8
    progress("step", f"{shape.name}: {model.weight_bytes() / 1e9:.1f} GB of random weights")

    def row(batch: int, context: int, phase: str, tokens: int, ms: float, graph: bool) -> dict:
        return {
            "gpu": ctx.gpu,
            "model": shape.name,
            "batch": batch,
            "context": context,
            "phase": phase,
            "tokens": tokens,
            "time_ms": fmt(ms),
            "graph": str(graph),
        }

    for batch, context in ctx.plan.step_decode:
        need = model.weight_bytes() + batch * context * kv_bytes_per_token
        if need > STEP_MEMORY_LIMIT_BYTES:
            progress("step", f"decode batch {batch} context {context}: skipped, needs {need / 1e9:.0f} GB")
            continue

        def measure_decode(batch: int = batch, context: int = context) -> list[dict]:
            caches = [
                (
                    ctx.randn(batch, shape.n_kv_head, context, shape.head_dim),
                    ctx.randn(batch, shape.n_kv_head, context, shape.head_dim),
                )
                for _ in range(shape.layers)
            ]
            x = ctx.randn(batch, shape.hidden)
            positions = torch.full((batch,), context - 1, device=ctx.device)
            cos, sin = rope_tables(positions, shape.head_dim, ctx.dtype)
            require_finite(model.decode(x, caches, cos, sin), "decode step logits")
            ms, graph = ctx.timer.measure(lambda: model.decode(x, caches, cos, sin))
            return [row(batch, context, "decode", batch, ms, graph)]

        section.group(f"decode batch {batch} context {context}", measure_decode)

    for prompt in ctx.plan.step_prefill:

        def measure_prefill(prompt: int = prompt) -> list[dict]:
            caches = [
                (ctx.randn(prompt, shape.n_kv_head, shape.head_dim), ctx.randn(prompt, shape.n_kv_head, shape.head_dim))
                for _ in range(shape.layers)
            ]
            x = ctx.randn(prompt, shape.hidden)
            cos, sin = rope_tables(torch.arange(prompt, device=ctx.device), shape.head_dim, ctx.dtype)
            probe_q = ctx.randn(1, shape.n_head, prompt, shape.head_dim)
            probe_kv = ctx.randn(1, shape.n_kv_head, prompt, shape.head_dim)
            attention = choose_attention(probe_q, probe_kv, probe_kv, causal=True)
            del probe_q, probe_kv
            require_finite(model.prefill(x, caches, cos, sin, attention), "prefill logits")
            eager = Timer(ctx.device, graphs=False)  # prefill runs eagerly in vLLM too
            ms, _ = eager.measure(lambda: model.prefill(x, caches, cos, sin, attention))
            progress(
                "step",
                f"prefill {prompt} tokens: attention backend {attention.backend}"
                + (f" ({attention.note})" if attention.note else ""),
            )
            return [row(1, prompt, "prefill", prompt, ms, False)]

        section.group(f"prefill {prompt} tokens", measure_prefill)
    return section.finish()


# ---------------------------------------------------------------- device.json


def default_gpu_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "CPU"
    name = torch.cuda.get_device_name(device)
    return GPU_NAMES.get(name, name.replace(" ", "-"))


def nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.limit", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"


def copy_ms(ctx: Context) -> float:
    """Median time of one device-to-device copy of ``plan.copy_bytes`` bytes."""
    src = torch.empty(ctx.plan.copy_bytes, dtype=torch.uint8, device=ctx.device)
    dst = torch.empty_like(src)
    return ctx.timer.measure(lambda: dst.copy_(src))[0]


def matmul_ms(ctx: Context) -> float:
    """Mean time of a square matmul over 10 calls after 3 warm-ups, each call timed alone."""
    n = ctx.plan.matmul_size
    a, b = ctx.randn(n, n), ctx.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(10):
        if ctx.device.type == "cuda":
            times.append(Timer._loop_ms(lambda: torch.matmul(a, b)))
        else:
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.fmean(times)


def measure_ceilings(ctx: Context) -> dict:
    """Copy bandwidth (bytes read + written) and a large square matmul's TFLOP/s."""
    copy = copy_ms(ctx)
    ctx.free()
    matmul = matmul_ms(ctx)
    ctx.free()
    n = ctx.plan.matmul_size
    return {
        "copy_bytes": ctx.plan.copy_bytes,
        "copy_ms": copy,
        "copy_bandwidth_gbps": 2 * ctx.plan.copy_bytes / (copy / 1e3) / 1e9,
        "matmul_size": n,
        "matmul_ms": matmul,
        "matmul_tflops": 2 * n**3 / (matmul / 1e3) / 1e12,
    }


def write_device_json(ctx: Context, args: argparse.Namespace) -> None:
    info: dict = {
        "gpu": ctx.gpu,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device": str(ctx.device),
        "dtype": args.dtype,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "graphs": ctx.timer.graphs,
        "quick": args.quick,
        "tiny": args.tiny,
    }
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(
            {
                "device_name": props.name,
                "sm_count": props.multi_processor_count,
                "total_memory_bytes": props.total_memory,
                "compute_capability": f"{props.major}.{props.minor}",
                "cudnn_version": torch.backends.cudnn.version(),
            }
        )
    else:
        info.update({"device_name": "cpu", "cpu_threads": torch.get_num_threads()})
    try:
        info.update(measure_ceilings(ctx))
    except Exception as exc:
        info["ceilings_error"] = one_line(exc)
        progress("device", f"FAILED measuring ceilings: {one_line(exc)}")
        ctx.free()
    info["nvidia_smi"] = nvidia_smi()
    write_json(ctx.out / "device.json", info)
    progress(
        "device",
        f"{info.get('device_name')}: copy {info.get('copy_bandwidth_gbps', float('nan')):.0f} GB/s, "
        f"matmul {info.get('matmul_tflops', float('nan')):.1f} TFLOP/s -> {ctx.out / 'device.json'}",
    )


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for the CSV files and device.json")
    p.add_argument("--gpu-name", help="name in the 'gpu' column (default: from the device, e.g. H200)")
    p.add_argument("--quick", action="store_true", help="fewer shapes: a few minutes at most")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, for a smoke test (also on --device cpu)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (cpu needs --tiny)")
    p.add_argument(
        "--graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time loops as CUDA graph replays, without CPU launch overhead (default on)",
    )
    args = p.parse_args(argv)
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.section_list) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: CUDA is not available (use --device cpu --tiny for a smoke test)", file=sys.stderr)
            return 1
        if device.index is not None:
            torch.cuda.set_device(device.index)
        device = torch.device("cuda", torch.cuda.current_device())
    elif not args.tiny:
        print("error: without a GPU only --tiny shapes are measured (add --tiny)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    ctx = Context(
        device=device,
        dtype=dtype,
        gpu=args.gpu_name or default_gpu_name(device),
        plan=make_plan(args.quick, args.tiny),
        timer=Timer(device, args.graphs),
        out=args.out,
    )
    progress(
        "start",
        f"gpu {ctx.gpu}, torch {torch.__version__}, {args.dtype}, graphs {ctx.timer.graphs}, "
        f"sections {','.join(args.section_list)} -> {args.out}",
    )
    started = time.perf_counter()
    try:
        write_device_json(ctx, args)
    except Exception as exc:  # the sections are worth having without it
        progress("device", f"FAILED writing device.json: {one_line(exc)}")
        ctx.free()

    runners = {"ops": section_ops, "prefill": section_prefill, "decode": section_decode, "step": section_step}
    written = []
    for name in SECTIONS:
        if name not in args.section_list:
            continue
        start = time.perf_counter()
        try:
            runners[name](ctx)
            written.append(name)
            progress(name, f"done in {time.perf_counter() - start:.1f} s")
        except Exception as exc:  # report and go on to the next section
            progress(name, f"FAILED after {time.perf_counter() - start:.1f} s: {one_line(exc)}")
        ctx.free()
    progress(
        "end",
        f"{len(written)} of {len(args.section_list)} sections written in "
        f"{time.perf_counter() - started:.1f} s: {', '.join(written) or 'none'}",
    )
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
