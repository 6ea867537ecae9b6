"""One writer per directory: `runtime.lock.DirectoryLock`.

Test hypothesis: a second holder is refused at once with the owner's PID and host; the lock of a
process that died (SIGKILL, no clean-up) is free again; release lets the next holder in.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from runtime.lock import DirectoryInUseError, DirectoryLock

HOLD = "import sys, time; from runtime.lock import DirectoryLock; lock = DirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def test_second_holder_is_refused_and_named(tmp_path):
    with DirectoryLock(tmp_path / "run"):
        start = time.perf_counter()
        with pytest.raises(DirectoryInUseError, match=f"in use by another run: PID {os.getpid()} on {socket.gethostname()}"):
            DirectoryLock(tmp_path / "run").acquire()
        assert time.perf_counter() - start < 1.0
    with DirectoryLock(tmp_path / "run") as again:  # released: the next holder gets it
        assert again.held


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUseError, match=f"PID {proc.pid}"):
            DirectoryLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        lock = DirectoryLock(tmp_path).acquire()  # the kernel dropped the dead owner's flock
        assert lock.held
        lock.release()
    finally:
        proc.kill()
        proc.wait()
