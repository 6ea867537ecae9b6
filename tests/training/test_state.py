"""Training checkpoints: names, links, pruning, weights_only loading, skipping bad files, RNG/carry."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model_core.act import ACTCarry
from model_core.core import LatentCarry
from runtime.errors import CheckpointError
from training import state as ts


def _payload(step: int) -> dict:
    carry = ACTCarry(
        inner=LatentCarry(torch.randn(2, 3, 4), torch.randn(2, 3, 4)),
        steps=torch.tensor([1, 2], dtype=torch.int32),
        halted=torch.tensor([True, False]),
        current_data={"inputs": torch.ones(2, 3, dtype=torch.int32)},
    )
    return {
        "format": "rrdyn", "version": 1, "arch": {"name": "trm"}, "model": {"inner.w": torch.full((2,), float(step))},
        "ema": None, "step": step, "config": {"seed": 0}, "manifest": {"git": {"commit": "x"}},
        "train": {"rng": [ts.capture_rng(torch.device("cpu"))], "carry": [ts.carry_to_state(carry)], "best": {"exact_accuracy": None, "step": None}},
    }


def test_checkpoint_names_sort_by_step():
    assert ts.checkpoint_name(1000) == "step_0001000.pt"
    assert sorted([ts.checkpoint_name(s) for s in (20, 3, 100)]) == [ts.checkpoint_name(s) for s in (3, 20, 100)]


def test_save_links_last_and_best_and_keeps_the_newest_k(tmp_path):
    for step in (10, 20, 30, 40):
        ts.save_checkpoint(tmp_path, _payload(step), keep_last=2, best=step == 20)
    assert [s for s, _ in ts.list_checkpoints(tmp_path)] == [30, 40]
    folder = tmp_path / "checkpoints"
    # best.pt still holds step 20 although its step file was pruned; last.pt is step 40.
    assert torch.load(folder / "best.pt", weights_only=True)["step"] == 20
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 40
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = ts.save_checkpoint(tmp_path, _payload(5), keep_last=3)
    payload = ts.read_train_checkpoint(path)
    carry = ts.carry_from_state(payload["train"]["carry"][0], torch.device("cpu"))
    assert payload["step"] == 5 and carry.steps.tolist() == [1, 2] and carry.halted.tolist() == [True, False]


def test_resume_skips_a_corrupt_newest_file_with_a_warning(tmp_path, caplog):
    ts.save_checkpoint(tmp_path, _payload(10), keep_last=5)
    newest = ts.save_checkpoint(tmp_path, _payload(20), keep_last=5)
    newest.write_bytes(newest.read_bytes()[:100])  # torn after the fact
    with caplog.at_level(logging.WARNING):
        path, payload = ts.find_resume_checkpoint(tmp_path)
    assert payload["step"] == 10 and path.name == "step_0000010.pt"
    assert "skipping checkpoint step_0000020.pt" in caplog.text


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert ts.find_resume_checkpoint(tmp_path) is None


def test_official_weights_file_is_refused_for_resume(tmp_path):
    path = tmp_path / "step_100"
    torch.save({"_orig_mod.model.inner.H_init": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="is not an rrdyn training checkpoint"):
        ts.read_train_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ts.read_train_checkpoint(tmp_path / "nope.pt")


def test_rng_round_trip_reproduces_draws():
    torch.manual_seed(3)
    np.random.seed(3)
    state = ts.capture_rng(torch.device("cpu"))
    first = (torch.rand(5), np.random.rand(5))
    torch.manual_seed(99)
    np.random.seed(99)
    ts.restore_rng(state, torch.device("cpu"))
    assert torch.equal(torch.rand(5), first[0])
    np.testing.assert_array_equal(np.random.rand(5), first[1])


def test_reshard_carries_between_world_sizes():
    """Two ranks' carries (rows 0-1 and 2-3 of the global batch) become one 4-row carry and back."""
    def part(lo: int) -> dict:
        rows = torch.arange(lo, lo + 2)
        return {"z_H": rows.view(2, 1).float(), "z_L": -rows.view(2, 1).float(), "steps": rows.int(), "halted": rows % 2 == 0, "current_data": {"inputs": rows.view(2, 1)}}

    one = ts.reshard_carries([part(0), part(2)], world_size=1)
    assert len(one) == 1 and one[0]["steps"].tolist() == [0, 1, 2, 3] and one[0]["current_data"]["inputs"].flatten().tolist() == [0, 1, 2, 3]
    two = ts.reshard_carries(one, world_size=2)
    assert two[1]["z_L"].flatten().tolist() == [-2.0, -3.0] and two[1]["halted"].tolist() == [True, False]
    assert ts.reshard_carries([None, None], world_size=1) == [None]


def test_trim_metrics_keeps_records_up_to_the_step_and_drops_a_torn_line(tmp_path, caplog):
    lines = ['{"step": 0, "num_params": 5}', '{"step": 1, "train/loss": 2.0}', '{"step": 2, "train/loss": 1.5}',
             '{"step": 2, "eval/all/exact_accuracy": 0.5}', '{"step": 3, "train/loss": 1.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "train/lo')
    with caplog.at_level(logging.WARNING):
        ts.trim_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:4]) + "\n"
    assert "dropping a torn line" in caplog.text
    ts.trim_metrics(tmp_path, -1)  # a run that starts over keeps nothing
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    ts.trim_metrics(tmp_path / "absent", 3)  # no metrics yet: nothing to do


def test_remove_stale_temporaries_leaves_real_files(tmp_path):
    ts.save_checkpoint(tmp_path, _payload(10), keep_last=2)
    stale = [tmp_path / "checkpoints" / ".step_0000011.pt.k3j2.tmp", tmp_path / ".metrics.jsonl.x1.tmp", tmp_path / "eval" / ".step_0000010.json.a.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")  # not a hidden atomic-write temporary
    assert sorted(ts.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_0000010.pt"]
    assert (tmp_path / "notes.tmp").exists()
