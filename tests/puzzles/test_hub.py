"""Reading the published CSV format and fetching files (no network: downloads are injected)."""
from __future__ import annotations


import numpy as np
import pytest

from puzzles.hub import fetch_csv, read_puzzle_csv
from runtime.errors import DatasetError

from .conftest import sudoku_rows, write_csv

Q = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
A = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def test_reads_sudoku_rows(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["src", Q, A, "7"], ["src", Q.replace(".", "0"), A, "0"]])
    rows = read_puzzle_csv(path, "sudoku")
    assert rows.questions.shape == (2, 81) and rows.questions.dtype == np.uint8
    assert rows.questions[0, :4].tolist() == [5, 3, 0, 0]  # '.' and '0' are blanks
    np.testing.assert_array_equal(rows.questions[0], rows.questions[1])
    assert rows.answers[0, :9].tolist() == [5, 3, 4, 6, 7, 8, 9, 1, 2]
    assert rows.ratings.tolist() == [7, 0]


def test_reads_maze_rows(maze_csv_dir):
    rows = read_puzzle_csv(maze_csv_dir / "train.csv", "maze")
    assert rows.questions.shape == (6, 64)
    assert set(np.unique(rows.answers)) <= {1, 2, 3, 4, 5} and (rows.answers == 5).any()


@pytest.mark.parametrize("row,kind,message", [
    (["src", Q, A], "sudoku", "t.csv:3: expected 4 fields (source, question, answer, rating), got 3"),
    (["src", Q, A, "hard"], "sudoku", "t.csv:3: rating 'hard' is not an integer"),
    (["src", Q[:80], A, "1"], "sudoku", "t.csv:3: question has 80 characters, expected 81"),
    (["src", Q, A[:-1] + "x", "1"], "sudoku", "t.csv:3: answer holds a character outside '123456789'"),
    (["src", Q, A[:-1] + ".", "1"], "sudoku", "t.csv:3: answer holds a character outside '123456789'"),
    (["src", "é" + Q[1:], A, "1"], "sudoku", "t.csv:3: question holds a character outside '.0123456789'"),
    (["src", "#" * 64, "#" * 63 + "x", "1"], "maze", "t.csv:3: answer holds a character outside '# SGo'"),
])
def test_malformed_rows(tmp_path, row, kind, message):
    good = ["src", Q, A, "1"] if kind == "sudoku" else ["src", "#" * 64, "#" * 64, "1"]
    path = write_csv(tmp_path / "t.csv", [good, row])
    with pytest.raises(DatasetError) as e:
        read_puzzle_csv(path, kind)
    assert str(e.value) == f"{tmp_path}/{message}"


def test_bad_header_and_empty(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,d\n")
    with pytest.raises(DatasetError, match=r"t.csv:1: header is \['a', 'b', 'c', 'd'\], expected source,question"):
        read_puzzle_csv(path, "sudoku")
    write_csv(path, [])
    with pytest.raises(DatasetError, match="holds no puzzles"):
        read_puzzle_csv(path, "sudoku")
    path.write_text("source,question,answer,rating\nsrc,## ,## ,1\n")
    with pytest.raises(DatasetError, match="t.csv:2: a maze of 3 characters is not square"):
        read_puzzle_csv(path, "maze")


def test_fetch_from_source_dir(sudoku_csv_dir):
    assert fetch_csv("any/repo", "train", sudoku_csv_dir) == sudoku_csv_dir / "train.csv"
    with pytest.raises(DatasetError) as e:
        fetch_csv("any/repo", "valid", sudoku_csv_dir)
    assert str(e.value) == f"source_dir {sudoku_csv_dir} has no valid.csv"


def test_fetch_uses_injected_download(tmp_path):
    calls = []
    target = write_csv(tmp_path / "x.csv", sudoku_rows(1, seed=0))

    def download(repo_id, filename, repo_type=None):
        calls.append((repo_id, filename, repo_type))
        return str(target)

    assert fetch_csv("sapientinc/sudoku-extreme", "test", download=download) == target
    assert calls == [("sapientinc/sudoku-extreme", "test.csv", "dataset")]


def test_download_failure_is_one_line():
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    with pytest.raises(DatasetError) as e:
        fetch_csv("sapientinc/maze-30x30-hard-1k", "train", download=offline)
    assert str(e.value) == ("could not download train.csv from sapientinc/maze-30x30-hard-1k (ConnectionError: no "
                            "route to host); pass source_dir=DIR holding train.csv and test.csv")
