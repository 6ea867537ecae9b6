"""The dataset builders behind `python -m puzzles.build KIND`: one config dataclass and one build
function per builder, for generated and published Sudoku and Maze sets.

A build function takes its config (already checked by `puzzles.build`) and an optional hub
download function and returns `(splits, vocab_size)`: `splits[split][set]` are `PuzzleArrays` in
the official layout (train groups = an original puzzle and its `num_aug` augmentations; test
puzzles are never augmented). `puzzles.kinds` ties each builder to its puzzle kind; `puzzles.build`
adds caching, hashing and the CLI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from puzzles import hub
from puzzles.augment import augment_mazes, augment_sudoku, maze_aug_tids
from puzzles.layout import PuzzleArrays
from puzzles.maze import VOCAB_SIZE as MAZE_VOCAB, generate_maze
from puzzles.sudoku import encode_sudoku, generate_sudoku
from runtime.errors import ConfigError, DatasetError

_AUG_CHUNK = 1 << 16  # Sudoku rows augmented per call (fixed: the rng stream depends on it)
SUDOKU_VOCAB = 11  # 9x9: pad 0, blank 1, digits 2..10 (a size-n grid has n + 2 tokens)
Splits = dict[str, dict[str, PuzzleArrays]]


@dataclass
class SudokuGenConfig:
    """Generated Sudoku (see `puzzles.sudoku`). `givens` givens per puzzle, or with `givens_max`
    a mix: each puzzle (train and test alike) draws its count uniformly from givens..givens_max.
    Each example's givens and solver rating are written beside the arrays (`<set>__givens.npy`,
    `<set>__rating.npy`; an augmented copy carries its original's)."""

    out: str = "data/sudoku-{hash}"
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0
    givens: int = 45
    givens_max: Optional[int] = None
    size: int = 9  # 9, or 6/4 for unit tests
    num_aug: int = 0  # augmented copies per train puzzle


@dataclass
class MazeGenConfig:
    """Generated mazes (see `puzzles.maze`)."""

    out: str = "data/maze-{hash}"
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0
    size: int = 30
    min_path: int = 110  # minimum S-G distance in moves
    unique_path: bool = False
    wall_density_min: float = 0.3
    wall_density_max: float = 0.5
    num_aug: int = 0  # dihedral copies per train maze, 0..7


@dataclass
class SudokuExtremeConfig:
    """The published Sudoku-Extreme set. `subsample` is the official name for n_train."""

    out: str = "data/sudoku-extreme-{hash}"
    n_train: Optional[int] = None  # train puzzles kept (seeded subsample); None: all
    n_test: Optional[int] = None  # test puzzles kept (seeded subsample); None: all
    seed: int = 0
    subsample: Optional[int] = None
    num_aug: int = 0
    min_difficulty: Optional[int] = None  # keep rows with rating >= this
    source_dir: Optional[str] = None  # folder with train.csv/test.csv instead of the hub
    repo: str = hub.SUDOKU_EXTREME_REPO


@dataclass
class MazeHardConfig:
    """The published Maze-30x30-Hard-1k set. `subsample` is the official name for n_train."""

    out: str = "data/maze-30x30-hard-{hash}"
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    seed: int = 0
    subsample: Optional[int] = None
    num_aug: int = 0  # 7 = all eight dihedral transforms, the official `--aug`
    min_difficulty: Optional[int] = None
    source_dir: Optional[str] = None
    repo: str = hub.MAZE_HARD_REPO


def _sudoku_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_aug: int,
                   rng: np.random.Generator, extras: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})) -> Splits:
    """Digit grids (0 blank) -> official arrays; train rows repeat 1 + num_aug times per group.
    `extras` (train, test): per-puzzle arrays written beside them (repeated like the rows)."""
    puzzles, solutions = train
    rows = np.repeat(np.arange(len(puzzles)), 1 + num_aug)
    p, s = puzzles[rows], solutions[rows]
    augmented = np.flatnonzero(np.arange(len(rows)) % (1 + num_aug) > 0)
    for start in range(0, len(augmented), _AUG_CHUNK):  # chunks bound the index arrays' memory
        sel = augmented[start:start + _AUG_CHUNK]
        p[sel], s[sel] = augment_sudoku(rng, p[sel], s[sel])
    train_arrays = PuzzleArrays.one_example_per_puzzle(encode_sudoku(p), encode_sudoku(s), 1 + num_aug)
    test_arrays = PuzzleArrays.one_example_per_puzzle(encode_sudoku(test[0]), encode_sudoku(test[1]))
    train_arrays.extras = {name: arr[rows] for name, arr in extras[0].items()}
    test_arrays.extras = dict(extras[1])
    return {"train": {"all": train_arrays}, "test": {"all": test_arrays}}


def _maze_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_aug: int,
                 rng: np.random.Generator) -> Splits:
    """Maze token grids -> official arrays; train groups are a maze and `num_aug` dihedral copies."""
    inputs, labels = train
    tids = maze_aug_tids(rng, len(inputs), num_aug).reshape(-1)
    rows = np.repeat(np.arange(len(inputs)), 1 + num_aug)
    return {"train": {"all": PuzzleArrays.one_example_per_puzzle(augment_mazes(inputs[rows], tids),
                                                                 augment_mazes(labels[rows], tids), 1 + num_aug)},
            "test": {"all": PuzzleArrays.one_example_per_puzzle(test[0], test[1])}}


def _take(rows: hub.CsvPuzzles, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subsample of n rows (in drawn order, as the official builders keep it), or all rows."""
    if n is None or n >= len(rows.questions):
        return rows.questions, rows.answers
    pick = rng.choice(len(rows.questions), size=n, replace=False)
    return rows.questions[pick], rows.answers[pick]


def _published(cfg: SudokuExtremeConfig | MazeHardConfig, csv_kind: str, download: hub.Download | None
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The seeded (train, test) subsamples of a published set, each (questions, answers)."""
    if cfg.subsample is not None and cfg.n_train is not None and cfg.subsample != cfg.n_train:
        raise ConfigError(f"subsample={cfg.subsample} and n_train={cfg.n_train} disagree (they name the same thing)")
    n_train = cfg.subsample if cfg.subsample is not None else cfg.n_train
    loaded = {}
    for split in ("train", "test"):
        rows = hub.read_puzzle_csv(hub.fetch_csv(cfg.repo, split, cfg.source_dir, download), csv_kind)
        if cfg.min_difficulty is not None:
            keep = rows.ratings >= cfg.min_difficulty
            rows = hub.CsvPuzzles(rows.questions[keep], rows.answers[keep], rows.ratings[keep])
            if not keep.any():
                raise DatasetError(f"no {split} puzzle of {cfg.repo} has rating >= {cfg.min_difficulty}")
        loaded[split] = rows
    if csv_kind == "maze" and loaded["train"].questions.shape[1] != loaded["test"].questions.shape[1]:
        raise DatasetError("train.csv and test.csv hold mazes of different sizes")
    train = _take(loaded["train"], n_train, np.random.default_rng([cfg.seed, 0]))
    test = _take(loaded["test"], cfg.n_test, np.random.default_rng([cfg.seed, 2]))
    return train, test


def _check_maze_aug(num_aug: int) -> None:
    if num_aug > 7:
        raise ConfigError(f"num_aug={num_aug} is too large: a maze has 7 non-identity dihedral transforms")


def build_sudoku(cfg: SudokuGenConfig, download: hub.Download | None = None) -> tuple[Splits, int]:
    """Generated Sudoku with unique solutions; vocabulary size + 2."""
    n = cfg.n_train + cfg.n_test
    givens = cfg.givens if cfg.givens_max is None else np.random.default_rng([cfg.seed, 3]).integers(cfg.givens, cfg.givens_max + 1, n)
    puzzles, solutions, ratings = generate_sudoku(n, givens, cfg.seed, cfg.size)
    per_puzzle = {"givens": (puzzles != 0).sum(1).astype(np.int16), "rating": ratings}
    split = cfg.n_train
    extras = ({k: v[:split] for k, v in per_puzzle.items()}, {k: v[split:] for k, v in per_puzzle.items()})
    splits = _sudoku_splits((puzzles[:split], solutions[:split]), (puzzles[split:], solutions[split:]), cfg.num_aug,
                            np.random.default_rng([cfg.seed, 1]), extras)
    return splits, cfg.size + 2


def build_maze(cfg: MazeGenConfig, download: hub.Download | None = None) -> tuple[Splits, int]:
    """Generated mazes with a shortest path of at least `min_path` moves."""
    _check_maze_aug(cfg.num_aug)
    aug_rng = np.random.default_rng([cfg.seed, 1])
    inputs, labels, _ = generate_maze(cfg.n_train + cfg.n_test, cfg.size, cfg.min_path, cfg.unique_path, cfg.seed,
                                      (cfg.wall_density_min, cfg.wall_density_max))
    split = cfg.n_train
    return _maze_splits((inputs[:split], labels[:split]), (inputs[split:], labels[split:]), cfg.num_aug, aug_rng), MAZE_VOCAB


def build_sudoku_extreme(cfg: SudokuExtremeConfig, download: hub.Download | None = None) -> tuple[Splits, int]:
    """The published Sudoku-Extreme set (hub or `source_dir`)."""
    train, test = _published(cfg, "sudoku", download)
    return _sudoku_splits(train, test, cfg.num_aug, np.random.default_rng([cfg.seed, 1])), SUDOKU_VOCAB


def build_maze_hard(cfg: MazeHardConfig, download: hub.Download | None = None) -> tuple[Splits, int]:
    """The published Maze-30x30-Hard-1k set (hub or `source_dir`)."""
    _check_maze_aug(cfg.num_aug)
    train, test = _published(cfg, "maze", download)
    return _maze_splits(train, test, cfg.num_aug, np.random.default_rng([cfg.seed, 1])), MAZE_VOCAB
