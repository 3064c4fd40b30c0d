"""Parsing JSON and YAML input documents without letting a hostile one hang or crash the process.

Experiment, sweep, datacenter, catalogue and synthetic-workload files all go
through :func:`load_yaml` or :func:`load_json`. Beyond the syntax (left to the
callers, which word it with the file, line and column), three things are
refused here with a :class:`KavierInputError` naming the file:

- a document nested deeper than :data:`~kavier_opendc.base.limits.DOCUMENT_DEPTH`
  (PyYAML's composer and the schema validators recurse, and would end in a
  ``RecursionError``);
- YAML aliases that expand to more than
  :data:`~kavier_opendc.base.limits.DOCUMENT_NODES` nodes (the "billion laughs"
  document: a few lines whose anchors expand exponentially; any walk over the
  parsed data would never end);
- a file larger than :data:`~kavier_opendc.base.limits.DOCUMENT_BYTES`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from kavier_opendc.base import limits
from kavier_opendc.base.errors import KavierInputError


class SafeDocumentLoader(yaml.SafeLoader):
    """PyYAML's safe loader that rejects duplicate keys and stops composing past the depth limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0  # nesting of the node being composed (invariant: <= DOCUMENT_DEPTH)

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > limits.DOCUMENT_DEPTH.value:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {limits.DOCUMENT_DEPTH.text()} ({limits.DOCUMENT_DEPTH.why})", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r} (first at line {seen[key_node.value].line + 1})",
                        key_node.start_mark,
                    )
                seen[key_node.value] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


SafeDocumentLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, SafeDocumentLoader.construct_mapping)


def _check_bytes(text: str, source: str) -> None:
    if len(text) > limits.DOCUMENT_BYTES.value:
        raise KavierInputError("the file is too large: " + limits.DOCUMENT_BYTES.above(len(text)), source=source)


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded (shared nodes counted per use).

    Linear in the distinct nodes: each node's expanded size is computed once."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        if isinstance(node, yaml.ScalarNode):
            size[id(node)] = 1
            continue
        kids = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if children_done:
            size[id(node)] = 1 + sum(size.get(id(k), 0) for k in kids)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
    return size[id(root)]


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets (``[`` and ``{``), counting brackets in strings too.

    Checked before parsing: PyYAML's scanner slows down quadratically with open flow brackets, so a
    line of 100,000 ``[`` would take seconds before the composer's own depth check is reached."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


_BRACKETS = re.compile(r"[\[\]{}]")


def load_yaml(text: str, source: str, loader: type[SafeDocumentLoader] = SafeDocumentLoader) -> Any:
    """Parse YAML text with ``loader``; syntax errors raise ``yaml.YAMLError``, limits a KavierInputError."""
    _check_bytes(text, source)
    if _flow_depth(text) > limits.DOCUMENT_DEPTH.value:
        raise KavierInputError(
            f"brackets nested deeper than {limits.DOCUMENT_DEPTH.text()} ({limits.DOCUMENT_DEPTH.why})", source=source
        )
    ldr = loader(text)
    try:
        node = ldr.get_single_node()
        if node is None:
            return None
        nodes = _expanded_nodes(node)
        if nodes > limits.DOCUMENT_NODES.value:
            raise KavierInputError(
                f"YAML aliases (*name) expand the document to {nodes:,} values, above the limit of "
                f"{limits.DOCUMENT_NODES.text()} ({limits.DOCUMENT_NODES.why})",
                source=source,
            )
        return ldr.construct_document(node)
    finally:
        ldr.dispose()


def load_json(text: str, source: str) -> Any:
    """Parse JSON text; syntax errors raise ``json.JSONDecodeError``, limits a KavierInputError."""
    _check_bytes(text, source)
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
        deep = True
    else:
        deep = nesting_depth(data) > limits.DOCUMENT_DEPTH.value
    if deep:
        raise KavierInputError(
            f"nested deeper than {limits.DOCUMENT_DEPTH.text()} ({limits.DOCUMENT_DEPTH.why})", source=source
        )
    return data


def parse_document(text: str, fmt: str, source: str, loader: type[SafeDocumentLoader] = SafeDocumentLoader) -> Any:
    """Parse ``text`` as ``fmt`` ("json" or "yaml"); every syntax error becomes one KavierInputError naming the
    file, line and column (the one wording for all input documents)."""
    if fmt == "json":
        try:
            return load_json(text, source)
        except json.JSONDecodeError as exc:
            raise KavierInputError(
                f"invalid JSON syntax: {exc.msg}", source=source, location=f"line {exc.lineno}, column {exc.colno}"
            ) from None
    try:
        return load_yaml(text, source, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x) or str(exc)
        raise KavierInputError(f"invalid YAML syntax: {what}", source=source, location=loc) from None
    except yaml.YAMLError as exc:
        raise KavierInputError(f"invalid YAML: {exc}", source=source) from None


def nesting_depth(data: Any) -> int:
    """How deeply lists and mappings nest in ``data`` (iterative: safe on any depth)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((x, depth + 1) for x in node if isinstance(x, (dict, list)))
    return deepest
