"""Progress bars: in place on a terminal, whole lines at an interval in a log file."""
from __future__ import annotations

import io

from runtime.progress import DEFAULT_LOG_INTERVAL_S, log_interval_s, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_whole_lines_only_at_the_interval(monkeypatch):
    """1000 fast updates to a non-terminal stream with a 1-hour interval: the bar is written as
    whole lines (no carriage returns), the start and the final state only."""
    monkeypatch.setenv("RRDYN_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="train", file=out)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix(loss="0.1", refresh=False)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("train:   0%") and "1000/1000" in lines[-1]
    assert len(text) < 400


def test_terminal_keeps_in_place_redraws():
    out = _Terminal()
    bar = progress_bar(total=3, desc="x", file=out, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue()


def test_interval_from_environment(monkeypatch):
    monkeypatch.delenv("RRDYN_PROGRESS_SECONDS", raising=False)
    assert log_interval_s() == DEFAULT_LOG_INTERVAL_S
    monkeypatch.setenv("RRDYN_PROGRESS_SECONDS", "5")
    assert log_interval_s() == 5.0
    monkeypatch.setenv("RRDYN_PROGRESS_SECONDS", "soon")
    assert log_interval_s() == DEFAULT_LOG_INTERVAL_S


def test_disabled_writes_nothing():
    out = io.StringIO()
    with progress_bar(total=3, file=out, disable=True) as bar:
        bar.update(3)
    assert out.getvalue() == ""
