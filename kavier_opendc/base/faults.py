"""Hooks for the fault tests (issue 17): a command stops itself at a named moment, or its writes fail.

With ``KAVIER_TEST_STOP_AT=NAME`` a command sends itself SIGSTOP the first time it passes
:func:`checkpoint` ``NAME`` (a test sees the process stopped in ``/proc``, acts, and sends SIGCONT: no sleep
has to guess when the moment has come). With ``KAVIER_TEST_WRITE_FAULT=ENOSPC`` (any errno name, optionally
``:FILENAME``) :func:`check_write` raises that real :class:`OSError` from the atomic writers, where a full disk
cannot be mounted. Neither variable is set outside the tests; unset, both are a dictionary look-up.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

STOP_ENV = "KAVIER_TEST_STOP_AT"
WRITE_FAULT_ENV = "KAVIER_TEST_WRITE_FAULT"

#: The moments a test can stop a command at.
LOCKED = "locked"  # the output's lock is held, nothing written yet
JVM_STARTING = "jvm-starting"  # the OpenDC JVM has been started, its gateway not yet reached
OPENDC_STARTING = "opendc-starting"  # the JVM is up and answering; the experiment is about to start in it
REPLACING = "replacing"  # --overwrite moved the earlier result aside and marked the folder INCOMPLETE
WRITTEN_FIRST = "written-first"  # the first output file of a run is written (simulation/requests.parquet)
OPENDC_RUNNING = "opendc-running"  # OpenDC's output folder is marked INCOMPLETE, OpenDC about to write into it

_stopped: set[str] = set()


def checkpoint(name: str) -> None:
    """Stop this process (SIGSTOP) if the tests asked for moment ``name``; once per process."""
    if os.environ.get(STOP_ENV) == name and name not in _stopped:
        _stopped.add(name)
        os.kill(os.getpid(), signal.SIGSTOP)


def check_write(path: str | os.PathLike) -> None:
    """Raise the OSError the tests asked for when writing ``path`` (see the module docstring)."""
    spec = os.environ.get(WRITE_FAULT_ENV)
    if not spec:
        return
    code, _, name = spec.partition(":")
    if name and Path(path).name != name:
        return
    num = getattr(errno, code, errno.EIO)
    raise OSError(num, os.strerror(num), str(path))


__all__ = [
    "JVM_STARTING",
    "LOCKED",
    "OPENDC_STARTING",
    "OPENDC_RUNNING",
    "REPLACING",
    "STOP_ENV",
    "WRITE_FAULT_ENV",
    "WRITTEN_FIRST",
    "check_write",
    "checkpoint",
]
