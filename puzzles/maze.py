"""Mazes: a seeded generator with long shortest paths, BFS distances, and the valid-path check.

A maze is a flat row-major grid of n*n official tokens (official.md 4.2): wall `#` = 1, open ` ` = 2,
start `S` = 3, goal `G` = 4, path `o` = 5 (labels only), pad = 0. Moves are 4-connected. A path's
length is its number of moves, so a shortest path of length d marks d - 1 cells `o` between S and G.

Generator, per maze (each maze depends only on its own 64-bit seed, see `_rng`):
1. walls are independent per cell with a density drawn uniformly from `wall_density` (the
   random-wall mazes of Lehnert et al. 2024, "Beyond A*", which the published Maze-Hard set
   filters to shortest paths above 110);
2. S is the far end of a double BFS sweep from a random open cell (a peripheral cell of its
   component); G is a random cell at distance >= `min_path` from S, or the farthest cell;
3. rejection alone accepts under 1% of 30x30 mazes at min_path 110, so when S and G are too close
   the path is lengthened: a random cell on some shortest S-G path becomes a wall, unless that
   disconnects S from G, until the distance reaches `min_path` (an attempt fails when every such
   cell is a cut cell). Lengthened mazes carry a few dozen extra walls along their paths;
4. with `unique_path`, while some BFS layer holds two cells of shortest paths, one of them becomes
   a wall (every layer keeps a shortest path, so the distance is unchanged): at the end exactly one
   shortest path remains;
5. the label marks one shortest path, chosen uniformly at each backward step when not unique.

Valid path (analysis.md 1): the prediction equals the input except that open cells may be marked
`o`; S and G each touch exactly one path cell (or each other), every `o` cell touches exactly two
cells of {S, G, o}; and the number of `o` cells is the BFS distance minus one. Those degrees make
the component of S a simple chain ending at G, of length at least the BFS distance; the count then
forces it to be a shortest path that uses every `o` cell (no stray cells or loops).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from puzzles._rng import puzzle_seeds, randint, uniform
from runtime.errors import ConfigError
from runtime.progress import progress_bar

CHARSET = "# SGo"  # token = position + 1
PAD, WALL, OPEN, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = 6

_MAX_ATTEMPTS = 1000  # random wall layouts tried per maze before giving up
_CHUNK = 1024

_CHAR_TO_TOKEN = np.zeros(256, dtype=np.uint8)
_CHAR_TO_TOKEN[np.frombuffer(CHARSET.encode(), np.uint8)] = np.arange(1, len(CHARSET) + 1)


def encode_maze_text(rows: list[str]) -> np.ndarray:
    """Official tokens for equal-length strings over `CHARSET`: (len(rows), len) uint8.

    Characters outside the charset encode to 0 (pad); callers validate before encoding.
    """
    raw = np.frombuffer("".join(rows).encode("latin-1"), dtype=np.uint8)
    return _CHAR_TO_TOKEN[raw].reshape(len(rows), -1)


def decode_maze_text(tokens: np.ndarray, n: int) -> list[str]:
    """Tokens (n*n,) -> n strings of `CHARSET` characters (pad shown as '?'); for debugging."""
    chars = np.array(list("?" + CHARSET))[np.asarray(tokens).reshape(n, n)]
    return ["".join(row) for row in chars]


@njit(cache=True)
def _bfs(is_open, n, src, dist, queue):
    """4-connected BFS over `is_open` (n*n,) bool from `src`; fills dist (-1 = unreached).

    Returns the number of reached cells; queue[:count] lists them in BFS order.
    """
    dist[:] = -1
    dist[src] = 0
    queue[0] = src
    head = 0
    tail = 1
    while head < tail:
        c = queue[head]
        head += 1
        r = c // n
        k = c - r * n
        d = dist[c] + 1
        if r > 0 and is_open[c - n] and dist[c - n] < 0:
            dist[c - n] = d
            queue[tail] = c - n
            tail += 1
        if r < n - 1 and is_open[c + n] and dist[c + n] < 0:
            dist[c + n] = d
            queue[tail] = c + n
            tail += 1
        if k > 0 and is_open[c - 1] and dist[c - 1] < 0:
            dist[c - 1] = d
            queue[tail] = c - 1
            tail += 1
        if k < n - 1 and is_open[c + 1] and dist[c + 1] < 0:
            dist[c + 1] = d
            queue[tail] = c + 1
            tail += 1
    return tail


@njit(cache=True)
def _shuffled_on_path(d_s, d_g, total, n, state, skip_s, skip_g, cells):
    """Cells on some shortest S-G path (d_s + d_g == total) except S and G, shuffled; returns count."""
    m = 0
    for c in range(n * n):
        if d_s[c] >= 0 and d_g[c] >= 0 and d_s[c] + d_g[c] == total and c != skip_s and c != skip_g:
            cells[m] = c
            m += 1
    for i in range(m - 1, 0, -1):
        j = randint(state, i + 1)
        t = cells[i]
        cells[i] = cells[j]
        cells[j] = t
    return m


@njit(cache=True)
def _lengthen(is_open, n, s, g, min_path, state, d_s, d_g, queue, cells):
    """Wall shortest-path cells until dist(S, G) >= min_path keeping G reachable; False if stuck."""
    _bfs(is_open, n, s, d_s, queue)
    while d_s[g] < min_path:
        _bfs(is_open, n, g, d_g, queue)
        m = _shuffled_on_path(d_s, d_g, d_s[g], n, state, s, g, cells)
        grown = False
        for i in range(m):
            is_open[cells[i]] = False
            _bfs(is_open, n, s, d_s, queue)
            if d_s[g] >= 0:
                grown = True
                break
            is_open[cells[i]] = True
        if not grown:
            return False
    return True


@njit(cache=True)
def _make_unique(is_open, n, s, g, state, d_s, d_g, queue, cells, layer):
    """Wall cells of over-full BFS layers until one shortest S-G path remains (distance kept)."""
    while True:
        _bfs(is_open, n, s, d_s, queue)
        _bfs(is_open, n, g, d_g, queue)
        total = d_s[g]
        m = _shuffled_on_path(d_s, d_g, total, n, state, s, g, cells)
        layer[: total + 1] = 0
        for i in range(m):
            layer[d_s[cells[i]]] += 1
        wall = -1
        for i in range(m):
            if layer[d_s[cells[i]]] > 1:
                wall = cells[i]
                break
        if wall < 0:
            return
        is_open[wall] = False


@njit(cache=True)
def _generate(seeds, n, min_path, unique, density_lo, density_hi, max_attempts, inputs, labels, lengths):
    """Fill inputs/labels (len(seeds), n*n) uint8 and lengths; returns per-maze success flags."""
    nc = n * n
    state = np.zeros(1, np.uint64)
    is_open = np.zeros(nc, np.bool_)
    d_s = np.empty(nc, np.int64)
    d_g = np.empty(nc, np.int64)
    queue = np.empty(nc, np.int64)
    cells = np.empty(nc, np.int64)
    layer = np.empty(nc + 1, np.int64)
    ok = np.zeros(len(seeds), np.bool_)
    for i in range(len(seeds)):
        state[0] = seeds[i]
        for _ in range(max_attempts):
            density = density_lo + (density_hi - density_lo) * uniform(state)
            for c in range(nc):
                is_open[c] = uniform(state) >= density
            a = randint(state, nc)
            if not is_open[a]:
                continue
            size = _bfs(is_open, n, a, d_s, queue)
            if size <= min_path:
                continue
            s = queue[size - 1]  # farthest from a: a peripheral start
            _bfs(is_open, n, s, d_s, queue)
            m = 0
            for c in range(nc):
                if d_s[c] >= min_path:
                    cells[m] = c
                    m += 1
            g = cells[randint(state, m)] if m > 0 else queue[size - 1]
            if not _lengthen(is_open, n, s, g, min_path, state, d_s, d_g, queue, cells):
                continue
            if unique:
                _make_unique(is_open, n, s, g, state, d_s, d_g, queue, cells, layer)
            _bfs(is_open, n, s, d_s, queue)
            for c in range(nc):
                inputs[i, c] = 2 if is_open[c] else 1
            inputs[i, s] = 3
            inputs[i, g] = 4
            labels[i, :] = inputs[i]
            lengths[i] = d_s[g]
            c = g
            while d_s[c] > 1:  # walk back to S through a uniformly chosen predecessor
                m = 0
                r = c // n
                k = c - r * n
                if r > 0 and d_s[c - n] == d_s[c] - 1:
                    cells[m] = c - n
                    m += 1
                if r < n - 1 and d_s[c + n] == d_s[c] - 1:
                    cells[m] = c + n
                    m += 1
                if k > 0 and d_s[c - 1] == d_s[c] - 1:
                    cells[m] = c - 1
                    m += 1
                if k < n - 1 and d_s[c + 1] == d_s[c] - 1:
                    cells[m] = c + 1
                    m += 1
                c = cells[randint(state, m)]
                labels[i, c] = 5
            ok[i] = True
            break
    return ok


def max_path_length(size: int) -> int:
    """An upper bound on any shortest-path length in a size x size maze (the cells it can visit)."""
    return size * size - 1


def generate_maze(n: int, size: int = 30, min_path: int = 110, unique_path: bool = False, seed: int = 0,
                  wall_density: tuple[float, float] = (0.3, 0.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate `n` mazes whose label marks a shortest S-G path of at least `min_path` moves.

    Args:
        n: number of mazes.
        size: grid side (the published set uses 30).
        min_path: minimum BFS distance from S to G in moves (1 .. size*size - 1).
        unique_path: require that exactly one shortest path exists.
        seed: maze i depends only on (seed, i); the same seed gives identical arrays.
        wall_density: (low, high) range of the per-maze wall probability.
    Returns:
        inputs (n, size*size) uint8 tokens, labels (n, size*size) uint8 tokens (path marked),
        path_lengths (n,) int64 (the BFS distance of each maze).
    Raises:
        ConfigError: an impossible or unreachable min_path, or bad sizes/densities.
    """
    if size < 2:
        raise ConfigError(f"maze size must be at least 2, got {size}")
    if not 1 <= min_path <= max_path_length(size):
        raise ConfigError(f"min_path={min_path} is impossible for a {size}x{size} maze "
                          f"(a shortest path has 1..{max_path_length(size)} moves)")
    lo, hi = wall_density
    if not 0.0 <= lo <= hi < 1.0:
        raise ConfigError(f"wall_density must satisfy 0 <= low <= high < 1, got ({lo}, {hi})")
    if n < 0:
        raise ConfigError(f"number of mazes must be >= 0, got {n}")
    seeds = puzzle_seeds(seed, n)
    inputs = np.zeros((n, size * size), np.uint8)
    labels = np.zeros((n, size * size), np.uint8)
    lengths = np.zeros(n, np.int64)
    for s in progress_bar(range(0, n, _CHUNK), desc=f"maze {size}x{size} min_path={min_path}", unit_scale=_CHUNK,
                  disable=None if n > 4 * _CHUNK else True):
        sl = slice(s, s + _CHUNK)
        ok = _generate(seeds[sl], size, min_path, unique_path, lo, hi, _MAX_ATTEMPTS,
                       inputs[sl], labels[sl], lengths[sl])
        if not ok.all():
            raise ConfigError(f"could not generate a {size}x{size} maze with a shortest path of at least "
                              f"{min_path} moves in {_MAX_ATTEMPTS} attempts; lower min_path or wall_density")
    return inputs, labels, lengths


@njit(cache=True)
def _distances(inputs, n, out):
    """BFS distance S -> G through non-wall cells for every row of inputs (-1: none/malformed)."""
    nc = n * n
    is_open = np.empty(nc, np.bool_)
    dist = np.empty(nc, np.int64)
    queue = np.empty(nc, np.int64)
    for i in range(len(inputs)):
        s = -1
        g = -1
        n_s = 0
        n_g = 0
        for c in range(nc):
            t = inputs[i, c]
            is_open[c] = t == 2 or t == 3 or t == 4 or t == 5
            if t == 3:
                s = c
                n_s += 1
            elif t == 4:
                g = c
                n_g += 1
        out[i] = -1
        if n_s == 1 and n_g == 1:
            _bfs(is_open, n, s, dist, queue)
            out[i] = dist[g]


@njit(cache=True)
def _chain_ok(preds, inputs, n, dist, out):
    """The token and degree conditions of the valid-path check (see module docstring)."""
    nc = n * n
    for i in range(len(preds)):
        ok = dist[i] > 0
        n_path = 0
        for c in range(nc):
            if not ok:
                break
            p = preds[i, c]
            x = inputs[i, c]
            if p != x and not (x == 2 and p == 5):
                ok = False
                break
            if p == 3 or p == 4 or p == 5:
                r = c // n
                k = c - r * n
                deg = 0
                if r > 0 and (preds[i, c - n] == 3 or preds[i, c - n] == 4 or preds[i, c - n] == 5):
                    deg += 1
                if r < n - 1 and (preds[i, c + n] == 3 or preds[i, c + n] == 4 or preds[i, c + n] == 5):
                    deg += 1
                if k > 0 and (preds[i, c - 1] == 3 or preds[i, c - 1] == 4 or preds[i, c - 1] == 5):
                    deg += 1
                if k < n - 1 and (preds[i, c + 1] == 3 or preds[i, c + 1] == 4 or preds[i, c + 1] == 5):
                    deg += 1
                if deg != (2 if p == 5 else 1):
                    ok = False
                if p == 5:
                    n_path += 1
        out[i] = ok and n_path == dist[i] - 1


def _as_tokens(arr: np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != n * n:
        raise ValueError(f"{name} must have shape (N, {n * n}) for n={n}, got {np.shape(arr)}")
    return np.ascontiguousarray(np.clip(a.astype(np.int64), -1, 127), dtype=np.int8)


def shortest_path_length(inputs: np.ndarray, n: int) -> np.ndarray:
    """BFS distance from S to G (in moves) per maze: inputs (N, n*n) tokens -> (N,) int64, -1 if none."""
    x = _as_tokens(inputs, n, "inputs")
    out = np.empty(len(x), np.int64)
    _distances(x, n, out)
    return out


def valid_path(preds: np.ndarray, inputs: np.ndarray, n: int) -> np.ndarray:
    """Whether each predicted grid marks a shortest S-G path on its unchanged maze (analysis.md 1).

    preds, inputs: (N, n*n) token arrays (any integer dtype; labels are predictions too).
    Returns (N,) bool. About 10 microseconds per 30x30 maze (one BFS plus one pass).
    """
    p = _as_tokens(preds, n, "preds")
    x = _as_tokens(inputs, n, "inputs")
    if p.shape != x.shape:
        raise ValueError(f"preds {p.shape} and inputs {x.shape} differ in shape")
    dist = np.empty(len(x), np.int64)
    _distances(x, n, dist)
    out = np.empty(len(x), np.bool_)
    _chain_ok(p, x, n, dist, out)
    return out
