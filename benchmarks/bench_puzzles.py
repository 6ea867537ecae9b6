"""Throughput of the puzzle generators and the valid-path check on one core.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_puzzles.py
Targets (issue #4): >= 1000 unique 9x9 Sudoku/s at 45 givens, >= 100/s at 30 givens,
>= 200 30x30 mazes/s (min_path 110). Kernels are compiled (or loaded from numba's cache) in a
warm-up call that is not timed. The cores may be shared, so figures can be pessimistic.
"""
from __future__ import annotations

import time


from puzzles.maze import generate_maze, valid_path
from puzzles.sudoku import count_solutions, generate_sudoku


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    generate_sudoku(2, 30, seed=0)
    generate_maze(2, 30, 110, seed=0)
    rows = []
    for givens, n, target in [(45, 5000, 1000), (30, 2000, 100), (24, 300, None), (22, 50, None)]:
        per_s = rate(lambda k: generate_sudoku(k, givens, seed=1), n)
        rows.append((f"sudoku 9x9, {givens} givens (unique)", per_s, target))
    puzzles, _, _ = generate_sudoku(2000, 30, seed=2)
    assert (count_solutions(puzzles) == 1).all()
    rows.append(("sudoku uniqueness check, 30 givens", rate(lambda k: count_solutions(puzzles[:k]), 2000), None))
    for unique in (False, True):
        per_s = rate(lambda k: generate_maze(k, 30, 110, unique_path=unique, seed=1), 1000)
        rows.append((f"maze 30x30, min_path 110, unique_path={unique}", per_s, 200))
    inputs, labels, _ = generate_maze(2000, 30, 110, seed=3)
    assert valid_path(labels, inputs, 30).all()
    rows.append(("valid_path check, 30x30", rate(lambda k: valid_path(labels[:k], inputs[:k], 30), 2000), None))
    width = max(len(name) for name, _, _ in rows)
    for name, per_s, target in rows:
        verdict = "" if target is None else f"  (target >= {target}: {'ok' if per_s >= target else 'MISSED'})"
        print(f"{name:<{width}}  {per_s:>10.0f} /s{verdict}")


if __name__ == "__main__":
    main()
