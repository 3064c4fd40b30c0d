"""SIGINT and SIGTERM as one exception, so a killed command cleans up and ends the same way either way.

:func:`signals_as_interrupts` (used by ``kavier``'s ``main``) makes both signals raise :class:`Interrupted`,
a :class:`KeyboardInterrupt`: every ``except KeyboardInterrupt`` / ``finally`` below (the run's INCOMPLETE
marker, the bridge stopping its JVM, the Dask cluster closing, a replacement putting the earlier result
back) runs for ``kill PID`` as it does for Ctrl-C, and the command exits 130 (SIGINT) or 143 (SIGTERM)
with one line, no traceback. :func:`deferred` holds a signal back during a few renames that must not be
cut in half; it is raised when they are done. SIGKILL cannot be caught: what it leaves behind is marked
INCOMPLETE (or moved aside) by the writers themselves and put right by the next command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

#: The signals turned into :class:`Interrupted`.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is the shell's 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_pending: list[int] = []
_deferring = [0]
#: Code an exception must not be raised into: Py4J answers a KeyboardInterrupt in the middle of a call with an
#: AttributeError of its own (py4j 0.10.9.9) and a logged traceback. A signal arriving there waits until the
#: call returns (the bridge's calls are short polls): a timer looks again every RETRY_S seconds.
_UNSAFE_PARTS = (f"{os.sep}py4j{os.sep}",)
RETRY_S = 0.05


def _inside_unsafe(frame) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _UNSAFE_PARTS):
            return True
        frame = frame.f_back
    return False


def _handler(signum, frame) -> None:
    if signum != signal.SIGALRM:
        _pending.append(signum)
    if not _pending:
        return
    if _deferring[0]:
        return  # deferred() raises it at its end
    if _inside_unsafe(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    signum = _pending[0]
    _pending.clear()
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM raise :class:`Interrupted` (in the main thread; elsewhere a no-op).
    The previous handlers come back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (*SIGNALS, signal.SIGALRM)}
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _pending.clear()
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal arriving inside waits until the block is done (then raises :class:`Interrupted`)."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if not _deferring[0] and _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


__all__ = ["SIGNALS", "Interrupted", "deferred", "signals_as_interrupts"]
