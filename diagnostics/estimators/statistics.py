"""Statistics shared by the dynamics studies (analysis §3-5), on plain numpy arrays.

- `auc`: Mann-Whitney rank AUC, P(score of a positive > score of a negative), ties counted 1/2.
- `bootstrap_ci`: seeded percentile bootstrap over examples for any statistic of (scores, labels).
- `otsu_threshold`: Otsu's between-class-variance threshold on a 256-bin histogram (Otsu 1979),
  used on pooled log10 late drift to call a trajectory settled.
- `rule_of_three`: the 95% upper bound 3/n on a proportion when 0 of n events were seen
  (Hanley & Lippman-Hand 1983).
- `percentile_sweep`: thresholds at pooled percentiles, for the settling sensitivity sweep.
- `survival_curve`, `escape_rate_fit`: survival of events (first solve after the budget) and the
  exponential escape rate fitted to it (extended rollouts, analysis §5).
- `settling_cells`, `fraction_below`, `separability`: the settled x correct 2x2 table, the
  threshold-free statement of analysis §3 and how bimodal the split at tau is.
- `cohens_d`, `bhattacharyya_gaussian`, `histogram_overlap`: effect sizes between two groups.
- `quantile_bins`, `stratified_auc`: AUC within strata (decile-matched, givens-binned).
- `stratified_folds`, `fit_logistic`, `cross_validated_probabilities`: k-fold cross-validated
  ridge logistic regression (Newton/IRLS), for "does lambda add to drift and q_halt?".

Every function takes arrays and returns floats (NaN where undefined, e.g. one class empty);
`none_if_nan` turns them into JSON-friendly values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import expit
from scipy.stats import binomtest, bootstrap, rankdata

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


def auc_two_sample(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Mann-Whitney AUC P(s+ > s-) + P(s+ = s-)/2 of positive scores `pos` against negative
    scores `neg` along `axis` (vectorised over the other axes, as `scipy.stats.bootstrap` calls it)."""
    pos, neg = np.moveaxis(np.asarray(pos, np.float64), axis, -1), np.moveaxis(np.asarray(neg, np.float64), axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    lead = np.broadcast_shapes(pos.shape[:-1], neg.shape[:-1])
    both = np.concatenate([np.broadcast_to(pos, lead + (n_pos,)), np.broadcast_to(neg, lead + (n_neg,))], axis=-1)
    ranks = rankdata(both, axis=-1)
    return (ranks[..., :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_with_ci(scores: np.ndarray, positive: np.ndarray, *, seed: int, n_boot: int = BOOTSTRAP_SAMPLES) -> dict[str, float | list[float] | None]:
    """{"auc": ..., "ci95": [lo, hi]} (None where undefined), the form summary.json stores.

    The CI is a stratified percentile bootstrap (`scipy.stats.bootstrap` with the positives and
    the negatives as two independent samples, each resampled with its own size), so every
    resample keeps the observed class counts and the AUC is always defined; with a class of one
    example there is nothing to resample and ci95 is None."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    value = auc(scores, positive)
    if math.isnan(value):
        return {"auc": None, "ci95": None}
    if min(int(positive.sum()), int((~positive).sum())) < 2:  # a class of one cannot be resampled
        return {"auc": value, "ci95": None}
    result = bootstrap((scores[positive], scores[~positive]), auc_two_sample, n_resamples=n_boot, vectorized=True, paired=False,
                       method="percentile", random_state=np.random.default_rng(seed), batch=100)
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"auc": value, "ci95": [lo, hi]}


def paired_auc_difference(scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray, *, seed: int,
                          n_boot: int = BOOTSTRAP_SAMPLES) -> dict[str, float | list[float] | None]:
    """{"delta": AUC(a) - AUC(b), "ci95": [lo, hi]}: a paired, stratified percentile bootstrap
    (`scipy.stats.bootstrap`): each resample draws positives and negatives separately, and both
    scores of a drawn example together, so the CI reflects the correlation of the two AUCs."""
    positive = np.asarray(positive, dtype=bool)
    pairs = np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)])  # (2, N)
    if positive.all() or not positive.any():
        return {"delta": None, "ci95": None}
    if min(int(positive.sum()), int((~positive).sum())) < 2:
        return {"delta": float(auc(pairs[0], positive) - auc(pairs[1], positive)), "ci95": None}

    def delta(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
        # pos (2, [resamples,] n_pos): scipy keeps the leading axis and puts resamples before the last
        return auc_two_sample(pos[0], neg[0]) - auc_two_sample(pos[1], neg[1])

    value = float(delta(pairs[:, positive], pairs[:, ~positive]))
    result = bootstrap((pairs[:, positive], pairs[:, ~positive]), delta, n_resamples=n_boot, vectorized=True, paired=False, axis=-1,
                       method="percentile", random_state=np.random.default_rng(seed), batch=100)
    return {"delta": value, "ci95": [float(result.confidence_interval.low), float(result.confidence_interval.high)]}


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


def proportion_with_ci(count: int, n: int) -> dict[str, int | float | list[float] | None]:
    """{"count", "n", "fraction", "ci95"}: count of n with its 95% Wilson score interval
    (`scipy.stats.binomtest(...).proportion_ci("wilson")`), which stays inside [0, 1] and is not
    empty at 0 of n (0 of 254 gives [0, 0.0149]); fraction and ci95 are None when n = 0."""
    count, n = int(count), int(n)
    if not 0 <= count <= n:
        raise ValueError(f"count {count} outside 0..{n}")
    if n == 0:
        return {"count": 0, "n": 0, "fraction": None, "ci95": None}
    ci = binomtest(count, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"count": count, "n": n, "fraction": count / n, "ci95": [float(ci.low), float(ci.high)]}


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


def survival_curve(first_event: np.ndarray, times: np.ndarray) -> np.ndarray:
    """s(t) for each t in `times`: the fraction of entries whose event has not happened by t.

    first_event (N,) int: the time of each entry's event, -1 for never (still surviving at every
    t). An entry survives t when first_event == -1 or first_event > t. Returns (T,) float64,
    NaN everywhere when N = 0.
    """
    first_event = np.asarray(first_event)
    if first_event.size == 0:
        return np.full(np.shape(times), math.nan)
    return survivors(first_event, times) / first_event.size


def survivors(first_event: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(T,) int64 number of entries of `first_event` (N,) (-1 = never) with no event by each t."""
    first_event = np.asarray(first_event)[:, None]
    return ((first_event == -1) | (first_event > np.asarray(times)[None, :])).sum(0).astype(np.int64)


@dataclass
class EscapeFit:
    """Result of `escape_rate_fit`: log s(t) ~ intercept - kappa t over `times_used` (NaN if unfit)."""

    kappa: float
    intercept: float
    times_used: np.ndarray


def escape_rate_fit(first_event: np.ndarray, times: np.ndarray, min_remaining: int) -> EscapeFit:
    """Escape rate kappa of a survival curve, in events per unit of `times`.

    For an exponential (transient-chaos) decay s(t) ~ exp(-kappa t), log s(t) is linear in t.
    Algorithm: survivors n(t) = number of entries with no event by t (see `survivors`); keep the
    times with n(t) >= min_remaining (a prefix, as n is non-increasing: the noisy tail of a few
    survivors is left out); kappa = -(ordinary least-squares slope of log s(t) on t) with a free
    intercept. A geometric survival s(t) = q^t gives kappa = -log q exactly; nothing escaping
    gives kappa = 0. Ref.: Lai & Tel, "Transient Chaos" (2011), ch. 1 (escape rate of a
    chaotic saddle).

    Args:
        first_event: (N,) int event times, -1 for never.
        times: (T,) increasing times at which s is evaluated (e.g. segments S..S_ext).
        min_remaining: survivors needed for a time to enter the fit (>= 1, so log s is finite).
    Returns:
        EscapeFit; kappa and intercept are NaN when N = 0 or fewer than 2 times qualify.
    """
    first_event = np.asarray(first_event)
    times = np.asarray(times, dtype=np.float64)
    remaining = survivors(first_event, times) if first_event.size else np.zeros(times.shape, np.int64)
    keep = remaining >= max(1, min_remaining)
    if keep.sum() < 2:
        return EscapeFit(math.nan, math.nan, times[keep])
    slope, intercept = np.polyfit(times[keep], np.log(remaining[keep] / first_event.size), 1)
    return EscapeFit(float(-slope) + 0.0, float(intercept), times[keep])  # + 0.0: no "-0.0" when nothing escapes


# --- settling (analysis §3) ------------------------------------------------------------------------

SETTLING_CELLS = {"A": "settled & correct", "B": "settled & wrong", "C": "unsettled & correct", "D": "unsettled & wrong"}


def settling_counts(settled: np.ndarray, success: np.ndarray) -> dict[str, int]:
    """Counts of the 2x2 cells A (settled & correct), B (settled & wrong), C (unsettled & correct)
    and D (unsettled & wrong) of the boolean (N,) arrays; they add up to N."""
    settled, success = np.asarray(settled, dtype=bool), np.asarray(success, dtype=bool)
    return {"A": int((settled & success).sum()), "B": int((settled & ~success).sum()),
            "C": int((~settled & success).sum()), "D": int((~settled & ~success).sum())}


def settling_cells(settled: np.ndarray, success: np.ndarray) -> dict[str, dict[str, float | int | str | None]]:
    """The 2x2 cells with, per cell: count, fraction of all N, fraction of its outcome (e.g. B:
    the share of failures that settle) and, for an empty cell, the rule-of-three 95% upper bound
    on that within-outcome share (3 / outcome count), else None; and for every cell the 95% Wilson
    interval of that share (`ci95`, None for an empty outcome)."""
    counts = settling_counts(settled, success)
    n = sum(counts.values())
    outcome = {"A": counts["A"] + counts["C"], "C": counts["A"] + counts["C"], "B": counts["B"] + counts["D"], "D": counts["B"] + counts["D"]}
    return {
        cell: {
            "label": label,
            "count": counts[cell],
            "fraction": counts[cell] / n if n else None,
            "fraction_of_outcome": counts[cell] / outcome[cell] if outcome[cell] else None,
            "upper95": rule_of_three(outcome[cell]) if counts[cell] == 0 and outcome[cell] else None,
            "ci95": proportion_with_ci(counts[cell], outcome[cell])["ci95"],
        }
        for cell, label in SETTLING_CELLS.items()
    }


def separability(values: np.ndarray, threshold: float) -> float:
    """Otsu's separability eta = between-class variance / total variance of the split of the
    finite `values` at `threshold` (lower class: <= threshold), in [0, 1] (Otsu 1979, eq. 12):
    1 for two point masses, 0.75 for a uniform split at its midpoint, 2/pi for a Gaussian split
    at its mean. A low eta says the data are not bimodal and tau is arbitrary. NaN when a class
    is empty or the values are constant."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    low = x <= threshold
    if math.isnan(threshold) or low.all() or not low.any() or x.var() == 0:
        return math.nan
    w0 = low.mean()
    return float(w0 * (1 - w0) * (x[low].mean() - x[~low].mean()) ** 2 / x.var())


def fraction_below(values: np.ndarray, bound: float) -> float:
    """Share of the finite `values` strictly below `bound` (NaN when there are none): with
    bound = the smallest failure d_late, "the smallest failure d_late exceeds X of success d_late"."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    return float((x < bound).mean()) if x.size and not math.isnan(bound) else math.nan


# --- effect sizes (analysis §4) --------------------------------------------------------------------

def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d = (mean a - mean b) / s_pooled, s_pooled^2 = ((n_a-1) s_a^2 + (n_b-1) s_b^2) /
    (n_a + n_b - 2) with unbiased group variances. NaN with < 2 values in a group or s_pooled = 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((a.mean() - b.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def bhattacharyya_gaussian(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya coefficient BC = exp(-D_B) of Gaussians fitted to a and b (unbiased variances):
    D_B = (mu_a - mu_b)^2 / (4 (v_a + v_b)) + ln((v_a + v_b) / (2 sqrt(v_a v_b))) / 2
    (Bhattacharyya 1943). 1 for identical fits, -> 0 for separated ones; equal variances give
    exp(-d^2 / 8) with d = Cohen's d. NaN with < 2 values in a group or a zero variance."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    va, vb = a.var(ddof=1), b.var(ddof=1)
    if va <= 0 or vb <= 0:
        return math.nan
    distance = (a.mean() - b.mean()) ** 2 / (4 * (va + vb)) + 0.5 * math.log((va + vb) / (2 * math.sqrt(va * vb)))
    return float(math.exp(-distance))


def histogram_overlap(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """Overlap sum_i min(p_a,i, p_b,i) of the two normalised histograms (p = bin count / group size)
    on `bins` common bins over the pooled range: 1 for identical histograms, 0 for disjoint ones.
    A plug-in estimate of the overlapping coefficient (for equal-variance Gaussians 2 Phi(-|d|/2));
    biased upward by finite bins. NaN when a group is empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins)
    pa, pb = np.histogram(a, edges)[0] / len(a), np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(pa, pb).sum())


# --- stratified AUCs (analysis §4) -----------------------------------------------------------------

def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """(N,) int bin of each value among `n_bins` pooled-quantile bins [q_j, q_j+1) (the last one
    closed). Tied quantiles merge bins, so heavily tied data (e.g. integer givens) gets fewer."""
    x = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))) if len(x) else np.zeros(1)
    return np.searchsorted(edges[1:-1], x, side="right").astype(np.int64)


def stratified_auc(scores: np.ndarray, positive: np.ndarray, strata: np.ndarray) -> tuple[list[dict[str, float | int | None]], float]:
    """AUC(scores -> positive) within each stratum, and their mean weighted by stratum size over
    the strata that hold both classes (analysis §4: decile-matched and givens-binned AUC).

    Returns ([{stratum, n, n_positive, auc}], weighted mean); auc is None in one-class strata and
    the mean is NaN when no stratum holds both classes."""
    positive = np.asarray(positive, dtype=bool)
    rows, total, weight = [], 0.0, 0
    for stratum in np.unique(strata):
        pick = strata == stratum
        value = auc(scores[pick], positive[pick])
        rows.append({"stratum": stratum.item(), "n": int(pick.sum()), "n_positive": int(positive[pick].sum()), "auc": none_if_nan(value)})
        if not math.isnan(value):
            total, weight = total + value * pick.sum(), weight + int(pick.sum())
    return rows, (total / weight if weight else math.nan)


# --- cross-validated logistic regression (analysis §4: does lambda add anything?) --------------------

def stratified_folds(positive: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """(N,) fold id in 0..k-1: each class is shuffled (`default_rng(seed)`) and dealt round-robin,
    so every fold holds floor or ceil of 1/k of each class."""
    positive = np.asarray(positive, dtype=bool)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(positive), dtype=np.int64)
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(positive == cls))
        folds[members] = np.arange(len(members)) % k
    return folds


def _penalised_log_loss(w: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float) -> float:
    z = X @ w
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w[1:] @ w[1:]))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, max_iter: int = 50, tol: float = 1e-10) -> np.ndarray:
    """Weights (F+1,) = [intercept, w_1..w_F] minimising mean log-loss + l2/2 ||w_1..F||^2 of the
    model P(y=1 | x) = sigmoid(b + x.w), by Newton's method (IRLS) with step halving.

    X (N, F) features (standardise them: the penalty is not scale-free), y (N,) in {0, 1}. The
    objective is strictly convex for l2 > 0, so the minimiser is unique and finite even for
    separable data; iteration stops when the largest Newton step is below `tol`."""
    Xa = np.column_stack([np.ones(len(X)), np.asarray(X, dtype=np.float64)])
    y = np.asarray(y, dtype=np.float64)
    penalty = l2 * np.diag(np.r_[0.0, np.ones(Xa.shape[1] - 1)])
    w = np.zeros(Xa.shape[1])
    loss = _penalised_log_loss(w, Xa, y, l2)
    for _ in range(max_iter):
        p = expit(Xa @ w)
        grad = Xa.T @ (p - y) / len(y) + penalty @ w
        hess = (Xa.T * (p * (1 - p))) @ Xa / len(y) + penalty
        step = np.linalg.solve(hess + 1e-12 * np.eye(len(w)), grad)
        scale = 1.0
        while scale > 1e-8 and _penalised_log_loss(w - scale * step, Xa, y, l2) > loss:
            scale /= 2
        w = w - scale * step
        loss = _penalised_log_loss(w, Xa, y, l2)
        if np.abs(scale * step).max() < tol:
            break
    return w


def predict_logistic(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(N,) P(y=1 | x) for the weights of `fit_logistic`."""
    return expit(w[0] + np.asarray(X, dtype=np.float64) @ w[1:])


def cross_validated_probabilities(X: np.ndarray, y: np.ndarray, folds: np.ndarray, *, l2: float = 1e-3) -> np.ndarray:
    """(N,) out-of-fold P(y=1 | x): for each fold, `fit_logistic` on the other folds' rows with
    features standardised by those rows' mean and SD (SD 0 -> 1), then predict the held-out rows."""
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    out = np.empty(len(y))
    for fold in np.unique(folds):
        test = folds == fold
        mean, sd = X[~test].mean(0), X[~test].std(0)
        sd[sd == 0] = 1.0
        w = fit_logistic((X[~test] - mean) / sd, y[~test], l2=l2)
        out[test] = predict_logistic(w, (X[test] - mean) / sd)
    return out
