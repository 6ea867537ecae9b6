"""Puzzle kinds: what a dataset holds, how it is built and what counts as solving one of its puzzles.

A `PuzzleKind` names a family of puzzles (`sudoku`, `maze`) and carries
- its vocabulary (what the tokens mean),
- its builders (`python -m puzzles.build NAME`: a config dataclass and a build function, see
  `puzzles.builders`),
- its success rules: functions `(preds, inputs, labels) -> (N,) bool` on int arrays of shape
  (N, L), labels with ignored cells = `IGNORE_LABEL_ID`; `exact` (every labelled cell right)
  comes first and is the default; Maze adds `valid_path` (analysis.md §1: any shortest S-G path
  on the unchanged maze counts, not only the labelled one);
- its extra metrics: every rule but `exact` becomes a per-example array and an
  `<rule>_accuracy` metric in evaluation.

Every dataset written by `puzzles.build` records its kind in `build.json` (`puzzle_kind`). A folder
written by the official builders has no build.json; `dataset_kind` then infers the kind once, at
load time, from the metadata: vocabulary 6 is the official Maze vocabulary, 11 tokens over 81
cells is 9x9 Sudoku, anything else is `generic` (exact match only). Evaluation, training and the
diagnostics ask this module; nothing else looks at a vocabulary size to decide what a dataset is.

Adding a kind: its generator and build function in `puzzles/`, then one `PuzzleKind` in `KINDS`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from puzzles import builders
from puzzles.layout import PuzzleMetadata, read_metadata
from puzzles.maze import CHARSET as MAZE_CHARSET, VOCAB_SIZE as MAZE_VOCAB
from runtime.errors import ConfigError, DatasetError

IGNORE_LABEL_ID = -100  # labels of cells that are not scored (model_core.losses uses the same value)
BUILD_INFO = "build.json"

SuccessRule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
BuildFn = Callable[..., tuple[builders.Splits, int]]


def exact(preds: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: every labelled cell predicted right. preds, labels (N, L) int."""
    return ((preds == labels) | (labels == IGNORE_LABEL_ID)).all(-1)


def valid_path(preds: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the predicted grid marks a shortest S-G path on the unchanged maze (square grids)."""
    from puzzles.maze import valid_path as check  # noqa: PLC0415 (numba compiles on first use)

    side = int(round(preds.shape[-1] ** 0.5))
    if side * side != preds.shape[-1]:
        raise DatasetError(f"valid_path needs square mazes; sequences have length {preds.shape[-1]}")
    return check(np.asarray(preds, np.int64), np.asarray(inputs, np.int64), side)


@dataclass(frozen=True)
class Builder:
    """One `python -m puzzles.build NAME` recipe: its config dataclass and build function."""

    name: str
    config_cls: type
    build: BuildFn
    kind: str = ""  # filled by PuzzleKind


@dataclass(frozen=True)
class PuzzleKind:
    """A family of puzzles; see the module docstring."""

    name: str
    vocabulary: str
    builders: tuple[Builder, ...] = ()
    success_rules: Mapping[str, SuccessRule] = field(default_factory=lambda: {"exact": exact})

    def success_rule(self, rule: str, where: str = "") -> SuccessRule:
        """The rule's function; ConfigError naming the kind's rules when it has none of that name."""
        if rule not in self.success_rules:
            place = f" {where}" if where else ""
            raise ConfigError(f"success rule {rule!r} does not apply to {self.name} data{place}; "
                              f"{self.name} rules: {', '.join(self.success_rules)}")
        return self.success_rules[rule]

    def extra_metrics(self, preds: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per-example arrays and dataset metrics of every rule but `exact` (e.g. Maze's
        `valid_path` and `valid_path_accuracy`). preds, inputs, labels (N, L) int."""
        arrays, metrics = {}, {}
        for name, rule in self.success_rules.items():
            if name != "exact" and len(preds):
                arrays[name] = rule(preds, inputs, labels)
                metrics[f"{name}_accuracy"] = float(arrays[name].mean())
        return arrays, metrics


def _kind(name: str, vocabulary: str, recipes: tuple[tuple[str, type, BuildFn], ...], rules: dict[str, SuccessRule]) -> PuzzleKind:
    return PuzzleKind(name, vocabulary, tuple(Builder(b, cls, fn, name) for b, cls, fn in recipes), rules)


KINDS: dict[str, PuzzleKind] = {
    kind.name: kind for kind in (
        _kind("sudoku", "pad 0, blank 1, digit d = d + 1 (a size-n grid has n + 2 tokens)",
              (("sudoku", builders.SudokuGenConfig, builders.build_sudoku),
               ("sudoku_extreme", builders.SudokuExtremeConfig, builders.build_sudoku_extreme)),
              {"exact": exact}),
        _kind("maze", "pad 0, " + ", ".join(f"{c!r} {i + 1}" for i, c in enumerate(MAZE_CHARSET)),
              (("maze", builders.MazeGenConfig, builders.build_maze),
               ("maze_hard", builders.MazeHardConfig, builders.build_maze_hard)),
              {"exact": exact, "valid_path": valid_path}),
        _kind("generic", "any (a dataset of unknown kind: exact match only)", (), {"exact": exact}),
    )
}
BUILDERS: dict[str, Builder] = {b.name: b for kind in KINDS.values() for b in kind.builders}
SUCCESS_RULES: tuple[str, ...] = tuple(dict.fromkeys(r for kind in KINDS.values() for r in kind.success_rules))


def builder_for(cfg: Any) -> Builder:
    """The builder whose config class `cfg` is (TypeError for anything else)."""
    for builder in BUILDERS.values():
        if type(cfg) is builder.config_cls:
            return builder
    raise TypeError(f"not a build config: {type(cfg).__name__}")


def get_kind(name: str) -> PuzzleKind:
    if name not in KINDS:
        raise DatasetError(f"unknown puzzle kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


def infer_kind(meta: PuzzleMetadata) -> PuzzleKind:
    """The kind of a dataset that does not record one (official builders' output)."""
    if meta.vocab_size == MAZE_VOCAB:
        return KINDS["maze"]
    if meta.vocab_size == builders.SUDOKU_VOCAB and meta.seq_len == 81:
        return KINDS["sudoku"]
    return KINDS["generic"]


def dataset_kind(root: str | Path, meta: PuzzleMetadata | None = None) -> PuzzleKind:
    """The kind of the dataset in `root`: as recorded in its build.json, else inferred from the
    metadata of its test split (or `meta`)."""
    info_path = Path(root) / BUILD_INFO
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            raise DatasetError(f"{info_path} is not readable JSON; rebuild the dataset or delete the file") from None
        recorded = info.get("puzzle_kind") if isinstance(info, dict) else None
        if recorded is not None:
            return get_kind(str(recorded))
        builder = BUILDERS.get(str(info.get("kind"))) if isinstance(info, dict) else None
        if builder is not None:  # written before kinds were recorded: the builder names its kind
            return KINDS[builder.kind]
    return infer_kind(meta if meta is not None else read_metadata(root, "test"))
