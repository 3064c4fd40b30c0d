"""Turning JSON Schema validation errors into one-line problems with JSON paths.

Every input file format (catalogues, datacenters, experiments, sweeps,
synthetic workloads) is checked against its schema in ``schemas/``; this is
the one place that words the problems the same way for all of them.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is imported when a file is validated: start-up stays fast
    from jsonschema import Draft202012Validator

from kavier_opendc.base import limits

Problem = tuple[tuple, str]


def json_path(parts) -> str:
    """('serving', 'replica_groups', 0, 'gpu') -> 'serving.replica_groups[0].gpu'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_alternatives(options) -> str:
    parts = []
    for o in options or []:
        if not isinstance(o, dict):
            continue
        t = o.get("type")
        if t == "object" and o.get("required"):
            parts.append("an object with " + ", ".join(o["required"]))
        elif t:
            parts.append(f"a {t}" if isinstance(t, str) else " or ".join(t))
        elif "enum" in o:
            parts.append("one of " + ", ".join(map(repr, o["enum"])))
    return " or ".join(parts) or "a valid value"


def explain_schema_error(err) -> list[Problem]:
    path = tuple(err.absolute_path)
    kind = err.validator
    if kind == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        out: list[Problem] = []
        for key in err.instance:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            msg = f"unknown key {key!r}"
            msg += (
                f" (did you mean {hint[0]!r}?)"
                if hint
                else (f" (allowed keys: {', '.join(allowed)})" if allowed else "")
            )
            out.append((path + (key,), msg))
        return out or [(path, err.message)]
    if kind == "required" and isinstance(err.instance, dict):
        return [(path + (k,), "required field is missing") for k in err.validator_value if k not in err.instance]
    if kind in ("oneOf", "anyOf"):
        branches: dict[int, list] = {}
        for sub in err.context or []:
            branches.setdefault(sub.schema_path[0] if sub.schema_path else 0, []).append(sub)
        # branches whose shape fits (no type error at this level), fewest top-level complaints first
        fits = [
            (idx, errs)
            for idx, errs in branches.items()
            if not any(e.validator == "type" and tuple(e.absolute_path) == path for e in errs)
        ]
        if fits:

            def score(item):
                errs = item[1]
                top = sum(1 for e in errs if tuple(e.absolute_path) == path)
                return (top, -max(len(e.absolute_path) for e in errs))

            best = min(fits, key=score)[1]
            out = []
            for e in best:
                out.extend(explain_schema_error(e))
            if out:
                return out
        return [
            (path, f"{short(err.instance)} is not valid here: expected {_describe_alternatives(err.validator_value)}")
        ]
    if kind == "maximum" and isinstance(err.schema, dict) and err.schema.get("x-kavier-limit"):
        return [(path, limits.named(err.schema["x-kavier-limit"]).above(err.instance))]
    if kind == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return [(path, f"{short(err.instance)} has the wrong type (expected {want})")]
    if kind == "enum":
        return [(path, f"{short(err.instance)} is not one of {', '.join(map(repr, err.validator_value))}")]
    if kind in ("minProperties", "maxProperties") and isinstance(err.instance, dict):
        props = sorted(err.schema.get("properties", {}))
        return [(path, f"give exactly one of {', '.join(props)} (found {len(err.instance)})")]
    return [(path, err.message)]


def non_finite(data: Any, path: tuple = ()) -> list[Problem]:
    """NaN and infinities anywhere in a parsed document (JSON Schema lets them pass as numbers)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [(path, f"{data!r} is not a finite number")]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, path + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite(v, path + (i,))]
    return []


def schema_file(name: str) -> Path:
    """A schema of ``schemas/``, through ``kavier_opendc/schemas`` (a symlink to it; real files in a wheel).

    The direct path to ``schemas/`` is kept for checkouts made without symlinks (git's core.symlinks=false).
    """
    packaged = resources.files("kavier_opendc").joinpath("schemas", name)
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "schemas" / name  # source checkout


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return json.loads(schema_file(name).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def schema_validator(name: str) -> Draft202012Validator:
    """A validator for one of our schemas, with the other schemas registered
    so that ``$ref`` between them (experiment -> datacenter, synthetic) resolve."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources_ = []
    for other in (
        "datacenter.schema.json",
        "synthetic_workload.schema.json",
        "experiment.schema.json",
        "sweep.schema.json",
    ):
        try:
            s = load_schema(other)
        except (FileNotFoundError, OSError):
            continue
        s = limits.with_limits(copy.deepcopy(s), other)
        resources_.append((s["$id"], Resource.from_contents(s)))
    registry = Registry().with_resources(resources_)
    # the validator checks the size limits of ``base/limits.py`` as well; the schema files stay as written
    schema = limits.with_limits(copy.deepcopy(load_schema(name)), name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry)
