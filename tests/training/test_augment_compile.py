"""Trajectory augmentation inside a compiled training run (issue 14): no recompiles, no graph breaks.

Test hypothesis: with `launcher.compile=true` and augmentation on, the training forward is traced
once (the compile warm-up, step 1) and every later step reuses that graph: the step counter and
the noise generator never reach the compiled code (the loop draws the noise before the forward and
passes it in as tensors). Before the fix each new step value failed a guard (a recompile per step
until the recompile limit, then eager) and the generator call broke the graph: 10 graphs and 10
graph breaks in 6 steps. torch._dynamo's counters are read after every step; graphs and breaks are
dynamo's, so the fast `eager` backend shows them as inductor would (the inductor run is `slow`).
The run crosses a clean warm-up and a sigma ramp, and slots restart at several steps.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from model_core.losses import ACTLossHead
from puzzles.build import build_dataset
from puzzles.builders import SudokuGenConfig
from tests.integration.helpers import load, read_metrics, tiny_overrides, train
from training import loop as training


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory) -> Path:
    """4x4 Sudoku, 256 train / 64 test puzzles (the integration tests' fixture, built here)."""
    out = tmp_path_factory.mktemp("data") / "sudoku4"
    return build_dataset(SudokuGenConfig(out=str(out), n_train=256, n_test=64, givens=10, size=4, seed=0))


def _snapshot() -> dict[str, int]:
    return {
        "graphs": counters["stats"]["unique_graphs"],
        "frames": counters["frames"]["total"],
        "breaks": sum(counters["graph_break"].values()),
        "cache_entries": len(torch._dynamo.eval_frame._debug_get_cache_entry_list(ACTLossHead.forward.__code__)),
    }


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_augmented_run_traces_once(backend, sudoku4, tmp_path, monkeypatch):
    steps = 10
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend=backend, **kw))
    after_step: list[dict[str, int]] = []
    train_step = training.Trainer.train_step

    def counted(self, batch):
        out = train_step(self, batch)
        after_step.append(_snapshot())
        return out

    monkeypatch.setattr(training.Trainer, "train_step", counted)
    torch._dynamo.reset()
    counters.clear()
    run_dir = tmp_path / "run"
    try:
        train(tiny_overrides(sudoku4, run_dir, f"max_steps={steps}", "launcher.compile=true", "augment=multi_perturbed_ce",
                             "augment.sigma=0.05", "augment.clean_warmup_steps=2", "augment.ramp_steps=4"))
    finally:
        torch._dynamo.reset()  # no compiled frames left behind for other tests
    assert len(after_step) == steps
    assert after_step[0] == {"graphs": 1, "frames": 1, "breaks": 0, "cache_entries": 1}  # warm-up: one trace
    assert all(s == after_step[0] for s in after_step[1:]), after_step  # zero recompiles afterwards
    # The copies of each row still hold the same puzzle, and the received sigma was logged.
    data = load(run_dir / "checkpoints" / "last.pt")["train"]["carry"][0]["current_data"]
    inputs = data["inputs"].view(4, 32, -1)
    assert torch.equal(inputs, inputs[:1].expand_as(inputs))
    logged = {r["step"]: r["train/aug_effective_sigma"] for r in read_metrics(run_dir) if "train/aug_effective_sigma" in r}
    assert sorted(logged) == [5, 9]  # clean steps 1-2; all slots restart at 1, 5, 9 (4 segments each)
    assert logged == pytest.approx({5: 1.0, 9: 1.0}, rel=0.05)
