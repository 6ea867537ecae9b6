"""A tiny counter-based random stream for numba kernels.

The generators run inside `numba.njit` loops, where numpy `Generator` objects cannot be used and the
numba-global `np.random` state would be a hidden global. Instead each puzzle gets a 64-bit seed drawn
from a seeded numpy `Generator`, and the kernel advances a one-element `uint64` state with
SplitMix64 (Steele, Lea & Flood 2014). A puzzle therefore depends only on its own seed, never on
how many puzzles were generated before it or how the work was chunked.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def next_u64(state: np.ndarray) -> np.uint64:
    """Advance `state` (uint64[1]) and return the next 64-bit output of SplitMix64."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def randint(state: np.ndarray, k: int) -> int:
    """A random integer in [0, k) (modulo bias below 2**-40 for the small k used here)."""
    return np.int64((next_u64(state) >> np.uint64(11)) % np.uint64(k))


@njit(cache=True)
def uniform(state: np.ndarray) -> float:
    """A random float in [0, 1) with 53 random bits."""
    return np.float64(next_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def puzzle_seeds(seed: int, n: int) -> np.ndarray:
    """(n,) uint64 per-puzzle seeds drawn from `numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)
