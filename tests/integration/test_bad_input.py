"""pretrain.py answers user mistakes with one line `error: ...`, exit status 2 and no traceback.

The mistakes of issue 5 run the real command line in a subprocess (about 3-4 s each, mostly
imports); further ones check the message in-process, the CLI wrapping being the same.
"""
from __future__ import annotations

import pytest
import yaml

from runtime.errors import ConfigError, DatasetError
from tests.integration.helpers import assert_one_line_error, compose_pretrain, run_cli, tiny_overrides, train
from training import state as ts


@pytest.fixture(scope="module")
def finished(sudoku4, tmp_path_factory):
    """A finished 2-step run whose directory other commands then collide with."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=2"))
    return run_dir


def pretrain(*args: str):
    return run_cli(["pretrain.py", *args])


def test_unknown_experiment():
    assert_one_line_error(pretrain("experiment=trm_sudoku"), "no config 'experiment/trm_sudoku'; available: hrm_maze, hrm_sudoku, hrm_tiny, maze_tiny")


def test_mistyped_key(sudoku4, tmp_path):
    assert_one_line_error(pretrain(*tiny_overrides(sudoku4, tmp_path / "r", "optim.lrr=1e-3")), "unknown config key 'optim.lrr'")


@pytest.mark.parametrize("override, message", [
    ("arch.vocab_size=11", "arch.vocab_size=11 does not fit dataset"),
    ("arch.seq_len=81", "arch.seq_len=81 does not fit dataset"),
])
def test_arch_that_does_not_fit_the_data(override, message, sudoku4, tmp_path):
    assert_one_line_error(pretrain(*tiny_overrides(sudoku4, tmp_path / "r", override)), message)
    # refused before anything was written (Hydra made the folder; .lock is the run-dir lock)
    assert [p.name for p in (tmp_path / "r").iterdir() if p.name != ".lock"] == []


def test_missing_data_path(tmp_path):
    proc = pretrain("arch=trm_debug", "data=path", "logger=none", f"run_dir={tmp_path / 'r'}")
    assert_one_line_error(proc, "data.path=... is required")


def test_data_path_that_holds_no_dataset(sudoku4, tmp_path):
    overrides = tiny_overrides(sudoku4, tmp_path / "r") + [f"data.path={tmp_path / 'nowhere'}"]
    assert_one_line_error(pretrain(*overrides), f"dataset {tmp_path / 'nowhere'} has no train/dataset.json")
    with pytest.raises(DatasetError, match="has no train/dataset.json"):
        train(tiny_overrides(sudoku4, tmp_path / "r2") + [f"data.path={tmp_path}"])  # a folder, but not a dataset


def test_output_directory_of_another_run(finished, sudoku4):
    assert_one_line_error(pretrain(*tiny_overrides(sudoku4, finished, "max_steps=2")), "already holds a run; pass resume=auto")
    proc = pretrain(*tiny_overrides(sudoku4, finished, "max_steps=4", "resume=auto", "optim.lr=1e-3"))
    assert_one_line_error(proc, "belongs to another run: `optim` differs (optim.lr: 0.003 -> 0.001)")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(sudoku4, tmp_path):
    """lr 1e30 throws the weights to ~1e29 in the first update; the second forward overflows.
    The run stops before applying that update; the step-1 checkpoint stays and loads."""
    run_dir = tmp_path / "r"
    proc = pretrain(*tiny_overrides(sudoku4, run_dir, "optim.lr=1e30", "optim.lr_warmup_steps=0", "max_steps=10", "checkpoint_interval=1"))
    kept = run_dir / "checkpoints" / "step_0000001.pt"
    assert_one_line_error(proc, f"non-finite loss (nan) at step 2; training stopped before the update, the last good checkpoint is {kept}")
    assert [s for s, _ in ts.list_checkpoints(run_dir)] == [1]
    assert ts.read_train_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 1


# --- further mistakes, in-process ----------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("max_steps=0", "max_steps=0 must be >= 1"),
    ("global_batch_size=512", "dataset .* yields 256 training examples .* fewer than global_batch_size=512"),
    ("optim.lr_min_ratio=2", r"optim.lr_min_ratio=2.0 must be in \[0, 1\]"),
    ("augment.mode=multi_perturbed_ce augment.n_perturbed=0", "augment.n_perturbed=0 must be >= 1"),
    ("launcher=slurm launcher.device=cpu", "launcher=slurm submits through Hydra's submitit launcher: add -m"),
])
def test_values_that_cannot_run(override, message, sudoku4, tmp_path):
    with pytest.raises((ConfigError, DatasetError), match=message):
        train(tiny_overrides(sudoku4, tmp_path / "r", *override.split()))


def test_wandb_mode_typo_fails_when_the_config_is_converted(sudoku4, tmp_path):
    with pytest.raises(ConfigError, match="wandb mode 'ofline' is not one of online, offline, disabled"):
        compose_pretrain(tiny_overrides(sudoku4, tmp_path / "r", "logger.mode=ofline"))


def test_run_dir_that_is_a_file(sudoku4, tmp_path):
    (tmp_path / "r").write_text("not a run")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        train(tiny_overrides(sudoku4, tmp_path / "r"))


def test_a_finished_run_directory_holds_its_resolved_config(finished):
    """(Not an error case: the run the collisions above use is a complete one.)"""
    assert yaml.safe_load((finished / "config.yaml").read_text())["max_steps"] == 2
