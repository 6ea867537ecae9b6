"""Fixtures of the training integration tests: a tiny dataset built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from puzzles.build import build_dataset
from puzzles.builders import SudokuGenConfig


@pytest.fixture(scope="session")
def sudoku4(tmp_path_factory) -> Path:
    """4x4 Sudoku in the official layout: 256 train puzzles (8 batches of 32 per sampler pass),
    64 test puzzles, 10 of 16 cells given, one solution each. Builds in well under a second."""
    out = tmp_path_factory.mktemp("data") / "sudoku4"
    return build_dataset(SudokuGenConfig(out=str(out), n_train=256, n_test=64, givens=10, size=4, seed=0))
