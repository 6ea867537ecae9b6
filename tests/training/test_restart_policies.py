"""Restart policies replayed from records: known outcomes and costs on hand-made records, and
agreement with evaluate.py's own selection rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.evaluation import select_restart
from training.restart_policies import best_of_k, compare_policies, format_policy_table, prune


def _records(n: int = 200, K: int = 4, S: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    exact = rng.random((n, K, S)) < 0.5
    confidence = rng.normal(size=(n, K, S))
    answer = rng.integers(0, 3, size=(n, K))
    return exact, confidence, answer


def test_best_of_k_takes_the_most_confident_restart_and_costs_k_trajectories():
    exact = np.zeros((2, 3, 4), dtype=bool)
    exact[0, 2, -1] = True  # example 0: only restart 2 is right
    exact[1, 0, -1] = True  # example 1: only the plain trajectory is right
    confidence = np.zeros((2, 3, 4))
    confidence[0, :, -1] = [-1.0, 0.5, 2.0]
    confidence[1, :, -1] = [1.0, 3.0, -2.0]
    out = best_of_k(exact, confidence, None, 3)
    assert out.right.tolist() == [True, False]
    assert out.segments.tolist() == [12, 12]
    assert best_of_k(exact, confidence, None, 1).right.tolist() == [False, True]


def test_vote_takes_the_majority_answer_and_breaks_ties_by_confidence():
    exact = np.zeros((2, 3, 2), dtype=bool)
    exact[0, 1, -1] = exact[0, 2, -1] = True  # restarts 1 and 2 agree (right), restart 0 is alone
    exact[1, 0, -1] = True
    confidence = np.zeros((2, 3, 2))
    confidence[0, :, -1] = [5.0, -1.0, -1.0]  # the lone answer is the most confident: the vote still wins
    confidence[1, :, -1] = [1.0, 0.0, -1.0]  # three different answers: the most confident
    answer = np.array([[0, 1, 1], [0, 1, 2]])
    assert best_of_k(exact, confidence, answer, 3, "vote").right.tolist() == [True, True]


def test_prune_abandons_a_trajectory_not_confident_at_w_and_counts_its_segments():
    S, w = 8, 2
    exact = np.zeros((3, 3, S), dtype=bool)
    confidence = -np.ones((3, 3, S))
    # example 0: the plain trajectory is confident at w and at S (right): one trajectory
    confidence[0, 0, :] = 1.0
    exact[0, 0, -1] = True
    # example 1: restart 0 unsure at w (abandoned), restart 1 confident throughout (wrong)
    confidence[1, 1, :] = 1.0
    # example 2: nobody is ever confident; the last restart runs to S and is the only one run to S
    exact[2, 2, -1] = True
    assert prune(exact, confidence, w).right.tolist() == [True, False, True]
    assert prune(exact, confidence, w).segments.tolist() == [S, w + S, w + w + S]


def test_prune_at_the_budget_is_evaluates_adaptive_rule():
    """w = S replays `select=adaptive` of restart-and-select: same choice, and it runs exactly
    the restarts evaluate.py reports as `restarts_run_if_adaptive`."""
    exact, confidence, answer = _records()
    n, K, S = exact.shape
    out = prune(exact, confidence, S)
    final = torch.from_numpy(confidence[:, :, -1])
    preds = torch.from_numpy(answer)[:, :, None]
    chosen = select_restart(preds, final, "adaptive").numpy()
    assert (out.right == exact[np.arange(n), chosen, -1]).all()
    fired = confidence[:, :, -1] > 0
    runs = np.where(fired.any(1), fired.argmax(1) + 1, K)
    assert (out.segments == runs * S).all()


def test_q_halt_best_of_k_matches_evaluates_q_halt_rule():
    exact, confidence, answer = _records(seed=1)
    n = exact.shape[0]
    chosen = select_restart(torch.from_numpy(answer)[:, :, None], torch.from_numpy(confidence[:, :, -1]), "q_halt").numpy()
    assert (best_of_k(exact, confidence, answer, exact.shape[1]).right == exact[np.arange(n), chosen, -1]).all()


def test_compare_policies_rows_are_consistent():
    exact, confidence, answer = _records(n=300, K=4, S=8, seed=2)
    rows = compare_policies(exact, confidence, answer)
    by_name = {r["policy"]: r for r in rows}
    plain = by_name["best of 1 (q_halt)"]
    assert plain["compute"] == 1.0 and plain["gain_over_plain"] == 0.0 and plain["gain_over_plain_ci95"] == [0.0, 0.0]
    assert plain["exact_accuracy"] == pytest.approx(exact[:, 0, -1].mean())
    assert by_name["best of 4 (q_halt)"]["compute"] == 4.0
    for r in rows:
        assert r["exact_ci95"][0] <= r["exact_accuracy"] <= r["exact_ci95"][1]
        assert r["matched_best_of_k"] >= r["compute"] - 1e-9 or r["matched_best_of_k"] == 4
        assert r["gain_over_plain_ci95"][0] <= r["gain_over_plain"] <= r["gain_over_plain_ci95"][1]
    early = by_name["prune at segment 2, up to 4 restarts"]
    assert 1.0 <= early["compute"] <= 4.0  # some restart always runs the whole budget
    table = format_policy_table(rows, 300)
    assert table.count("\n") == len(rows) + 2 and "n = 300" in table


def test_bad_shapes_and_ranges_are_refused():
    exact, confidence, answer = _records(n=4)
    with pytest.raises(ValueError, match=r"\(n, K, S\)"):
        prune(exact[:, :, 0], confidence[:, :, 0], 1)
    with pytest.raises(ValueError, match="w=9"):
        prune(exact, confidence, 9)
    with pytest.raises(ValueError, match="k=5"):
        best_of_k(exact, confidence, answer, 5)
