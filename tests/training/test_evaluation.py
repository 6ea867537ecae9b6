"""Restart-and-select inference: the selection rules on known answers, and on an official
checkpoint the plain restart is the plain evaluation, every kicked restart is the trajectory from
its documented noise, and the figures follow from the per-example arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_core.checkpoint import load_checkpoint
from model_core.core import LatentCarry
from runtime.errors import ConfigError
from tests.conftest import OFFICIAL_FIXTURES
from training.evaluation import EvalOptions, evaluate_split, restart_noise, run_segments, select_restart

TRM = OFFICIAL_FIXTURES / "trm_mlp"


def test_selection_rules_on_known_answers():
    # example 0: answers A, B, B with confidences 3, 1, 2 -> q_halt picks 0, vote picks B (restart 2, the more confident B)
    # example 1: answers A, B, C (one vote each) -> vote falls back to the most confident (restart 1)
    a, b, c = [0, 0], [1, 1], [2, 2]
    preds = torch.tensor([[a, b, b], [a, b, c]])
    confidence = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, -1.0]])
    assert select_restart(preds, confidence, "q_halt").tolist() == [0, 1]
    assert select_restart(preds, confidence, "vote").tolist() == [2, 1]
    # adaptive: the first restart that ends confident (> 0); none confident -> the most confident
    assert select_restart(preds, torch.tensor([[-1.0, 0.5, 2.0], [-3.0, -1.0, -2.0]]), "adaptive").tolist() == [1, 1]


@pytest.mark.parametrize("opts, message", [
    (EvalOptions(restarts=0), r"restarts=0 must be >= 1"),
    (EvalOptions(restarts=3, select="best"), r"select='best' is not one of \['q_halt', 'vote', 'adaptive'\]"),
    (EvalOptions(restarts=3, sigma=0.0), r"sigma=0.0 must be > 0 when restarts > 1"),
    (EvalOptions(restarts=3, act_halting=True), r"does not combine with act_halting=true"),
])
def test_bad_restart_options_are_one_line(opts, message):
    with pytest.raises(ConfigError, match=message):
        opts.check()


def test_restart_and_select_on_an_official_checkpoint():
    loaded = load_checkpoint(TRM / "run", seq_len=81)
    plain = evaluate_split(loaded.model, TRM / "data", opts=EvalOptions(n=16, batch_size=8, keep_logits=False), progress=False)
    opts = EvalOptions(n=16, batch_size=8, keep_logits=False, restarts=3, sigma=0.5, select="q_halt", restart_seed=4)
    kicked = evaluate_split(loaded.model, TRM / "data", opts=opts, progress=False)
    a, r = kicked.arrays, kicked.metrics["restarts"]
    np.testing.assert_array_equal(a["exact_unperturbed"], plain.arrays["exact"])
    np.testing.assert_array_equal(a["restart_exact"][:, 0], plain.arrays["exact"])
    assert r["exact_accuracy_plain"] == plain.metrics["exact_accuracy"] and r["k"] == 3
    np.testing.assert_array_equal(a["exact"], a["restart_exact"][np.arange(16), a["restart_chosen"]])
    assert r["gain"] == pytest.approx(a["exact"].mean() - a["exact_unperturbed"].mean())
    assert r["oracle_best_of_k"] == a["restart_exact"].any(1).mean() >= max(r["exact_accuracy_selected"], r["exact_accuracy_plain"])
    fired = a["restart_confidence"] > 0
    assert r["restarts_run_if_adaptive"] == pytest.approx(np.where(fired.any(1), fired.argmax(1) + 1, 3).mean())
    lo, hi = r["gain_ci95"]
    assert lo <= r["gain"] <= hi
    # per-segment records for the policy replay: restart 0's are the plain trajectory's
    assert a["restart_exact_by_segment"].shape == a["restart_confidence_by_segment"].shape == (16, 3, 4)
    np.testing.assert_array_equal(a["restart_exact_by_segment"][:, 0], plain.arrays["exact_by_segment"])
    np.testing.assert_array_equal(a["restart_exact_by_segment"][:, :, -1], a["restart_exact"])
    np.testing.assert_allclose(a["restart_confidence_by_segment"][:, :, -1], a["restart_confidence"], rtol=0, atol=0)
    same = (a["restart_answer"][:, :, None] == a["restart_answer"][:, None, :])
    assert (a["restart_answer"] <= np.arange(3)).all() and same.diagonal(axis1=1, axis2=2).all()
    policies = {row["policy"]: row for row in r["policies"]}
    assert policies["best of 3 (q_halt)"]["exact_accuracy"] == pytest.approx(r["exact_accuracy_selected"])  # select=q_halt, K=3
    assert policies["adaptive (prune at S), up to 3 restarts"]["compute"] == pytest.approx(r["restarts_run_if_adaptive"])
    # restart 2 of the first example, recomputed alone from its documented noise
    core = loaded.model.model.inner
    first = {k: torch.from_numpy(np.asarray(v[:1])) for k, v in (("inputs", a["inputs"].astype(np.int32)), ("labels", a["labels"].astype(np.int64)))}
    first["puzzle_identifiers"] = torch.zeros(1, dtype=torch.int32)
    z0 = core.initial_carry(1)
    noise = restart_noise(a["index"][:1], 0.5, 2, (2, *z0.z_H.shape[1:]), 4, torch.float32)[1:2]
    step = 0.5 * float(core.H_init.double().std(correction=0))
    out = run_segments(core, first, 4, act_halting=False, carry=LatentCarry(z0.z_H + step * noise[:, 0], z0.z_L + step * noise[:, 1]))
    assert bool(out["exact_by_segment"][0, -1]) == bool(a["restart_exact"][0, 2])
    assert float(out["q_halt_logits"][0, -1]) == pytest.approx(float(a["restart_confidence"][0, 2]), abs=1e-5)  # TRM: confidence = q_halt
    assert float(a["restart_confidence"][0, 2]) != pytest.approx(float(a["restart_confidence"][0, 0]), abs=1e-5)  # the kick changed it
