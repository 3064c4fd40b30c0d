"""The snapshot of the built-in specification files (builtin_catalog.json, written by bench/build_catalog.py).

Parsing the YAML files and checking them against the schema costs a run a fifth of a second; the snapshot
holds each file's document as parsed (and, for the catalogue files, validated) with the file's SHA-256, so a
run reads it in a millisecond. A file whose text no longer matches its hash is parsed again by its reader
(correct, only slower; the tests fail until the snapshot is rebuilt).
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from typing import Any

SNAPSHOT_FILE = "builtin_catalog.json"


def file_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _snapshot() -> dict:
    try:
        snap = json.loads(resources.files("kavier_opendc.specs").joinpath(SNAPSHOT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return snap if isinstance(snap, dict) else {}


def snapshot_document(fname: str, text: str) -> tuple[bool, Any]:
    """(found, document) of built-in file ``fname`` whose current text is ``text``: found only where the
    snapshot holds that file with that text's hash."""
    entry = _snapshot().get(fname)
    if isinstance(entry, dict) and entry.get("sha256") == file_hash(text):
        return True, entry.get("document")
    return False, None
