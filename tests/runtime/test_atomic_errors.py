"""Writes that fail for reasons the user can fix are one line naming the path and the fix.

Test hypothesis: ENOSPC while writing (simulated: the real disk is not ours to fill) becomes an
UnwritableError that says the disk is full and how much is free, the destination keeps its old
content and no temporary file is left; a path below a regular file is named as such, and
`ensure_writable_dir` finds it before any work.
"""
from __future__ import annotations

import errno
import os

import pytest
import torch

from runtime import atomic
from runtime.atomic import UnwritableError, atomic_torch_save, atomic_write_text, ensure_writable_dir


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(UnwritableError, match=rf"cannot write {target}: no space left on the device \(\d+ MiB free on .*\); free some space"):
        atomic_torch_save(target, {"w": torch.zeros(3)})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_path_below_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UnwritableError, match="a parent of it is a file, not a folder; choose another folder"):
        atomic_write_text(tmp_path / "file.txt" / "out" / "metrics.json", "{}")
    with pytest.raises(UnwritableError, match=f"cannot write {tmp_path / 'file.txt' / 'out'}: a parent of it is a file"):
        ensure_writable_dir(tmp_path / "file.txt" / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(UnwritableError, match="permission denied; fix the permissions"):
        ensure_writable_dir(folder)


def test_other_errors_keep_their_type(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic.os, "fsync", broken)
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "x", "y")
    assert not isinstance(err.value, UnwritableError)
