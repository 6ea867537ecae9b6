"""Per-batch result shards, so a long study that is killed resumes where it stopped.

Each finished batch is written atomically as `shards/batch_000012.npz`; a restart with the same
study fingerprint (settings, checkpoint and dataset content hashes, sample) skips the batches
already on disk and the final arrays are the concatenation in batch order, identical to an
uninterrupted run. A directory that holds shards of a *different* run (another setting, a rebuilt
dataset, a retrained checkpoint) is refused with what changed, never mixed.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.errors import UserError


def describe_change(meta: Path, fingerprint: dict) -> str:
    """What differs between the fingerprint on disk and this run's, in a few words."""
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError):
        return "its fingerprint.json is unreadable"
    new = json.loads(json.dumps(fingerprint, default=str))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return "fingerprint differs"
    names = {"data_sha256": "the dataset's content changed", "checkpoint_sha256": "the checkpoint's content changed"}
    shown = [names.get(k, f"{k}: {short(old.get(k))} -> {short(new.get(k))}") for k in changed[:3]]
    return "; ".join(shown) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")


def short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


class ShardStore:
    """Shards of one study run under `out_dir/shards`, tagged by a fingerprint dict."""

    def __init__(self, out_dir: str | Path, fingerprint: dict):
        self.dir = Path(out_dir) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "fingerprint.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if meta.exists():
            if meta.read_text() != text:
                raise UserError(f"{self.dir} holds shards of a different run ({describe_change(meta, fingerprint)}); "
                                f"they are not mixed with this one: use a new output directory, or delete {self.dir} to start over")
        else:
            atomic_write_text(meta, text)

    def path(self, batch: int) -> Path:
        return self.dir / f"batch_{batch:06d}.npz"

    def done(self, batch: int) -> bool:
        """True when the shard exists and is readable (a torn file counts as missing)."""
        p = self.path(batch)
        if not p.exists():
            return False
        try:
            with np.load(p) as z:
                z.files  # noqa: B018  (touch the zip directory)
            return True
        except Exception:
            p.unlink()
            return False

    def save(self, batch: int, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.path(batch), buf.getvalue())

    def load_all(self, n_batches: int) -> dict[str, np.ndarray]:
        """Concatenate shards 0..n_batches-1 along axis 0."""
        parts: dict[str, list[np.ndarray]] = {}
        for b in range(n_batches):
            with np.load(self.path(b)) as z:
                for k in z.files:
                    parts.setdefault(k, []).append(z[k])
        return {k: np.concatenate(v) for k, v in parts.items()}
