"""Fixtures for the data-layer tests: small CSV files in the published sets' exact format."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from puzzles.maze import decode_maze_text, generate_maze
from puzzles.sudoku import generate_sudoku

HEADER = ["source", "question", "answer", "rating"]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    """A CSV as the published sets ship it: header row, then source, question, answer, rating."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def sudoku_rows(n: int, seed: int, givens: int = 30) -> list[list[str]]:
    puzzles, solutions, ratings = generate_sudoku(n, givens, seed)
    return [["generated", "".join("." if d == 0 else str(d) for d in p), "".join(map(str, s)), str(int(r))]
            for p, s, r in zip(puzzles, solutions, ratings)]


def maze_rows(n: int, seed: int, size: int = 8, min_path: int = 10) -> list[list[str]]:
    inputs, labels, lengths = generate_maze(n, size, min_path, seed=seed)
    return [["generated", "".join(decode_maze_text(x, size)), "".join(decode_maze_text(y, size)), str(int(d))]
            for x, y, d in zip(inputs, labels, lengths)]


@pytest.fixture
def sudoku_csv_dir(tmp_path: Path) -> Path:
    """train.csv with 12 and test.csv with 5 generated 30-given puzzles."""
    src = tmp_path / "sudoku_src"
    src.mkdir()
    write_csv(src / "train.csv", sudoku_rows(12, seed=1))
    write_csv(src / "test.csv", sudoku_rows(5, seed=2))
    return src


@pytest.fixture
def maze_csv_dir(tmp_path: Path) -> Path:
    """train.csv with 6 and test.csv with 4 generated 8x8 mazes."""
    src = tmp_path / "maze_src"
    src.mkdir()
    write_csv(src / "train.csv", maze_rows(6, seed=1))
    write_csv(src / "test.csv", maze_rows(4, seed=2))
    return src


def all_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes for every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
