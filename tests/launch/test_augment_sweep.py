"""launch/augment_sweep.sh: the trajectory-augmentation sweep as one command.

Test hypothesis: the dry run prints one Hydra multirun of pretrain.py per augmentation mode
(none with sigma recorded as 0; single and multi over SIGMAS; multi with N_PERTURBED copies),
each over SEEDS, with a fixed sweep dir under SWEEP_DIR and the user's overrides, and each
condition composes into a valid training config; run for real on a tiny preset, it trains,
evaluates, studies and collects one table with a row per condition.
"""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.integration.helpers import REPO, compose_pretrain

SCRIPT = REPO / "launch" / "augment_sweep.sh"


def sweep(tmp_path, *args: str, timeout: int = 30, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd="/", capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SWEEP_DIR": str(tmp_path / "sweep"), "WANDB_MODE": "disabled", **env})


def printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("$ ")]


def test_dry_run_prints_one_multirun_per_mode(tmp_path):
    proc = sweep(tmp_path, "--dry-run", "max_steps=1200", SEEDS="0,1,2,3", SIGMAS="1e-4,1e-2", N_PERTURBED="3")
    assert proc.returncode == 0, proc.stderr
    commands = printed_commands(proc.stdout)
    assert len(commands) == 3 and not (tmp_path / "sweep").exists()  # nothing run, nothing made
    for argv, mode in zip(commands, ("none", "single", "multi")):
        assert argv[1:3] == ["pretrain.py", "-m"] and "experiment=sudoku_tiny" in argv and "seed=0,1,2,3" in argv
        assert "resume=auto" in argv and "max_train_seconds=null" in argv and "max_steps=1200" in argv
        assert f"hydra.sweep.dir={tmp_path / 'sweep' / 'train' / mode}" in argv
    assert "augment=none" in commands[0] and "augment.sigma=0" in commands[0]
    assert "augment=single_perturbed_ce" in commands[1] and "augment.sigma=1e-4,1e-2" in commands[1]
    assert "augment=multi_perturbed_ce" in commands[2] and "augment.n_perturbed=3" in commands[2]


def test_every_condition_composes(tmp_path):
    """Each printed multirun, with its sweeps expanded to one value, is a valid training config."""
    proc = sweep(tmp_path, "--dry-run")
    for argv in printed_commands(proc.stdout):
        overrides = [a.split("=")[0] + "=" + a.split("=")[1].split(",")[-1] for a in argv[3:] if not a.startswith("hydra.")]
        cfg = compose_pretrain(overrides)
        assert cfg.max_steps == 600 and cfg.max_train_seconds is None and cfg.seed == 2
        if cfg.augment.mode == "multi_perturbed_ce":
            assert (cfg.augment.n_perturbed, cfg.augment.sigma) == (1, 0.1)
        elif cfg.augment.mode == "none":
            assert cfg.augment.sigma == 0


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    """Two seeds x (none, single, multi) at 3 steps on 200 puzzles: 6 checkpoints, each evaluated and
    studied, and a table with one row per condition, n = 2 checkpoints each (~3 min on 1 core)."""
    proc = sweep(tmp_path, "max_steps=3", "global_batch_size=16", "data.build.n_train=200", "data.build.n_test=64", timeout=900,
                 SEEDS="0,1", SIGMAS="1e-3", N_STUDY="16", N_BASIN="8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "sweep" / "table.md").read_text()
    body = table.split("Per condition of augment.mode, augment.sigma")[1]
    for row in ("| none | 0.0 | 2 | 0,1 |", "| single_perturbed_ce | 0.001 | 2 | 0,1 |", "| multi_perturbed_ce | 0.001 | 2 | 0,1 |"):
        assert row in body
    assert "Not collected" not in table and "Not in a condition" not in table
    assert len(list((tmp_path / "sweep" / "train").glob("*/*/evaluate/metrics.json"))) == 6
