"""A run directory under bad luck: a second process, Ctrl-C / SIGTERM, a run that died early.

Test hypothesis: one process owns a run directory (a second is refused within a second, naming
the owner); SIGINT or SIGTERM finishes the step in flight, writes a checkpoint and prints one line
with the resume command, and resuming reaches the uninterrupted run's weights; a run that never
wrote a checkpoint can be started again in the same folder; a finished run resumed leaves no
temporary file behind.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from runtime.errors import ConfigError
from training import state as ts
from tests.integration.helpers import (
    REPO, assert_same, cli_env, load, read_metrics, tiny_overrides, train, train_records, training_state,
)


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=REPO, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc: subprocess.Popen, run_dir, step: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        path = run_dir / "metrics.jsonl"
        steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] if path.exists() else []
        if steps and steps[-1] >= step:
            return
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"step {step} not logged within 120 s"
        time.sleep(0.01)


def test_a_second_process_on_the_same_run_dir_is_refused(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    first = _popen(tiny_overrides(sudoku4, run_dir, "max_steps=100000", "resume=auto"))
    try:
        _wait_for_step(first, run_dir, 1)
        start = time.monotonic()
        second = subprocess.run([sys.executable, "pretrain.py", *tiny_overrides(sudoku4, run_dir, "max_steps=5", "resume=auto")],
                                cwd=REPO, env=cli_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"is in use by another training run: PID {first.pid}" in lines[0]
        # refused before any heavy work: start-up of the interpreter and torch dominate
        assert time.monotonic() - start < 30
        assert first.poll() is None  # the owner is untouched
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_checkpoints_and_resume_matches_the_straight_run(sig, sudoku4, tmp_path):
    steps = 40
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    train(tiny_overrides(sudoku4, straight, f"max_steps={steps}"))
    proc = _popen(tiny_overrides(sudoku4, run_dir, f"max_steps={steps}"))
    _wait_for_step(proc, run_dir, 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at step "), err
    assert "Traceback" not in err
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert 5 <= step < steps
    assert f"run_dir={run_dir} resume=auto" in lines[0]
    assert ts.read_train_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step
    assert not list(run_dir.rglob("*.tmp"))

    train(tiny_overrides(sudoku4, run_dir, f"max_steps={steps}", "resume=auto"))
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == list(range(1, steps + 1))
    assert train_records(run_dir) == train_records(straight)
    assert_same(training_state(load(straight / "checkpoints" / "last.pt")), training_state(load(run_dir / "checkpoints" / "last.pt")))


def test_a_run_that_failed_before_its_first_checkpoint_can_be_rerun_in_place(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3"))
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()  # as if it had died before saving
    # neither a plain rerun nor resume=auto with other settings is blocked: nothing would be lost
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3", "optim.lr=1e-3"))
    assert [s for s, _ in ts.list_checkpoints(run_dir)] == [3]
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3", "resume=auto"))
    assert [s for s, _ in ts.list_checkpoints(run_dir)] == [3]


def test_resuming_a_finished_run_leaves_no_temporary_file(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=4"))
    train(tiny_overrides(sudoku4, run_dir, "max_steps=4", "resume=auto"))
    assert not [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def _copy_dataset(src, dst):
    import shutil  # noqa: PLC0415
    shutil.copytree(src, dst)
    return dst


def test_resume_on_a_changed_dataset_is_refused_unless_allowed(sudoku4, tmp_path):
    """The dataset is rebuilt at the same path with other puzzles: resume=auto names the changed
    files; allow_data_change=true continues and the manifest keeps the first part's dataset."""
    import json  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from runtime.errors import ConfigError  # noqa: PLC0415

    data, run_dir = _copy_dataset(sudoku4, tmp_path / "data"), tmp_path / "run"
    train(tiny_overrides(data, run_dir, "max_steps=3"))
    first_hash = json.loads((run_dir / "manifest.json").read_text())["dataset"]["sha256"]
    inputs = np.load(data / "train" / "all__inputs.npy")
    np.save(data / "train" / "all__inputs.npy", inputs[::-1].copy())
    with pytest.raises(ConfigError, match=r"changed since checkpoint .* \(train/all__inputs.npy differ\); .*allow_data_change=true"):
        train(tiny_overrides(data, run_dir, "max_steps=6", "resume=auto"))
    train(tiny_overrides(data, run_dir, "max_steps=6", "resume=auto", "allow_data_change=true"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["allow_data_change"] is True
    assert manifest["dataset"]["sha256"] != first_hash
    assert [h["dataset"]["sha256"] for h in manifest["history"]] == [first_hash]


def test_changing_only_the_evaluation_sample_does_not_block_a_resume(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_overrides(sudoku4, run_dir, "max_steps=3", "data.eval_n=16"))
    result = train(tiny_overrides(sudoku4, run_dir, "max_steps=5", "resume=auto", "data.eval_n=32", "data.eval_batch_size=8"))
    assert result.step == 5


def test_too_little_disk_for_a_checkpoint_is_refused_before_the_first_step(sudoku4, tmp_path, monkeypatch):
    """The free space is compared with a checkpoint's size before training (simulated: a
    filesystem with 100 KiB free); nothing is trained and the line names both sizes."""
    from runtime import atomic  # noqa: PLC0415
    from training.loop import checkpoint_size_estimate  # noqa: PLC0415

    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: real._replace(free=100 * 1024))
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^cannot write {run_dir}: a checkpoint \(weights, optimizer moments, EMA\) needs about 211.5 KiB "
                                          rf"and 100.0 KiB are free on .*; free some space or choose another folder$"):
        train(tiny_overrides(sudoku4, run_dir, "max_steps=3"))
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    assert checkpoint_size_estimate(torch.nn.Linear(10, 10)) == 4 * 110 * 4
