"""Measurement files -> observations, in four documented CSV layouts.

Every layout is a CSV file with a header row; columns are recognised by name
(other columns are ignored), so the layout is detected from the header.

``single-request`` (the Kavier A10 table)
    ``prefill_input_tokens, reality_prefill`` (s: TTFT of one prompt alone) and
    ``decode_input_tokens, decode_output_tokens, reality_decode`` (s: end-to-end
    minus TTFT of one request alone). The model and GPU come from the command
    line (``--model``, ``--gpu``, ``--tp``). Prefills longer than the token
    budget (``--max-batched-tokens``, 8192) are chunked as vLLM does.
``operator`` (Vidur's per-operator times, ``vidur_linear_ops_*.csv``)
    ``gpu, tp, num_tokens, n_head, n_kv_head, hidden, ffn`` (+ ``gated_mlp``)
    and per-layer kernel times in ms of the linear layers
    (``attn_pre_proj_ms, attn_post_proj_ms, mlp_up_proj_ms, mlp_down_proj_ms``)
    and their elementwise neighbours (``mlp_act_ms, input_layernorm_ms,
    post_attention_layernorm_ms, attn_rope_ms, add_ms``, optional): the time of
    one layer's non-attention kernels for ``num_tokens`` tokens.
``allreduce`` (Vidur's NCCL profile, ``vidur_allreduce_*.csv``)
    ``gpu, num_workers, size_bytes, all_reduce_median_ms`` (+ optional ``node``:
    rows of a node name containing ``pairwise`` are used only when no other
    node was measured for that group size).
``step-times`` (Splitwise's ``perf_model.csv`` reduced)
    ``model, gpu, tp, prompt_size, batch_size, token_size, prompt_time_ms,
    token_time_ms``: the prefill of ``batch_size`` prompts in one iteration, and
    one decode iteration of the batch (context: prompt + token_size / 2). The
    harness all-reduces with NCCL (vLLM's custom all-reduce only with
    ``--default-framework``).
``serving`` (ML.ENERGY-style saturated serving benchmark)
    ``gpu, model, tp, max_num_seqs`` or ``avg_batch_size``, ``avg_tpot_s`` (or
    ``itl_s``/``tpot_s``), ``avg_output_tokens`` and optional ``avg_input_tokens``
    (default ``--prompt-tokens``, 100 tokens: ML.ENERGY's ShareGPT chat prompts),
    optional ``output_tok_per_s`` and power. One TPOT is one decode iteration
    at the running batch (context: prompt + half the output) plus the prefills
    that enter meanwhile (old vLLM runs each as its own iteration).

``batch-latency`` (Argonne's offline ``benchmark_latency`` of vLLM 0.5-0.6)
    ``gpu, tp, model, in_out_tokens, batch_size, latency_s``: the wall time of
    ``batch_size`` requests of ``in_out_tokens`` prompt and output tokens each,
    submitted together to the ``LLM`` class. vLLM v0's rules: whole prompts in
    prefill-only iterations of at most ``max(max_model_len, 2048)`` tokens
    (the model's context) and 256 sequences, then ``in_out_tokens - 1`` decode
    iterations of the whole batch. Rows whose batch does not fit in the KV
    cache (v0 would preempt and recompute, a schedule no closed form gives)
    are left out and listed. NCCL all-reduces (vLLM's custom one only with
    ``--default-framework``).

``kernels`` (AIConfigurator's operator tables, ``aiconfigurator_*_kernels.csv``)
    ``system, op, latency_ms`` with ``kernel_source``, ``dtype`` and per op:
    ``gemm`` ``m, n, k`` (one GEMM of m tokens, bf16 rows only); ``context_attention``
    ``batch_size, isl, num_heads, head_dim`` (causal prefill attention of one layer on
    one GPU); ``generation_attention`` ``batch_size, kv_len_step, num_kv_heads,
    head_dim`` (one decode step's KV read); ``all_reduce`` ``num_gpus, message_size``
    (bf16 elements; the CUDA-graph rows, as vLLM runs it). ``system`` names the GPU
    (a100_sxm, h100_sxm, h200_sxm, l40s, or a catalogue name).

Measurements from different frameworks carry different software overheads
(old vLLM adds CPU time per step): each file is its own ``framework`` whose
per-iteration overheads are fitted separately; only a file marked as the
default framework (vLLM v1, ``--default-framework``) sets the profile's own.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import Catalog, ModelSpec
from kavier_opendc.specs.iteration_time import IterationShape

LAYOUTS = ("single-request", "operator", "allreduce", "step-times", "serving", "batch-latency", "kernels")
GEMM_COLUMNS = ("attn_pre_proj_ms", "attn_post_proj_ms", "mlp_up_proj_ms", "mlp_down_proj_ms")
ELEMENTWISE_COLUMNS = ("mlp_act_ms", "input_layernorm_ms", "post_attention_layernorm_ms", "attn_rope_ms", "add_ms")
_REQUIRED = {
    "single-request": (
        "prefill_input_tokens",
        "reality_prefill",
        "decode_input_tokens",
        "decode_output_tokens",
        "reality_decode",
    ),
    "operator": ("gpu", "tp", "num_tokens", "n_head", "n_kv_head", "hidden", "ffn") + GEMM_COLUMNS,
    "allreduce": ("gpu", "num_workers", "size_bytes", "all_reduce_median_ms"),
    "step-times": ("model", "gpu", "tp", "prompt_size", "batch_size", "token_size", "prompt_time_ms", "token_time_ms"),
    "serving": ("gpu", "model", "tp", "avg_output_tokens"),
    "batch-latency": ("gpu", "tp", "model", "in_out_tokens", "batch_size", "latency_s"),
    "kernels": ("system", "op", "kernel_source", "latency_ms"),
}
#: AIConfigurator's system names -> catalogue GPUs
KERNEL_SYSTEMS = {"a100_sxm": "A100-80GB", "h100_sxm": "H100-SXM", "h200_sxm": "H200", "l40s": "L40S"}
#: observation kinds of single kernels (calibration/fit.py fits each on its own)
KERNEL_KINDS = ("gemm_kernel", "attn_prefill", "attn_decode", "custom_allreduce")


@dataclass
class Observation:
    """One measured time and what the model must compute to predict it.

    ``kind`` is ``gemm`` (one layer's linear kernels: ``weight_bytes`` read,
    ``flops`` done), ``allreduce`` (``size_bytes`` over ``gpus``), or an
    end-to-end kind (``prefill``, ``decode``, ``tpot``) whose time is the sum
    of ``iterations``: (count, shape) pairs on ``model`` with ``tp`` GPUs.
    """

    source: str
    row: int
    kind: str
    gpu: str
    measured_s: float
    framework: str = ""
    model: ModelSpec | None = None
    tp: int = 1
    iterations: list[tuple[float, IterationShape]] = field(default_factory=list)
    weight_bytes: float = 0.0
    flops: float = 0.0
    size_bytes: float = 0.0
    gpus: int = 1
    vllm_allreduce: bool = True  # end to end: the software used vLLM's custom all-reduce (else NCCL)
    tokens: float = 0.0  # gemm: tokens in the batch
    act_bytes_per_token: float = 0.0  # gemm: (hidden + ffn/T) activations in bytes
    label: str = ""


@dataclass
class ReadOptions:
    """What a file does not say: for the single-request layout the model and GPU."""

    model: str | None = None
    gpu: str | None = None
    tp: int = 1
    max_batched_tokens: int = 8192
    prompt_tokens: float = 100.0
    default_framework: bool = False
    skipped: list = field(default_factory=list)  # (file, line, why) of rows a reader left out
    only_gpus: tuple[str, ...] = ()  # kernels layout: keep these GPUs' rows only (empty: all)
    only_ops: tuple[str, ...] = ()  # kernels layout: keep these ops' rows only (empty: all)


class _Rows:
    """CSV rows with error messages that name the file, the line and the column."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.header = [h.strip() for h in (reader.fieldnames or [])]
                self.rows = [
                    ({(k or "").strip(): (v or "").strip() for k, v in r.items()}, i + 2) for i, r in enumerate(reader)
                ]
        except FileNotFoundError:
            raise KavierInputError("measurement file not found", source=str(path)) from None
        except IsADirectoryError:
            raise KavierInputError(
                "is a directory, not a measurement file (a 'kavier trace' replay folder holds a requests.parquet)",
                source=str(path),
            ) from None
        except (UnicodeDecodeError, csv.Error, OSError) as exc:
            raise KavierInputError(f"not a readable CSV file ({exc})", source=str(path)) from None
        if not self.header:
            raise KavierInputError(
                "empty file: no header row",
                source=str(path),
                expected="a CSV header naming the columns of one of the layouts " + ", ".join(LAYOUTS),
            )

    def error(self, line: int, column: str, message: str, expected: str | None = None) -> KavierInputError:
        return KavierInputError(
            message, source=str(self.path), location=f"line {line}, column '{column}'", expected=expected
        )

    def number(self, row: dict, line: int, column: str, *, positive: bool = True, integer: bool = False) -> float:
        text = row.get(column, "")
        if text == "":
            raise self.error(line, column, "missing value", "a number")
        try:
            value = float(text)
        except ValueError:
            raise self.error(line, column, f"{text!r} is not a number", "a number") from None
        if not math.isfinite(value):
            raise self.error(line, column, f"{text!r} is not finite", "a finite number")
        if positive and value <= 0:
            raise self.error(line, column, f"{text} is not positive", "a number > 0")
        if integer and value != int(value):
            raise self.error(line, column, f"{text} is not a whole number", "an integer")
        return value


def detect_layout(header: Iterable[str]) -> str | None:
    cols = set(header)
    for name in ("single-request", "operator", "allreduce", "step-times", "batch-latency", "kernels"):
        if all(c in cols for c in _REQUIRED[name]):
            return name
    if (
        all(c in cols for c in _REQUIRED["serving"])
        and ({"avg_tpot_s", "tpot_s", "itl_s"} & cols)
        and ({"max_num_seqs", "avg_batch_size"} & cols)
    ):
        return "serving"
    return None


def read_measurements(
    path: str | Path, catalog: Catalog, options: ReadOptions | None = None, layout: str | None = None
) -> tuple[str, list[Observation]]:
    """Read one measurement file; return its layout and its observations."""
    opts = options or ReadOptions()
    rows = _Rows(Path(path))
    found = detect_layout(rows.header)
    if layout is None:
        layout = found
    if layout is None:
        raise KavierInputError(
            f"cannot tell the layout from the header ({', '.join(rows.header)})",
            source=str(path),
            expected="the columns of one of the layouts: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in _REQUIRED.items()),
        )
    if layout not in LAYOUTS:
        raise KavierInputError(f"unknown layout {layout!r}", location="--layout", expected=", ".join(LAYOUTS))
    missing = [c for c in _REQUIRED[layout] if c not in rows.header]
    if missing:
        raise KavierInputError(
            f"the {layout} layout needs the column(s) {', '.join(missing)}", source=str(path), location="header"
        )
    if not rows.rows:
        raise KavierInputError("no data rows", source=str(path), expected="at least one measurement")
    reader: Callable = {
        "single-request": _single_request,
        "operator": _operator,
        "allreduce": _allreduce,
        "step-times": _step_times,
        "serving": _serving,
        "batch-latency": _batch_latency,
        "kernels": _kernels,
    }[layout]
    return layout, reader(rows, catalog, opts)


# ------------------------------------------------------------------ shapes --


def prefill_iterations(prompt: int, budget: int, batch: int = 1) -> list[tuple[float, IterationShape]]:
    """Iterations of ``batch`` prompts of ``prompt`` tokens prefilled together, chunked by ``budget`` tokens."""
    out = []
    done = 0
    while done < prompt:
        c = min(prompt - done, max(1, budget // batch))
        out.append(
            (
                1.0,
                IterationShape(
                    n_tokens=batch * c,
                    n_seqs=batch,
                    attn_pairs=batch * (c * done + c * (c + 1) / 2.0),
                    kv_read_tokens=batch * done,
                ),
            )
        )
        done += c
    return out


def decode_iterations(batch: float, context: float, count: float) -> tuple[float, IterationShape]:
    """``count`` decode iterations of ``batch`` sequences whose mean cached context is ``context``.

    Time is affine in the attended pairs, so the mean shape times the count is exact.
    """
    return (
        count,
        IterationShape(n_tokens=batch, n_seqs=batch, attn_pairs=batch * (context + 1), kv_read_tokens=batch * context),
    )


def _model(rows: _Rows, catalog: Catalog, name: str, line: int, column: str) -> ModelSpec:
    try:
        return catalog.model(name)
    except KavierInputError as exc:
        raise rows.error(line, column, str(exc)) from None


def _gpu(rows: _Rows, catalog: Catalog, name: str, line: int, column: str) -> str:
    try:
        return catalog.gpu(name).name
    except KavierInputError as exc:
        raise rows.error(line, column, str(exc)) from None


def _framework(rows: _Rows, opts: ReadOptions, tp: int = 1) -> str:
    """The software whose overheads an end-to-end row includes.

    A file of the default framework (vLLM v1) sets the profile's overheads;
    any other file is its own framework, and its overheads are fitted per TP
    degree (eager harnesses coordinate one worker per GPU, and their
    per-iteration time grows with the group).
    """
    return "default" if opts.default_framework else f"{rows.path.name} tp{tp}"


# ----------------------------------------------------------------- readers --


def _single_request(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    if not opts.model or not opts.gpu:
        raise KavierInputError(
            "the single-request layout does not name the model and GPU",
            source=str(rows.path),
            expected="--model and --gpu on the command line",
        )
    model = catalog.model(opts.model)
    gpu = catalog.gpu(opts.gpu).name
    fw = _framework(rows, opts)
    out = []
    for r, line in rows.rows:
        p = int(rows.number(r, line, "prefill_input_tokens", integer=True))
        out.append(
            Observation(
                str(rows.path),
                line,
                "prefill",
                gpu,
                rows.number(r, line, "reality_prefill"),
                fw,
                model,
                opts.tp,
                prefill_iterations(p, opts.max_batched_tokens),
                label=f"prompt {p}",
            )
        )
        pin = rows.number(r, line, "decode_input_tokens", integer=True)
        o = rows.number(r, line, "decode_output_tokens", integer=True)
        if o < 2:
            raise rows.error(
                line, "decode_output_tokens", f"{o:g} output tokens leave no decode iteration", "at least 2"
            )
        # iteration k = 1..o-1 caches pin + k - 1 tokens: mean pin + o/2 - 1
        it = decode_iterations(1, pin + o / 2.0 - 1.0, o - 1)
        out.append(
            Observation(
                str(rows.path),
                line,
                "decode",
                gpu,
                rows.number(r, line, "reality_decode"),
                fw,
                model,
                opts.tp,
                [it],
                label=f"{o:g} tokens",
            )
        )
    return out


def _operator(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    out = []
    for r, line in rows.rows:
        gpu = _gpu(rows, catalog, r["gpu"], line, "gpu")
        tp = int(rows.number(r, line, "tp", integer=True))
        n = rows.number(r, line, "num_tokens", integer=True)
        heads, kv = rows.number(r, line, "n_head", integer=True), rows.number(r, line, "n_kv_head", integer=True)
        hidden, ffn = rows.number(r, line, "hidden", integer=True), rows.number(r, line, "ffn", integer=True)
        gated = r.get("gated_mlp", "True").lower() not in ("false", "0", "no")
        head_dim = hidden / heads
        params = (
            hidden * (heads + 2 * kv) * head_dim + heads * head_dim * hidden + (3 if gated else 2) * hidden * ffn
        ) / tp
        t = sum(rows.number(r, line, c) for c in GEMM_COLUMNS)
        t += sum(rows.number(r, line, c, positive=False) for c in ELEMENTWISE_COLUMNS if r.get(c, "") != "")
        out.append(
            Observation(
                str(rows.path),
                line,
                "gemm",
                gpu,
                t / 1e3,
                weight_bytes=2.0 * params,
                flops=2.0 * params * n,
                tp=tp,
                tokens=n,
                act_bytes_per_token=2.0 * (hidden + ffn / tp),
                label=f"{r.get('model', '')} tp{tp} n={n:g}",
            )
        )
    return out


def _allreduce(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    out = []
    for r, line in rows.rows:
        gpu = _gpu(rows, catalog, r["gpu"], line, "gpu")
        workers = int(rows.number(r, line, "num_workers", integer=True))
        if workers < 2:
            raise rows.error(line, "num_workers", f"{workers} GPUs do not all-reduce", "at least 2")
        out.append(
            Observation(
                str(rows.path),
                line,
                "allreduce",
                gpu,
                rows.number(r, line, "all_reduce_median_ms") / 1e3,
                size_bytes=rows.number(r, line, "size_bytes"),
                gpus=workers,
                label=r.get("node", ""),
            )
        )
    # a node name with 'pairwise' (no NVSwitch) is used only where nothing else was measured
    switched = {(o.gpu, o.gpus) for o in out if "pairwise" not in o.label}
    return [o for o in out if "pairwise" not in o.label or (o.gpu, o.gpus) not in switched]


def _step_times(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    out = []
    for r, line in rows.rows:
        model = _model(rows, catalog, r["model"], line, "model")
        gpu = _gpu(rows, catalog, r["gpu"], line, "gpu")
        tp = int(rows.number(r, line, "tp", integer=True))
        fw = _framework(rows, opts, tp)
        p = int(rows.number(r, line, "prompt_size", integer=True))
        b = int(rows.number(r, line, "batch_size", integer=True))
        tok = rows.number(r, line, "token_size", integer=True)
        # the whole batch's prompts in one iteration (no token budget in this harness); a harness that is not
        # vLLM (unless it is the default framework) all-reduces with NCCL, not vLLM's custom all-reduce
        vllm = opts.default_framework
        out.append(
            Observation(
                str(rows.path),
                line,
                "prefill",
                gpu,
                rows.number(r, line, "prompt_time_ms") / 1e3,
                fw,
                model,
                tp,
                prefill_iterations(p, b * p, b),
                vllm_allreduce=vllm,
                label=f"tp{tp} b{b} p{p}",
            )
        )
        out.append(
            Observation(
                str(rows.path),
                line,
                "decode",
                gpu,
                rows.number(r, line, "token_time_ms") / 1e3,
                fw,
                model,
                tp,
                [decode_iterations(b, p + tok / 2.0, 1.0)],
                vllm_allreduce=vllm,
                label=f"tp{tp} b{b} p{p}",
            )
        )
    return out


def _serving(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    out = []
    tcol = next(c for c in ("avg_tpot_s", "tpot_s", "itl_s") if c in rows.header)
    bcol = "avg_batch_size" if "avg_batch_size" in rows.header else "max_num_seqs"
    for r, line in rows.rows:
        model = _model(rows, catalog, r["model"], line, "model")
        gpu = _gpu(rows, catalog, r["gpu"], line, "gpu")
        tp = int(rows.number(r, line, "tp", integer=True))
        fw = _framework(rows, opts, tp)
        batch = rows.number(r, line, bcol)
        outs = rows.number(r, line, "avg_output_tokens")
        pin = rows.number(r, line, "avg_input_tokens") if r.get("avg_input_tokens") else opts.prompt_tokens
        tpot = rows.number(r, line, tcol)
        its = [decode_iterations(batch, pin + outs / 2.0, 1.0)]
        # per decode iteration batch/outs requests finish; each new one is prefilled in its own iteration
        share = batch / outs
        its += [(share * c, s) for c, s in prefill_iterations(int(round(pin)), 1 << 30)]
        out.append(
            Observation(
                str(rows.path),
                line,
                "tpot",
                gpu,
                tpot,
                fw,
                model,
                tp,
                its,
                label=f"{model.name} tp{tp} batch {batch:g}",
            )
        )
    return out


#: vLLM v0's limits without chunked prefill: the token budget is max(max_model_len, V0_MIN_BUDGET), 256 sequences
V0_MIN_BUDGET, V0_MAX_SEQS = 2048, 256


def _batch_latency(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    from kavier_opendc.engine.cost_model import CostModel  # KV capacity as the engine computes it

    out = []
    for r, line in rows.rows:
        model = _model(rows, catalog, r["model"], line, "model")
        gpu = _gpu(rows, catalog, r["gpu"], line, "gpu")
        tp = int(rows.number(r, line, "tp", integer=True))
        n = int(rows.number(r, line, "in_out_tokens", integer=True))
        b = int(rows.number(r, line, "batch_size", integer=True))
        if n < 2:
            raise rows.error(line, "in_out_tokens", f"{n} output tokens leave no decode iteration", "at least 2")
        budget = max(model.max_context, V0_MIN_BUDGET)
        blocks = CostModel(model, catalog.gpu(gpu), tp).kv_capacity_blocks(0.9, budget, V0_MAX_SEQS)
        need = b * -(-(2 * n - 1) // 16)
        if need > blocks:
            opts.skipped.append(
                (
                    str(rows.path),
                    line,
                    f"the batch needs {need} KV blocks, {gpu} x {tp} holds {blocks}: vLLM v0 preempts, no closed form",
                )
            )
            continue
        per_it = max(1, min(b, budget // n, V0_MAX_SEQS))
        its = []
        left = b
        while left > 0:
            k = min(per_it, left)
            its.append(
                (1.0, IterationShape(n_tokens=k * n, n_seqs=k, attn_pairs=k * n * (n + 1) / 2.0, kv_read_tokens=0.0))
            )
            left -= k
        # decode iteration j = 1..n-1 caches n + j - 1 tokens per sequence: mean n + n/2 - 1
        its.append(decode_iterations(b, n + n / 2.0 - 1.0, n - 1))
        out.append(
            Observation(
                str(rows.path),
                line,
                "batch",
                gpu,
                rows.number(r, line, "latency_s"),
                _framework(rows, opts, tp),
                model,
                tp,
                its,
                vllm_allreduce=opts.default_framework,
                label=f"{model.name} tp{tp} b{b} n{n}",
            )
        )
    return out


def _kernels(rows: _Rows, catalog: Catalog, opts: ReadOptions) -> list[Observation]:
    out = []
    keep = {catalog.gpu(g).name for g in opts.only_gpus}
    for r, line in rows.rows:
        system = r["system"]
        gpu = _gpu(rows, catalog, KERNEL_SYSTEMS.get(system, system), line, "system")
        if keep and gpu not in keep:
            continue
        op, src = r["op"], r["kernel_source"]
        if opts.only_ops and op not in opts.only_ops:
            continue
        t = rows.number(r, line, "latency_ms") / 1e3
        if op == "gemm":
            if r.get("dtype", "bfloat16") not in ("bfloat16", "float16"):
                continue  # the cost model is of 16-bit weights
            m, n, k = (rows.number(r, line, c, integer=True) for c in ("m", "n", "k"))
            out.append(
                Observation(
                    str(rows.path),
                    line,
                    "gemm_kernel",
                    gpu,
                    t,
                    weight_bytes=2.0 * n * k,
                    flops=2.0 * m * n * k,
                    tokens=m,
                    label=f"gemm m={m:g} n={n:g} k={k:g}",
                )
            )
        elif op == "context_attention":
            b, isl = rows.number(r, line, "batch_size"), rows.number(r, line, "isl")
            heads, d = rows.number(r, line, "num_heads"), rows.number(r, line, "head_dim")
            pairs = b * isl * (isl + 1) / 2.0
            out.append(
                Observation(
                    str(rows.path),
                    line,
                    "attn_prefill",
                    gpu,
                    t,
                    flops=4.0 * heads * d * pairs,
                    tokens=isl,
                    label=f"prefill b={b:g} isl={isl:g} h={heads:g}",
                )
            )
        elif op == "generation_attention":
            b, kv = rows.number(r, line, "batch_size"), rows.number(r, line, "kv_len_step", positive=False) + 1
            kvh, d = rows.number(r, line, "num_kv_heads"), rows.number(r, line, "head_dim")
            out.append(
                Observation(
                    str(rows.path),
                    line,
                    "attn_decode",
                    gpu,
                    t,
                    size_bytes=b * kv * kvh * d * 2 * 2,
                    tokens=b * kv,
                    label=f"decode b={b:g} kv={kv:g} kvh={kvh:g}",
                )
            )
        elif op == "all_reduce":
            if "graph" not in src:
                continue  # vLLM captures its decode steps in CUDA graphs
            g = int(rows.number(r, line, "num_gpus", integer=True))
            out.append(
                Observation(
                    str(rows.path),
                    line,
                    "custom_allreduce",
                    gpu,
                    t,
                    gpus=g,
                    size_bytes=2.0 * rows.number(r, line, "message_size"),
                    label=f"custom AR {g} GPUs",
                )
            )
    return out
