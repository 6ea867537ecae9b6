"""Full training checkpoints: write atomically, keep the last K, find the newest valid one.

File `run_dir/checkpoints/step_0001000.pt` (plus `best.pt` and `last.pt`, hard links or copies):

    {"format": "rrdyn", "version": 1,
     "arch": dataclasses.asdict(arch_cfg),       # batch_size is the per-rank (replicated) batch
     "model": ACTModel.state_dict(),             # keys inner.*, raw (not averaged) weights
     "ema": {inner.<param>: tensor} | None,      # EMA shadow of the trainable parameters
     "step": int, "config": resolved config dict, "manifest": dict,
     "train": {"optimizers", "loader", "rng" (one entry per rank), "carry" (one per rank),
               "augment" (one per rank or None), "world_size", "best", "elapsed_seconds"}}

Everything is a tensor, a number, a string or a container of those, so the file loads with
`torch.load(weights_only=True)`; `model_core.checkpoint.load_checkpoint` reads it for
inference. A kill at any moment leaves either the previous complete file or the new complete
file (`atomic_torch_save`); `find_resume_checkpoint` still skips a newest file that cannot be read
(with a warning), e.g. one damaged after it was written. After a kill, `remove_stale_temporaries`
deletes the temporary files an interrupted atomic write left behind, and `trim_metrics` drops the
metrics.jsonl records (and a torn last line) written after the checkpoint the run resumes from.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.act import ACTCarry
from model_core.checkpoint import FORMAT, read_state_file
from model_core.core import LatentCarry
from runtime.atomic import atomic_torch_save, atomic_write_text
from runtime.errors import CheckpointError
from runtime.logging import get_logger

VERSION = 1
CHECKPOINT_RE = re.compile(r"^step_(\d{7,})\.pt$")
TEMPORARY_RE = re.compile(r"^\..+\.tmp$")  # `.<name>.<random>.tmp`, as runtime.atomic names them

log = get_logger(__name__)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(step: int) -> str:
    """`step_0001000.pt`: zero-padded so names sort by step."""
    return f"step_{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step file in run_dir/checkpoints, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


# --- RNG and carry as plain tensors --------------------------------------------------------------

def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's torch (CPU and CUDA) and numpy global RNG states, as tensors and ints."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def carry_to_state(carry: ACTCarry | None) -> dict[str, Any] | None:
    """The ACT carry (latent (B, S, D), steps, halted, current data) as CPU tensors."""
    if carry is None:
        return None
    return {
        "z_H": carry.inner.z_H.detach().cpu(),
        "z_L": carry.inner.z_L.detach().cpu(),
        "steps": carry.steps.cpu(),
        "halted": carry.halted.cpu(),
        "current_data": {k: v.cpu() for k, v in carry.current_data.items()},
    }


def carry_from_state(state: dict[str, Any] | None, device: torch.device) -> ACTCarry | None:
    if state is None:
        return None
    return ACTCarry(
        inner=LatentCarry(state["z_H"].to(device), state["z_L"].to(device)),
        steps=state["steps"].to(device),
        halted=state["halted"].to(device),
        current_data={k: v.to(device) for k, v in state["current_data"].items()},
    )


def reshard_carries(carries: list[dict[str, Any] | None], world_size: int) -> list[dict[str, Any] | None]:
    """Carries saved by one world size, split for another: the rank slices of one global batch
    are concatenated in rank order and cut again into `world_size` equal slices."""
    if len(carries) == world_size or any(c is None for c in carries):
        return carries if len(carries) == world_size else [None] * world_size

    def cat(values: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.cat(values).chunk(world_size))

    full = {k: cat([c[k] for c in carries]) for k in ("z_H", "z_L", "steps", "halted")}
    data = {k: cat([c["current_data"][k] for c in carries]) for k in carries[0]["current_data"]}
    return [{**{k: v[r] for k, v in full.items()}, "current_data": {k: v[r] for k, v in data.items()}} for r in range(world_size)]


# --- writing -------------------------------------------------------------------------------------

def _link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` atomically: a hard link where possible, else a copy."""
    if dst.exists() and os.path.samefile(src, dst):
        return  # already linked: rename(2) between two links of one file would leave tmp behind
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    if os.path.lexists(tmp):  # src and dst became one file meanwhile: rename(2) was a no-op
        os.unlink(tmp)


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any], keep_last: int, best: bool = False) -> Path:
    """Write `payload` as the step file for payload["step"], point last.pt (and best.pt when
    `best`) at it, and delete all but the newest `keep_last` step files. Returns the step file."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(int(payload["step"]))
    atomic_torch_save(path, payload)
    _link_or_copy(path, folder / "last.pt")
    if best:
        _link_or_copy(path, folder / "best.pt")
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def mark_best(run_dir: str | Path, step: int) -> None:
    """Point best.pt at the existing step file of `step`."""
    folder = checkpoint_dir(run_dir)
    _link_or_copy(folder / checkpoint_name(step), folder / "best.pt")


# --- reading -------------------------------------------------------------------------------------

def read_train_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a full training checkpoint (weights_only); CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    payload = read_state_file(path)
    if payload.get("format") != FORMAT or "train" not in payload:
        raise CheckpointError(f"{path} is not an rrdyn training checkpoint (official step_N files hold weights only; they cannot be resumed)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}; this code reads version {VERSION}")
    return payload


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable training checkpoint in run_dir/checkpoints, or None if there is none.
    Unreadable files (torn, truncated, not ours) are skipped with a warning."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_train_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path.name, e)
    return None


# --- the run directory after a kill ------------------------------------------------------------

def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the `.<name>.*.tmp` files that atomic writes killed mid-way left in the run directory,
    its checkpoints/ and eval/ (never a destination file: those are only ever renamed into place).
    Call on the main rank before training starts; returns what was removed."""
    removed = []
    for folder in (Path(run_dir), checkpoint_dir(run_dir), Path(run_dir) / "eval"):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and TEMPORARY_RE.match(path.name):
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def trim_metrics(run_dir: str | Path, step: int) -> None:
    """Keep the metrics.jsonl records up to `step` (the checkpoint a run resumes from; -1 for a run
    that starts over), so every step appears once after a resume. A line that does not parse (the
    record a kill tore in half) is dropped with a warning."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("dropping a torn line from %s: %.60s", path, line)
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
