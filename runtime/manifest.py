"""Run manifest: what produced a result (code, config, data, checkpoint, software, machine).

`build_manifest` collects the project's git commit and dirty flag, the resolved config, a content
hash of the dataset folder, the checkpoint's sha256, package versions, the device, a UTC
timestamp and the host; `write_manifest` stores it as `manifest.json` atomically. Two runs whose
manifests agree on commit (not dirty), config, dataset hash and checkpoint hash used the same
inputs.

Dataset hashing reads every file once; per-file digests are cached in memory and on disk in the
user's cache (`$RRDYN_CACHE_DIR`, else `$XDG_CACHE_HOME/rrdyn`, else `~/.cache/rrdyn`), one file
per dataset folder keyed by its absolute path, each entry keyed by (size, mtime), so later runs
only re-hash files that changed. Nothing is ever written into the dataset folder (it may be
read-only or a tracked fixture); an unwritable cache only means hashing again next time.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from runtime.atomic import atomic_write_text
from runtime.errors import CheckpointError, DatasetError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "numpy", "hydra-core", "omegaconf", "wandb")
_CHUNK_BYTES = 1 << 20

# (absolute path, size, mtime_ns) -> sha256, for this process.
_file_hash_memo: dict[tuple[str, int, int], str] = {}


def _git(root: Path, *args: str) -> str | None:
    """stdout of `git -C root args`, or None when git is missing or the command fails."""
    # The ceiling stops git from finding an enclosing repository above `root`;
    # --no-optional-locks keeps `status` from taking index.lock while someone else commits.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(root.parent)}
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True, text=True, timeout=30, env=env, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: str | os.PathLike = PROJECT_ROOT) -> dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": bool or None} for the checkout at `root`.

    "unknown"/None when `root` is not a git checkout (an installed copy, an exported tarball),
    git is not installed, or the repository has no commit yet. Untracked files count as dirty.
    """
    root = Path(root)
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    status = _git(root, "status", "--porcelain") if commit else None
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (memoised per path, size and mtime in this process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _file_hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                h.update(chunk)
        _file_hash_memo[key] = h.hexdigest()
    return _file_hash_memo[key]


def cache_dir() -> Path:
    """Where rrdyn caches what it can recompute (dataset hashes)."""
    explicit = os.environ.get("RRDYN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rrdyn"


def hash_cache_path(dataset_dir: str | os.PathLike) -> Path:
    """The per-file digest cache of one dataset folder (outside the folder)."""
    key = hashlib.sha256(str(Path(dataset_dir).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "dataset-hashes" / f"{key}.json"


def dataset_hash(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Content hash of a dataset folder: {"path", "sha256", "files": {relative path: sha256}}.

    Covers every non-hidden file below the folder (both splits' dataset.json and arrays, and
    identifiers.json). The combined digest is the sha256 of "relpath\\0file_sha256\\n" lines in
    sorted path order, so it changes when any file's content, name or presence changes.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DatasetError(f"dataset directory {root} contains no files")

    cache_path = hash_cache_path(root)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digests, fresh = {}, {}
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        hit = cache.get(rel)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            digests[rel] = hit["sha256"]
        else:
            digests[rel] = sha256_file(p)
        fresh[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digests[rel]}
    if fresh != cache:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_path, json.dumps(fresh, indent=1, sort_keys=True))
        except OSError:
            pass  # unwritable cache: hash again next time

    combined = hashlib.sha256("".join(f"{rel}\0{d}\n" for rel, d in digests.items()).encode())
    return {"path": str(root.resolve()), "sha256": combined.hexdigest(), "files": digests}


def package_versions() -> dict[str, str]:
    """Versions of python and the main dependencies ("not installed" where missing)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_device(device: str | torch.device) -> dict[str, Any]:
    """Type and name of `device`; CUDA adds capability, memory and the CUDA/cuDNN versions."""
    device = torch.device(device)
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            index=index,
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            device_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info.update(name=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    return info


def build_manifest(
    *,
    config: Mapping[str, Any],
    dataset_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Everything needed to say what produced a run's outputs, as a JSON-ready dict.

    Keys: created_utc, hostname, command, git, config, dataset (or None), checkpoint (or None),
    packages, device (or None). Raises DatasetError / CheckpointError for missing inputs.
    """
    ckpt = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} does not exist")
        ckpt = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "git": git_state(),
        "config": dict(config),
        "dataset": dataset_hash(dataset_dir) if dataset_dir is not None else None,
        "checkpoint": ckpt,
        "packages": package_versions(),
        "device": describe_device(device) if device is not None else None,
    }


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write `manifest` to `directory/manifest.json` atomically; returns the file's path.

    The history is appended, never overwritten: when the file exists (a resumed run, a rerun
    study), the earlier manifest, minus its own history, becomes the last entry of `history`.
    """
    path = Path(directory) / "manifest.json"
    manifest = dict(manifest)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict):
        earlier = [h for h in previous.get("history", []) if isinstance(h, dict)]
        manifest["history"] = earlier + [{k: v for k, v in previous.items() if k != "history"}]
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    return atomic_write_text(path, text)
