"""The largest sizes Kavier-OpenDC accepts, each with the physical or memory reason behind it.

Every input path (the CLI's argument types, the JSON Schemas of experiment,
sweep, datacenter, catalogue and synthetic workload files, the trace reader,
the engine's own configuration check) takes its limits from here, so that an
absurd value is refused up front, before any allocation or loop, with one
wording: the field, the value and the limit. The limits are far above anything
real, so no honest input meets them; they exist to turn a hang or a
terabyte allocation into a one-line error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kavier_opendc.base.errors import KavierInputError


@dataclass(frozen=True)
class Limit:
    """One upper (or lower) bound: its value, the unit it counts and why it is there."""

    value: float
    unit: str
    why: str

    def text(self) -> str:
        v = self.value
        shown = f"{int(v):,}" if float(v).is_integer() and abs(v) >= 1 else f"{v:g}"
        return f"{shown} {self.unit}".strip()

    def above(self, value: Any) -> str:
        """The message for ``value`` above this limit, for a field named elsewhere."""
        return f"{_shown(value)} is above the limit of {self.text()} ({self.why})"

    def exceeded(self, field: str, value: Any) -> str:
        """The message for ``value`` of ``field`` above this limit."""
        return f"{field}: {self.above(value)}"


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10**18 else f"{value:.3e}"
    return repr(value)


#: A request's prompt or answer, a model's context window, --max-model-len.
CONTEXT_TOKENS = Limit(
    10_000_000, "tokens", "longer than the context window of any model released, the longest being 10M tokens"
)
#: Replicas, hosts and GPUs of one simulation.
GPUS = Limit(1_000_000, "GPUs", "five times the largest GPU cluster ever built, which has about 200,000 GPUs")
#: Serving replicas of one simulation (each holds at least one GPU).
REPLICAS = Limit(GPUS.value, "replicas", f"each needs a GPU, and no datacenter holds more than {int(GPUS.value):,}")
#: Hosts of one datacenter.
HOSTS = Limit(GPUS.value, "hosts", "no datacenter holds more hosts than the largest cluster has GPUs")
#: GPUs in one host (one server or one rack-scale NVLink domain).
GPUS_PER_HOST = Limit(128, "GPUs per host", "the densest servers and NVLink racks hold 8 to 72 GPUs")
#: Sequences running at once per replica.
NUM_SEQS = Limit(1_000_000, "sequences", "each running sequence holds KV memory; no GPU holds a million")
#: Tokens one iteration may process.
BATCHED_TOKENS = Limit(
    10_000_000, "tokens per iteration", "the activations of one iteration would exceed any GPU's memory"
)
#: KV-cache capacity per replica, in 16-token blocks (a counter, not an allocation).
KV_BLOCKS = Limit(2**30, "KV blocks", "16 billion tokens of KV cache, a thousand times any GPU's memory")
#: Prefix-cache pool outside GPU memory, in tokens.
CACHE_TOKENS = Limit(10**12, "tokens", "a petabyte-scale KV pool; use 'inf' for an unbounded cache")
#: Host memory, GiB or GB (host cache tier, host DRAM, GPU memory in a catalogue).
MEMORY_GB = Limit(1_048_576, "GB", "a petabyte; no single host or GPU holds more memory")
#: Simulated time: arrival spans, think times, durations, intervals.
DURATION_S = Limit(10 * 365 * 86_400, "s", "ten years of simulated time")
#: Simulated time in minutes (carbon profile steps).
DURATION_MIN = Limit(DURATION_S.value / 60, "min", "ten years of simulated time")
#: Simulated time in days (carbon profiles).
DURATION_DAYS = Limit(DURATION_S.value / 86_400, "days", "ten years of simulated time")
#: Export intervals OpenDC steps through in one run: the simulated span (first submission to last task end)
#: divided by datacenter.export_interval_s. OpenDC wakes at every interval, idle or not, to write a row per
#: host and power source, so its time and memory grow with the span even when nothing runs. Measured with
#: OpenDC 2.4u's own ExperimentCli, one host, 1 s interval, one task idle in between: 100,000 intervals
#: 20 s and 330 MB resident, 1,000,000 intervals 45 s and 870 MB, 3,000,000 intervals 133 s and 1.0 GB
#: (about 23,000 intervals a second); a trace with arrivals a year apart (30,000,000 intervals) was still
#: running in `kavier run` after 5 minutes with 1.3 GB resident, on course for about 25 minutes. The limit
#: lets a run of four months at 1 s (or years at a minute) through in under 8 minutes.
OPENDC_INTERVALS = Limit(
    10_000_000,
    "export intervals",
    "OpenDC steps through every export interval of the span, idle or not, at about 23,000 "
    "a second with memory growing with the span: more would take OpenDC over 7 minutes",
)
#: Turns of one conversation.
TURNS = Limit(1_000_000, "turns", "a conversation that long would exceed any context window")
#: Coefficient of variation of inter-arrival times.
CV = Limit(1_000, "", "beyond it every request arrives in one burst (and the gamma draws underflow)")
#: Arrival rate, requests per second.
RATE_RPS = Limit(1e9, "requests/s", "a thousand times all LLM traffic on Earth")
#: Configurations of one sweep.
SWEEP_RUNS = Limit(100_000, "configurations", "each run writes its own folder and report")
#: Tensor-parallel degree (it must divide the attention heads as well).
TP = Limit(1024, "GPUs", "no model has more attention heads to split")
#: CPU cores of one host.
CORES = Limit(65_536, "cores", "a thousand times the largest CPU socket")
#: Model parameters in a catalogue.
PARAMS = Limit(1e14, "parameters", "fifty times the largest model ever described")
#: Power of one device, W.
POWER_W = Limit(100_000, "W", "a hundred times the most power-hungry GPU")
#: Worker processes of a sweep.
JOBS = Limit(1024, "processes", "each worker holds a JVM")
#: A random seed (numpy and Python accept up to 2**63 - 1 here).
SEED = Limit(2**63 - 1, "", "the largest 64-bit seed")

#: Nesting of an input document (JSON/YAML); ours nest at most about eight levels.
DOCUMENT_DEPTH = Limit(64, "levels", "deeper documents can only be hostile, and parsers recurse on nesting")
#: Values of a YAML document once its aliases are expanded ("billion laughs").
DOCUMENT_NODES = Limit(1_000_000, "values", "aliases that expand exponentially would never finish")
#: Size of an experiment, sweep, datacenter, catalogue or workload description file.
DOCUMENT_BYTES = Limit(8 * 2**20, "characters", "descriptions are kilobytes; put data in trace files")

#: Memory per request of a run (trace columns, engine record, results, outputs): measured about 850 bytes
#: (``python bench/simulate_speed.py --synthetic 400000`` peaks at 437 MiB); 1,500 leaves room for sessions
#: and prefix identities.
BYTES_PER_REQUEST = 1_500


#: The OpenDC watchdog: an OpenDC run whose progress (finished (scenario, seed) runs, the bridge's phase,
#: and OpenDC's hourly task counts) has not advanced for this long is stopped. On the demo OpenDC reports
#: progress only at its start and its end, 2 to 3 s apart, and a normal run never waits more than a few
#: seconds between reports; 300 s is a hundred times that and still stops a hung run within five minutes.
OPENDC_STALL_DEFAULT_S = 300.0
#: The environment variable that sets the watchdog's limit in seconds (0: no watchdog).
OPENDC_STALL_ENV = "KAVIER_OPENDC_STALL_S"
#: The largest stall limit accepted (``--stall-timeout``, ``$KAVIER_OPENDC_STALL_S``).
OPENDC_STALL_S = Limit(7 * 86_400, "s", "a week without progress is a hung run; use 0 for no watchdog")


def opendc_stall_s(value: Any = None) -> float:
    """The OpenDC watchdog's stall limit in seconds (0: off): ``value`` when given, else
    ``$KAVIER_OPENDC_STALL_S``, else :data:`OPENDC_STALL_DEFAULT_S`."""
    source = None
    if value is None:
        raw = os.environ.get(OPENDC_STALL_ENV, "").strip()
        if not raw:
            return OPENDC_STALL_DEFAULT_S
        source, value = f"${OPENDC_STALL_ENV}", raw
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise KavierInputError(
            f"{value!r} is not a number of seconds",
            source=source or "stall timeout",
            expected="seconds without progress before OpenDC is stopped (0: never)",
        ) from None
    if not seconds >= 0:  # also refuses NaN
        raise KavierInputError(
            f"{value!r} is negative",
            source=source or "stall timeout",
            expected="seconds without progress before OpenDC is stopped (0: never)",
        )
    if seconds > OPENDC_STALL_S.value:
        raise KavierInputError(OPENDC_STALL_S.above(seconds), source=source or "stall timeout")
    return seconds


def physical_memory_bytes() -> int:
    """This machine's memory (64 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def requests_limit() -> Limit:
    """How many requests one run may hold: this machine's memory / memory per request."""
    mem = physical_memory_bytes()
    return Limit(
        mem // BYTES_PER_REQUEST,
        "requests",
        f"about {BYTES_PER_REQUEST} bytes each would exceed this machine's {mem / 2**30:.0f} GiB of memory",
    )


def check(field: str, value: Any, limit: Limit) -> str | None:
    """The problem with ``value`` of ``field``, or None when it is a number within ``limit``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value > limit.value:
        return limit.exceeded(field, value)
    return None


#: JSON Schema limits, by schema file and property name: every numeric property of that
#: name in that schema gets ``maximum`` (and ``x-kavier-limit`` naming the Limit, for the wording).
SCHEMA_LIMITS: dict[str, dict[str, str]] = {
    "experiment.schema.json": {
        "replicas": "REPLICAS",
        "tp": "TP",
        "max_num_seqs": "NUM_SEQS",
        "max_batched_tokens": "BATCHED_TOKENS",
        "num_kv_blocks": "KV_BLOCKS",
        "max_model_len": "CONTEXT_TOKENS",
        "min_prompt_tokens": "CONTEXT_TOKENS",
        "capacity_tokens": "CACHE_TOKENS",
        "host_memory_gb": "MEMORY_GB",
        "ttft_s": "DURATION_S",
        "tpot_s": "DURATION_S",
        "seed": "SEED",
        "interval_s": "DURATION_S",
        "step_minutes": "DURATION_MIN",
        "days": "DURATION_DAYS",
    },
    "datacenter.schema.json": {
        "count": "HOSTS",
        "gpus_per_host": "GPUS_PER_HOST",
        "cores": "CORES",
        "memory_gib": "MEMORY_GB",
        "export_interval_s": "DURATION_S",
        "watts": "POWER_W",
        "max_power_w": "POWER_W",
        "idle_w": "POWER_W",
        "max_w": "POWER_W",
    },
    "catalog.schema.json": {
        "memory_gib": "MEMORY_GB",
        "total_params": "PARAMS",
        "active_params": "PARAMS",
        "max_context": "CONTEXT_TOKENS",
        "idle_power_w": "POWER_W",
        "max_power_w": "POWER_W",
    },
    "synthetic_workload.schema.json": {
        "num_requests": "REQUESTS",
        "num_sessions": "REQUESTS",
        "rate": "RATE_RPS",
        "cv": "CV",
        "input": "CONTEXT_TOKENS",
        "output": "CONTEXT_TOKENS",
        "turns": "TURNS",
        "shared_prefix_tokens": "CONTEXT_TOKENS",
        "hash_block_size": "CONTEXT_TOKENS",
        "seed": "SEED",
        "value": "CONTEXT_TOKENS",
        "low": "CONTEXT_TOKENS",
        "high": "CONTEXT_TOKENS",
        "min": "CONTEXT_TOKENS",
        "max": "CONTEXT_TOKENS",
        "median": "CONTEXT_TOKENS",
        "mean": "CONTEXT_TOKENS",
        "duration.value": "DURATION_S",
        "duration.mean": "DURATION_S",
        "duration.low": "DURATION_S",
        "duration.high": "DURATION_S",
        "duration.median": "DURATION_S",
    },
    "sweep.schema.json": {"jobs": "JOBS"},
}


def named(name: str) -> Limit:
    """A limit by its name in this module (``REQUESTS`` is this machine's :func:`requests_limit`)."""
    if name == "REQUESTS":
        return requests_limit()
    return globals()[name]


def with_limits(schema: Any, schema_name: str) -> Any:
    """``schema`` with ``maximum`` set on the properties :data:`SCHEMA_LIMITS` names (in place)."""
    table = SCHEMA_LIMITS.get(schema_name, {})
    if not table:
        return schema
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()  # ``where``: the $defs entry we are in ("" outside any)
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                for key, sub in props.items():
                    name = table.get(f"{where}.{key}") or table.get(key)
                    if name and isinstance(sub, dict) and "const" not in sub and "enum" not in sub:
                        sub.setdefault("maximum", named(name).value)
                        sub.setdefault("x-kavier-limit", name)
            for key, sub in node.items():
                if key == "$defs" and isinstance(sub, dict):
                    stack.extend((d, name) for name, d in sub.items())
                else:
                    stack.append((sub, where))
        elif isinstance(node, list):
            stack.extend((x, where) for x in node)
    return schema
