"""Progress bars on stderr (tqdm: rate and ETA), drawn on a terminal only so logs and pipes stay clean."""

from __future__ import annotations

import sys


class Progress:
    """A bar over ``total`` units, moved to absolute positions with :meth:`update`.

    ``enabled=None`` draws it only when ``stream`` is a terminal; a disabled
    bar costs one attribute test per update. Callers report absolute progress
    (requests routed, a fraction of OpenDC's run), so :meth:`update` takes the
    position reached, not an increment.
    """

    def __init__(self, total: float, label: str, enabled: bool | None = None, stream=None, unit: str = "it"):
        stream = stream or sys.stderr
        self.enabled = getattr(stream, "isatty", lambda: False)() if enabled is None else enabled
        self.total = max(total, 1e-12)
        self._bar = None
        if self.enabled:
            # a fractional total (a share of a run) shows as a percentage; a count shows its rate
            fractional = total <= 1.0
            from tqdm import tqdm  # only when a bar is drawn

            self._bar = tqdm(
                total=self.total,
                desc=label,
                file=stream,
                mininterval=0.1,
                unit=unit,
                dynamic_ncols=True,
                leave=True,
                bar_format=("{desc} {percentage:5.1f}%|{bar}| {elapsed}<{remaining}" if fractional else None),
            )

    def update(self, done: float, force: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        step = min(done, self.total) - bar.n
        if step > 0:
            bar.update(step)
        if force:
            bar.refresh()

    def close(self) -> None:
        bar = self._bar
        if bar is not None:
            self.update(self.total)
            bar.close()
            self._bar = None
