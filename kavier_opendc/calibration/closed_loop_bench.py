"""Fit a serving framework to closed-loop benchmark rows: C clients, fixed prompt and answer lengths, each simulated.

A row of AIConfigurator's silicon table (aiconfigurator_e2e_h100.csv, see
the shared data's README) is one server measured by ``aiperf --concurrency
C --num-requests 20*C --warmup-request-count 2*C`` with fixed ISL/OSL and
``ignore_eos``: the mean TTFT and the mean time per output token after the
first (TPOT). Each row is simulated as such a run (:func:`row_trace`): 22*C
requests of ISL prompt and OSL answer tokens sent by C closed-loop clients
(engine/closed_loop.py), all starting at once as aiperf's clients do, the
first 2*C (the warm-up) left out of the means; the server's max batch is the
row's ``batch_size``, FP8 rows run FP8 weights, and a MoE row's layout maps
onto the engine's (``moe_ep_size`` > 1: expert parallel over the TP GPUs;
``attention_dp_size``: attention DP ranks; :func:`row_config`).

The framework's CPU time per engine step, ``fixed_s + per_seq_s x running
sequences`` per TP, is fitted with the GPU profile held fixed: the simulated
TPOT grows with both terms almost linearly (each step pays them once), so a
Gauss-Newton fit on relative errors, its sensitivities from simulated
differences, finds them in a few simulations per row; the client latency
(request handling and streaming outside the engine steps) is then the median
of measured minus simulated TTFT. :func:`fit_closed_loop` fits on the rows a
predicate selects and reports every row, fitted or held out.

The disaggregated rows (``mode == disagg``, :func:`read_disagg_rows`) are
simulated as a prefill pool and a decode pool of the recorded workers
(:func:`disagg_config`) under the engine's P/D loop, vLLM v1's scheduler, with
the backend's fitted step overhead (:func:`disagg_framework`); nothing is
fitted on them (held out).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.engine.results import FINISHED
from kavier_opendc.engine.simulator import SimConfig, simulate
from kavier_opendc.specs.catalog import Catalog
from kavier_opendc.specs.frameworks import FrameworkProfile, StepOverhead, framework
from kavier_opendc.workload.trace import ClosedLoop, Trace

#: the table's model ids -> catalogue names (the models the catalogue holds)
MODELS = {
    "Qwen/Qwen3-32B": "Qwen3-32B",
    "meta-llama/Llama-3.1-8B-Instruct": "Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B": "Llama-3.1-70B",
    "meta-llama/Llama-3.1-70B-Instruct": "Llama-3.1-70B",
    "Qwen/Qwen3-235B-A22B-FP8": "Qwen3-235B-A22B",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "deepseek-ai/DeepSeek-V3": "DeepSeek-V3",
    "deepseek-ai/DeepSeek-R1": "DeepSeek-R1",
    "MiniMaxAI/MiniMax-M2.5": "MiniMax-M2.5",
}
#: precisions read: BF16, FP8 (weights FP8), FP4 (gpt-oss: the catalogue's MXFP4 experts, bf16 elsewhere)
PRECISIONS = ("bf16", "fp8", "fp4")
GPUS = {"h100_sxm": "H100-SXM"}
WARMUP_PER_CLIENT = 2  # aiperf --warmup-request-count 2*C
REQUESTS_PER_CLIENT = 20  # aiperf --num-requests 20*C


@dataclass(frozen=True)
class ClosedLoopRow:
    """One aggregated-serving row: a server and its clients' mean TTFT and TPOT (s)."""

    id: str
    backend: str
    version: str
    model: str  # catalogue name
    gpu: str  # catalogue name
    precision: str  # bf16 | fp8
    tp: int
    isl: int
    osl: int
    concurrency: int
    batch_size: int
    ttft_s: float
    tpot_s: float
    # MoE layout as recorded (0 or empty read as 1): expert-parallel and expert-TP ranks, attention DP ranks
    moe_ep: int = 1
    moe_tp: int = 1
    attn_dp: int = 1
    measured: str = ""  # the run's date (ISO), "" where the row does not record it

    @property
    def label(self) -> str:
        return (
            f"{self.backend} {self.version} {self.model} {self.precision} {self.layout} {self.isl}/{self.osl} "
            f"C{self.concurrency}"
        )

    @property
    def layout(self) -> str:
        out = f"TP{self.tp}" + (f" EP{self.moe_ep}" if self.moe_ep > 1 else "")
        out += f" moeTP{self.moe_tp}" if self.moe_ep > 1 and self.moe_tp > 1 else ""
        return out + (f" DP{self.attn_dp}" if self.attn_dp > 1 else "")

    @property
    def gpus(self) -> int:
        """GPUs of the server: AIConfigurator's layouts have tp x attention_dp = moe_tp x moe_ep GPUs (each
        attention DP rank TP-sharded over ``tp`` GPUs, the experts over all of them)."""
        return self.tp * self.attn_dp

    def unmodelled_layout(self) -> str | None:
        """Why the engine cannot run this row's layout (None: it can). The engine's experts are either all
        expert-parallel over the replica's GPUs or all tensor-parallel, and attention DP splits those GPUs."""
        if self.moe_ep > 1 and self.moe_tp > 1:
            return f"experts split EP {self.moe_ep} x TP {self.moe_tp} (the engine splits them all EP or all TP)"
        if self.moe_ep > 1 and self.moe_ep != self.gpus:
            return f"EP {self.moe_ep} over part of the {self.gpus} GPUs"
        return None


@dataclass
class SimulatedRow:
    row: ClosedLoopRow | DisaggRow
    ttft_s: float  # mean, on the engine's clock (no client latency)
    tpot_s: float


@dataclass
class ClosedLoopFit:
    overheads: dict[tuple[str, int], StepOverhead]
    client_latency_s: float
    fitted: list[SimulatedRow] = field(default_factory=list)
    held_out: list[SimulatedRow] = field(default_factory=list)

    def errors(self, s: SimulatedRow) -> dict[str, float]:
        """Relative errors of one row on the client's clock: mean TTFT and mean TPOT."""
        r = s.row
        return {
            "ttft": abs(s.ttft_s + self.client_latency_s - r.ttft_s) / r.ttft_s,
            "tpot": abs(s.tpot_s - r.tpot_s) / r.tpot_s,
        }

    def mape(self, rows: list[SimulatedRow]) -> dict[str, float]:
        errs = [self.errors(s) for s in rows]
        return {k: float(np.mean([e[k] for e in errs])) if errs else math.nan for k in ("ttft", "tpot")}

    def bias(self, rows: list[SimulatedRow]) -> dict[str, float]:
        """Mean signed relative errors (simulated - measured) / measured: below 0, the simulator is low."""
        out = {}
        for k in ("ttft", "tpot"):
            sim = [s.ttft_s + self.client_latency_s if k == "ttft" else s.tpot_s for s in rows]
            e = [x / getattr(s.row, f"{k}_s") - 1 for x, s in zip(sim, rows, strict=True)]
            out[k] = float(np.mean(e)) if e else math.nan
        return out


def read_rows(path: str | Path, backend: str | None = None) -> list[ClosedLoopRow]:
    """The ``mode == agg`` rows of ``path`` (the columns of aiconfigurator_e2e_h100.csv) whose model the
    catalogue holds and whose precision is BF16, FP8 or FP4, optionally of one ``backend``."""
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line, r in enumerate(csv.DictReader(fh), start=2):
            if r.get("mode") != "agg" or (backend is not None and r.get("backend") != backend):
                continue
            model = MODELS.get(r.get("model_path", ""))
            precision = (r.get("precision") or "").strip() or "bf16"
            gpu = GPUS.get(r.get("system", ""))
            if model is None or gpu is None or precision not in PRECISIONS:
                continue
            try:
                batch = int(float(r["batch_size"]))
                conc = int(float(r["concurrency"])) if (r.get("concurrency") or "").strip() else batch
                out.append(
                    ClosedLoopRow(
                        r["id"],
                        r["backend"],
                        (r.get("backend_version") or "").strip() or "unknown",
                        model,
                        gpu,
                        precision,
                        int(float(r["tp_size"])),
                        int(r["isl"]),
                        int(r["osl"]),
                        conc,
                        batch,
                        float(r["silicon_ttft_ms"]) / 1e3,
                        float(r["silicon_tpot_ms"]) / 1e3,
                        _rank(r.get("moe_ep_size")),
                        _rank(r.get("moe_tp_size")),
                        _rank(r.get("attention_dp_size")),
                        (r.get("measured_date") or "").strip()[:10],
                    )
                )
            except (KeyError, ValueError) as exc:
                raise _unreadable(path, line, exc) from None
    return out


def _unreadable(path: str | Path, line: int, exc: Exception) -> KavierInputError:
    return KavierInputError(
        f"unreadable row ({exc})",
        source=str(path),
        location=f"line {line}",
        expected="the columns of aiconfigurator_e2e_h100.csv",
    )


def _rank(cell: str | None) -> int:
    """A parallel size cell: empty or 0 (the table's "not used") is 1."""
    return max(int(float(cell)), 1) if (cell or "").strip() else 1


def ttft_jumps(rows: list[ClosedLoopRow], factor: float = 2.0) -> set[str]:
    """Ids of the rows whose mean TTFT is over ``factor`` x that of the next lower concurrency of the same
    server, precision, layout and ISL/OSL: the jumps the data README ascribes to an unrecorded batch or token
    limit of the deployment (TRT-LLM TP 4, 1024/128: 102 ms at C = 32, 692 ms at C = 64)."""
    groups: dict[tuple, list[ClosedLoopRow]] = {}
    for r in rows:
        key = (r.backend, r.version, r.model, r.precision, r.layout, r.isl, r.osl)
        groups.setdefault(key, []).append(r)
    out = set()
    for grp in groups.values():
        grp = sorted(grp, key=lambda r: r.concurrency)
        pairs = zip(grp, grp[1:], strict=False)
        out |= {b.id for a, b in pairs if b.concurrency > a.concurrency and b.ttft_s > factor * a.ttft_s}
    return out


def row_trace(row: ClosedLoopRow | DisaggRow) -> Trace:
    """The row's run: (20 + 2) x C requests of ISL / OSL tokens from C closed-loop clients."""
    n = (REQUESTS_PER_CLIENT + WARMUP_PER_CLIENT) * row.concurrency
    return Trace(
        np.zeros(n),
        np.full(n, row.isl, dtype=np.int64),
        np.full(n, row.osl, dtype=np.int64),
        source=row.id,
        format="kavier",
        closed_loop=ClosedLoop(row.concurrency),
    )


def sglang05_memory_fraction(gpu_memory_gib: float, tp: int) -> float:
    """SGLang 0.5's default ``mem_fraction_static`` (ServerArgs._handle_gpu_memory_settings): (GPU memory -
    reserved) / GPU memory, reserved (MiB) = 512 + 1.5 x chunked_prefill_size + 2 x cuda_graph_max_bs +
    TP / 8 x 1024, at least 10 GiB on GPUs above 60 GiB; chunk 8,192 and graphs to 256 sequences (512 from
    TP 4) on GPUs of 60-90 GiB. SGLang 0.3 took 0.88 / 0.85 / 0.82 / 0.80 by TP instead."""
    mib = gpu_memory_gib * 1024
    chunk = 8192 if mib >= 60 * 1024 else 4096
    graphs = 256 if tp < 4 else 512
    reserved = 512 + max(chunk, 2048) * 1.5 + graphs * 2 + tp / 8 * 1024
    if mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((mib - reserved) / mib, 3)


#: AIConfigurator's generator sizes a server's token budget per step as ``max_batch_size + ISL + 1500``
#: (aggregated) and ``ISL + 1500`` (a prefill worker), TRT-LLM's rounded up to its 32-token KV blocks: the
#: ``max_num_tokens`` rules of its backend rule plugins (src/aiconfigurator/generator/rule_plugin/*.rule),
#: from the generator's first version (ai-dynamo/aiconfigurator @ 95ddf241a, 2025-12-04) to 095f58a. It
#: replaces the engine's default (vLLM 8,192 on an H100 server, which lets one step prefill eight prompts
#: of 1,024 tokens at once).
AIC_BUDGET_MARGIN = 1500
AIC_GENERATOR_DATE = "2025-12-04"
#: undated rows served from the generator's configurations: its vLLM support (PR #144) came with vLLM
#: 0.12.0, new that week. Older undated rows (TRT-LLM 1.0.0rc3, SGLang 0.5.1, vLLM without a version,
#: measured 2025-10) keep the engines' defaults: their deployments' budgets are not recorded.
AIC_GENERATED_UNDATED = (("vllm", "0.12.0"),)


def deployment_token_budget(row: ClosedLoopRow | DisaggRow) -> int | None:
    """Tokens per step of the row's server (aggregated) or prefill workers (disaggregated) under the
    generator's rule, where the row ran a generated configuration; None: the framework's default."""
    if row.measured:
        generated = row.measured >= AIC_GENERATOR_DATE
    else:
        generated = (row.backend, row.version) in AIC_GENERATED_UNDATED
    if not generated:
        return None
    tokens = row.isl + AIC_BUDGET_MARGIN + (row.batch_size if isinstance(row, ClosedLoopRow) else 0)
    return -(-tokens // 32) * 32 if row.backend == "trtllm" else tokens


def row_config(row: ClosedLoopRow, catalog: Catalog, fw: FrameworkProfile) -> SimConfig:
    """The row's server as a SimConfig: its GPUs (:attr:`ClosedLoopRow.gpus`), max batch, weights (FP8 rows FP8
    everywhere; FP4 rows the catalogue's MXFP4 experts) and MoE layout (``moe_ep_size`` > 1 -> expert
    parallel over all the GPUs, ``attention_dp_size`` -> attention DP ranks of ``tp_size`` GPUs each) and
    token budget per step (:func:`deployment_token_budget`)."""
    gpu = catalog.gpu(row.gpu)
    kw: dict = {}
    budget = deployment_token_budget(row)
    if budget is not None:
        kw["max_batched_tokens"] = budget
    if fw.engine == "sglang":
        kw["gpu_memory_utilization"] = sglang05_memory_fraction(gpu.memory_gib, row.gpus)
    if row.moe_ep > 1:
        kw["expert_parallel"] = True
    if row.attn_dp > 1:
        kw["data_parallel_size"] = row.attn_dp
    return SimConfig(
        model=catalog.model(row.model),
        gpu=gpu,
        tp=row.gpus,
        framework=dataclasses.replace(fw, client_latency_s=0.0),
        max_num_seqs=row.batch_size * row.attn_dp,  # the table's batch is per attention DP rank (C / DP)
        weight_dtype="fp8" if row.precision == "fp8" else "auto",
        **kw,
    )


def simulate_row(row: ClosedLoopRow, catalog: Catalog, fw: FrameworkProfile) -> SimulatedRow:
    """The row simulated under ``fw``: mean TTFT and TPOT of the requests after the warm-up (engine clock)."""
    res = simulate(row_trace(row), row_config(row, catalog, fw), progress=False)
    r, tr = res.results, res.trace
    keep = np.arange(len(tr)) >= WARMUP_PER_CLIENT * row.concurrency
    keep &= r.status == FINISHED
    ttft = float(np.mean((r.first_token - tr.arrival_s)[keep]))
    tpot = float(np.mean(((r.finish - r.first_token) / max(row.osl - 1, 1))[keep]))
    return SimulatedRow(row, ttft, tpot)


def _with(base: FrameworkProfile, over: dict[tuple[str, int], StepOverhead]) -> FrameworkProfile:
    return dataclasses.replace(base, step_overhead=dict(over), client_latency_s=0.0)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def fit_overhead(rows: list[ClosedLoopRow], catalog: Catalog, base: FrameworkProfile, key: tuple[str, int]):
    """(fixed_s, per_seq_s) >= 0 of the (GPU, TP) ``key`` minimising the relative TPOT errors of ``rows``."""
    meas = np.array([r.tpot_s for r in rows])

    def tpots(fixed: float, per_seq: float) -> np.ndarray:
        fw = _with(base, {key: StepOverhead(fixed_s=fixed, per_seq_s=per_seq)})
        return np.array([simulate_row(r, catalog, fw).tpot_s for r in rows])

    x = np.array([0.0, 0.0])
    df, dp = 1e-3, 1e-5  # difference steps: 1 ms per step, 10 us per sequence
    for _ in range(3):
        t0 = tpots(*x)
        jac = np.stack([(tpots(x[0] + df, x[1]) - t0) / df, (tpots(x[0], x[1] + dp) - t0) / dp], axis=1)
        a, b = jac / meas[:, None], (meas - t0) / meas
        step = _nonneg_lstsq(a, b, x)
        if np.allclose(step, 0.0, atol=1e-7):
            break
        x = np.maximum(x + step, 0.0)
    return StepOverhead(fixed_s=_round(x[0]), per_seq_s=_round(x[1]))


def _nonneg_lstsq(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The least-squares step d of a d = b keeping x + d >= 0 (a term that would go negative is held at 0)."""
    d = np.linalg.lstsq(a, b, rcond=None)[0]
    if (x + d >= 0).all():
        return d
    best = None
    for j in range(a.shape[1]):  # one term held at zero, the other fitted alone
        d1 = np.zeros_like(x)
        d1[j] = -x[j]
        other = 1 - j
        rest = b - a[:, j] * d1[j]
        col = a[:, other]
        d1[other] = max(float(col @ rest / (col @ col)) if col @ col > 0 else 0.0, -x[other])
        cost = float(np.sum((a @ d1 - b) ** 2))
        if best is None or cost < best[0]:
            best = (cost, d1)
    assert best is not None
    return best[1]


def fit_closed_loop(
    rows: list[ClosedLoopRow],
    catalog: Catalog,
    base: FrameworkProfile,
    train: Callable[[ClosedLoopRow], bool],
) -> ClosedLoopFit:
    """Step overheads per (GPU, TP) and the client latency from the rows ``train`` selects; every row simulated
    with the result (the others are the held-out check)."""
    fit_rows = [r for r in rows if train(r)]
    if not fit_rows:
        raise KavierInputError("no rows to fit", expected="rows the training predicate selects")
    groups: dict[tuple[str, int], list[ClosedLoopRow]] = {}
    for r in fit_rows:
        groups.setdefault((r.gpu, r.tp), []).append(r)
    over = {key: fit_overhead(grp, catalog, base, key) for key, grp in sorted(groups.items())}
    fw = _with(base, over)
    fitted = [simulate_row(r, catalog, fw) for r in fit_rows]
    client = max(0.0, _round(float(np.median([s.row.ttft_s - s.ttft_s for s in fitted]))))
    held = [simulate_row(r, catalog, fw) for r in rows if not train(r)]
    return ClosedLoopFit(over, client, fitted, held)


def evaluate(rows: list[ClosedLoopRow], catalog: Catalog, fw: FrameworkProfile) -> ClosedLoopFit:
    """Every row simulated under ``fw`` as it is (no fitting), for its error table."""
    over = dict(fw.step_overhead) if fw.step_overhead is not None else {}
    return ClosedLoopFit(over, fw.client_latency_s, [], [simulate_row(r, catalog, fw) for r in rows])


# ---------------------------------------------------------------------------
# Disaggregated rows (mode disagg): prefill and decode workers, simulated as P/D pools (engine/disaggregated.py)
# ---------------------------------------------------------------------------

#: the framework whose P/D loop runs every disaggregated row: the engine's P/D serving is vLLM v1's scheduler
DISAGG_FRAMEWORK = "vllm-0.12-server"
#: each backend's fitted server profile: its CPU time per step and client latency go with the row
BACKEND_FRAMEWORKS = {"vllm": "vllm-0.12-server", "sglang": "sglang-0.5-server", "trtllm": "trtllm-1.0-server"}


#: why a row without a client count is not simulated
NO_CLIENTS = (
    "no client count recorded, and the decode batch is the server's maximum, not the clients (vLLM Qwen3-32B, "
    "2 decode workers of TP 4 with batch 224: a measured TPOT of 8.7 ms, where 224 sequences of 4,500 tokens "
    "a worker would take 20 ms to read their BF16 KV alone)"
)


@dataclass(frozen=True)
class WorkerLayout:
    """One role's workers in a disaggregated row: how many, and each one's GPUs as AIConfigurator lays them out
    (``tp`` x ``attn_dp`` GPUs, the experts ``moe_tp`` x ``moe_ep`` over the same GPUs)."""

    workers: int | None  # None: not recorded
    tp: int
    attn_dp: int = 1
    moe_tp: int = 1
    moe_ep: int = 1
    batch: int | None = None  # max batch per attention DP rank (None: not recorded)

    @property
    def gpus(self) -> int:
        return self.tp * self.attn_dp

    @property
    def label(self) -> str:
        out = f"TP{self.tp}" + (f" DP{self.attn_dp}" if self.attn_dp > 1 else "")
        out += f" EP{self.moe_ep}" if self.moe_ep > 1 else ""
        return out + (f" moeTP{self.moe_tp}" if self.moe_ep > 1 and self.moe_tp > 1 else "")

    def unmodelled(self) -> str | None:
        if self.moe_ep > 1 and self.moe_tp > 1:
            return f"experts split EP {self.moe_ep} x TP {self.moe_tp} (the engine splits them all EP or all TP)"
        if self.moe_ep > 1 and self.moe_ep != self.gpus:
            return f"EP {self.moe_ep} over part of the {self.gpus} GPUs"
        return None


@dataclass(frozen=True)
class DisaggRow:
    """One disaggregated-serving row: its prefill and decode workers and the clients' mean TTFT and TPOT (s)."""

    id: str
    backend: str
    version: str
    model: str  # catalogue name
    gpu: str  # catalogue name
    precision: str
    isl: int
    osl: int
    concurrency: int
    ttft_s: float
    tpot_s: float
    prefill: WorkerLayout
    decode: WorkerLayout
    measured: str = ""  # the run's date (ISO), "" where the row does not record it

    @property
    def workers(self) -> str:
        """``NpMd``, ``?`` for a count the row does not record (simulated as 1)."""
        p, d = self.prefill.workers, self.decode.workers
        return f"{p if p is not None else '?'}P{d if d is not None else '?'}D"

    @property
    def layout(self) -> str:
        return f"{self.workers} P {self.prefill.label} / D {self.decode.label}"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.version} {self.model} {self.layout} {self.isl}/{self.osl} C{self.concurrency}"

    def unmodelled(self) -> str | None:
        """Why the P/D engine cannot run this row (None: it can)."""
        for role, w in (("prefill", self.prefill), ("decode", self.decode)):
            why = w.unmodelled()
            if why is not None:
                return f"{role} workers: {why}"
        return None


def _count(cell: str | None) -> int | None:
    """A worker or batch count cell: empty is not recorded (None)."""
    return int(float(cell)) if (cell or "").strip() else None


def read_disagg_rows(path: str | Path) -> tuple[list[DisaggRow], dict[str, int]]:
    """The ``mode == disagg`` rows of ``path`` the catalogue can serve with their client count, and the others
    counted by reason."""
    rows: list[DisaggRow] = []
    skipped: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for line, r in enumerate(csv.DictReader(fh), start=2):
            if r.get("mode") != "disagg":
                continue
            model = MODELS.get(r.get("model_path", ""))
            precision = (r.get("precision") or "").strip() or "bf16"
            gpu = GPUS.get(r.get("system", ""))
            if model is None or gpu is None or precision not in PRECISIONS:
                key = f"{r.get('backend')} {r.get('model_path')}: model, GPU or precision not in the catalogue"
                skipped[key] = skipped.get(key, 0) + 1
                continue
            try:
                roles = {
                    role: WorkerLayout(
                        _count(r.get(f"{role}_num_workers")),
                        _rank(r.get(f"{role}_tp_size")),
                        _rank(r.get(f"{role}_attention_dp_size")),
                        _rank(r.get(f"{role}_moe_tp_size")),
                        _rank(r.get(f"{role}_moe_ep_size")),
                        _count(r.get(f"{role}_batch_size")),
                    )
                    for role in ("prefill", "decode")
                }
                if not (r.get("concurrency") or "").strip():
                    key = f"{r['backend']} {r['model_path']}: {NO_CLIENTS}"
                    skipped[key] = skipped.get(key, 0) + 1
                    continue
                conc = int(float(r["concurrency"]))
                rows.append(
                    DisaggRow(
                        r["id"],
                        r["backend"],
                        (r.get("backend_version") or "").strip() or "unknown",
                        model,
                        gpu,
                        precision,
                        int(r["isl"]),
                        int(r["osl"]),
                        conc,
                        float(r["silicon_ttft_ms"]) / 1e3,
                        float(r["silicon_tpot_ms"]) / 1e3,
                        roles["prefill"],
                        roles["decode"],
                        (r.get("measured_date") or "").strip()[:10],
                    )
                )
            except (KeyError, ValueError) as exc:
                raise _unreadable(path, line, exc) from None
    return rows, skipped


def disagg_framework(backend: str) -> FrameworkProfile:
    """The P/D loop's framework for a backend's row: vLLM v1's scheduler (the only one the engine's P/D
    serving runs) with the backend's fitted CPU time per step (per TP, the nearest fitted one beyond TP 8)."""
    own = framework(BACKEND_FRAMEWORKS[backend])
    base = framework(DISAGG_FRAMEWORK)
    return dataclasses.replace(
        base,
        name=f"{own.name} (P/D: vLLM v1 scheduler)",
        step_overhead=own.step_overhead,
        client_latency_s=own.client_latency_s,
    )


def disagg_config(row: DisaggRow, catalog: Catalog, fw: FrameworkProfile) -> SimConfig:
    """The row's deployment as a SimConfig: a prefill pool and a decode pool of the recorded workers (1 where
    not recorded), each worker ``tp`` x ``attn_dp`` GPUs with its expert layout and max batch, a prefill
    worker's token budget per step :func:`deployment_token_budget`; the KV link one
    400 Gb/s port per GPU of the smaller worker (DGX H100 datasheet; the rows do not record it)."""
    from kavier_opendc.engine.kv_link import Disaggregation, LinkSpec, Pool
    from kavier_opendc.specs.iteration_time import INTER_NODE_GBS

    gpu = catalog.gpu(row.gpu)
    base = catalog.model(row.model)

    def pool(w: WorkerLayout, tokens: int | None = None) -> Pool:
        model = dataclasses.replace(base, expert_parallel=w.moe_ep > 1, attn_dp=w.attn_dp) if base.is_moe else base
        seqs = w.batch * w.attn_dp if w.batch is not None else None
        return Pool(model, gpu, replicas=w.workers or 1, tp=w.gpus, max_num_seqs=seqs, max_batched_tokens=tokens)

    link = LinkSpec(gbs=INTER_NODE_GBS * min(row.prefill.gpus, row.decode.gpus))
    return SimConfig(
        model=base,
        gpu=gpu,
        framework=dataclasses.replace(fw, client_latency_s=0.0),
        weight_dtype="fp8" if row.precision == "fp8" else "auto",
        disaggregation=Disaggregation(pool(row.prefill, deployment_token_budget(row)), pool(row.decode), link),
    )


def simulate_disagg_row(row: DisaggRow, catalog: Catalog, fw: FrameworkProfile) -> SimulatedRow:
    """The row simulated: mean TTFT (engine clock, no client latency) and TPOT after the warm-up."""
    trace = row_trace(row)  # the same closed loop: C clients, 22 x C requests
    res = simulate(trace, disagg_config(row, catalog, fw), progress=False)
    r, tr = res.results, res.trace
    keep = (np.arange(len(tr)) >= WARMUP_PER_CLIENT * row.concurrency) & (r.status == FINISHED)
    ttft = float(np.mean((r.first_token - tr.arrival_s)[keep]))
    tpot = float(np.mean(((r.finish - r.first_token) / max(row.osl - 1, 1))[keep]))
    return SimulatedRow(row, ttft, tpot)


def evaluate_disagg(rows: list[DisaggRow], catalog: Catalog, backend: str) -> ClosedLoopFit:
    """Rows of one backend simulated under :func:`disagg_framework` as they are (held out: nothing fitted)."""
    fw = disagg_framework(backend)
    return ClosedLoopFit({}, fw.client_latency_s, [], [simulate_disagg_row(r, catalog, fw) for r in rows])
