"""Wording shared by the printed summaries of ``kavier simulate`` and ``kavier run``.

Latencies are printed in the unit that suits their size (``base/units.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from kavier_opendc.base.units import latencies

__all__ = ["gpu_line", "latencies", "offline_batch_note"]

def offline_batch_note(summary: Mapping) -> str | None:
    """The note for a trace without arrival times (every request at 0), or None."""
    if (summary.get("trace") or {}).get("offline_batch"):
        return ("the trace has no arrival times: all requests arrive at 0 (an offline batch), so latencies "
                "include waiting for the whole batch")
    return None


def gpu_line(summary: Mapping) -> str:
    """Busy fraction (the load) and the power-relevant activity (what OpenDC's power model gets)."""
    busy = summary.get("gpu_busy_fraction_mean")
    busy_text = f"{busy:.1%} of the time" if busy is not None else "n/a"
    return (f"{busy_text}, power-relevant activity {summary.get('gpu_utilization_mean', 0.0):.3f} "
            "(mean over replicas)")
