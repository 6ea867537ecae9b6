"""Dataset builds: generated and published kinds, official bytes, caching, errors, the CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from puzzles.augment import dihedral_transform
from puzzles.build import FORMAT_VERSION, build_dataset, config_hash, main, parse_config
from puzzles.builders import MazeGenConfig, MazeHardConfig, SudokuExtremeConfig, SudokuGenConfig
from puzzles.layout import load_extras, load_split
from puzzles.maze import shortest_path_length, valid_path
from puzzles.sudoku import count_solutions, decode_sudoku, is_valid_solution, rate
from runtime.errors import ConfigError, DatasetError

from .conftest import all_files, sudoku_rows, write_csv

REPO_ROOT = Path(__file__).resolve().parents[2]


def official_reference(src: Path, out: Path, kind: str, maze_aug: bool = False) -> None:
    """What the official builders write for these CSVs with no subsample and no randomness
    (Sudoku: no augmentation; Maze: `--aug` on or off), written out from official.md 4.1-4.4."""
    for split in ("train", "test"):
        with open(src / f"{split}.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
        if kind == "sudoku":
            q = [np.frombuffer(r[1].replace(".", "0").encode(), np.uint8).reshape(9, 9) - ord("0") for r in rows]
            a = [np.frombuffer(r[2].encode(), np.uint8).reshape(9, 9) - ord("0") for r in rows]
            inputs, labels = np.concatenate(q).reshape(len(q), -1) + 1, np.concatenate(a).reshape(len(a), -1) + 1
            per_group, vocab, seq = 1, 11, 81
        else:
            table = np.zeros(256, np.uint8)
            table[np.array([ord(c) for c in "# SGo"])] = np.arange(1, 6)
            n = int(len(rows[0][1]) ** 0.5)
            tids = range(8) if (split == "train" and maze_aug) else range(1)
            grids = [(np.frombuffer(r[1].encode(), np.uint8).reshape(n, n),
                      np.frombuffer(r[2].encode(), np.uint8).reshape(n, n)) for r in rows]
            inputs = np.vstack([table[dihedral_transform(x, t).reshape(-1)] for x, _ in grids for t in tids])
            labels = np.vstack([table[dihedral_transform(y, t).reshape(-1)] for _, y in grids for t in tids])
            per_group, vocab, seq = len(tids), 6, n * n
        n_ex = len(inputs)
        arrays = {"inputs": inputs, "labels": labels,
                  "group_indices": np.array(list(range(0, n_ex + 1, per_group)), dtype=np.int32),
                  "puzzle_indices": np.array(list(range(n_ex + 1)), dtype=np.int32),
                  "puzzle_identifiers": np.array([0] * n_ex, dtype=np.int32)}
        meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": vocab, "seq_len": seq,
                "num_puzzle_identifiers": 1, "total_groups": len(rows), "mean_puzzle_examples": 1.0,
                "total_puzzles": len(rows), "sets": ["all"]}
        (out / split).mkdir(parents=True)
        with open(out / split / "dataset.json", "w") as f:
            json.dump(meta, f)
        for k, v in arrays.items():
            np.save(out / split / f"all__{k}.npy", v)
    with open(out / "identifiers.json", "w") as f:
        json.dump(["<blank>"], f)


def test_sudoku_extreme_bytes_match_official(tmp_path, sudoku_csv_dir):
    out = build_dataset(SudokuExtremeConfig(out=str(tmp_path / "ours"), source_dir=str(sudoku_csv_dir)))
    official_reference(sudoku_csv_dir, tmp_path / "official", "sudoku")
    ours = all_files(out)
    assert set(ours) - set(all_files(tmp_path / "official")) == {"build.json"}
    assert {k: v for k, v in ours.items() if k != "build.json"} == all_files(tmp_path / "official")


@pytest.mark.parametrize("num_aug,official_aug", [(0, False), (7, True)])
def test_maze_hard_bytes_match_official(tmp_path, maze_csv_dir, num_aug, official_aug):
    out = build_dataset(MazeHardConfig(out=str(tmp_path / "ours"), source_dir=str(maze_csv_dir), num_aug=num_aug))
    official_reference(maze_csv_dir, tmp_path / "official", "maze", maze_aug=official_aug)
    ours = all_files(out)
    del ours["build.json"]
    assert ours == all_files(tmp_path / "official")


def test_generated_sudoku(tmp_path):
    cfg = SudokuGenConfig(out=str(tmp_path / "s"), n_train=20, n_test=6, givens=30, num_aug=2, seed=4)
    out = build_dataset(cfg)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.inputs.shape == (60, 81) and test.inputs.shape == (6, 81)
    assert train.group_indices.tolist() == list(range(0, 61, 3))
    assert test.group_indices.tolist() == list(range(7)) and test.metadata.total_groups == 6
    for split in (train, test):
        puzzles, solutions = decode_sudoku(split.inputs), decode_sudoku(split.labels)
        np.testing.assert_array_equal((puzzles > 0).sum(1), 30)
        np.testing.assert_array_equal(count_solutions(puzzles), 1)
        assert is_valid_solution(solutions, puzzles).all()
    assert train.inputs.min() >= 1 and train.inputs.max() <= 10 and train.labels.min() >= 2
    info = json.loads((out / "build.json").read_text())
    assert info["kind"] == "sudoku" and info["seed"] == 4 and info["format_version"] == FORMAT_VERSION
    assert info["config"] == {"n_train": 20, "n_test": 6, "seed": 4, "givens": 30, "givens_max": None, "size": 9, "num_aug": 2}
    assert len(info["content_sha256"]) == 64


def test_mixed_givens_are_drawn_per_puzzle_and_recorded_beside_the_arrays(tmp_path):
    """givens=24 givens_max=40: each puzzle's givens lie in 24..40, both splits mix them, and
    <set>__givens.npy / <set>__rating.npy hold each example's count and the solver's rating
    (augmented copies repeat their original's); the official five files are unchanged."""
    cfg = SudokuGenConfig(out=str(tmp_path / "m"), n_train=60, n_test=40, givens=24, givens_max=40, num_aug=1, seed=2)
    out = build_dataset(cfg)
    for split, n in (("train", 120), ("test", 40)):
        arrays, extras = load_split(out, split), load_extras(out, split)
        puzzles = decode_sudoku(arrays.inputs)
        assert sorted(extras) == ["givens", "rating"] and len(extras["givens"]) == n
        np.testing.assert_array_equal((puzzles > 0).sum(1), extras["givens"])
        np.testing.assert_array_equal(count_solutions(puzzles), 1)
        assert extras["givens"].min() >= 24 and extras["givens"].max() <= 40 and len(np.unique(extras["givens"])) >= 8
    test_puzzles = decode_sudoku(load_split(out, "test").inputs)
    np.testing.assert_array_equal(load_extras(out, "test")["rating"], rate(test_puzzles))
    train_rating = load_extras(out, "train")["rating"]
    np.testing.assert_array_equal(train_rating[0::2], train_rating[1::2])  # group = original + its copy
    with pytest.raises(ConfigError, match=r"givens_max=20 must be >= givens=24"):
        build_dataset(SudokuGenConfig(out=str(tmp_path / "bad"), givens=24, givens_max=20))


def test_generated_maze(tmp_path):
    cfg = MazeGenConfig(out=str(tmp_path / "m"), n_train=5, n_test=3, size=10, min_path=14, num_aug=7,
                        unique_path=True)
    out = build_dataset(cfg)
    train, test = load_split(out, "train"), load_split(out, "test")
    assert train.inputs.shape == (40, 100) and train.metadata.vocab_size == 6 and train.metadata.seq_len == 100
    assert valid_path(train.labels, train.inputs, 10).all() and valid_path(test.labels, test.inputs, 10).all()
    assert (shortest_path_length(test.inputs, 10) >= 14).all()
    lengths = shortest_path_length(train.inputs, 10).reshape(5, 8)
    assert (lengths == lengths[:, :1]).all()  # a group is one maze under the 8 symmetries


def test_same_seed_identical_files(tmp_path):
    cfg = dict(n_train=10, n_test=4, givens=40, num_aug=3, seed=9)
    a = build_dataset(SudokuGenConfig(out=str(tmp_path / "a"), **cfg))
    b = build_dataset(SudokuGenConfig(out=str(tmp_path / "b"), **cfg))
    c = build_dataset(SudokuGenConfig(out=str(tmp_path / "c"), **{**cfg, "seed": 10}))
    assert all_files(a) == all_files(b)
    assert all_files(a)["train/all__inputs.npy"] != all_files(c)["train/all__inputs.npy"]


def test_hash_cache_and_reuse(tmp_path):
    cfg = SudokuGenConfig(out=str(tmp_path / "cache" / "sudoku-{hash}"), n_train=8, n_test=2, size=4, givens=6)
    out = build_dataset(cfg)
    assert out == tmp_path / "cache" / f"sudoku-{config_hash(cfg)}"
    stamp = os.stat(out / "train" / "all__inputs.npy").st_mtime_ns
    assert build_dataset(cfg) == out  # reused, not rewritten
    assert os.stat(out / "train" / "all__inputs.npy").st_mtime_ns == stamp
    other = build_dataset(SudokuGenConfig(**{**cfg.__dict__, "givens": 7}))
    assert other != out and other.parent == out.parent
    assert config_hash(cfg) == config_hash(SudokuGenConfig(**{**cfg.__dict__, "out": "elsewhere"}))


def test_refuses_a_different_dataset(tmp_path):
    out = tmp_path / "s"
    build_dataset(SudokuGenConfig(out=str(out), n_train=4, n_test=2, size=4, givens=6))
    with pytest.raises(DatasetError) as e:
        build_dataset(SudokuGenConfig(out=str(out), n_train=4, n_test=2, size=4, givens=7))
    assert str(e.value) == (f"output directory {out} already holds a different dataset (givens=6 where 7 was asked); "
                            f"choose another out= or delete it")
    with pytest.raises(DatasetError, match="already holds a different dataset \\(kind sudoku\\)"):
        build_dataset(MazeGenConfig(out=str(out), n_train=4, n_test=2, size=5, min_path=4))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and holds no readable build.json"):
        build_dataset(SudokuGenConfig(out=str(junk), n_train=4, n_test=2, size=4, givens=6))
    (out / "test" / "all__labels.npy").write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="no longer match its build.json hash"):
        build_dataset(SudokuGenConfig(out=str(out), n_train=4, n_test=2, size=4, givens=6))


def test_malformed_csv_leaves_nothing(tmp_path, sudoku_csv_dir):
    rows = sudoku_rows(3, seed=0)
    rows[2][1] = rows[2][1][:-1]
    write_csv(sudoku_csv_dir / "test.csv", rows)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as e:
        build_dataset(SudokuExtremeConfig(out=str(out), source_dir=str(sudoku_csv_dir)))
    assert str(e.value) == f"{sudoku_csv_dir / 'test.csv'}:4: question has 80 characters, expected 81"
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_published_options(tmp_path, sudoku_csv_dir):
    def build(name, **kw):
        return build_dataset(SudokuExtremeConfig(out=str(tmp_path / name), source_dir=str(sudoku_csv_dir), **kw))

    a = load_split(build("a", subsample=5, num_aug=2, seed=1), "train")
    b = load_split(build("b", n_train=5, num_aug=2, seed=1), "train")
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert a.inputs.shape == (15, 81) and a.metadata.total_groups == 5
    assert is_valid_solution(decode_sudoku(a.labels), decode_sudoku(a.inputs)).all()
    originals = decode_sudoku(np.asarray(a.inputs[::3]))
    full = load_split(build("full"), "train")
    all_rows = {r.tobytes() for r in decode_sudoku(np.asarray(full.inputs))}
    assert all(r.tobytes() in all_rows for r in originals)  # group heads are unaugmented CSV rows
    with open(sudoku_csv_dir / "train.csv", newline="") as f:
        ratings = np.array([int(r[3]) for r in list(csv.reader(f))[1:]])
    threshold = int(np.median(ratings))
    hard = load_split(build("hard", min_difficulty=threshold), "train")
    assert hard.metadata.total_groups == int((ratings >= threshold).sum())
    test = load_split(build("t", n_test=2, seed=3), "test")
    assert test.inputs.shape == (2, 81)
    with pytest.raises(ConfigError, match="subsample=3 and n_train=4 disagree"):
        build("x", subsample=3, n_train=4)
    with pytest.raises(DatasetError, match="has rating >= 100000"):
        build("y", min_difficulty=100_000)


def test_injected_download(tmp_path, maze_csv_dir):
    calls = []

    def download(repo_id, filename, repo_type=None):
        calls.append((repo_id, filename, repo_type))
        return str(maze_csv_dir / filename)

    build_dataset(MazeHardConfig(out=str(tmp_path / "m")), download=download)
    assert calls == [("sapientinc/maze-30x30-hard-1k", "train.csv", "dataset"),
                     ("sapientinc/maze-30x30-hard-1k", "test.csv", "dataset")]


@pytest.mark.parametrize("cfg,message", [
    (SudokuGenConfig(out="x", givens=90), "givens=90 is out of range for 9x9 Sudoku (allowed 17..81)"),
    (SudokuGenConfig(out="x", n_test=0), "n_test=0 must be at least 1"),
    (MazeGenConfig(out="x", size=10, min_path=200), "min_path=200 is impossible for a 10x10 maze (a shortest path "
                                                     "has 1..99 moves)"),
    (MazeGenConfig(out="x", num_aug=8), "num_aug=8 is too large: a maze has 7 non-identity dihedral transforms"),
    (SudokuExtremeConfig(out="x", source_dir="/nonexistent"), "source_dir /nonexistent has no train.csv"),
])
def test_config_errors(tmp_path, cfg, message):
    cfg.out = str(tmp_path / "out")
    with pytest.raises((ConfigError, DatasetError)) as e:
        build_dataset(cfg)
    assert str(e.value) == message
    assert list(tmp_path.iterdir()) == []


def test_parse_config():
    cfg = parse_config("maze", ["out=d", "size=12", "min_path=20", "unique_path=true", "num_aug=7"])
    assert cfg == MazeGenConfig(out="d", size=12, min_path=20, unique_path=True, num_aug=7)
    assert parse_config("sudoku_extreme", ["min_difficulty=null"]).min_difficulty is None


@pytest.mark.parametrize("args,message", [
    (["sudoku", "givenz=3"], "error: unknown key 'givenz' for sudoku (known keys: out, n_train, n_test, seed, givens, "
                             "givens_max, size, num_aug)"),
    (["sudoku", "givens=abc"], "error: invalid value for givens: 'abc' (expected int)"),
    (["maze", "unique_path=maybe"], "error: invalid value for unique_path: 'maybe' (expected bool)"),
    (["sudoku", "givens"], "error: expected key=value, got 'givens'"),
    (["kakuro"], "error: unknown dataset kind 'kakuro' (choose from sudoku, sudoku_extreme, maze, maze_hard)"),
])
def test_cli_errors(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_cli_builds(tmp_path, capsys):
    main(["sudoku", f"out={tmp_path / 'd'}", "n_train=6", "n_test=2", "size=4", "givens=8", "seed=1"])
    assert capsys.readouterr().out.strip() == f"{tmp_path / 'd'}: 6 train groups, 2 test puzzles"
    assert load_split(tmp_path / "d", "train").inputs.shape == (6, 16)


def test_module_entry_point(tmp_path):
    """`python -m puzzles.build` works as documented (one subprocess, cached kernels)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "puzzles.build", "maze", f"out={tmp_path / 'm'}", "size=6",
                           "min_path=5", "n_train=3", "n_test=2"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'm'}: 3 train groups, 2 test puzzles"
    bad = subprocess.run([sys.executable, "-m", "puzzles.build", "maze", "size=x"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: invalid value for size: 'x' (expected int)"
