"""Which kind of input a file is, told from its name or its parsed document (as `kavier validate` needs).

This module owns:

- :func:`is_trace_file`: a prompt trace by its extension (CSV, Parquet, JSON
  Lines; ``.json`` is left to the documents);
- :func:`document_kind`: a parsed JSON/YAML document as one of
  :data:`DOCUMENT_KINDS` (plan, sweep, synthetic workload, catalogue,
  datacenter; an experiment is everything else), from its keys alone;
- :func:`is_plan_document` and :func:`is_sweep_document`, the two kinds with
  keys of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kavier_opendc.workload.trace import CSV_EXTENSIONS, JSONL_EXTENSIONS, PARQUET_EXTENSIONS

DOCUMENT_KINDS = ("plan", "sweep", "workload", "catalog", "datacenter", "experiment")
#: the only top-level keys a catalogue has
CATALOG_KEYS = {"models", "gpus", "profiles"}
#: keys only an experiment has (a workload or datacenter document holding one of them is an experiment)
EXPERIMENT_KEYS = {"trace", "model", "gpu", "serving"}


def is_trace_file(path: Path) -> bool:
    suffixes = [x.lower() for x in Path(path).suffixes if x.lower() != ".gz"]
    return (
        bool(suffixes)
        and suffixes[-1] in (*CSV_EXTENSIONS, *PARQUET_EXTENSIONS, *JSONL_EXTENSIONS)
        and suffixes[-1] != ".json"
    )


def is_plan_document(doc: Any) -> bool:
    return isinstance(doc, dict) and "candidates" in doc and "traffic" in doc


def is_sweep_document(doc: Any) -> bool:
    return isinstance(doc, dict) and "axes" in doc and "base" in doc


def document_kind(doc: Any) -> str:
    """One of :data:`DOCUMENT_KINDS`; "experiment" when no other kind's keys are there."""
    if is_plan_document(doc):
        return "plan"
    if is_sweep_document(doc):
        return "sweep"
    if isinstance(doc, dict):
        keys = set(doc)
        if doc.get("kind") == "synthetic" or ("input" in keys and "output" in keys and not keys & EXPERIMENT_KEYS):
            return "workload"
        if keys and keys <= CATALOG_KEYS | {"$schema"}:
            return "catalog"
        if "hosts" in keys and not keys & EXPERIMENT_KEYS:
            return "datacenter"
    return "experiment"


__all__ = [
    "CATALOG_KEYS",
    "DOCUMENT_KINDS",
    "EXPERIMENT_KEYS",
    "document_kind",
    "is_plan_document",
    "is_sweep_document",
    "is_trace_file",
]
