"""Honest model selection: a validation split carved from the training groups.

With `data.val_n = n`, n groups of the train split (drawn with the run's `seed`) are held out:
the sampler never draws them (`LoaderConfig.exclude_groups`), and the evaluations during training
score the first example of each (in the official layout a group's first puzzle is the
un-augmented original, so no augmented copy of a validation puzzle is trained on). That
validation exact accuracy chooses best.pt, so the test split never picks a checkpoint; at the end
the test split is evaluated twice, with the final weights and with best.pt's, and reported as
`test/final/...` and `test/best_on_val/...`. The held-out groups are recorded in the manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from puzzles.layout import load_split, read_metadata
from runtime.errors import ConfigError

SEED_SALT = 0x7A1  # keeps the hold-out draw apart from the sampler's Philox(seed + pass) streams


def holdout_groups(root: str | Path, val_n: int, seed: int) -> np.ndarray:
    """(val_n,) sorted int64 ids of the train groups held out for validation (seeded)."""
    meta = read_metadata(root, "train")
    if meta.sets != ["all"]:
        raise ConfigError(f"data.val_n needs a train split with one set; {root} has sets {meta.sets}")
    if not 1 <= val_n < meta.total_groups:
        raise ConfigError(f"data.val_n={val_n} must be in [1, {meta.total_groups - 1}] (dataset {root} has {meta.total_groups} train groups)")
    rng = np.random.default_rng([seed, SEED_SALT])
    return np.sort(rng.permutation(meta.total_groups)[:val_n]).astype(np.int64)


def first_examples(root: str | Path, groups: np.ndarray) -> np.ndarray:
    """(len(groups),) int64 index into the train examples: each group's first puzzle's first example."""
    split = load_split(root, "train")
    first_puzzle = np.asarray(split.group_indices)[groups]
    return np.asarray(split.puzzle_indices)[first_puzzle].astype(np.int64)
