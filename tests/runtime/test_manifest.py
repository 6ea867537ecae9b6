"""Run manifest (git state, dataset/checkpoint hashes, versions) and the atomic writers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

from runtime import manifest as mf
from runtime.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from runtime.errors import CheckpointError, DatasetError

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


# ------------------------------------------------------------------------------ atomic writes


def test_atomic_writes_content_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # parent folders are created
    assert atomic_write_text(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(target, b"\x00\x01")  # overwrite
    assert target.read_bytes() == b"\x00\x01"
    atomic_torch_save(tmp_path / "t.pt", {"x": torch.arange(3)})
    assert torch.load(tmp_path / "t.pt")["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "sub", "t.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


def test_failed_write_keeps_the_old_file(tmp_path):
    """Test hypothesis: if serialisation fails midway the destination keeps its old bytes and
    the temp file is removed (what a kill would leave is at most a stray temp file)."""
    target = tmp_path / "ckpt.pt"
    atomic_torch_save(target, {"step": 1})
    with pytest.raises(Exception):
        atomic_torch_save(target, {"step": 2, "bad": lambda: None})  # lambdas do not pickle
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# ------------------------------------------------------------------------------------ git


def test_git_state_outside_a_checkout(tmp_path):
    assert mf.git_state(tmp_path) == {"commit": "unknown", "dirty": None}


@needs_git
def test_git_state_commit_and_dirty_flag(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path), *args],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    git("init", "-q")
    assert mf.git_state(tmp_path) == {"commit": "unknown", "dirty": None}  # no commit yet
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "c")
    head = git("rev-parse", "HEAD")
    assert mf.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "f.txt").write_text("2")
    assert mf.git_state(tmp_path) == {"commit": head, "dirty": True}
    # A folder inside the checkout is not itself a checkout root: the ceiling stops the search.
    (tmp_path / "inner").mkdir()
    assert mf.git_state(tmp_path / "inner")["commit"] == "unknown"


# -------------------------------------------------------------------------------- dataset


def make_dataset(root):
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "train" / "dataset.json").write_text('{"seq_len": 81}')
    (root / "train" / "all__inputs.npy").write_bytes(b"\x01\x02\x03")
    (root / "test" / "dataset.json").write_text('{"seq_len": 81}')
    (root / "identifiers.json").write_text('["<blank>"]')
    return root


def expected_dataset_sha(root):
    """The documented recipe, recomputed: sha256 of sorted 'relpath\\0sha256(file)\\n' lines."""
    lines = []
    for rel in ["identifiers.json", "test/dataset.json", "train/all__inputs.npy",
                "train/dataset.json"]:
        lines.append(f"{rel}\0{hashlib.sha256((root / rel).read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_dataset_hash_known_value_cache_and_change(tmp_path, monkeypatch):
    monkeypatch.setenv("RRDYN_CACHE_DIR", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    first = mf.dataset_hash(root)
    assert first["sha256"] == expected_dataset_sha(root)
    assert first["files"]["train/all__inputs.npy"] == hashlib.sha256(b"\x01\x02\x03").hexdigest()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the dataset
    cache = json.loads(mf.hash_cache_path(root).read_text())
    assert mf.hash_cache_path(root).is_relative_to(tmp_path / "cache")
    assert set(cache) == set(first["files"])
    assert mf.dataset_hash(root)["sha256"] == first["sha256"]

    # A stale cache entry is ignored once size or mtime differ.
    (root / "train" / "all__inputs.npy").write_bytes(b"\x01\x02\x04\x05")
    changed = mf.dataset_hash(root)
    assert changed["sha256"] == expected_dataset_sha(root) != first["sha256"]


def test_dataset_hash_errors(tmp_path):
    with pytest.raises(DatasetError, match=f"directory {tmp_path / 'nope'} does not exist"):
        mf.dataset_hash(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="contains no files"):
        mf.dataset_hash(tmp_path / "empty")


# ------------------------------------------------------------------------------- manifest


def test_build_and_write_manifest(tmp_path):
    root = make_dataset(tmp_path / "data")
    ckpt = tmp_path / "step_0000010.pt"
    ckpt.write_bytes(b"weights")
    config = {"arch": {"name": "trm", "hidden_size": 64}, "lr": 1e-4}
    m = mf.build_manifest(config=config, dataset_dir=root, checkpoint=ckpt, device="cpu")
    assert set(m) == {"created_utc", "hostname", "command", "git", "config", "dataset",
                      "checkpoint", "packages", "device"}
    assert m["config"] == config
    assert m["checkpoint"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert m["dataset"]["sha256"] == expected_dataset_sha(root)
    assert m["packages"]["torch"] == torch.__version__
    assert set(m["packages"]) == {"python", "torch", "numpy", "hydra-core", "omegaconf", "wandb"}
    assert m["device"]["type"] == "cpu" and m["device"]["cpu_count"] == os.cpu_count()
    assert m["created_utc"].endswith("+00:00")
    assert set(m["git"]) == {"commit", "dirty"}

    path = mf.write_manifest(tmp_path / "run", m)
    assert path == tmp_path / "run" / "manifest.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(m))

    bare = mf.build_manifest(config={})
    assert bare["dataset"] is None and bare["checkpoint"] is None and bare["device"] is None


def test_build_manifest_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=f"file {tmp_path / 'x.pt'} does not exist"):
        mf.build_manifest(config={}, checkpoint=tmp_path / "x.pt")
