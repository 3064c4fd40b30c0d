"""Which kind of input a file is: traces by extension, documents by their keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from kavier_opendc.experiments.documents import DOCUMENT_KINDS, document_kind, is_trace_file


@pytest.mark.parametrize(
    "name, trace",
    [
        ("t.csv", True),
        ("t.csv.gz", True),
        ("t.PARQUET", True),
        ("t.pq", True),
        ("t.jsonl", True),
        ("t.ndjson.gz", True),
        ("t.json", False),
        ("t.yaml", False),
        ("t", False),
        ("t.gz", False),
    ],
)
def test_trace_files_by_extension(name, trace):
    assert is_trace_file(Path(name)) is trace


@pytest.mark.parametrize(
    "doc, kind",
    [
        ({"name": "p", "candidates": {}, "traffic": {}}, "plan"),
        ({"base": "experiment.yaml", "axes": {"gpu": ["A100-80GB"]}}, "sweep"),
        ({"kind": "synthetic", "model": "x"}, "workload"),
        ({"input": {}, "output": {}, "rate": 2}, "workload"),
        ({"input": {}, "output": {}, "model": "Llama-3-8B"}, "experiment"),
        ({"gpus": [], "$schema": "x"}, "catalog"),
        ({"hosts": []}, "datacenter"),
        ({"hosts": [], "gpu": "A100-80GB"}, "experiment"),
        ({"model": "Llama-3-8B", "gpu": "A100-80GB", "trace": "t.csv"}, "experiment"),
        ({}, "experiment"),
        ([1, 2], "experiment"),
    ],
)
def test_document_kind_from_keys(doc, kind):
    assert document_kind(doc) == kind and kind in DOCUMENT_KINDS
