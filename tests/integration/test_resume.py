"""Exact resume on CPU: stop-and-continue and `kill -9` give the uninterrupted run bit for bit.

Test hypothesis: a training checkpoint holds everything the next step depends on (weights, EMA,
optimizer moments, the sampler position across sampler passes, the torch/numpy RNG that ACT
exploration draws from, the ACT carry, the augmentation generator), and the run directory
survives a kill at any moment: checkpoints are written atomically, and metrics logged after the
last checkpoint are dropped on resume, so every step is in metrics.jsonl exactly once.
Deterministic CPU kernels (`launcher=cpu`) make "equal" mean bit-equal.
"""
from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time

import pytest

from training import state as ts
from tests.integration.helpers import (
    REPO, assert_same, cli_env, load, read_metrics, tiny_overrides, train, train_records, training_state,
)

# 256 train puzzles / 32 per batch = 8 steps per sampler pass: 20 steps cross two pass boundaries.
CASES = {
    "trm": ["arch=trm_debug"],
    # HRM: Q-continue head with its extra target forward; clean + 3 perturbed trajectories; EMA.
    "hrm_multi_perturbed": ["arch=hrm_debug", "augment=multi_perturbed_ce", "augment.sigma=0.01", "optim.ema=true"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stop_and_resume_equals_the_straight_run(case, sudoku4, tmp_path):
    """20 steps straight == 10 steps, stop, resume=auto, 10 more: weights, optimizer state, RNG,
    carry and every train metric bit for bit (the stopped run adds its own end-of-run evaluation
    at step 10, which is the only extra record)."""
    extra = CASES[case]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_overrides(sudoku4, straight, "max_steps=20", "checkpoint_interval=10", *extra))
    train(tiny_overrides(sudoku4, split, "max_steps=10", "checkpoint_interval=10", *extra))
    result = train(tiny_overrides(sudoku4, split, "max_steps=20", "checkpoint_interval=10", "resume=auto", *extra))
    assert result.step == 20

    a, b = load(straight / "checkpoints" / "last.pt"), load(split / "checkpoints" / "last.pt")
    assert_same(training_state(a), training_state(b), case)
    assert train_records(straight) == train_records(split)
    evals = lambda d: {r["step"]: r for r in read_metrics(d) if "eval/all/count" in r}  # noqa: E731
    assert sorted(evals(split)) == [10, 20] and sorted(evals(straight)) == [20]
    assert {k: v for k, v in evals(split)[20].items() if k != "time"} == {k: v for k, v in evals(straight)[20].items() if k != "time"}


def test_resume_keeps_the_run_name(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=2"))
    name = load(run_dir / "checkpoints" / "last.pt")["config"]["logger"]["name"]
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3", "resume=auto"))
    assert load(run_dir / "checkpoints" / "last.pt")["config"]["logger"]["name"] == name


def _start(sudoku4, run_dir, steps: int) -> subprocess.Popen:
    args = tiny_overrides(sudoku4, run_dir, f"max_steps={steps}", "checkpoint_interval=1", "resume=auto")
    return subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=REPO, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _last_logged_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [int(m) for m in re.findall(r'"step": (\d+), "time": [^,]+, "train/', path.read_text())] if path.exists() else []
    return max(steps, default=0)


def _kill_during_step(proc: subprocess.Popen, run_dir, step: int, rng: random.Random) -> str:
    """SIGKILL `proc` a random 0-30 ms after it logged train step `step` (mid-step, mid-checkpoint
    or mid-log: each step takes tens of milliseconds); returns where it was killed."""
    deadline = time.monotonic() + 120
    while _last_logged_step(run_dir) < step:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"step {step} not logged within 120 s"
        time.sleep(0.002)
    delay = rng.uniform(0.0, 0.03)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return f"step {step} + {delay * 1000:.0f} ms"


def test_kill_9_at_random_moments_then_resume_equals_the_straight_run(sudoku4, tmp_path):
    """A CLI run checkpointing every step is SIGKILLed at a random moment (a random step, then a
    random 0-30 ms), twice (the second time while resuming); after each kill every checkpoint file
    still loads (last.pt may lag one step: the kill can fall between the step file and its link).
    The final `resume=auto` finishes with the weights and metrics of an uninterrupted run, no step
    lost or repeated."""
    steps = 60
    rng = random.Random()
    straight, run_dir = tmp_path / "straight", tmp_path / "killed"
    train(tiny_overrides(sudoku4, straight, f"max_steps={steps}", f"checkpoint_interval={steps}"))

    kills, target = [], 0
    for _ in range(2):
        target = rng.randint(target + 5, target + 20)
        proc = _start(sudoku4, run_dir, steps)
        kills.append(_kill_during_step(proc, run_dir, target, rng))
        assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}); killed at {kills}"
        saved = ts.list_checkpoints(run_dir)
        for _, path in saved:
            ts.read_train_checkpoint(path)  # raises on a torn file
        assert ts.read_train_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] in [s for s, _ in saved[-2:]]
    assert ts.list_checkpoints(run_dir)[-1][0] < steps, f"killed at {kills}"

    train(tiny_overrides(sudoku4, run_dir, f"max_steps={steps}", "checkpoint_interval=1", "resume=auto"))
    records = read_metrics(run_dir)  # every line parses: a torn last line was dropped
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, steps + 1)), f"killed at {kills}"
    assert [r["step"] for r in records if "num_params" in r] == [0]
    assert train_records(run_dir) == train_records(straight)
    assert_same(training_state(load(straight / "checkpoints" / "last.pt")), training_state(load(run_dir / "checkpoints" / "last.pt")))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(sudoku4, tmp_path):
    """Only config.yaml and metrics.jsonl survive (no checkpoint): resume=auto starts from step 0
    and the records of the dead run are dropped, so metrics.jsonl equals a fresh run's."""
    fresh, run_dir = tmp_path / "fresh", tmp_path / "run"
    train(tiny_overrides(sudoku4, fresh, "max_steps=5"))
    train(tiny_overrides(sudoku4, run_dir, "max_steps=5"))
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # and a record torn by the kill
    train(tiny_overrides(sudoku4, run_dir, "max_steps=5", "resume=auto"))
    assert train_records(run_dir) == train_records(fresh)
    assert [r["step"] for r in read_metrics(run_dir) if "num_params" in r] == [0]
