"""The verdict: counts, Wilson intervals and sentences from study summaries with known numbers.

Test hypothesis: given summaries whose counts are chosen by hand, every fraction equals count/n
with the Wilson 95% interval of scipy (checked against the closed form), the sentences quote
those numbers, the answer is stated only when the interval excludes one half, and the published
values stay in their own labelled table.
"""
from __future__ import annotations

import math

import pytest

from diagnostics.estimators.statistics import proportion_with_ci
from diagnostics.verdict import answer, findings, format_verdict


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Closed form of the Wilson score interval."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 254), (14, 2548), (5, 10), (10, 10), (1, 3)])
def test_wilson_interval_matches_the_closed_form(k, n):
    got = proportion_with_ci(k, n)
    assert got["fraction"] == k / n
    assert got["ci95"] == pytest.approx(wilson(k, n), abs=1e-12)


def summaries(settled_wrong: int, churning: int, solved_later: int) -> dict:
    n_fail = settled_wrong + churning + solved_later
    return {
        "displacement": {"segments": 16, "n_success": 300, "n_failure": 100, "tau": 0.02, "auc_neg_d_late": 0.8, "auc_neg_d_late_ci95": [0.75, 0.85],
                         "cells": {"B": {"count": 7}, "D": {"count": 93}}},
        "extended": {"segments": 16, "survival_segments": [16, 128], "n_failure_at_budget": n_fail,
                     "fate_counts": {"solved_later": solved_later, "settled_wrong": settled_wrong, "churning": churning}},
        "basin": {"n_failures": 40, "hard_core_ever_count": 4, "restarts": 8, "segments_basin": 48,
                  "per_sigma": [{"sigma": 0.0}, {"sigma": 0.3}, {"sigma": 1.0}]},
        "spectrum": {"n_success": 300, "n_failure": 100, "auc_neg_lambda1": 0.45, "auc_neg_lambda1_ci95": [0.40, 0.52]},
    }


def test_findings_carry_count_n_and_wilson_interval():
    found = {f.key: f for f in findings(summaries(settled_wrong=3, churning=80, solved_later=17))}
    assert set(found) == {"settled_at_budget", "moving_at_budget", "solved_later", "settled_wrong", "still_moving", "hard_core",
                          "auc_neg_lambda1", "auc_neg_d_late"}
    for key, count, n in (("settled_at_budget", 7, 100), ("moving_at_budget", 93, 100), ("solved_later", 17, 100), ("settled_wrong", 3, 100),
                          ("still_moving", 80, 100), ("hard_core", 4, 40)):
        f = found[key]
        assert (f.count, f.n, f.value) == (count, n, count / n)
        assert f.ci95 == pytest.approx(wilson(count, n), abs=1e-12)
        assert f.sentence.startswith(f"{count} of {n} failures ({100 * count / n:.1f}%, 95% CI ")
    assert found["still_moving"].sentence.endswith("are neither solved nor settled at segment 128: still moving.")
    assert "none of 8 restarts at any sigma up to 1 x std(H_init) solves them within 48 segments" in found["hard_core"].sentence
    assert found["auc_neg_d_late"].sentence == ("AUC(-d_late) for success = 0.800 (95% CI 0.750-0.850, n = 400: 300 successes, 100 failures): "
                                                "a lower d_late goes with success: failing trajectories are still moving at the budget.")
    assert "does not separate successes from failures at this n" in found["auc_neg_lambda1"].sentence


@pytest.mark.parametrize("settled,verdict", [(3, "**Failures are mostly trajectories that never settle, not wrong attractors**"),
                                             (90, "**Failures are mostly wrong attractors**"),
                                             (50, "**Not decided at this n**")])
def test_answer_only_when_the_interval_excludes_one_half(settled, verdict):
    text = answer(findings(summaries(settled_wrong=settled, churning=100 - settled, solved_later=0)))
    assert text.startswith(verdict) and f"{settled} of 100 settle on a wrong answer (extended)" in text


def test_without_extended_the_budget_settling_decides():
    only = {"displacement": summaries(0, 0, 1)["displacement"]}
    assert answer(findings(only)).startswith("**Failures are mostly trajectories that never settle") and "7 of 100" in answer(findings(only))
    assert answer(findings({})).startswith("No verdict")


def test_published_values_are_a_separate_labelled_table():
    text = format_verdict(summaries(3, 80, 17))
    ours, published = text.split("Published values (analysis.md §9; other models and data, for comparison only, not this run):")
    assert text.startswith("## Verdict\n") and "0 of 254" not in ours and "0 of 254" in published and "87.6%" in published
    assert "| settled_wrong | 0.030000 | [0.0103, 0.0845] | 3 | 100 | extended |" in ours and "| auc_neg_d_late | 0.800000 | [0.7500, 0.8500] | n/a | 400 |" in ours


def test_periodic_traps_count_as_wrong_attractors_and_decide_the_answer():
    """With the recurrence test present, fixed points and periodic orbits of never-solved failures
    make the wrong-attractor fraction, which the answer uses instead of drift settling."""
    s = summaries(settled_wrong=2, churning=80, solved_later=18)
    s["extended"].update({"attractor_counts": {"fixed_point": 2, "periodic": 70, "aperiodic": 8}, "periods": {"2": 60, "3": 10},
                          "recurrence_tol": 1e-3, "max_period": 8})
    found = {f.key: f for f in findings(s)}
    assert (found["wrong_attractor"].count, found["wrong_attractor"].n) == (72, 100)
    assert "2 at a fixed point, 70 on a periodic orbit (60 of period 2, 10 of period 3;" in found["wrong_attractor"].sentence
    assert (found["aperiodic"].count, found["aperiodic"].n) == (8, 100)
    assert answer(list(found.values())).startswith("**Failures are mostly wrong attractors**: 72 of 100 are in a wrong attractor (fixed or periodic)")
