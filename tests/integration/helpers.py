"""Helpers for the training integration tests: composed configs, in-process and CLI runs, records.

Runs use the micro `trm_debug` / `hrm_debug` arches on a 4x4 Sudoku (seq_len 16, vocab 6) built by
`puzzles.build` in a temporary folder, so one optimizer step takes milliseconds and a whole run a
second or two. CLI runs are subprocesses with the test process's thread count, so in-process and
CLI runs do the same floating-point work.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from training.config import PretrainConfig, register_configs
from training.loop import TrainResult, run

REPO = Path(__file__).resolve().parents[2]
# Per-record fields that depend on the wall clock, not on the computation.
CLOCK_KEYS = ("time", "train/examples_per_s")


def tiny_overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """A seconds-long CPU run of the micro TRM on `data`: global batch 32, deterministic kernels,
    no W&B, a short warmup so the weights move from the first steps."""
    return [
        "arch=trm_debug", "data=path", f"data.path={data}", "global_batch_size=32", "logger=none",
        "launcher=cpu", "progress=false", "optim.lr=3e-3", "optim.puzzle_emb_lr=3e-3",
        "optim.lr_warmup_steps=5", "data.eval_batch_size=64", f"run_dir={run_dir}", *extra,
    ]


def compose_pretrain(overrides: list[str]) -> PretrainConfig:
    """conf/pretrain.yaml composed with `overrides` and converted, as pretrain.py does."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("pretrain", overrides=overrides))


def train(overrides: list[str]) -> TrainResult:
    """One training run in this process."""
    return run(compose_pretrain(overrides))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this process's thread count, W&B off unless asked."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root, stdin closed (a prompt would fail, not hang)."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env or cli_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Exit status 2, stderr exactly one line `error: ...` containing `expected`, no traceback."""
    where = f"\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 2, f"exit status {proc.returncode}{where}"
    assert "Traceback" not in proc.stdout + proc.stderr, where
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), where
    assert expected in lines[0], where


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of run_dir/metrics.jsonl (each line must parse)."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    """step -> the train/* record of that step, clock fields removed; a repeated step fails."""
    out: dict[int, dict[str, Any]] = {}
    for record in read_metrics(run_dir):
        if "train/loss" in record:
            assert record["step"] not in out, f"step {record['step']} logged twice in {run_dir}"
            out[record["step"]] = {k: v for k, v in record.items() if k not in CLOCK_KEYS}
    return out


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of nested containers of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max().item():.3g})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What must survive a resume unchanged: step, weights, EMA, optimizers, sampler, RNG, carry,
    augmentation generator, best score (not the wall clock, config paths or run names)."""
    train = checkpoint["train"]
    return {
        "step": checkpoint["step"], "model": checkpoint["model"], "ema": checkpoint["ema"],
        **{k: train[k] for k in ("optimizers", "loader", "iters_done", "rng", "carry", "augment", "best")},
    }
