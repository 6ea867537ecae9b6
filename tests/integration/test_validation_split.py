"""Honest model selection: `data.val_n` holds out train groups that choose best.pt.

Test hypothesis: with `data.val_n=n` the n held-out groups (seeded, recorded in the manifest) are
never sampled for training, the evaluations during training score them (eval/val/*) and best.pt
follows that score; the test split is scored only at the end, once with the final weights and
once with best.pt's, logged and written under labels saying which is which. Without `val_n`
nothing changes (the other integration tests cover that path).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from puzzles.dataset import LoaderConfig, PuzzleDataset
from puzzles.layout import load_split
from tests.integration.helpers import load, read_metrics, tiny_overrides, train
from training.loop import Trainer
from training.validation import first_examples, holdout_groups


def test_held_out_groups_are_seeded_and_never_sampled(sudoku4):
    groups = holdout_groups(sudoku4, 32, seed=0)
    assert len(groups) == 32 and np.array_equal(groups, np.unique(groups))
    assert np.array_equal(groups, holdout_groups(sudoku4, 32, seed=0))
    assert not np.array_equal(groups, holdout_groups(sudoku4, 32, seed=1))
    train_split = load_split(sudoku4, "train")
    held = {bytes(train_split.inputs[i]) for i in first_examples(sudoku4, groups)}
    loader = PuzzleDataset(str(sudoku4), "train", LoaderConfig(global_batch_size=32, exclude_groups=tuple(groups.tolist())))
    seen = [bytes(row) for _, batch, _ in loader for row in batch["inputs"].numpy().astype(train_split.inputs.dtype)]
    assert len(seen) == 224 and not held & set(seen)  # 256 - 32 groups of one example each, 7 full batches


def test_best_follows_validation_and_test_is_reported_for_final_and_best(sudoku4, tmp_path, monkeypatch):
    """Scripted scores: validation 0.25, 0.75, 0.5 at steps 2, 4, 6 (best: step 4); the test
    evaluations at the end return a different score for the final and for best.pt's weights."""
    val_scores = iter([0.25, 0.75, 0.5])
    calls = []

    def fake_evaluate(self, test=False, model=None):
        calls.append((self.step, test, None if model is None else load(self.run_dir / "checkpoints" / "best.pt")["step"]))
        if not test:
            return {"exact_accuracy": next(val_scores), "count": 32}
        return {"exact_accuracy": 0.1 if model is None else 0.2, "count": 64}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    run_dir = tmp_path / "run"
    result = train(tiny_overrides(sudoku4, run_dir, "max_steps=6", "eval_interval=2", "data.val_n=32"))
    assert calls == [(2, False, None), (4, False, None), (6, False, None), (6, True, None), (6, True, 4)]
    assert load(run_dir / "checkpoints" / "best.pt")["step"] == 4
    assert result.best_exact_accuracy == 0.75
    assert result.test_metrics == {"final": {"exact_accuracy": 0.1, "count": 64}, "best_on_val": {"exact_accuracy": 0.2, "count": 64}}
    records = read_metrics(run_dir)
    assert [r["eval/val/exact_accuracy"] for r in records if "eval/val/exact_accuracy" in r] == [0.25, 0.75, 0.5]
    assert not [r for r in records if "eval/all/exact_accuracy" in r]
    last = [r for r in records if "test/final/exact_accuracy" in r or "test/best_on_val/exact_accuracy" in r]
    assert {k: v for r in last for k, v in r.items() if k.startswith("test/")} == {
        "test/final/exact_accuracy": 0.1, "test/final/count": 64, "test/best_on_val/exact_accuracy": 0.2, "test/best_on_val/count": 64}
    best = yaml.safe_load((run_dir / "eval" / "test_best_on_val.json").read_text())
    assert best["weights_step"] == 4 and best["split"] == "test"
    assert yaml.safe_load((run_dir / "eval" / "test_final.json").read_text())["weights_step"] == 6
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["validation"] == {"source_split": "train", "n_groups": 32, "seed": 0,
                                      "groups": holdout_groups(sudoku4, 32, seed=0).tolist()}


def test_a_real_run_scores_validation_and_test_counts(sudoku4, tmp_path):
    """Unscripted: validation evaluations score the 32 held-out examples, the two test
    evaluations all 64 test puzzles, and the best-on-validation score is best.pt's."""
    run_dir = tmp_path / "run"
    result = train(tiny_overrides(sudoku4, run_dir, "max_steps=6", "eval_interval=3", "data.val_n=32", "optim.ema=true", "optim.ema_rate=0.5"))
    records = read_metrics(run_dir)
    assert [r["eval/val/count"] for r in records if "eval/val/count" in r] == [32, 32]
    assert result.test_metrics["final"]["count"] == result.test_metrics["best_on_val"]["count"] == 64
    vals = {r["step"]: r["eval/val/exact_accuracy"] for r in records if "eval/val/exact_accuracy" in r}
    best_step = load(run_dir / "checkpoints" / "best.pt")["step"]
    assert vals[best_step] == max(vals.values()) == result.best_exact_accuracy
    if best_step == 6:  # same weights: the two test scores must agree exactly
        assert result.test_metrics["final"] == result.test_metrics["best_on_val"]


def test_val_n_out_of_range_is_refused(sudoku4, tmp_path):
    from runtime.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"data.val_n=256 must be in \[1, 255\]"):
        train(tiny_overrides(sudoku4, tmp_path / "run", "max_steps=2", "data.val_n=256"))
