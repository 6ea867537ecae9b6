"""Build puzzle datasets in the official layout: `python -m puzzles.build KIND key=value ...`.

KIND is one of
- `sudoku`: generated 9x9 (or 6x6/4x4) puzzles with `givens` givens and a unique solution;
- `maze`: generated `size` x `size` mazes with a shortest path of at least `min_path` moves;
- `sudoku_extreme`, `maze_hard`: the published sets (hub, or a local `source_dir`).

Examples:
    python -m puzzles.build sudoku out=data/sudoku-45 n_train=20000 n_test=1000 givens=45 seed=0
    python -m puzzles.build maze out=data/maze-small size=12 min_path=20 n_train=500 n_test=100
    python -m puzzles.build sudoku_extreme out=data/sudoku-extreme-1k-aug-1000 subsample=1000 num_aug=1000

Keys are checked against the kind's dataclass (an unknown key or a wrong type is a one-line
error). `out` may contain `{hash}`, replaced by a hash of the rest of the config, which is how
`build_dataset` caches generated data for training runs. Train groups are an original puzzle and
its `num_aug` augmentations; test puzzles are never augmented. Besides the official files the
output holds `build.json`: kind, config, seed, format version and the sha256 of the data files.
An existing output with the same config is reused (after checking that hash); one with another
config is an error; everything is written to a temporary folder beside `out` and renamed.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Union

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puzzles import hub
from puzzles.augment import augment_mazes, augment_sudoku, maze_aug_tids
from puzzles.layout import PuzzleArrays, content_hash, write_dataset
from puzzles.maze import VOCAB_SIZE as MAZE_VOCAB, generate_maze
from puzzles.sudoku import encode_sudoku, generate_sudoku
from runtime.errors import ConfigError, DatasetError, exit_on_user_error

FORMAT_VERSION = 1  # bump when generated content changes for the same config
_AUG_CHUNK = 1 << 16  # Sudoku rows augmented per call (fixed: the rng stream depends on it)


@dataclass
class SudokuGenConfig:
    """Generated Sudoku (see `puzzles.sudoku`)."""

    out: str = "data/sudoku-{hash}"
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0
    givens: int = 45
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


BuildConfig = Union[SudokuGenConfig, MazeGenConfig, SudokuExtremeConfig, MazeHardConfig]
CONFIGS = {"sudoku": SudokuGenConfig, "maze": MazeGenConfig,
           "sudoku_extreme": SudokuExtremeConfig, "maze_hard": MazeHardConfig}
Splits = dict[str, dict[str, PuzzleArrays]]


def kind_of(cfg: BuildConfig) -> str:
    for kind, cls in CONFIGS.items():
        if type(cfg) is cls:
            return kind
    raise TypeError(f"not a build config: {type(cfg).__name__}")


def _identity(cfg: BuildConfig) -> dict:
    """What determines the content: kind, format version and every field except `out`."""
    config = {k: v for k, v in asdict(cfg).items() if k != "out"}
    return {"kind": kind_of(cfg), "format_version": FORMAT_VERSION, "config": config}


def config_hash(cfg: BuildConfig) -> str:
    """12 hex digits of sha256 over the canonical JSON of `_identity(cfg)`."""
    return hashlib.sha256(json.dumps(_identity(cfg), sort_keys=True).encode()).hexdigest()[:12]


def output_dir(cfg: BuildConfig) -> Path:
    """`cfg.out` with `{hash}` replaced by `config_hash(cfg)`."""
    return Path(cfg.out.replace("{hash}", config_hash(cfg)))


def _sudoku_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_aug: int,
                   rng: np.random.Generator) -> Splits:
    """Digit grids (0 blank) -> official arrays; train rows repeat 1 + num_aug times per group."""
    puzzles, solutions = train
    rows = np.repeat(np.arange(len(puzzles)), 1 + num_aug)
    p, s = puzzles[rows], solutions[rows]
    augmented = np.flatnonzero(np.arange(len(rows)) % (1 + num_aug) > 0)
    for start in range(0, len(augmented), _AUG_CHUNK):  # chunks bound the index arrays' memory
        sel = augmented[start:start + _AUG_CHUNK]
        p[sel], s[sel] = augment_sudoku(rng, p[sel], s[sel])
    return {"train": {"all": PuzzleArrays.one_example_per_puzzle(encode_sudoku(p), encode_sudoku(s), 1 + num_aug)},
            "test": {"all": PuzzleArrays.one_example_per_puzzle(encode_sudoku(test[0]), encode_sudoku(test[1]))}}


def _maze_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], num_aug: int,
                 rng: np.random.Generator) -> Splits:
    """Maze token grids -> official arrays; train groups are a maze and `num_aug` dihedral copies."""
    inputs, labels = train
    tids = maze_aug_tids(rng, len(inputs), num_aug).reshape(-1)
    rows = np.repeat(np.arange(len(inputs)), 1 + num_aug)
    return {"train": {"all": PuzzleArrays.one_example_per_puzzle(augment_mazes(inputs[rows], tids),
                                                                 augment_mazes(labels[rows], tids), 1 + num_aug)},
            "test": {"all": PuzzleArrays.one_example_per_puzzle(test[0], test[1])}}


def _check_common(cfg: BuildConfig) -> None:
    if not cfg.out:
        raise ConfigError("out must name the output directory")
    for name in ("n_train", "n_test", "subsample"):
        value = getattr(cfg, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    if cfg.num_aug < 0:
        raise ConfigError(f"num_aug={cfg.num_aug} must be >= 0")
    if isinstance(cfg, (MazeGenConfig, MazeHardConfig)) and cfg.num_aug > 7:
        raise ConfigError(f"num_aug={cfg.num_aug} is too large: a maze has 7 non-identity dihedral transforms")


def _build_generated(cfg: BuildConfig) -> tuple[Splits, int]:
    aug_rng = np.random.default_rng([cfg.seed, 1])
    if isinstance(cfg, SudokuGenConfig):
        puzzles, solutions, _ = generate_sudoku(cfg.n_train + cfg.n_test, cfg.givens, cfg.seed, cfg.size)
        split = cfg.n_train
        return (_sudoku_splits((puzzles[:split], solutions[:split]), (puzzles[split:], solutions[split:]),
                               cfg.num_aug, aug_rng), cfg.size + 2)
    inputs, labels, _ = generate_maze(cfg.n_train + cfg.n_test, cfg.size, cfg.min_path, cfg.unique_path, cfg.seed,
                                      (cfg.wall_density_min, cfg.wall_density_max))
    split = cfg.n_train
    return _maze_splits((inputs[:split], labels[:split]), (inputs[split:], labels[split:]), cfg.num_aug, aug_rng), MAZE_VOCAB


def _take(rows: hub.CsvPuzzles, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subsample of n rows (in drawn order, as the official builders keep it), or all rows."""
    if n is None or n >= len(rows.questions):
        return rows.questions, rows.answers
    pick = rng.choice(len(rows.questions), size=n, replace=False)
    return rows.questions[pick], rows.answers[pick]


def _build_published(cfg: BuildConfig, download: hub.Download | None) -> tuple[Splits, int]:
    if cfg.subsample is not None and cfg.n_train is not None and cfg.subsample != cfg.n_train:
        raise ConfigError(f"subsample={cfg.subsample} and n_train={cfg.n_train} disagree (they name the same thing)")
    n_train = cfg.subsample if cfg.subsample is not None else cfg.n_train
    kind = "sudoku" if isinstance(cfg, SudokuExtremeConfig) else "maze"
    loaded = {}
    for split in ("train", "test"):
        rows = hub.read_puzzle_csv(hub.fetch_csv(cfg.repo, split, cfg.source_dir, download), kind)
        if cfg.min_difficulty is not None:
            keep = rows.ratings >= cfg.min_difficulty
            rows = hub.CsvPuzzles(rows.questions[keep], rows.answers[keep], rows.ratings[keep])
            if not keep.any():
                raise DatasetError(f"no {split} puzzle of {cfg.repo} has rating >= {cfg.min_difficulty}")
        loaded[split] = rows
    if kind == "maze" and loaded["train"].questions.shape[1] != loaded["test"].questions.shape[1]:
        raise DatasetError("train.csv and test.csv hold mazes of different sizes")
    train = _take(loaded["train"], n_train, np.random.default_rng([cfg.seed, 0]))
    test = _take(loaded["test"], cfg.n_test, np.random.default_rng([cfg.seed, 2]))
    aug_rng = np.random.default_rng([cfg.seed, 1])
    if kind == "sudoku":
        return _sudoku_splits(train, test, cfg.num_aug, aug_rng), 11
    return _maze_splits(train, test, cfg.num_aug, aug_rng), MAZE_VOCAB


def _existing(out: Path, identity: dict) -> bool:
    """True if `out` already holds this dataset intact; False if absent or empty; else DatasetError."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        raise DatasetError(f"output directory {out} already exists and holds no readable build.json; "
                           f"choose another out= or delete it") from None
    found = {k: info.get(k) if isinstance(info, dict) else None for k in identity}
    if found != identity:
        old = found["config"] if isinstance(found["config"], dict) else {}
        diffs = [f"{k}={old.get(k)!r} where {v!r} was asked" for k, v in identity["config"].items() if old.get(k) != v]
        detail = ", ".join(diffs) if found["kind"] == identity["kind"] and diffs else f"kind {found['kind']}"
        raise DatasetError(f"output directory {out} already holds a different dataset ({detail}); "
                           f"choose another out= or delete it")
    if content_hash(out) != info.get("content_sha256"):
        raise DatasetError(f"output directory {out} has files that no longer match its build.json hash; delete it")
    return True


def build_dataset(cfg: BuildConfig, download: hub.Download | None = None) -> Path:
    """Build (or reuse) the dataset described by `cfg`; returns its directory.

    Training can call this with `out` containing `{hash}` to get a cached generated dataset.
    `download(repo_id, filename, repo_type=...)` replaces `huggingface_hub.hf_hub_download`.
    Raises ConfigError for bad values and DatasetError for unusable sources or outputs.
    """
    _check_common(cfg)
    out = output_dir(cfg)
    identity = _identity(cfg)
    if _existing(out, identity):
        return out
    if isinstance(cfg, (SudokuGenConfig, MazeGenConfig)):
        splits, vocab = _build_generated(cfg)
    else:
        splits, vocab = _build_published(cfg, download)
    build_info = {**identity, "seed": cfg.seed}
    try:
        write_dataset(out, splits, vocab, build_info=build_info)
    except (DatasetError, OSError):
        if _existing(out, identity):  # another process built the same dataset meanwhile
            return out
        raise
    return out


def parse_config(kind: str, overrides: list[str]) -> BuildConfig:
    """A typed config from `key=value` strings; ConfigError names an unknown key or a bad value."""
    if kind not in CONFIGS:
        raise ConfigError(f"unknown dataset kind '{kind}' (choose from {', '.join(CONFIGS)})")
    cls = CONFIGS[kind]
    known = [f.name for f in fields(cls)]
    cfg = OmegaConf.structured(cls)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{item}'")
        if key not in known:
            raise ConfigError(f"unknown key '{key}' for {kind} (known keys: {', '.join(known)})")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException:
            expected = next(f.type for f in fields(cls) if f.name == key)
            raise ConfigError(f"invalid value for {key}: '{value}' (expected {expected})") from None
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; prints the output directory and the split sizes."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    with exit_on_user_error():
        if not args:
            raise ConfigError(f"missing KIND: python -m puzzles.build KIND key=value ... with KIND one of {', '.join(CONFIGS)} (--help explains)")
        cfg = parse_config(args[0], args[1:])
        out = build_dataset(cfg)
        sizes = {split: json.loads((out / split / "dataset.json").read_text())["total_groups"]
                 for split in ("train", "test")}
        print(f"{out}: {sizes['train']} train groups, {sizes['test']} test puzzles")


if __name__ == "__main__":
    main()
