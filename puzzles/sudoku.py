"""Sudoku: an exact solver, a unique-solution generator, a difficulty rating and the token encoding.

Grids are flat int8 arrays of `size*size` cells in row-major order, 0 = blank, 1..size = digits.
`size` is 9 (3x3 boxes); 6 (2x3 boxes) and 4 (2x2 boxes) exist for fast unit tests.

Solver: depth-first search with the minimum-remaining-values rule (always branch on the blank cell
with the fewest candidates), candidates kept as bitmasks per row, column and box. It runs in numba
(a few microseconds for a typical 9x9 puzzle).

Generator, per puzzle (each puzzle depends only on its own 64-bit seed, see `_rng`):
1. fill an empty grid by the same search with random candidate order: a random solution grid;
2. visit the cells in random order and blank each one unless the puzzle then has a second
   solution (checked by searching for a solution that differs from the grid at that cell), until
   `givens` cells remain. Uniqueness is therefore established by the solver, never assumed;
3. if step 2 ends in a minimal puzzle with too many givens (random 9x9 minimal puzzles have
   21..29 givens, mostly 23..25), retry with new grids, then run a local search from the best one:
   blank two random givens, re-add givens from the solution where a second solution differs until
   the solution is unique again, blank greedily; keep the result when it has no more givens;
4. 9x9 puzzles with 17..19 givens are out of reach of random search (17-given puzzles are very
   rare), and the rare 20..21 failure of step 3 joins them: such a puzzle is one of six known
   17-given puzzles (from G. Royle's published collection; the tests check with the solver that
   each has one solution) under a random validity-preserving transform (digits, bands, rows,
   stacks, columns, transpose), plus random extra givens from its solution. These regimes
   therefore have much less variety than givens >= 20.

Rating: the number of dead ends (backtracks) the deterministic solver (lowest candidate first)
meets before it finds the solution. Like the published set's `rating` (a backtrack count of
another solver) it grows with difficulty, but the two scales are not comparable.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from puzzles._rng import puzzle_seeds, randint
from puzzles.augment import sudoku_transform_indices
from runtime.errors import ConfigError
from runtime.progress import progress_bar

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (box rows, box cols)
GIVENS_RANGE = {4: (4, 16), 6: (9, 36), 9: (17, 81)}  # 6x6 minimum is 8, out of reach of the search

# Six 17-given puzzles from G. Royle's collection of minimum Sudoku (each has one solution).
KNOWN_17 = (
    "000000010400000000020000000000050407008000300001090000300400200050100000000806000",
    "000000010400000000020000000000050604008000300001090000300400200050100000000807000",
    "000000012000035000000600070700000300000400800100000000000120000080000040050000600",
    "000000012003600000000007000410020000000500300700000600280000040000300500000000000",
    "000000012008030000000000040120500000000004700060000000507000300000620000000100000",
    "000000013000030080070000000000206000030000900000010000600500204000400700100000000",
)

_GREEDY_ATTEMPTS = 20  # fresh solution grids tried before the local search
_LOCAL_ITERS = 3000  # local-search moves before falling back to the known 17-given puzzles
_LOCAL_DROP = 2  # givens blanked per local-search move
_FALLBACK_BELOW = 20  # 9x9 givens below this go straight to the known-puzzle construction
_CHUNK = 1024  # puzzles per kernel call (progress-bar granularity only; results do not depend on it)

_POP = np.array([bin(i).count("1") for i in range(1 << 9)], dtype=np.int64)  # popcount of a mask
_BIT = np.zeros(1 << 9, dtype=np.int64)  # single-bit mask -> digit (1-based)
_BIT[1 << np.arange(9)] = np.arange(1, 10)


@lru_cache(maxsize=None)
def _geometry(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, box) index of every cell, each (size*size,) int64."""
    br, bc = BOXES[size]
    cell = np.arange(size * size)
    row, col = cell // size, cell % size
    return row, col, (row // br) * (size // bc) + col // bc


def sudoku_size(seq_len: int) -> int:
    """Grid side for a flat length (16, 36 or 81); ValueError otherwise."""
    for size in BOXES:
        if size * size == seq_len:
            return size
    raise ValueError(f"a Sudoku grid has 16, 36 or 81 cells, got {seq_len}")


# An explicit signature compiles the search once; literal arguments would otherwise each
# specialise it (about 5 s of compile time per variant on a cold cache).
@njit("UniTuple(int64, 2)(int8[::1], int64, int64[::1], int64[::1], int64[::1], int64, int64, int64, "
      "uint64[::1], boolean, int8[:, ::1])", cache=True)
def _search(grid, n, rows, cols, boxes, limit, forbid_cell, forbid_digit, state, randomize, sols):
    """Count solutions of `grid` up to `limit`; store the first `len(sols)` of them in `sols`.

    `forbid_digit` is excluded at `forbid_cell` (-1: none), which turns "is the solution unique
    after blanking this cell?" into one existence search. `randomize` picks candidates in random
    order (drawing from `state`), otherwise lowest first. Returns (solutions found, dead ends).
    Conflicting givens give (0, 0).
    """
    full = (1 << n) - 1
    rm = np.zeros(n, np.int64)
    cm = np.zeros(n, np.int64)
    bm = np.zeros(n, np.int64)
    nc = n * n
    g = grid.copy()
    for c in range(nc):
        v = g[c]
        if v:
            bit = 1 << (v - 1)
            if (rm[rows[c]] | cm[cols[c]] | bm[boxes[c]]) & bit:
                return 0, 0
            rm[rows[c]] |= bit
            cm[cols[c]] |= bit
            bm[boxes[c]] |= bit
    stack_cell = np.empty(nc, np.int64)
    stack_mask = np.empty(nc, np.int64)  # candidates not yet tried at each depth
    depth = 0
    count = 0
    dead = 0
    choose = True
    while True:
        if choose:
            best = -1
            best_n = 99
            best_mask = 0
            for c in range(nc):
                if g[c] == 0:
                    m = full & ~(rm[rows[c]] | cm[cols[c]] | bm[boxes[c]])
                    if c == forbid_cell:
                        m &= ~(1 << (forbid_digit - 1))
                    k = _POP[m]
                    if k < best_n:
                        best_n = k
                        best = c
                        best_mask = m
                        if k <= 1:
                            break
            if best < 0:
                if count < sols.shape[0]:
                    sols[count, :] = g
                count += 1
                if count >= limit:
                    return count, dead
            elif best_n == 0:
                dead += 1
            else:
                stack_cell[depth] = best
                stack_mask[depth] = best_mask
                depth += 1
        choose = False
        while depth > 0:
            c = stack_cell[depth - 1]
            v = g[c]
            if v:
                bit = 1 << (v - 1)
                rm[rows[c]] &= ~bit
                cm[cols[c]] &= ~bit
                bm[boxes[c]] &= ~bit
                g[c] = 0
            m = stack_mask[depth - 1]
            if m == 0:
                depth -= 1
                continue
            if randomize:
                for _ in range(randint(state, _POP[m])):
                    m &= m - 1
            bit = m & -m
            stack_mask[depth - 1] &= ~bit
            g[c] = _BIT[bit]
            rm[rows[c]] |= bit
            cm[cols[c]] |= bit
            bm[boxes[c]] |= bit
            choose = True
            break
        if not choose:
            return count, dead


@njit(cache=True)
def _blank_greedily(p, n, rows, cols, boxes, state, target, buf):
    """Blank the givens of the unique puzzle `p` in random order while it stays unique.

    Stops at `target` givens; returns the number of givens left.
    """
    nc = n * n
    order = np.empty(nc, np.int64)
    m = 0
    for c in range(nc):
        if p[c]:
            order[m] = c
            m += 1
    for i in range(m - 1, 0, -1):  # Fisher-Yates
        j = randint(state, i + 1)
        t = order[i]
        order[i] = order[j]
        order[j] = t
    count = m
    for i in range(m):
        if count <= target:
            break
        c = order[i]
        v = np.int64(p[c])
        p[c] = 0
        found, _ = _search(p, n, rows, cols, boxes, 1, c, v, state, False, buf)
        if found:
            p[c] = v
        else:
            count -= 1
    return count


@njit(cache=True)
def _local_search(p, s, n, rows, cols, boxes, state, target, iters, drop):
    """Lower the givens of the unique puzzle `p` (solution `s`) by blank-and-repair moves."""
    nc = n * n
    buf = np.empty((2, nc), np.int8)
    q = np.empty(nc, np.int8)
    cells = np.empty(nc, np.int64)
    count = 0
    for c in range(nc):
        if p[c]:
            count += 1
    for _ in range(iters):
        if count <= target:
            break
        q[:] = p
        for _d in range(drop):
            m = 0
            for c in range(nc):
                if q[c]:
                    cells[m] = c
                    m += 1
            q[cells[randint(state, m)]] = 0
        while True:  # repair: re-add a given where another solution disagrees with s
            found, _ = _search(q, n, rows, cols, boxes, 2, -1, 0, state, False, buf)
            if found < 2:
                break
            other = 1  # use the first solution found unless it is `s` itself
            for c in range(nc):
                if buf[0, c] != s[c]:
                    other = 0
                    break
            m = 0
            for c in range(nc):
                if buf[other, c] != s[c]:
                    cells[m] = c
                    m += 1
            c = cells[randint(state, m)]
            q[c] = s[c]
        new_count = _blank_greedily(q, n, rows, cols, boxes, state, target, buf)
        if new_count <= count:
            p[:] = q
            count = new_count
    return count


@njit(cache=True)
def _generate(seeds, givens, n, rows, cols, boxes, attempts, iters, drop, puzzles, solutions):
    """Fill `puzzles`/`solutions` (len(seeds), n*n) with givens[i] givens each (givens: (len(seeds),)
    int64); returns (len(seeds),) bool success flags."""
    nc = n * n
    state = np.zeros(1, np.uint64)
    empty = np.zeros(nc, np.int8)
    buf = np.empty((2, nc), np.int8)
    best = np.empty(nc, np.int8)
    best_sol = np.empty(nc, np.int8)
    ok = np.zeros(len(seeds), np.bool_)
    for i in range(len(seeds)):
        state[0] = seeds[i]
        best_count = nc + 1
        for _ in range(attempts):
            _search(empty, n, rows, cols, boxes, 1, -1, 0, state, True, buf)
            solutions[i, :] = buf[0]
            puzzles[i, :] = buf[0]
            count = _blank_greedily(puzzles[i], n, rows, cols, boxes, state, givens[i], buf)
            if count == givens[i]:
                ok[i] = True
                break
            if count < best_count:
                best_count = count
                best[:] = puzzles[i]
                best_sol[:] = solutions[i]
        if not ok[i] and iters > 0:
            puzzles[i, :] = best
            solutions[i, :] = best_sol
            ok[i] = _local_search(puzzles[i], best_sol, n, rows, cols, boxes, state, givens[i], iters, drop) == givens[i]
    return ok


@njit(cache=True)
def _count_batch(puzzles, n, rows, cols, boxes, limit, randomize, solutions, dead):
    """Solution counts (capped at `limit`) for every row; first solutions and dead ends out."""
    state = np.zeros(1, np.uint64)
    counts = np.zeros(len(puzzles), np.int64)
    buf = np.zeros((1, n * n), np.int8)
    for i in range(len(puzzles)):
        buf[0, :] = 0
        counts[i], dead[i] = _search(puzzles[i], n, rows, cols, boxes, limit, -1, 0, state, randomize, buf)
        solutions[i, :] = buf[0]
    return counts


def _as_batch(grids: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """(n, size*size) int8 view of one grid or a batch, the grid side, and whether it was one grid."""
    arr = np.asarray(grids)
    single = arr.ndim == 1
    batch = np.ascontiguousarray(arr.reshape(1, -1) if single else arr, dtype=np.int8)
    if batch.ndim != 2:
        raise ValueError(f"expected Sudoku grids of shape (size*size,) or (n, size*size), got {arr.shape}")
    size = sudoku_size(batch.shape[1])
    if batch.size and (batch.min() < 0 or batch.max() > size):
        raise ValueError(f"Sudoku cells must be 0 (blank) or 1..{size}")
    return batch, size, single


def _run(puzzles: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    batch, size, single = _as_batch(puzzles)
    solutions = np.zeros_like(batch)
    dead = np.zeros(len(batch), np.int64)
    counts = _count_batch(batch, size, *_geometry(size), limit, False, solutions, dead)
    return counts, solutions, dead, single


def count_solutions(puzzles: np.ndarray, limit: int = 2) -> np.ndarray | int:
    """Number of solutions of each puzzle, capped at `limit` (2 answers "is it unique?").

    puzzles: (size*size,) or (n, size*size) ints, 0 = blank. Returns an int or (n,) int64.
    """
    counts, _, _, single = _run(puzzles, limit)
    return int(counts[0]) if single else counts


def solve(puzzles: np.ndarray) -> np.ndarray:
    """A solution of each puzzle (the lexicographically first), all zeros where there is none.

    puzzles: (size*size,) or (n, size*size); returns int8 of the same shape.
    """
    _, solutions, _, single = _run(puzzles, 1)
    return solutions[0] if single else solutions


def rate(puzzles: np.ndarray) -> np.ndarray | int:
    """Difficulty rating: dead ends met by the deterministic solver before the first solution."""
    _, _, dead, single = _run(puzzles, 1)
    return int(dead[0]) if single else dead


def is_valid_solution(grids: np.ndarray, puzzles: np.ndarray | None = None) -> np.ndarray | bool:
    """Whether each grid is a complete valid Sudoku (and agrees with the givens of `puzzles`).

    grids, puzzles: (size*size,) or (n, size*size). Vectorised numpy; returns bool or (n,) bool.
    """
    arr = np.asarray(grids)
    single = arr.ndim == 1
    g = arr.reshape(1, -1) if single else arr
    size = sudoku_size(g.shape[1])
    br, bc = BOXES[size]
    sq = g.reshape(len(g), size, size)
    boxes = sq.reshape(len(g), size // br, br, size // bc, bc).transpose(0, 1, 3, 2, 4)
    digits = np.arange(1, size + 1)
    ok = np.ones(len(g), dtype=bool)
    for units in (sq, sq.transpose(0, 2, 1), boxes.reshape(len(g), size, size)):
        # a unit is valid iff every digit occurs in it: (n, units, cells, digits) -> any over cells
        ok &= (units[..., None] == digits).any(axis=2).all(axis=(1, 2))
    if puzzles is not None:
        p = np.asarray(puzzles).reshape(g.shape)
        ok &= ((p == 0) | (p == g)).all(axis=1)
    return bool(ok[0]) if single else ok


def encode_sudoku(grids: np.ndarray) -> np.ndarray:
    """Official tokens: blank 0 -> 1, digit d -> d + 1 (pad is 0). Returns uint8, same shape."""
    return (np.asarray(grids, dtype=np.int16) + 1).astype(np.uint8)


def decode_sudoku(tokens: np.ndarray) -> np.ndarray:
    """Inverse of `encode_sudoku` (pad 0 also decodes to blank). Returns int8, same shape."""
    return np.maximum(np.asarray(tokens, dtype=np.int16) - 1, 0).astype(np.int8)


def _from_known_17(givens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 9x9 puzzle with `givens` >= 17 built from a transformed known 17-given puzzle."""
    rng = np.random.default_rng(seed)
    base = np.frombuffer(KNOWN_17[rng.integers(len(KNOWN_17))].encode(), np.uint8).astype(np.int8) - ord("0")
    cell_map, digit_map = sudoku_transform_indices(rng, 1, 9)
    puzzle = digit_map[0][base[cell_map[0]]].astype(np.int8)
    solution = solve(puzzle)
    blanks = np.flatnonzero(puzzle == 0)
    extra = rng.choice(blanks, size=givens - 17, replace=False)
    puzzle[extra] = solution[extra]
    return puzzle, solution


def generate_sudoku(n: int, givens: int | np.ndarray, seed: int, size: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate `n` Sudoku puzzles with exactly one solution and exactly `givens` givens.

    Args:
        n: number of puzzles.
        givens: filled cells per puzzle (9x9: 17..81; 6x6: 9..36; 4x4: 4..16), one count for all
            or an (n,) array of per-puzzle counts (mixed difficulty).
        seed: puzzle i depends only on (seed, i) and its givens; the same seed gives identical arrays.
        size: 9, 6 or 4.
    Returns:
        puzzles (n, size*size) int8 with 0 = blank, solutions (n, size*size) int8,
        ratings (n,) int64 (solver backtracks, see module docstring).
    Raises:
        ConfigError: size or givens out of range, or a small-grid regime the search cannot reach.
    """
    if size not in BOXES:
        raise ConfigError(f"Sudoku size must be 4, 6 or 9, got {size}")
    if n < 0:
        raise ConfigError(f"number of puzzles must be >= 0, got {n}")
    counts = np.broadcast_to(np.asarray(givens, dtype=np.int64), (n,)).copy()
    lo, hi = GIVENS_RANGE[size]
    for g in np.unique(counts):
        if not lo <= g <= hi:
            raise ConfigError(f"givens={g} is out of range for {size}x{size} Sudoku (allowed {lo}..{hi})")
    label = str(int(counts[0])) if n and (counts == counts[0]).all() else (f"{counts.min()}..{counts.max()}" if n else "-")
    seeds = puzzle_seeds(seed, n)
    puzzles = np.zeros((n, size * size), np.int8)
    solutions = np.zeros((n, size * size), np.int8)
    ok = np.zeros(n, dtype=bool)
    direct = np.flatnonzero((counts >= _FALLBACK_BELOW) | (size != 9))
    if len(direct):
        geo = _geometry(size)
        starts = range(0, len(direct), _CHUNK)
        for s in progress_bar(starts, desc=f"sudoku {size}x{size} givens={label}", unit_scale=_CHUNK,
                              disable=None if len(direct) > 4 * _CHUNK else True):
            rows = direct[s:s + _CHUNK]
            p, q = puzzles[rows], solutions[rows]
            ok[rows] = _generate(seeds[rows], counts[rows], size, *geo, _GREEDY_ATTEMPTS, _LOCAL_ITERS, _LOCAL_DROP, p, q)
            puzzles[rows], solutions[rows] = p, q
    missing = np.flatnonzero(~ok)
    if len(missing) and size != 9:
        raise ConfigError(f"could not generate a {size}x{size} Sudoku with {label} givens; use more givens")
    for i in progress_bar(missing, desc=f"sudoku from known 17-given puzzles, givens={label}",
                          disable=None if len(missing) > 100 else True):
        puzzles[i], solutions[i] = _from_known_17(int(counts[i]), int(seeds[i]))
    return puzzles, solutions, np.asarray(rate(puzzles), dtype=np.int64).reshape(n)
