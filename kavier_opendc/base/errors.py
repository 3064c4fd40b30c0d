"""User-facing errors.

Every problem caused by user input is raised as :class:`KavierInputError`; the
CLI prints its message as one paragraph (no traceback) and exits non-zero.
"""

from __future__ import annotations

import errno
import os
import re


class KavierError(Exception):
    """Base class for errors the CLI reports without a traceback."""

    exit_code = 2


class KavierInputError(KavierError):
    """Bad user input: a file, row or field that does not meet expectations.

    The message names the file, the row or field, and what was expected.
    """

    def __init__(
        self, message: str, *, source: str | None = None, location: str | None = None, expected: str | None = None
    ):
        parts = []
        if source:
            parts.append(f"{source}")
        if location:
            parts.append(f"{location}")
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)
        self.message = message
        self.source = source
        self.location = location
        self.expected = expected

    def relocated(self, location: str | None) -> KavierInputError:
        """The same error at another name of its location (a front end's word for an engine field)."""
        return KavierInputError(self.message, source=self.source, location=location, expected=self.expected)


class KavierRuntimeError(KavierError):
    """A failure of an external component (JVM, OpenDC) with a clear cause."""

    exit_code = 3


#: What a failed write means, and what is expected instead, by errno
_WRITE_FAULTS = {
    errno.ENOSPC: ("the file system holding it is full", "free space there, or another output folder"),
    errno.EDQUOT: ("the disk quota there is used up", "quota to spare there, or another output folder"),
    errno.EROFS: ("its file system is read-only", "a writable file system for the output"),
    errno.ENOENT: (
        "its folder was removed or moved while the command was writing into it",
        "the output folder to stay in place until the command ends",
    ),
    errno.EACCES: ("permission denied", "a folder this user can write"),
    errno.EIO: ("an input/output error of the device", "a working disk"),
}


class OutputWriteError(KavierRuntimeError, OSError):
    """Writing an output failed (a full disk, a read-only file system, a folder removed meanwhile): one
    paragraph naming the path and the cause (its errno name), never a traceback. Still an OSError, so the
    code that tolerates a failed write (``except OSError``) goes on doing so."""

    exit_code = 3

    @classmethod
    def from_os(cls, exc: OSError, path: str | os.PathLike | None = None, *, writing: bool = True) -> OutputWriteError:
        num, cause = exc.errno, exc.strerror or str(exc)
        if num is None:  # pyarrow's OSError carries the errno in its text only
            m = re.search(r"errno (\d+)", str(exc), re.IGNORECASE)
            num = int(m.group(1)) if m else None
        if num is not None:  # the system's words (pyarrow wraps them in its own)
            cause = os.strerror(num)
        name = errno.errorcode.get(num, "") if num is not None else ""
        where = path if path is not None else (exc.filename or "an output file")
        meaning, expected = _WRITE_FAULTS.get(num, ("", "")) if num is not None else ("", "")
        text = f"{where}: {'cannot write it: ' if writing else ''}{cause}" + (f" ({name})" if name else "")
        if meaning:
            text += f": {meaning}"
        text += "; the command stopped, and no half-written file was left in place"
        if expected:
            text += f" (expected {expected})"
        err = cls(text)
        err.errno = num
        return err
