"""Progress bars that read well in a terminal and in a log file.

In a terminal, `progress_bar(...)` is a plain tqdm bar redrawn in place. When its stream is not a
terminal (`make demo > demo.log 2>&1`, CI, a SLURM log) a redraw would append one `\\r` update per
refresh, tens of kilobytes for one training run; there the bar is written as one whole line at
most every `RRDYN_PROGRESS_SECONDS` seconds (default 30), and once more when it closes. Under
torchrun only rank 0 shows a bar.
"""
from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm

from runtime.dist import get_rank

DEFAULT_LOG_INTERVAL_S = 30.0


class _LineStream:
    """File-like wrapper that turns tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:  # close() redraws the final state once more
            self.stream.write(line + "\n")
            self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def log_interval_s() -> float:
    """Seconds between progress lines when the output is not a terminal (env RRDYN_PROGRESS_SECONDS)."""
    raw = os.environ.get("RRDYN_PROGRESS_SECONDS", "")
    try:
        return max(float(raw), 0.0) if raw else DEFAULT_LOG_INTERVAL_S
    except ValueError:
        return DEFAULT_LOG_INTERVAL_S


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """`tqdm(*args, **kwargs)`: disabled on ranks other than 0 (and where disable=True); a whole
    line every `log_interval_s()` seconds instead of in-place redraws when the stream is not a
    terminal."""
    kwargs["disable"] = bool(kwargs.get("disable", False)) or get_rank() != 0
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(*args, file=stream, **kwargs)
    interval = log_interval_s()
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), interval)
    # No forced redraws from tqdm's monitor thread: they would print a second line right after
    # a regular one. Updates still print once `interval` has passed.
    kwargs["maxinterval"] = float("inf")
    kwargs.setdefault("ncols", 100)
    kwargs.setdefault("ascii", True)
    return tqdm(*args, file=_LineStream(stream), **kwargs)
