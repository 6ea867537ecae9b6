"""Validity-preserving augmentations, seeded by a numpy `Generator` (never the global `np.random`).

Sudoku (official.md 4.3): a digit permutation (blank fixed), an optional transpose, a band
permutation with a row permutation inside each band, and a stack permutation with a column
permutation inside each stack. The official order of application is: transpose, then the cell
remap new[i, j] = old[row_perm[i], col_perm[j]], then the digit map. The same transform is
applied to a puzzle and its solution. Grids whose boxes are not square (6x6) are never transposed.

Maze: the 8 dihedral transforms of the square grid, numbered as the official builders number them
(0 identity; 1, 2, 3 counter-clockwise rotations by 90, 180, 270 degrees; 4 left-right flip;
5 up-down flip; 6 transpose; 7 left-right flip of the 90-degree rotation).
"""
from __future__ import annotations

import numpy as np

DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # tid -> the tid that undoes it

_SUDOKU_BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


def _nested_perm(rng: np.random.Generator, k: int, size: int, block: int) -> np.ndarray:
    """(k, size) permutations that shuffle blocks of `block` lines, then the lines inside each block."""
    n_blocks = size // block
    blocks = rng.permuted(np.tile(np.arange(n_blocks), (k, 1)), axis=1)  # (k, n_blocks)
    inner = rng.permuted(np.tile(np.arange(block), (k, n_blocks, 1)), axis=2)  # (k, n_blocks, block)
    return (blocks[:, :, None] * block + inner).reshape(k, size)


def sudoku_transform_indices(rng: np.random.Generator, k: int, size: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Draw `k` random Sudoku symmetries as index arrays.

    Returns cell_map (k, size*size) int64 and digit_map (k, size+1) int8 with digit_map[:, 0] = 0,
    such that a flat grid g maps to digit_map[t][g[cell_map[t]]].
    """
    br, bc = _SUDOKU_BOXES[size]
    digit_map = np.zeros((k, size + 1), dtype=np.int8)
    digit_map[:, 1:] = rng.permuted(np.tile(np.arange(1, size + 1, dtype=np.int8), (k, 1)), axis=1)
    transpose = rng.random(k) < 0.5
    if br != bc:
        transpose[:] = False
    row_perm = _nested_perm(rng, k, size, br)
    col_perm = _nested_perm(rng, k, size, bc)
    r = row_perm[:, :, None]  # (k, size, 1): source row of new row i
    c = col_perm[:, None, :]  # (k, 1, size): source column of new column j
    # new[i, j] = T(old)[r, c]; T(old)[r, c] is old[c, r] when transposed, else old[r, c]
    cell_map = np.where(transpose[:, None, None], c * size + r, r * size + c).reshape(k, size * size)
    return cell_map, digit_map


def augment_sudoku(rng: np.random.Generator, puzzles: np.ndarray, solutions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an independent random symmetry to each row (puzzle and its solution alike).

    puzzles, solutions: (k, size*size) digit grids with 0 = blank. Returns arrays of the same
    shape and dtype.
    """
    k, cells = puzzles.shape
    size = int(round(cells ** 0.5))
    cell_map, digit_map = sudoku_transform_indices(rng, k, size)

    def apply(grid: np.ndarray) -> np.ndarray:
        moved = np.take_along_axis(grid, cell_map, axis=1)
        return np.take_along_axis(digit_map, moved.astype(np.int64), axis=1).astype(grid.dtype)

    return apply(puzzles), apply(solutions)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Dihedral transform `tid` (0..7) of the last two axes of `grid` (..., n, n)."""
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid, axes=(-2, -1))
    if tid == 4:
        return np.flip(grid, axis=-1)
    if tid == 5:
        return np.flip(grid, axis=-2)
    if tid == 6:
        return np.swapaxes(grid, -1, -2)
    if tid == 7:
        return np.flip(np.rot90(grid, k=1, axes=(-2, -1)), axis=-1)
    raise ValueError(f"dihedral transform id must be 0..7, got {tid}")


def maze_aug_tids(rng: np.random.Generator, n_mazes: int, num_aug: int) -> np.ndarray:
    """(n_mazes, 1 + num_aug) transform ids per maze: 0 first, then `num_aug` distinct others.

    num_aug = 7 gives 0..7 in order for every maze (the official `--aug` builder's layout) and draws
    nothing; fewer draws a sorted random subset of 1..7 per maze.
    """
    if not 0 <= num_aug <= 7:
        raise ValueError(f"a maze has 7 non-identity dihedral transforms, num_aug={num_aug}")
    if num_aug == 7:
        return np.tile(np.arange(8), (n_mazes, 1))
    others = np.sort(rng.permuted(np.tile(np.arange(1, 8), (n_mazes, 1)), axis=1)[:, :num_aug], axis=1)
    return np.concatenate([np.zeros((n_mazes, 1), dtype=np.int64), others], axis=1)


def augment_mazes(grids: np.ndarray, tids: np.ndarray) -> np.ndarray:
    """Transform flat square grids row by row: grids (k, n*n), tids (k,) -> (k, n*n) contiguous."""
    k, cells = grids.shape
    n = int(round(cells ** 0.5))
    out = np.empty_like(grids)
    square = grids.reshape(k, n, n)
    for tid in np.unique(tids):
        rows = np.flatnonzero(tids == tid)
        out[rows] = dihedral_transform(square[rows], int(tid)).reshape(len(rows), cells)
    return out
