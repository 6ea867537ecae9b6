"""The official batch sampler (official.md 4.5), deterministic and resumable.

Train mode, per set and per pass (`__iter__`): the pass counter `iters` is incremented and
rng = numpy Generator(Philox(seed + iters)) — the same on every rank, so all ranks agree on the
global batch. The group order is the concatenation of `epochs_per_iter` permutations of the group
ids; for each next group a random puzzle of the group is drawn, and min(puzzle size, room left)
of its examples are taken without replacement; a batch closes at `global_batch_size` examples,
the final short batch is dropped, and this rank keeps rows [rank*local, (rank+1)*local).

The official code takes the examples with the global `np.random.choice`; here the same rng does
it, and only for puzzles with more than one example, so for Sudoku and Maze (one example per
puzzle) the batches equal the official ones for the same seed.

`exclude_groups` (train mode) removes those group ids from every pass's order after the
permutations are drawn, so the rest of the order is unchanged: the held-out validation groups of
`training.validation` are never trained on.

Test mode walks the examples in order in global-batch chunks; a rank's short slice is padded to
`local` rows (inputs pad_id, labels -100, puzzle_identifiers blank_identifier_id), and the
yielded count is the real number of examples in the global chunk.

Batches: {"inputs": (local, L) int32, "labels": (local, L) int32 with ignore_label_id -> -100,
"puzzle_identifiers": (local,) int32}.

Resume: `state_dict()` records the pass counter, the set being walked and the batches already
yielded from it; a dataset given that state by `load_state_dict` replays the interrupted pass and
skips those batches. The state reflects the iterators of this object in this process; with a
DataLoader worker, rebuild it from the number of batches the training loop consumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from puzzles.layout import PuzzleSplit, load_split, read_metadata
from runtime.errors import ConfigError

IGNORE_LABEL_ID = -100


@dataclass(kw_only=True)
class LoaderConfig:
    """Sampler settings; `global_batch_size` counts examples over all ranks."""

    seed: int = 0
    global_batch_size: int
    epochs_per_iter: int = 1
    rank: int = 0
    world_size: int = 1
    test_set_mode: bool = False
    exclude_groups: tuple[int, ...] = ()


def sample_batch(rng: np.random.Generator, group_order: np.ndarray, puzzle_indices: np.ndarray,
                 group_indices: np.ndarray, start: int, global_batch_size: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Pack one global batch from groups group_order[start:], in order.

    Returns (next start, example indices (B,), puzzle index per example (B,) int32); B is below
    `global_batch_size` only when the groups ran out.
    """
    examples: list[np.ndarray] = []
    puzzles: list[np.ndarray] = []
    size = 0
    while start < len(group_order) and size < global_batch_size:
        group = group_order[start]
        puzzle = rng.integers(group_indices[group], group_indices[group + 1])
        start += 1
        first = int(puzzle_indices[puzzle])
        puzzle_size = int(puzzle_indices[puzzle + 1]) - first
        take = min(puzzle_size, global_batch_size - size)
        offsets = rng.choice(puzzle_size, take, replace=False) if puzzle_size > 1 else np.zeros(take, np.int64)
        examples.append(first + offsets)
        puzzles.append(np.full(take, puzzle, dtype=np.int32))
        size += take
    if not examples:
        return start, np.zeros(0, np.int64), np.zeros(0, np.int32)
    return start, np.concatenate(examples), np.concatenate(puzzles)


class PuzzleDataset(torch.utils.data.IterableDataset):
    """Iterates (set_name, batch, global_effective_batch_size) over one split of one dataset."""

    def __init__(self, root: str | Path, split: str, cfg: LoaderConfig):
        super().__init__()
        if cfg.global_batch_size < 1 or cfg.world_size < 1 or cfg.global_batch_size % cfg.world_size:
            raise ConfigError(f"global_batch_size={cfg.global_batch_size} must be a positive multiple of "
                              f"world_size={cfg.world_size}")
        if not 0 <= cfg.rank < cfg.world_size:
            raise ConfigError(f"rank={cfg.rank} must lie in 0..{cfg.world_size - 1}")
        if cfg.epochs_per_iter < 1:
            raise ConfigError(f"epochs_per_iter must be at least 1, got {cfg.epochs_per_iter}")
        self.root = Path(root)
        self.split = split
        self.cfg = cfg
        self.metadata = read_metadata(root, split)
        self.local_batch_size = cfg.global_batch_size // cfg.world_size
        self._data: dict[str, PuzzleSplit] | None = None  # loaded on first iteration (inside a worker)
        self._iters = 0  # set passes started (train mode); pass k uses Philox(seed + k)
        self._set_index = 0  # set being walked
        self._batches = 0  # batches yielded from it so far
        self._pending: tuple[int, int] | None = None  # (set index, batches to skip) after load_state_dict

    def _lazy_load(self) -> dict[str, PuzzleSplit]:
        if self._data is None:
            self._data = {name: load_split(self.root, self.split, name) for name in self.metadata.sets}
        return self._data

    def state_dict(self) -> dict:
        """Position after the last yielded batch: {"iters", "set_index", "batches"}."""
        return {"iters": self._iters, "set_index": self._set_index, "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next `__iter__` continues the interrupted pass after `batches` batches."""
        self._iters = int(state["iters"])
        self._set_index = int(state["set_index"])
        self._batches = int(state["batches"])
        self._pending = (self._set_index, self._batches)

    def _collate(self, inputs: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {"inputs": inputs.astype(np.int32), "labels": labels.astype(np.int32),
                 "puzzle_identifiers": ids.astype(np.int32)}
        if self.metadata.ignore_label_id is not None:
            batch["labels"][batch["labels"] == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        pad = self.local_batch_size - len(ids)
        if pad > 0:
            fill = {"inputs": self.metadata.pad_id, "labels": IGNORE_LABEL_ID,
                    "puzzle_identifiers": self.metadata.blank_identifier_id}
            batch = {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1), constant_values=fill[k])
                     for k, v in batch.items()}
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _sets(self) -> Iterator[tuple[int, str, PuzzleSplit, int]]:
        """(set index, name, arrays, batches to skip) from the resume point on; tracks the position."""
        data = self._lazy_load()
        first, skip = self._pending or (0, 0)
        self._pending = None
        for set_index, (name, ds) in enumerate(data.items()):
            if set_index < first:
                continue
            skip_here = skip if set_index == first else 0
            self._set_index, self._batches = set_index, skip_here
            yield set_index, name, ds, skip_here
            self._set_index, self._batches = (set_index + 1) % len(data), 0

    def _iter_train(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        cfg, local = self.cfg, self.local_batch_size
        mine = slice(cfg.rank * local, (cfg.rank + 1) * local)
        for _, name, ds, skip in self._sets():
            if not skip:  # a resumed pass keeps the counter it started with
                self._iters += 1
            rng = np.random.Generator(np.random.Philox(seed=cfg.seed + self._iters))
            n_groups = len(ds.group_indices) - 1
            order = np.concatenate([rng.permutation(n_groups) for _ in range(cfg.epochs_per_iter)])
            if cfg.exclude_groups:
                order = order[~np.isin(order, np.asarray(cfg.exclude_groups))]
            start, produced = 0, 0
            while start < len(order):
                start, examples, puzzles = sample_batch(rng, order, ds.puzzle_indices, ds.group_indices,
                                                        start, cfg.global_batch_size)
                if len(examples) < cfg.global_batch_size:  # drop the last short batch
                    break
                produced += 1
                if produced <= skip:
                    continue
                self._batches = produced
                ex = examples[mine]
                yield name, self._collate(ds.inputs[ex], ds.labels[ex], ds.puzzle_identifiers[puzzles[mine]]), len(examples)

    def _iter_test(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        cfg, local = self.cfg, self.local_batch_size
        for _, name, ds, skip in self._sets():
            total = len(ds.inputs)
            for chunk, begin in enumerate(range(0, total, cfg.global_batch_size)):
                if chunk < skip:
                    continue
                end = min(total, begin + cfg.global_batch_size)
                lo = min(begin + cfg.rank * local, end)
                hi = min(begin + (cfg.rank + 1) * local, end)
                puzzles = np.searchsorted(ds.puzzle_indices, np.arange(lo, hi), side="right") - 1
                self._batches = chunk + 1
                yield name, self._collate(ds.inputs[lo:hi], ds.labels[lo:hi], ds.puzzle_identifiers[puzzles]), end - begin

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor], int]]:
        return self._iter_test() if self.cfg.test_set_mode else self._iter_train()
