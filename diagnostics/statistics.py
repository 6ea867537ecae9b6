"""Statistics shared by the dynamics studies (analysis §3-5), on plain numpy arrays.

- `auc`: Mann-Whitney rank AUC, P(score of a positive > score of a negative), ties counted 1/2.
- `bootstrap_ci`: seeded percentile bootstrap over examples for any statistic of (scores, labels).
- `otsu_threshold`: Otsu's between-class-variance threshold on a 256-bin histogram (Otsu 1979),
  used on pooled log10 late drift to call a trajectory settled.
- `rule_of_three`: the 95% upper bound 3/n on a proportion when 0 of n events were seen
  (Hanley & Lippman-Hand 1983).
- `percentile_sweep`: thresholds at pooled percentiles, for the settling sensitivity sweep.

Every function takes arrays and returns floats (NaN where undefined, e.g. one class empty);
`none_if_nan` turns them into JSON-friendly values.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import rankdata

BOOTSTRAP_SAMPLES = 1000


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC of `scores` (N,) for the boolean `positive` (N,); NaN when a class is empty.

    Equals P(s+ > s-) + P(s+ = s-)/2 over all positive/negative pairs, via average ranks.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    scores: np.ndarray,
    positive: np.ndarray,
    *,
    seed: int,
    n_boot: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(scores, positive)` over examples resampled with
    replacement (`np.random.default_rng(seed)`); resamples where it is NaN are skipped.
    `scores` may be (N,) or (N, F). Returns (NaN, NaN) when no resample is defined."""
    rng = np.random.default_rng(seed)
    n = len(positive)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        value = statistic(scores[pick], positive[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def auc_with_ci(scores: np.ndarray, positive: np.ndarray, *, seed: int, n_boot: int = BOOTSTRAP_SAMPLES) -> dict[str, float | list[float] | None]:
    """{"auc": ..., "ci95": [lo, hi]} (None where undefined), the form summary.json stores."""
    value = auc(scores, positive)
    lo, hi = (math.nan, math.nan) if math.isnan(value) else bootstrap_ci(auc, scores, positive, seed=seed, n_boot=n_boot)
    return {"auc": none_if_nan(value), "ci95": None if math.isnan(lo) else [lo, hi]}


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values` (finite entries of any shape): the histogram bin edge that
    maximises the between-class variance w0 w1 (mu0 - mu1)^2 of a `bins`-bin histogram over
    [min, max]. Values <= threshold form the lower class. NaN for fewer than 2 distinct values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2 or x.min() == x.max():
        return math.nan
    counts, edges = np.histogram(x, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = x.size - w0
    m0 = np.cumsum(counts * centers)[:-1]
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] + counts[-1] * centers[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def rule_of_three(n: int) -> float:
    """95% upper bound on a proportion after 0 events in n trials: 3/n (1.0 when n = 0)."""
    return 1.0 if n <= 0 else min(1.0, 3.0 / n)


def percentile_sweep(values: np.ndarray, percentiles: np.ndarray | list[float]) -> np.ndarray:
    """Thresholds at the given pooled percentiles (0..100) of the finite `values`."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return np.percentile(x[np.isfinite(x)], np.asarray(percentiles, dtype=np.float64))


def median_or_none(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def none_if_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
