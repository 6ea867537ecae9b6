"""Atomic file writes: a reader sees either the old file or the complete new one, never a torn one.

Each writer fills a temporary file in the destination's own directory (so the final `os.replace`
is a rename within one filesystem), fsyncs it, renames it over the destination and then fsyncs
the directory so the rename itself survives a crash. A kill at any point leaves at most a stray
`.<name>.*.tmp` file beside the destination, never a half-written destination.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch


def _default_mode() -> int:
    """Permissions a plain `open(path, "w")` would give: 0o666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in `directory`; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a temp file beside `path`, then fsync and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0o600; give the result the permissions an ordinary write would have.
            os.chmod(tmp, _MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave the temp file behind when we can remove it.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (parent folders are created); returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (parent folders are created); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """`torch.save(obj)` to `path` atomically (parent folders are created); returns the path."""
    return _atomic_write(path, lambda f: torch.save(obj, f))
