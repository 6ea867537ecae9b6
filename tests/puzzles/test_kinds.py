"""Puzzle kinds: recorded at build time, inferred for official folders, and what evaluation reports.

Test hypothesis: the kind of a dataset decides its success rules, never its vocabulary size; a 4x4
Sudoku (vocabulary 6, like Maze) is scored as Sudoku (exact only), a maze with valid_path; a folder
without build.json (the official layout) gets its kind from `infer_kind`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import archs  # noqa: F401  (registers trm and hrm)
from model_core.losses import IGNORE_LABEL_ID as MODEL_IGNORE
from model_core.registry import build_model
from puzzles import kinds
from puzzles.build import build_dataset
from puzzles.builders import MazeGenConfig, SudokuGenConfig
from puzzles.layout import read_metadata
from runtime.errors import ConfigError
from training.evaluation import EvalOptions, evaluate_split
from trm.config import TRMConfig


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    return build_dataset(SudokuGenConfig(out=str(tmp_path_factory.mktemp("k") / "s4"), n_train=4, n_test=6, size=4, givens=8, seed=1))


@pytest.fixture(scope="module")
def maze5(tmp_path_factory):
    return build_dataset(MazeGenConfig(out=str(tmp_path_factory.mktemp("k") / "m5"), n_train=4, n_test=6, size=5, min_path=3, seed=1))


def _random_model(root):
    meta = read_metadata(root, "test")
    cfg = TRMConfig(hidden_size=16, num_heads=2, expansion=2, H_cycles=1, L_cycles=1, L_layers=1, halt_max_steps=2,
                    puzzle_emb_ndim=0, forward_dtype="float32")
    cfg.derive_from_data(vocab_size=meta.vocab_size, seq_len=meta.seq_len, num_puzzle_identifiers=meta.num_puzzle_identifiers, batch_size=4)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_ignore_label_matches_the_model_core():
    assert kinds.IGNORE_LABEL_ID == MODEL_IGNORE


def test_built_datasets_record_their_kind(sudoku4, maze5):
    assert json.loads((sudoku4 / "build.json").read_text())["puzzle_kind"] == "sudoku"
    assert json.loads((maze5 / "build.json").read_text())["puzzle_kind"] == "maze"
    # both have a 6-token vocabulary: only the recorded kind tells them apart
    assert read_metadata(sudoku4, "test").vocab_size == read_metadata(maze5, "test").vocab_size == 6
    assert kinds.dataset_kind(sudoku4).name == "sudoku"
    assert kinds.dataset_kind(maze5).name == "maze"


def test_official_folders_are_inferred(tmp_path, maze5):
    """Without build.json: vocab 6 is Maze, 11 tokens on 81 cells is Sudoku, else generic."""
    meta = read_metadata(maze5, "test")
    assert kinds.infer_kind(meta).name == "maze"
    meta.vocab_size, meta.seq_len = 11, 81
    assert kinds.infer_kind(meta).name == "sudoku"
    meta.vocab_size, meta.seq_len = 12, 900
    assert kinds.infer_kind(meta).name == "generic"
    from tests.conftest import OFFICIAL_FIXTURES  # noqa: PLC0415
    assert kinds.dataset_kind(OFFICIAL_FIXTURES / "trm_mlp" / "data").name == "sudoku"


def test_4x4_sudoku_evaluates_with_sudoku_metrics(sudoku4):
    result = evaluate_split(_random_model(sudoku4), sudoku4, "test", EvalOptions(batch_size=4), progress=False)
    assert result.metrics["puzzle_kind"] == "sudoku"
    assert "valid_path_accuracy" not in result.metrics and "valid_path" not in result.arrays
    assert result.metrics["count"] == 6


def test_maze_evaluates_with_valid_path(maze5):
    result = evaluate_split(_random_model(maze5), maze5, "test", EvalOptions(batch_size=4), progress=False)
    assert result.metrics["puzzle_kind"] == "maze"
    expected = kinds.valid_path(result.arrays["preds"].astype(np.int64), result.arrays["inputs"].astype(np.int64), None)
    assert np.array_equal(result.arrays["valid_path"], expected)
    assert result.metrics["valid_path_accuracy"] == pytest.approx(expected.mean())


def test_success_rules_on_known_grids(maze5):
    """The labelled path is exact and valid; a grid with the path erased is neither."""
    from puzzles.layout import load_split  # noqa: PLC0415
    split = load_split(maze5, "test")
    inputs, labels = np.asarray(split.inputs, np.int64), np.asarray(split.labels, np.int64)
    maze = kinds.KINDS["maze"]
    assert maze.success_rule("exact")(labels, inputs, labels).all()
    assert maze.success_rule("valid_path")(labels, inputs, labels).all()
    assert not maze.success_rule("valid_path")(inputs, inputs, labels).any()
    ignored = np.where(np.arange(labels.shape[1]) % 2 == 0, labels, kinds.IGNORE_LABEL_ID)
    assert kinds.exact(np.where(ignored == kinds.IGNORE_LABEL_ID, 0, labels), inputs, ignored).all()


def test_rule_of_another_kind_is_one_line():
    with pytest.raises(ConfigError, match="success rule 'valid_path' does not apply to sudoku data; sudoku rules: exact"):
        kinds.KINDS["sudoku"].success_rule("valid_path")


def test_every_builder_names_its_kind():
    assert {b.name: b.kind for b in kinds.BUILDERS.values()} == {
        "sudoku": "sudoku", "sudoku_extreme": "sudoku", "maze": "maze", "maze_hard": "maze"}
    assert kinds.SUCCESS_RULES == ("exact", "valid_path")
