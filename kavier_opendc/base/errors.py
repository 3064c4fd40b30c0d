"""User-facing errors.

Every problem caused by user input is raised as :class:`KavierInputError`; the
CLI prints its message as one paragraph (no traceback) and exits non-zero.
"""

from __future__ import annotations


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
