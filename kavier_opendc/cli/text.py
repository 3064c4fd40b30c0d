"""Wording shared by the printed summaries of ``kavier simulate`` and ``kavier run``.

Latencies are printed in the unit that suits their size (``base/units.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from kavier_opendc.base.units import latencies

__all__ = ["context_note", "gpu_line", "latencies", "offline_batch_note"]


def context_note(summary: Mapping) -> str | None:
    """The note for requests longer than the model's context window that were simulated anyway
    (no ``max_model_len`` set, so nothing refused them), or None."""
    n, config = summary.get("num_over_model_context"), summary.get("config") or {}
    if n and config.get("max_model_len") is None:
        return (
            f"{n} requests are longer than {config.get('model')}'s context window; a real server would "
            "refuse them (--max-model-len N, or serving.max_model_len, does)"
        )
    return None


def offline_batch_note(summary: Mapping) -> str | None:
    """The note for a trace without arrival times (every request at 0), or None."""
    if (summary.get("trace") or {}).get("offline_batch"):
        return (
            "the trace has no arrival times: all requests arrive at 0 (an offline batch), so latencies "
            "include waiting for the whole batch"
        )
    return None


def gpu_line(summary: Mapping) -> str:
    """Busy fraction (the load) and the power-relevant activity (what OpenDC's power model gets)."""
    busy = summary.get("gpu_busy_fraction_mean")
    busy_text = f"{busy:.1%} of the time" if busy is not None else "n/a"
    return f"{busy_text}, power-relevant activity {summary.get('gpu_utilization_mean', 0.0):.3f} (mean over replicas)"
