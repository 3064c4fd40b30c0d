"""A minimal progress bar: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: float, label: str, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(total, 1e-12)
        self.label = label
        self._last = 0.0
        self._t0 = time.perf_counter()

    def update(self, done: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(1.0, done / self.total)
        width = 30
        fill = int(frac * width)
        bar = "#" * fill + "-" * (width - fill)
        self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {now - self._t0:6.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()
