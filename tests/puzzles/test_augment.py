"""Seeded augmentations: Sudoku symmetries in the official order, maze dihedral transforms."""
from __future__ import annotations

import numpy as np
import pytest

from puzzles.augment import (DIHEDRAL_INVERSE, augment_mazes, augment_sudoku, dihedral_transform, maze_aug_tids,
                             sudoku_transform_indices)
from puzzles.maze import generate_maze, shortest_path_length, valid_path
from puzzles.sudoku import count_solutions, generate_sudoku, is_valid_solution


def official_apply(grid81: np.ndarray, digit_map: np.ndarray, transpose: bool, row_perm: np.ndarray,
                   col_perm: np.ndarray) -> np.ndarray:
    """The official order written out cell by cell: transpose, remap new[i,j] = old[row_perm[i],
    col_perm[j]], then the digit map."""
    x = grid81.reshape(9, 9)
    if transpose:
        x = x.T
    new = np.empty((9, 9), dtype=x.dtype)
    for i in range(9):
        for j in range(9):
            new[i, j] = x[row_perm[i], col_perm[j]]
    return digit_map[new].reshape(81)


def test_index_form_matches_official_order(rng):
    """Test hypothesis: cell_map/digit_map reproduce the official per-cell formula for every draw."""
    puzzles, solutions, _ = generate_sudoku(1, 30, seed=0)
    cell_map, digit_map = sudoku_transform_indices(rng, 64, 9)
    for t in range(64):
        fast = digit_map[t][solutions[0][cell_map[t]]]
        # Recover (transpose, row_perm, col_perm) from the map: with transpose, the source of the
        # new cell (0, j) lies in one column of the old grid.
        source = cell_map[t].reshape(9, 9)
        transpose = len(set(source[0] % 9)) == 1 and len(set(source[0] // 9)) == 9
        rows = source[:, 0] % 9 if transpose else source[:, 0] // 9
        cols = source[0] // 9 if transpose else source[0] % 9
        np.testing.assert_array_equal(fast, official_apply(solutions[0], digit_map[t], transpose, rows, cols))
        for perm in (rows, cols):  # bands stay bands, rows stay inside their band
            assert sorted(perm.reshape(3, 3)[:, 0] // 3) == [0, 1, 2]
            assert all(len(set(block // 3)) == 1 for block in perm.reshape(3, 3))
    assert digit_map[:, 0].tolist() == [0] * 64


def test_sudoku_augmentation_preserves_validity(rng):
    puzzles, solutions, _ = generate_sudoku(50, 30, seed=1)
    p, s = augment_sudoku(rng, puzzles, solutions)
    assert p.dtype == puzzles.dtype and p.shape == puzzles.shape
    assert is_valid_solution(s, p).all()
    np.testing.assert_array_equal(count_solutions(p), 1)
    np.testing.assert_array_equal((p > 0).sum(1), 30)
    assert not np.array_equal(p, puzzles)


def test_sudoku_augmentation_is_seeded_and_varied():
    puzzles, solutions, _ = generate_sudoku(1, 30, seed=1)
    many = np.repeat(puzzles, 400, axis=0), np.repeat(solutions, 400, axis=0)
    a = augment_sudoku(np.random.default_rng(5), *many)
    b = augment_sudoku(np.random.default_rng(5), *many)
    np.testing.assert_array_equal(a[0], b[0])
    assert len({row.tobytes() for row in a[1]}) == 400  # independent transforms per row
    _, digit_map = sudoku_transform_indices(np.random.default_rng(0), 4000, 9)
    cell_map, _ = sudoku_transform_indices(np.random.default_rng(0), 4000, 9)
    transposed = np.array([len(set(m.reshape(9, 9)[0] % 9)) == 1 for m in cell_map])
    assert 0.45 < transposed.mean() < 0.55  # p = 0.5


def test_6x6_never_transposed_but_valid(rng):
    puzzles, solutions, _ = generate_sudoku(40, 12, seed=2, size=6)
    p, s = augment_sudoku(rng, puzzles, solutions)
    assert is_valid_solution(s, p).all()
    cell_map, _ = sudoku_transform_indices(rng, 200, 6)
    assert all(len(set(m.reshape(6, 6)[0] // 6)) == 1 for m in cell_map)  # row 0 comes from one old row


def test_dihedral_group():
    grid = np.arange(25).reshape(5, 5)
    images = [dihedral_transform(grid, t) for t in range(8)]
    assert len({im.tobytes() for im in images}) == 8
    for t in range(8):
        np.testing.assert_array_equal(dihedral_transform(dihedral_transform(grid, t), DIHEDRAL_INVERSE[t]), grid)
    np.testing.assert_array_equal(images[1], np.rot90(grid))
    np.testing.assert_array_equal(images[4], np.fliplr(grid))
    np.testing.assert_array_equal(images[5], np.flipud(grid))
    np.testing.assert_array_equal(images[6], grid.T)
    np.testing.assert_array_equal(images[7], np.fliplr(np.rot90(grid)))
    with pytest.raises(ValueError):
        dihedral_transform(grid, 8)


def test_maze_augmentation_preserves_valid_path():
    inputs, labels, lengths = generate_maze(10, 12, 20, seed=4)
    for tid in range(8):
        tids = np.full(10, tid)
        x, y = augment_mazes(inputs, tids), augment_mazes(labels, tids)
        assert valid_path(y, x, 12).all()
        np.testing.assert_array_equal(shortest_path_length(x, 12), lengths)


def test_maze_aug_tids(rng):
    np.testing.assert_array_equal(maze_aug_tids(rng, 3, 7), np.tile(np.arange(8), (3, 1)))
    np.testing.assert_array_equal(maze_aug_tids(rng, 3, 0), np.zeros((3, 1)))
    tids = maze_aug_tids(rng, 200, 3)
    assert tids.shape == (200, 4) and (tids[:, 0] == 0).all()
    assert (np.diff(tids, axis=1) > 0).all() and tids.max() <= 7
    assert len({row.tobytes() for row in tids}) > 20
