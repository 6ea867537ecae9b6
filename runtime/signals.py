"""SIGINT / SIGTERM as a request to stop at the next safe point, not in the middle of a write.

Long jobs (training, the dynamics studies) check `StopSignals.received` between units of work
(an optimizer step, a study batch), save what they have and stop with one line that says how to
continue. A second signal restores the default behaviour (KeyboardInterrupt / termination) for a
user who insists.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from runtime.logging import get_logger

log = get_logger("runtime.signals")


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag the job reads between units of work (main thread only).

    The first signal asks the job to finish its unit of work (`unit`: "step", "batch"), save and
    stop; a second one restores the default handler behaviour (KeyboardInterrupt / termination).
    """

    def __init__(self, unit: str = "step") -> None:
        self.unit = unit  # what is finished before stopping, for the log line
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning("%s received: finishing the current %s, then stopping (again to abort)", signal.Signals(signum).name, self.unit)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: Any) -> None:
        self.restore()
