"""The engine's compiled modules, and the switch back to their sources.

Where pip finds a C compiler, ``setup.py`` compiles the modules named in ``NATIVE`` with mypyc (from the
same sources; their classes become C types). They give the same results, bit for bit, as their sources
(``tests/test_compiled.py`` runs both). The sources run instead when

- ``KAVIER_PURE_PYTHON`` is set (to anything but empty or 0), or
- a source changed after it was compiled (an editable install not rebuilt since): the compiled module
  would run the old code, so the sources run, with a warning, until ``pip install -e .`` rebuilds them.

``install()`` (called by the engine package's ``__init__``) decides, before any of these modules is
imported; ``state()`` says what was decided.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import zlib
from pathlib import Path

#: the modules setup.py compiles (engine/<name>.py); the classes other modules derive from carry
#: ``mypyc_attr(allow_interpreted_subclasses=True)``
NATIVE = (
    "request",
    "sched_output",
    "timeline",
    "decode_state",
    "kv_cache",
    "kv_manager",
    "cost_model",
    "scheduler",
    "replica",
    "event_loop",
)
#: setup.py's record of the sources it compiled: {name: crc32 of the file's bytes}
STAMP = "native_sources.json"
ENV = "KAVIER_PURE_PYTHON"

HERE = Path(__file__).resolve().parent
_state = "source"
_decided = False


def source_crc(name: str, folder: Path = HERE) -> int:
    return zlib.crc32((folder / f"{name}.py").read_bytes())


def compiled_files(folder: Path = HERE) -> list[Path]:
    """The compiled modules present beside their sources."""
    return [
        folder / f"{name}{suffix}"
        for name in NATIVE
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (folder / f"{name}{suffix}").is_file()
    ]


def stale_modules(folder: Path = HERE) -> list[str]:
    """Compiled modules whose source is not the one they were compiled from (all of them without a stamp)."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    if not isinstance(stamp, dict):
        stamp = {}
    return [name for name in NATIVE if stamp.get(name) != source_crc(name, folder)]


class _Sources:
    """Imports the NATIVE modules from their .py files, ahead of the compiled ones beside them."""

    def __init__(self) -> None:
        self.names = {f"{__package__}.{name}": HERE / f"{name}.py" for name in NATIVE}

    def find_spec(self, fullname, path=None, target=None):
        src = self.names.get(fullname)
        return None if src is None else importlib.util.spec_from_file_location(fullname, src)


def install() -> str:
    """Decide, once, whether the compiled modules or their sources run; returns the state (see state())."""
    global _state, _decided
    if _decided:
        return _state
    _decided = True
    if not compiled_files():
        return _state
    forced = os.environ.get(ENV, "") not in ("", "0")
    stale = [] if forced else stale_modules()
    if forced or stale:
        sys.meta_path.insert(0, _Sources())
        _state = "source (KAVIER_PURE_PYTHON)" if forced else "source (compiled modules out of date)"
        if stale:
            print(
                f"kavier: the compiled engine modules are older than their sources ({', '.join(stale)}); running "
                "the sources (slower). Rebuild them with: pip install -e .",
                file=sys.stderr,
            )
    else:
        _state = "compiled"
    return _state


def state() -> str:
    """``compiled``, or ``source`` (none compiled), or ``source (...)`` with the reason the sources run."""
    return _state
