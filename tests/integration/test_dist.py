"""torchrun with 2 CPU processes (gloo) trains like one process with the same global batch.

Test hypothesis: each rank takes its half of every global batch (same sampler seed everywhere),
parameters start from rank 0's, the loss is divided by the global batch and gradients are summed
over ranks, the puzzle-embedding SignSGD gathers both halves; so losses and metrics match the
single process up to float summation order. Tolerance 1e-5 absolute on losses of order 1 (the
float32 gradient sums differ in the last bits; after 20 AdamATan2 steps the weights agree to
~1e-6). ACT exploration draws per rank (as officially); with q_halt still below 0 in these first
steps exploration cannot change which slots halt, so it does not break the comparison.
Rank 0 alone writes metrics.jsonl, checkpoints and the (offline) W&B run.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.integration.helpers import REPO, cli_env, load, read_metrics, tiny_overrides, train, train_records

pytestmark = pytest.mark.dist
STEPS = 20


def test_two_ranks_match_one_process(sudoku4, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    train(tiny_overrides(sudoku4, single, f"max_steps={STEPS}"))
    args = tiny_overrides(sudoku4, double, f"max_steps={STEPS}", "logger=wandb", "logger.mode=offline")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain.py", *args],
        cwd=REPO, env=cli_env(OMP_NUM_THREADS="1", WANDB_DIR=str(tmp_path / "wandb_home")), capture_output=True, text=True,
        timeout=180, stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]

    one, two = train_records(single), train_records(double)
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step]["train/count"] == one[step]["train/count"], step
        for key in ("train/loss", "train/lm_loss", "train/q_halt_loss", "train/accuracy"):
            assert two[step][key] == pytest.approx(one[step][key], abs=1e-5), (step, key)
    a, b = load(single / "checkpoints" / "last.pt"), load(double / "checkpoints" / "last.pt")
    assert b["train"]["world_size"] == 2 and len(b["train"]["carry"]) == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=1e-5, rtol=0, msg=key)

    # Sharded evaluation: each test example once over the two ranks, the same predictions up to
    # a cell flipped by the ~1e-6 weight differences.
    evals = [next(r for r in read_metrics(d) if "eval/all/count" in r) for d in (single, double)]
    assert evals[0]["eval/all/count"] == evals[1]["eval/all/count"] == 64
    assert evals[1]["eval/all/token_accuracy"] == pytest.approx(evals[0]["eval/all/token_accuracy"], abs=2 / (64 * 16))

    # Rank 0 only: one W&B run, metrics written once, no informational lines from rank 1.
    runs = list((tmp_path / "wandb_home" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert [r["step"] for r in read_metrics(double) if "num_params" in r] == [0]
    assert "[rank 0] run dir" in output
    assert not [line for line in output.splitlines() if "[rank 1]" in line and "WARNING" not in line]
