"""One writer per run or study directory: an exclusive `fcntl.flock` on `<dir>/.lock`.

The process that owns a directory (rank 0 under torchrun) holds the lock for as long as it works
there; a second process that tries to take it fails at once with one line naming the owner's PID,
host and start time (written into the lock file). The kernel drops a flock when its process dies,
however it dies, so a lock left by a killed run is taken over by the next one without any
staleness heuristics. The lock file itself stays (hidden); deleting it while a holder waits would
let two processes lock two different files.

flock is advisory and local: it does not protect a directory shared over NFS between hosts.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from runtime.atomic import ensure_writable_dir
from runtime.errors import UserError

LOCK_NAME = ".lock"


class DirectoryInUseError(UserError):
    """Another live process holds the directory's lock."""


class DirectoryLock:
    """Exclusive lock on a directory; use as a context manager or with acquire()/release()."""

    def __init__(self, directory: str | os.PathLike, purpose: str = "run"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.purpose = purpose
        self._file: IO[str] | None = None

    def acquire(self) -> "DirectoryLock":
        """Take the lock without waiting; DirectoryInUseError names the owner when it is held."""
        ensure_writable_dir(self.directory)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(handle)
            handle.close()
            raise DirectoryInUseError(
                f"{self.directory} is in use by another {owner.get('purpose') or self.purpose}: {_describe(owner)}; "
                f"wait for it to finish (or stop it) or choose another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_owner(handle: IO[str]) -> dict[str, Any]:
    try:
        handle.seek(0)
        owner = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "a process that has not written its name yet"
    return f"PID {owner['pid']} on {owner.get('host', '?')} (since {owner.get('started', '?')})"
