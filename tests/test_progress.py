"""Progress bars: shown with rate and ETA when asked or on a terminal, silent on anything else."""

from __future__ import annotations

import io

from broker_plugin.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_stream_that_is_not_a_terminal_writes_nothing() -> None:
    err = io.StringIO()
    assert list(progress(range(50), desc="work", unit=" alerts", file=err)) == list(range(50))
    assert err.getvalue() == ""


def test_a_bar_on_a_terminal_shows_the_count_and_the_rate() -> None:
    err = Terminal()
    for _ in progress(range(50), desc="work", unit=" alerts", file=err):
        pass
    final = err.getvalue().split("\r")[-1]
    assert final.startswith("work: 100%") and "50/50" in final and " alerts/s]" in final


def test_a_bar_can_be_forced_on_or_off() -> None:
    forced = io.StringIO()
    with progress(total=10, desc="forced", unit=" files", enabled=True, file=forced) as bar:
        bar.update(10)
    assert "10/10" in forced.getvalue() and " files/s]" in forced.getvalue()
    off = Terminal()
    with progress(total=10, enabled=False, file=off) as bar:
        bar.update(10)
    assert off.getvalue() == ""
