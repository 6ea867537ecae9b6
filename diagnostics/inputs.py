"""What every dynamics study starts from: a checkpoint in inference form and a seeded sample of a
dataset split, as numpy arrays joined by example index.

The recurrence runs in float32 (default) or float64 whatever the checkpoint's training dtype
(analysis §1: tangent growth in bf16 is noise), in eval mode.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import archs  # noqa: F401  (registers trm and hrm)
from model_core.checkpoint import LoadedCheckpoint, load_checkpoint
from model_core.config import ArchConfig
from model_core.core import RecurrentCore
from model_core.losses import IGNORE_LABEL_ID
from puzzles.kinds import PuzzleKind, dataset_kind
from puzzles.layout import PuzzleMetadata, load_split
from runtime.errors import ConfigError
from runtime.manifest import dataset_hash
from training.evaluation import check_data_fits, example_puzzle_ids, select_indices

STUDY_DTYPES = ("float32", "float64")


@dataclass
class StudyInputs:
    """A model and the examples to study: index/inputs/labels/puzzle_ids have N rows."""

    core: RecurrentCore
    arch: ArchConfig
    checkpoint: LoadedCheckpoint
    checkpoint_sha256: str
    metadata: PuzzleMetadata
    kind: PuzzleKind  # what the dataset holds; its success rules decide "solved"
    data_sha256: str  # content hash of the whole dataset folder (runtime.manifest.dataset_hash)
    index: np.ndarray  # (N,) positions in the split
    inputs: np.ndarray  # (N, L) int32
    labels: np.ndarray  # (N, L) int64, ignored cells = -100
    puzzle_ids: np.ndarray  # (N,) int32
    device: torch.device

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, slice, dict[str, torch.Tensor]]]:
        """(batch number, row slice, batch on device) in order, from batch number `start` on."""
        n_batches = -(-len(self.index) // batch_size)
        for b in range(start, n_batches):
            rows = slice(b * batch_size, min((b + 1) * batch_size, len(self.index)))
            yield b, rows, {
                "inputs": torch.from_numpy(self.inputs[rows]).to(self.device),
                "labels": torch.from_numpy(self.labels[rows]).to(self.device),
                "puzzle_identifiers": torch.from_numpy(self.puzzle_ids[rows]).to(self.device),
            }


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_study_inputs(checkpoint: str, data_path: str, *, n: int | None, seed: int, dtype: str = "float32",
                      device: torch.device | str = "cpu", split: str = "test", allow_non_finite: bool = False) -> StudyInputs:
    """Load the model (in `dtype`, eval mode) and the seeded sample of `data_path/split`; a
    checkpoint with non-finite weights is refused unless `allow_non_finite`."""
    if dtype not in STUDY_DTYPES:
        raise ConfigError(f"dtype={dtype!r}: diagnostics run in one of {list(STUDY_DTYPES)}")
    data = load_split(data_path, split)
    loaded = load_checkpoint(checkpoint, seq_len=data.metadata.seq_len, overrides={"forward_dtype": dtype}, device=device,
                             allow_non_finite=allow_non_finite)
    check_data_fits(loaded.arch, data.metadata, data, data_path)
    index = select_indices(len(data.inputs), n, seed)
    labels = np.asarray(data.labels[index]).astype(np.int64)
    if data.metadata.ignore_label_id is not None:
        labels[labels == data.metadata.ignore_label_id] = IGNORE_LABEL_ID
    core = loaded.model.model.inner
    core.requires_grad_(False)
    return StudyInputs(
        core=core,
        arch=loaded.arch,
        checkpoint=loaded,
        checkpoint_sha256=file_sha256(loaded.path),
        metadata=data.metadata,
        kind=dataset_kind(data_path, data.metadata),
        data_sha256=dataset_hash(data_path)["sha256"],
        index=index,
        inputs=np.asarray(data.inputs[index]).astype(np.int32),
        labels=labels,
        puzzle_ids=example_puzzle_ids(data, index).astype(np.int32),
        device=torch.device(device),
    )


def sample_provenance(inputs: StudyInputs, *, data_path: str | Path, seed: int, dtype: str, split: str = "test") -> dict[str, Any]:
    """What identifies a study's model and sample in summary.json and its shard fingerprint:
    checkpoint path and sha256, dataset path, kind and content hash, split, n, sample seed and the
    recurrence dtype. Runs that agree on these hold the same examples (see
    `diagnostics.studies.stats`); a dataset rebuilt at the same path changes the hash, so a
    resumed study never mixes shards computed on two datasets."""
    return {
        "dtype": dtype,
        "checkpoint": str(inputs.checkpoint.path),
        "checkpoint_sha256": inputs.checkpoint_sha256,
        "data_path": str(data_path),
        "data_sha256": inputs.data_sha256,
        "puzzle_kind": inputs.kind.name,
        "split": split,
        "n": len(inputs.index),
        "seed": seed,
    }
