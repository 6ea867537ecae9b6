"""Restarts against early pruning at equal compute: inference policies replayed from records.

Restart-and-select evaluation (`training.evaluation.restart_and_select`) records, for each example
and each of its K restarts (restart 0 is the plain trajectory), whether the answer after every
segment is exact and the model's halting confidence after every segment:

    exact       (n, K, S) bool     answer of restart k after segment s is exact
    confidence  (n, K, S) float    halting confidence (q_halt, or q_halt - q_continue for HRM)
    answer      (n, K) int64       final answers as ids: restarts with equal final answers share one

Each policy below is a rule a user can run without labels. Replaying it on the records gives its
outcome and its compute exactly, without running the model again. Compute is counted in segments
and reported in units of one plain trajectory of S segments (plain inference costs 1.0).

    best_of_k   k restarts to S; answer with the most confident one ("q_halt") or the answer
                most of them give, ties broken by confidence ("vote"). Cost k.
    prune       restarts in order. Restart r runs to segment w; if it is not confident there
                (confidence <= 0) it is abandoned and its remaining budget goes to restart r+1
                (cost w/S); otherwise it runs on to S and its answer is taken if it ends
                confident. The last restart always runs to S. When none ends confident, the most
                confident of those run to S answers. w = S is evaluate.py's `select=adaptive`.

A selected answer counts as right when the chosen restart is exact at segment S. Accuracies carry
95% Wilson intervals; each policy's difference from the plain trajectory and from best-of-k at
matched compute (the smallest k whose cost is at least the policy's) carries a paired 95%
percentile bootstrap interval over examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, bootstrap


@dataclass(frozen=True)
class PolicyOutcome:
    """One policy's per-example result: right (n,) bool and segments run (n,) int64."""

    name: str
    right: np.ndarray
    segments: np.ndarray


def _check(exact: np.ndarray, confidence: np.ndarray) -> tuple[int, int, int]:
    if exact.ndim != 3 or exact.shape != confidence.shape:
        raise ValueError(f"exact and confidence must both be (n, K, S); got {exact.shape} and {confidence.shape}")
    return exact.shape


def best_of_k(exact: np.ndarray, confidence: np.ndarray, answer: np.ndarray | None, k: int, rule: str = "q_halt") -> PolicyOutcome:
    """Restarts 0..k-1 run to S; the most confident ("q_halt") or the majority answer ("vote")."""
    n, K, S = _check(exact, confidence)
    if not 1 <= k <= K:
        raise ValueError(f"k={k} must be in 1..{K}")
    final_conf = confidence[:, :k, -1]
    if rule == "q_halt":
        chosen = final_conf.argmax(1)
    elif rule == "vote":
        if answer is None:
            raise ValueError("vote needs the answer ids")
        ids = answer[:, :k]
        votes = (ids[:, :, None] == ids[:, None, :]).sum(-1).astype(np.float64)  # (n, k) restarts agreeing with each
        chosen = (votes + 0.5 / (1.0 + np.exp(-final_conf.astype(np.float64)))).argmax(1)  # bonus < 1: ties only
    else:
        raise ValueError(f"rule={rule!r} is not one of q_halt, vote")
    right = exact[np.arange(n), chosen, -1]
    return PolicyOutcome(f"best of {k} ({rule})", right, np.full(n, k * S, dtype=np.int64))


def prune(exact: np.ndarray, confidence: np.ndarray, w: int, k: int | None = None) -> PolicyOutcome:
    """Sequential restarts, abandoning one not confident at segment w (see the module docstring)."""
    n, K, S = _check(exact, confidence)
    k = K if k is None else k
    if not 1 <= w <= S or not 1 <= k <= K:
        raise ValueError(f"w={w} must be in 1..{S} and k={k} in 1..{K}")
    right = np.zeros(n, dtype=bool)
    segments = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    best_conf = np.full(n, -np.inf)
    best_right = np.zeros(n, dtype=bool)
    for r in range(k):
        active = ~done
        last = r == k - 1
        survives = active & ((confidence[:, r, w - 1] > 0) | last)
        ran_to_end = survives | (active & (w == S))  # with w = S an abandoned restart ran the whole budget
        segments += np.where(ran_to_end, S, np.where(active, w, 0))
        conf_end = confidence[:, r, -1]
        better = ran_to_end & (conf_end > best_conf)
        best_conf = np.where(better, conf_end, best_conf)
        best_right = np.where(better, exact[:, r, -1], best_right)
        accept = survives & (conf_end > 0)
        right = np.where(accept, exact[:, r, -1], right)
        done |= accept
    right = np.where(done, right, best_right)
    name = "adaptive (prune at S)" if w == S else f"prune at segment {w}"
    return PolicyOutcome(f"{name}, up to {k} restarts", right, segments)


def _wilson(right: np.ndarray) -> tuple[float, float]:
    ci = binomtest(int(right.sum()), len(right)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _paired_ci(diff: np.ndarray, seed: int) -> list[float] | None:
    if len(diff) < 2 or np.all(diff == diff[0]):
        return [float(diff.mean())] * 2 if len(diff) else None
    res = bootstrap((diff,), np.mean, n_resamples=1000, method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def compare_policies(exact: np.ndarray, confidence: np.ndarray, answer: np.ndarray, prune_at: tuple[int, ...] | None = None,
                     seed: int = 0) -> list[dict]:
    """One row per policy: compute (mean segments / S), exact accuracy with its Wilson CI, the
    paired difference from plain inference and from q_halt best-of-k at matched compute, each
    with a bootstrap CI. `prune_at`: the checkpoints w (default S/4, S/2 and S)."""
    n, K, S = _check(exact, confidence)
    prune_at = tuple(sorted({max(1, S // 4), max(1, S // 2), S})) if prune_at is None else prune_at
    plain = exact[:, 0, -1].astype(np.float64)
    best = {k: best_of_k(exact, confidence, answer, k) for k in range(1, K + 1)}
    outcomes = list(best.values())
    outcomes += [best_of_k(exact, confidence, answer, k, "vote") for k in range(3, K + 1, 2)]
    outcomes += [prune(exact, confidence, w) for w in prune_at]
    rows = []
    for out in outcomes:
        compute = float(out.segments.mean() / S)
        matched_k = min(K, max(1, math.ceil(compute - 1e-9)))
        right = out.right.astype(np.float64)
        low, high = _wilson(out.right)
        matched = best[matched_k].right.astype(np.float64)
        rows.append({
            "policy": out.name,
            "compute": compute,
            "exact_accuracy": float(right.mean()),
            "exact_ci95": [low, high],
            "gain_over_plain": float((right - plain).mean()),
            "gain_over_plain_ci95": _paired_ci(right - plain, seed),
            "matched_best_of_k": matched_k,
            "vs_matched_best_of_k": float((right - matched).mean()),
            "vs_matched_best_of_k_ci95": _paired_ci(right - matched, seed),
        })
    return rows


def format_policy_table(rows: list[dict], n: int) -> str:
    """Markdown table of `compare_policies` rows (n examples)."""

    def ci(pair: list[float] | None) -> str:
        return "n/a" if pair is None else f"{pair[0]:+.3f} to {pair[1]:+.3f}"

    lines = [
        f"| policy (n = {n}) | compute (x plain) | exact (95% Wilson CI) | gain over plain (95% CI) | vs q_halt best-of-k at matched compute (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['compute']:.2f} | {r['exact_accuracy']:.3f} ({r['exact_ci95'][0]:.3f}-{r['exact_ci95'][1]:.3f}) | "
                     f"{r['gain_over_plain']:+.3f} ({ci(r['gain_over_plain_ci95'])}) | "
                     f"k={r['matched_best_of_k']}: {r['vs_matched_best_of_k']:+.3f} ({ci(r['vs_matched_best_of_k_ci95'])}) |")
    return "\n".join(lines) + "\n"
