"""End to end: a short run's directory, its checkpoints, evaluate.py and the official export.

Test hypothesis: what pretrain.py writes is complete and self-consistent: the checkpoint it keeps
reproduces the run's own final evaluation through `load_checkpoint` and `python evaluate.py`, the
official-layout export predicts exactly the same, best.pt follows the exact accuracy and only the
newest `keep_last_checkpoints` step files stay.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from model_core.checkpoint import load_checkpoint
from puzzles.build import build_dataset
from puzzles.builders import SudokuGenConfig
from runtime.manifest import dataset_hash
from tests.integration.helpers import load, read_metrics, run_cli, tiny_overrides, train, train_records
from training.evaluation import EvalOptions, evaluate_split
from training.loop import Trainer

STEPS, EVAL_EVERY, CKPT_EVERY, KEEP = 20, 10, 6, 2


@pytest.fixture(scope="module")
def easy4(tmp_path_factory):
    """4x4 Sudoku with one blank cell: the micro TRM solves a fifth of the test set within 20
    steps, so the exact accuracies compared below are not all zero."""
    out = tmp_path_factory.mktemp("data") / "easy4"
    return build_dataset(SudokuGenConfig(out=str(out), n_train=256, n_test=64, givens=15, size=4, seed=0))


@pytest.fixture(scope="module")
def finished_run(easy4, tmp_path_factory):
    """20 steps of the micro TRM with a fast EMA (rate 0.5, so the evaluated EMA weights really
    differ from the raw ones): evaluations at steps 10 and 20, checkpoints every 6 steps."""
    run_dir = tmp_path_factory.mktemp("runs") / "e2e"
    result = train(tiny_overrides(
        easy4, run_dir, f"max_steps={STEPS}", f"eval_interval={EVAL_EVERY}", f"checkpoint_interval={CKPT_EVERY}",
        f"keep_last_checkpoints={KEEP}", "optim.ema=true", "optim.ema_rate=0.5", "optim.lr=1e-2", "optim.puzzle_emb_lr=1e-2",
    ))
    return run_dir, result


def _eval_file(run_dir, step: int) -> dict:
    return yaml.safe_load((run_dir / "eval" / f"step_{step:07d}.json").read_text())


def test_run_directory_holds_config_manifest_metrics_checkpoints_and_evals(finished_run, easy4):
    run_dir, result = finished_run
    assert result.step == STEPS
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "config.yaml", "eval", "manifest.json", "metrics.jsonl"]
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == ["step_0000010.json", "step_0000020.json"]

    # The resolved config: no interpolation left, the data-derived arch fields filled in.
    text = (run_dir / "config.yaml").read_text()
    assert "${" not in text
    config = yaml.safe_load(text)
    assert (config["arch"]["vocab_size"], config["arch"]["seq_len"], config["arch"]["batch_size"]) == (6, 16, 32)
    assert config["data"]["path"] == str(easy4) and config["max_steps"] == STEPS and config["optim"]["ema"] is True

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"] == config
    assert manifest["dataset"]["sha256"] == dataset_hash(easy4)["sha256"]

    # metrics.jsonl: the parameter count at step 0, one train record per step, the two evaluations.
    records = read_metrics(run_dir)
    assert records[0]["step"] == 0 and records[0]["num_params"] > 0
    assert sorted(train_records(run_dir)) == list(range(1, STEPS + 1))
    evals = {r["step"]: r for r in records if "eval/all/exact_accuracy" in r}
    assert sorted(evals) == [EVAL_EVERY, STEPS]
    assert evals[STEPS]["eval/all/token_accuracy"] == _eval_file(run_dir, STEPS)["token_accuracy"]


def test_checkpoints_keep_the_newest_and_the_best(finished_run):
    """Step files were written at 6, 10 (first evaluation, a new best), 12, 18 and 20; two stay."""
    run_dir, result = finished_run
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt", "step_0000018.pt", "step_0000020.pt"]
    assert load(folder / "last.pt")["step"] == STEPS
    exact = {s: _eval_file(run_dir, s)["exact_accuracy"] for s in (EVAL_EVERY, STEPS)}
    best_step = STEPS if exact[STEPS] > exact[EVAL_EVERY] else EVAL_EVERY  # ties keep the earlier one
    assert load(folder / "best.pt")["step"] == best_step
    assert result.best_exact_accuracy == exact[best_step]


def test_evaluate_cli_reproduces_the_final_evaluation(finished_run, easy4, tmp_path):
    """The run evaluated the EMA weights at step 20 (batches of 64); evaluate.py loads last.pt
    (EMA weights by default) and evaluates in batches of 256: the same predictions, so the same
    exact and token accuracy, and the loss to float32 rounding."""
    run_dir, _ = finished_run
    loaded = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (loaded.kind, loaded.step, loaded.arch.name, loaded.arch.seq_len) == ("rrdyn", STEPS, "trm", 16)

    proc = run_cli(["evaluate.py", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", f"data_path={easy4}", f"output_dir={tmp_path / 'eval'}"])
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    final = _eval_file(run_dir, STEPS)
    assert got["count"] == final["count"] == 64 and got["step"] == STEPS
    assert got["exact_accuracy"] == final["exact_accuracy"] > 0
    assert got["token_accuracy"] == final["token_accuracy"]
    assert got["lm_loss"] == pytest.approx(final["lm_loss"], rel=1e-6)


def test_official_export_predicts_identically(finished_run, easy4, tmp_path):
    """`python -m training.export` writes step_20 + all_config.yaml (EMA weights, official
    key prefix); loading that folder gives the same logits as the checkpoint itself, and not the
    logits of the raw weights."""
    run_dir, _ = finished_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    proc = run_cli(["-m", "training.export", str(ckpt), str(tmp_path / "official")])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("step_20")
    assert sorted(p.name for p in (tmp_path / "official").iterdir()) == ["all_config.yaml", "step_20"]
    assert all(k.startswith("_orig_mod.model.inner.") for k in load(tmp_path / "official" / "step_20"))

    exported = load_checkpoint(tmp_path / "official", seq_len=16)
    ours = load_checkpoint(ckpt)
    assert exported.kind == "official" and exported.step == STEPS
    opts = EvalOptions(batch_size=64)
    a = evaluate_split(ours.model, easy4, "test", opts, progress=False)
    b = evaluate_split(exported.model, easy4, "test", opts, progress=False)
    np.testing.assert_array_equal(a.arrays["logits"], b.arrays["logits"])
    np.testing.assert_array_equal(a.arrays["preds"], b.arrays["preds"])
    raw = evaluate_split(load_checkpoint(ckpt, use_ema=False).model, easy4, "test", opts, progress=False)
    assert not np.array_equal(raw.arrays["logits"], a.arrays["logits"])


def test_best_follows_exact_accuracy_while_old_step_files_are_pruned(sudoku4, tmp_path, monkeypatch):
    """With evaluations scripted to score 0.25, 0.75, 0.5 at steps 2, 4, 6 and 0.0 at the end (8),
    checkpoints are written at 2 and 4 (new bests), 3 and 6 (checkpoint_interval) and 8 (final).
    keep_last_checkpoints=2 leaves steps 6 and 8; best.pt still holds step 4."""
    scores = iter([0.25, 0.75, 0.5, 0.0])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"exact_accuracy": next(scores), "token_accuracy": 0.5})
    run_dir = tmp_path / "run"
    result = train(tiny_overrides(sudoku4, run_dir, "max_steps=8", "eval_interval=2", "checkpoint_interval=3", "keep_last_checkpoints=2"))
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt", "step_0000006.pt", "step_0000008.pt"]
    best = load(folder / "best.pt")
    assert best["step"] == 4 and best["train"]["best"] == {"exact_accuracy": 0.75, "step": 4}
    assert load(folder / "last.pt")["step"] == 8
    assert result.best_exact_accuracy == 0.75
    assert [r["eval/all/exact_accuracy"] for r in read_metrics(run_dir) if "eval/all/exact_accuracy" in r] == [0.25, 0.75, 0.5, 0.0]


def test_a_new_best_at_the_last_step_points_best_at_the_final_checkpoint(sudoku4, tmp_path, monkeypatch):
    """The final step is saved by checkpoint_interval before the final evaluation; when that
    evaluation is a new best, best.pt becomes that same step file."""
    scores = iter([0.25, 0.5])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"exact_accuracy": next(scores)})
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=4", "eval_interval=2", "checkpoint_interval=4"))
    assert load(run_dir / "checkpoints" / "best.pt")["step"] == 4


def test_a_recipe_built_dataset_is_built_once_and_reused(tmp_path):
    """data=sudoku_gen builds the dataset on first use, cached by its config hash; the next run
    reuses it although the first run's manifest left its digest cache (a dot-file) inside."""
    recipe = ["data=sudoku_gen", "data.build.n_train=64", "data.build.n_test=16", "data.build.size=4", "data.build.givens=10",
              f"data.build.out='{tmp_path / 'data'}/sudoku-{{hash}}'"]
    for name in ("first", "second"):
        overrides = [o for o in tiny_overrides(tmp_path, tmp_path / name, "max_steps=1") if not o.startswith("data")]
        train(overrides + recipe)
    (built,) = (tmp_path / "data").iterdir()
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("first", "second")]
    assert manifests[0]["dataset"]["sha256"] == manifests[1]["dataset"]["sha256"] == dataset_hash(built)["sha256"]
    assert yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())["data"]["build"]["n_train"] == 64
