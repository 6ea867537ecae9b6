"""Maze generator and the valid-path check (analysis.md 1)."""
from __future__ import annotations

import numpy as np
import pytest

from puzzles.maze import (GOAL, OPEN, PATH, START, WALL, decode_maze_text, encode_maze_text, generate_maze,
                          shortest_path_length, valid_path)
from runtime.errors import ConfigError

# A 5x5 maze with two shortest S-G paths of 8 moves (around the wall block either way).
MAZE = ["S    ",
        " ### ",
        " ### ",
        " ### ",
        "    G"]
RIGHT = ["Soooo",
         " ###o",
         " ###o",
         " ###o",
         "    G"]
DOWN = ["S    ",
        "o### ",
        "o### ",
        "o### ",
        "ooooG"]
OPEN_FIELD = ["S   G", "     ", "     ", "     ", "     "]  # shortest path: 4 moves along row 0


def enc(rows: list[str]) -> np.ndarray:
    return encode_maze_text(["".join(rows)])


def count_shortest_paths(tokens: np.ndarray, n: int) -> int:
    """Independent pure-Python count of shortest S-G paths (BFS layers, path-count DP)."""
    g = tokens.reshape(n, n)
    s = tuple(np.argwhere(g == START)[0])
    dist = {s: 0}
    ways = {s: 1}
    frontier = [s]
    while frontier:
        nxt = []
        for r, c in frontier:
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                q = (r + dr, c + dc)
                if 0 <= q[0] < n and 0 <= q[1] < n and g[q] != WALL:
                    if q not in dist:
                        dist[q] = dist[(r, c)] + 1
                        ways[q] = 0
                        nxt.append(q)
                    if dist[q] == dist[(r, c)] + 1:
                        ways[q] += ways[(r, c)]
        frontier = nxt
    return ways[tuple(np.argwhere(g == GOAL)[0])]


def test_text_round_trip():
    assert enc(MAZE).dtype == np.uint8
    np.testing.assert_array_equal(enc(["# SGo"]), [[WALL, OPEN, START, GOAL, PATH]])
    assert decode_maze_text(enc(RIGHT)[0], 5) == RIGHT


def test_valid_path_known_answers():
    """Each case is built by hand; the expected verdict follows from the definition."""
    cases = {
        "right": (MAZE, RIGHT, True),
        "down (other shortest path: exact match would reject it)": (MAZE, DOWN, True),
        "no path": (MAZE, MAZE, False),
        "gap": (MAZE, ["Soooo", " ###o", " ### ", " ###o", "    G"], False),
        "stray cell": (MAZE, ["Soooo", " ###o", " ###o", " ###o", "o   G"], False),
        "both paths (a loop)": (MAZE, ["Soooo", "o###o", "o###o", "o###o", "ooooG"], False),
        "through a wall": (MAZE, ["So   ", " o## ", " oo# ", " #oo ", "   oG"], False),
        "wall removed": (MAZE, ["Soooo", " ## o", " ###o", " ###o", "    G"], False),
        "goal moved": (MAZE, ["Soooo", " ###o", " ###o", " ###o", "    o"], False),
        "straight": (OPEN_FIELD, ["SoooG", "     ", "     ", "     ", "     "], True),
        "detour: a clean chain, 8 moves instead of 4": (OPEN_FIELD, ["S   G", "o   o", "ooooo", "     ", "     "], False),
        "straight plus a separate loop": (OPEN_FIELD, ["SoooG", "     ", "     ", "oo   ", "oo   "], False),
    }
    inputs = np.concatenate([enc(maze) for maze, _, _ in cases.values()])
    preds = np.concatenate([enc(pred) for _, pred, _ in cases.values()])
    got = valid_path(preds, inputs, 5)
    assert dict(zip(cases, got.tolist())) == {name: want for name, (_, _, want) in cases.items()}


def test_valid_path_adjacent_and_unreachable():
    x = enc(["SG", "  "])
    assert valid_path(x, x, 2).all()  # distance 1: no path cells needed
    blocked = enc(["S#", "#G"])
    assert not valid_path(blocked, blocked, 2).any()
    assert shortest_path_length(blocked, 2).tolist() == [-1]


def test_valid_path_accepts_any_int_dtype():
    x = enc(MAZE).astype(np.int64)
    y = enc(RIGHT).astype(np.int32)
    assert valid_path(y, x, 5).tolist() == [True]


@pytest.mark.parametrize("unique", [False, True])
def test_generated_mazes(unique):
    inputs, labels, lengths = generate_maze(30, size=30, min_path=110, unique_path=unique, seed=2)
    assert inputs.shape == labels.shape == (30, 900) and inputs.dtype == np.uint8
    assert (lengths >= 110).all()
    np.testing.assert_array_equal(shortest_path_length(inputs, 30), lengths)
    assert valid_path(labels, inputs, 30).all()
    np.testing.assert_array_equal((labels == PATH).sum(1), lengths - 1)
    np.testing.assert_array_equal((inputs == START).sum(1), 1)
    np.testing.assert_array_equal((inputs == GOAL).sum(1), 1)
    assert set(np.unique(inputs)) <= {WALL, OPEN, START, GOAL}
    np.testing.assert_array_equal(np.where(labels == PATH, OPEN, labels), inputs)
    if unique:
        assert all(count_shortest_paths(x, 30) == 1 for x in inputs)
    else:  # without the option ties are common
        assert any(count_shortest_paths(x, 30) > 1 for x in inputs)


def test_same_seed_same_mazes():
    a = generate_maze(8, 10, 15, seed=9)
    b = generate_maze(8, 10, 15, seed=9)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(generate_maze(3, 10, 15, seed=9)[0], a[0][:3])
    assert not np.array_equal(generate_maze(8, 10, 15, seed=10)[0], a[0])


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=10, min_path=100), "min_path=100 is impossible for a 10x10 maze (a shortest path has 1..99 moves)"),
    (dict(size=30, min_path=0), "min_path=0 is impossible for a 30x30 maze (a shortest path has 1..899 moves)"),
    (dict(size=1, min_path=1), "maze size must be at least 2, got 1"),
    (dict(size=6, min_path=30), "could not generate a 6x6 maze with a shortest path of at least 30 moves in 1000 "
                                "attempts; lower min_path or wall_density"),
])
def test_bad_maze_config(kwargs, message):
    with pytest.raises(ConfigError) as e:
        generate_maze(2, seed=0, **kwargs)
    assert str(e.value) == message
