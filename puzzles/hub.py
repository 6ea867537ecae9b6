"""The published Sudoku-Extreme and Maze-30x30-Hard sets: download and strict CSV reading.

Both repositories hold `train.csv` and `test.csv` with a header row and the columns
`source, question, answer, rating` (official.md 4.1):
- Sudoku: question 81 characters, `.` (or `0`) blank and `1`..`9`; answer 81 digits `1`..`9`.
- Maze: question and answer are n*n characters over `# SGo` (n = 30), the answer marking the path.

The download function is injectable (`download=`), and `source_dir` reads local copies instead,
so nothing here needs the network in tests.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from puzzles.maze import CHARSET
from runtime.errors import DatasetError
from runtime.progress import progress_bar

SUDOKU_EXTREME_REPO = "sapientinc/sudoku-extreme"
MAZE_HARD_REPO = "sapientinc/maze-30x30-hard-1k"
HEADER = ["source", "question", "answer", "rating"]

Download = Callable[..., str]  # (repo_id, filename, repo_type="dataset") -> local file path

_INVALID = 255
_SUDOKU_QUESTION = np.full(256, _INVALID, dtype=np.uint8)
_SUDOKU_QUESTION[[ord("."), ord("0")]] = 0
_SUDOKU_QUESTION[np.arange(ord("1"), ord("9") + 1)] = np.arange(1, 10)
_SUDOKU_ANSWER = _SUDOKU_QUESTION.copy()
_SUDOKU_ANSWER[[ord("."), ord("0")]] = _INVALID
_MAZE = np.full(256, _INVALID, dtype=np.uint8)
_MAZE[np.frombuffer(CHARSET.encode(), np.uint8)] = np.arange(1, len(CHARSET) + 1)


@dataclass
class CsvPuzzles:
    """Rows of one published CSV, encoded: Sudoku digits (0 blank) or maze tokens."""

    questions: np.ndarray  # (N, L) uint8
    answers: np.ndarray  # (N, L) uint8
    ratings: np.ndarray  # (N,) int64


def hub_download(repo_id: str, filename: str, repo_type: str = "dataset") -> str:
    """`huggingface_hub.hf_hub_download`, imported only when a download is needed."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, repo_type=repo_type)


def fetch_csv(repo: str, split: str, source_dir: str | Path | None = None, download: Download | None = None) -> Path:
    """Local path of `<split>.csv`: from `source_dir` if given, else downloaded from `repo`."""
    if source_dir is not None:
        path = Path(source_dir) / f"{split}.csv"
        if not path.is_file():
            raise DatasetError(f"source_dir {source_dir} has no {split}.csv")
        return path
    try:
        return Path((download or hub_download)(repo, f"{split}.csv", repo_type="dataset"))
    except Exception as e:  # any hub/network failure becomes one readable line
        raise DatasetError(f"could not download {split}.csv from {repo} ({type(e).__name__}: {e}); "
                           f"pass source_dir=DIR holding train.csv and test.csv") from None


def _encode_column(texts: list[str], lines: list[int], table: np.ndarray, length: int, path: Path,
                   column: str, allowed: str) -> np.ndarray:
    """(N, length) codes of equal-length strings through `table`; DatasetError naming the first bad row."""
    for text, line in zip(texts, lines):
        if len(text) != length:
            raise DatasetError(f"{path}:{line}: {column} has {len(text)} characters, expected {length}")
    raw = np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8)
    if raw.size != len(texts) * length:  # a non-ASCII character took several bytes
        bad = next(i for i, t in enumerate(texts) if not t.isascii())
        raise DatasetError(f"{path}:{lines[bad]}: {column} holds a character outside {allowed!r}")
    codes = table[raw].reshape(len(texts), length)
    bad_rows = np.flatnonzero((codes == _INVALID).any(axis=1))
    if len(bad_rows):
        raise DatasetError(f"{path}:{lines[bad_rows[0]]}: {column} holds a character outside {allowed!r}")
    return codes


def read_puzzle_csv(path: str | Path, kind: str) -> CsvPuzzles:
    """Read and validate a published CSV; `kind` is "sudoku" or "maze".

    Raises DatasetError with `file:line` for a wrong header, a row without four fields, a
    non-integer rating, a wrong length (maze: all grids one square size) or a stray character.
    """
    path = Path(path)
    questions: list[str] = []
    answers: list[str] = []
    ratings: list[int] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != HEADER:
                raise DatasetError(f"{path}:1: header is {header}, expected {','.join(HEADER)}")
            for row in progress_bar(reader, desc=f"reading {path.name}", unit=" rows", mininterval=2.0):
                if len(row) != 4:
                    raise DatasetError(f"{path}:{reader.line_num}: expected 4 fields "
                                       f"(source, question, answer, rating), got {len(row)}")
                try:
                    ratings.append(int(row[3]))
                except ValueError:
                    raise DatasetError(f"{path}:{reader.line_num}: rating {row[3]!r} is not an integer") from None
                questions.append(row[1])
                answers.append(row[2])
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if not questions:
        raise DatasetError(f"{path} holds no puzzles")
    if kind == "sudoku":
        length, q_table, a_table = 81, _SUDOKU_QUESTION, _SUDOKU_ANSWER
        q_allowed, a_allowed = ".0123456789", "123456789"
    elif kind == "maze":
        length = len(questions[0])
        if int(round(length ** 0.5)) ** 2 != length:
            raise DatasetError(f"{path}:{lines[0]}: a maze of {length} characters is not square")
        q_table = a_table = _MAZE
        q_allowed = a_allowed = CHARSET
    else:
        raise ValueError(f"kind must be 'sudoku' or 'maze', got {kind!r}")
    return CsvPuzzles(
        questions=_encode_column(questions, lines, q_table, length, path, "question", q_allowed),
        answers=_encode_column(answers, lines, a_table, length, path, "answer", a_allowed),
        ratings=np.asarray(ratings, dtype=np.int64),
    )
