"""Atomic file writes: a reader sees either the old file or the complete new one, never a torn one.

Each writer fills a temporary file in the destination's own directory (so the final `os.replace`
is a rename within one filesystem), fsyncs it, renames it over the destination and then fsyncs
the directory so the rename itself survives a crash. A kill at any point leaves at most a stray
`.<name>.*.tmp` file beside the destination, never a half-written destination.

A write that fails for a reason the user can fix (disk full, quota, read-only filesystem, no
permission, a path below a regular file) raises `UnwritableError`, a one-line `UserError` naming
the path, the reason and, for a full disk, the space left; the destination keeps its old content.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from runtime.errors import UserError

_SPACE = "free some space or choose another folder"
_ACCESS = "fix the permissions or choose another folder"
_FIXABLE = {  # errno -> (what happened, what to do)
    errno.ENOSPC: ("no space left on the device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
    errno.EROFS: ("read-only filesystem", "choose another folder"),
    errno.EACCES: ("permission denied", _ACCESS),
    errno.EPERM: ("operation not permitted", _ACCESS),
    errno.ENOTDIR: ("a parent of it is a file, not a folder", "choose another folder"),
    errno.EEXIST: ("a parent of it is a file, not a folder", "choose another folder"),
}


class UnwritableError(UserError):
    """A file could not be written for a reason outside the program (disk, permissions, path)."""


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on {folder}"
            except OSError:
                return "free space unknown"
    return "free space unknown"


def unwritable(path: str | os.PathLike, exc: OSError) -> UnwritableError | None:
    """The one-line error for an OSError a user can fix, or None for anything else."""
    if (exc.errno or 0) not in _FIXABLE:
        return None
    reason, advice = _FIXABLE[exc.errno]
    where = Path(path)
    extra = f" ({_free_space(where)})" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return UnwritableError(f"cannot write {where}: {reason}{extra}; {advice}")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create folder `path` (and parents) and check that a file can be created in it; raises
    UnwritableError before any work is done when it cannot."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise (unwritable(folder, e) or e) from None
    return folder


def free_space_problem(folder: str | os.PathLike, need_bytes: int, what: str) -> str | None:
    """Why `what` (about `need_bytes`) will not fit on the filesystem of `folder`, or None."""
    folder = Path(folder)
    probe = next((f for f in (folder, *folder.parents) if f.exists()), None)
    if probe is None:
        return None
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None
    if free >= need_bytes:
        return None
    return f"cannot write {folder}: {what} needs about {human_bytes(need_bytes)} and {human_bytes(free)} are free on {probe}; {_SPACE}"


def human_bytes(n: float) -> str:
    """"512 B", "3.4 KiB", "120.0 MiB", "1.5 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise (unwritable(path, e) or e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0o600; give the result the permissions an ordinary write would have.
            os.chmod(tmp, _MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # Also on KeyboardInterrupt: never leave the temp file behind when we can remove it.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and (problem := unwritable(path, e)) is not None:
            raise problem from None
        if isinstance(e, RuntimeError) and "No space left" in str(e):  # torch.save wraps ENOSPC
            raise unwritable(path, OSError(errno.ENOSPC, str(e))) from None
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
