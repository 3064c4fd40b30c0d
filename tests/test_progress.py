"""The progress bar: drawn with rate and ETA on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from kavier_opendc.base.progress import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    bar = Progress(100, "simulate", stream=out)
    for i in range(0, 101, 10):
        bar.update(i)
    bar.close()
    assert out.getvalue() == ""


def test_drawn_on_a_terminal_with_rate_and_the_end_reached():
    out = FakeTerminal()
    bar = Progress(100, "simulate", stream=out, unit="req")
    bar.update(40)
    bar.update(30)  # positions are absolute: going back is ignored
    bar.close()  # close fills the bar
    text = out.getvalue()
    assert "simulate" in text and "100/100" in text and "req/s" in text


def test_fraction_of_a_run_shows_a_percentage():
    out = FakeTerminal()
    bar = Progress(1.0, "opendc", stream=out)
    bar.update(0.5)
    bar.close()
    assert "100.0%" in out.getvalue()


def test_quiet_overrides_a_terminal():
    out = FakeTerminal()
    bar = Progress(10, "x", enabled=False, stream=out)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
