"""One entry point for input C: a trace file or a synthetic workload description, told apart by its content."""

from __future__ import annotations

import json
from pathlib import Path

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.workload.trace import load_trace


def load_workload(path: str, fmt: str | None = None, seed: int | None = None, *, keep_overlong: bool = False):
    """A trace file (CSV/Parquet/JSONL) or a synthetic workload description (YAML/JSON object);
    ``keep_overlong``: see :func:`~kavier_opendc.workload.trace.load_trace`."""
    p = Path(path)
    if p.is_dir():
        raise KavierInputError(
            "is a directory, not a trace file or workload description",
            source=str(p),
            expected="a CSV, Parquet or JSON Lines trace, or a YAML/JSON synthetic workload",
        )
    if p.suffix.lower() in (".yaml", ".yml") or (p.suffix.lower() == ".json" and is_json_object(p)):
        if fmt:
            raise KavierInputError(
                "--trace-format applies to trace files, not to synthetic workload descriptions",
                source=str(p),
                location="--trace-format",
            )
        from kavier_opendc.workload.synthetic import load_synthetic_spec  # PyYAML and jsonschema: only here

        return load_synthetic_spec(p)
    return load_trace(p, fmt, keep_overlong=keep_overlong)


def is_json_object(p: Path) -> bool:
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.read(1 << 16).lstrip()
    except (OSError, UnicodeDecodeError):
        return False  # the trace reader reports what is wrong with the file
    if not head.startswith("{"):
        return False
    first_line = head.splitlines()[0] if head else ""
    try:
        obj = json.loads(first_line)
        # one object per line (JSON Lines) is a trace; a multi-line object is a description
        return (
            not isinstance(obj, dict)
            or "timestamp" not in obj
            and "input_length" not in obj
            and "num_input_tokens" not in obj
        )
    except (json.JSONDecodeError, RecursionError):
        return True
