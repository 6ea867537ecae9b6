"""The one study driver under bad luck: nothing mixed, nothing lost, nothing silent.

Test hypotheses, each on a toy batched study over the official TRM-MLP fixture (4 examples in
2 batches; per example its index and the sum of its input tokens, optionally poisoned):
- a study rerun into a folder whose shards were computed on a dataset that has since changed
  refuses with one line saying so (the shard fingerprint holds the dataset's content hash);
- a second study writing into a locked folder stops at once, naming the owner;
- a batch with NaN in a `finite` array stops the run, names the example and saves nothing of it;
- SIGINT during batch 0 stops after it with the shard kept and the resume command in the
  message, and the rerun ends with the arrays of an uninterrupted run.
"""
from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diagnostics.config import BatchedStudyConfig, DiagnoseConfig
from diagnostics.driver import BatchedRun, InterruptedStudy, NonFiniteError, drive
from diagnostics.inputs import load_study_inputs
from diagnostics.registry import Study
from runtime.errors import UserError
from runtime.lock import DirectoryInUseError, DirectoryLock
from tests.conftest import OFFICIAL_FIXTURES

TRM = OFFICIAL_FIXTURES / "trm_mlp"
N, BATCH = 4, 2


@dataclass
class ProbeConfig(BatchedStudyConfig):
    """poison: sample position whose value becomes NaN (-1: none); interrupt_at: batch number
    during which the process sends itself SIGINT (-1: never)."""

    name: str = "probe"
    poison: int = -1
    interrupt_at: int = -1


def probe_batch(run: BatchedRun, rows: slice, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    value = batch["inputs"].double().sum(-1).numpy()
    positions = np.arange(rows.start, rows.stop)
    value[positions == run.settings.poison] = np.nan
    if rows.start // BATCH == run.settings.interrupt_at:
        signal.raise_signal(signal.SIGINT)
    return {"index": run.inputs.index[rows].astype(np.int64), "value": value}


PROBE = Study("probe", ProbeConfig, batch=probe_batch, summarise=lambda results, meta, settings, seed: {**meta, "total": float(results["value"].sum())},
              report=lambda summary: "# probe\n", finite=("value",))


def config(data: Path, **settings: Any) -> DiagnoseConfig:
    return DiagnoseConfig(study=ProbeConfig(**settings), checkpoint=str(TRM / "run"), data_path=str(data), n=N, batch_size=BATCH)


@pytest.fixture
def data(tmp_path) -> Path:
    """A private copy of the fixture dataset (the tests change it)."""
    return Path(shutil.copytree(TRM / "data", tmp_path / "data"))


def shards(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "shards").glob("batch_*.npz"))


def test_rerun_after_the_dataset_changed_refuses_instead_of_mixing(data, tmp_path):
    out = tmp_path / "out"
    assert drive(PROBE, config(data), out) == 0
    train_inputs = data / "train" / "all__inputs.npy"
    array = np.load(train_inputs)
    array[0, 0] = 1 if array[0, 0] != 1 else 2  # the rebuilt dataset differs in one token of the train split
    np.save(train_inputs, array)
    with pytest.raises(UserError, match=r"holds shards of a different run \(the dataset's content changed\); they are not mixed"):
        drive(PROBE, config(data), out)


def test_a_locked_study_folder_is_refused_at_once(data, tmp_path):
    out = tmp_path / "out"
    with DirectoryLock(out, purpose="study (probe)"):
        with pytest.raises(DirectoryInUseError, match=rf"is in use by another study \(probe\): PID {os.getpid()} on "):
            drive(PROBE, config(data), out)
    assert not (out / "shards").exists()


def test_nan_stops_the_study_naming_the_example(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError) as err:
        drive(PROBE, config(data, poison=3), out)
    poisoned = load_study_inputs(str(TRM / "run"), str(data), n=N, seed=0).index[3]
    assert str(err.value).startswith(f"probe: non-finite value for 1 of 2 examples (index {poisoned}); nothing summarised. ")
    assert shards(out) == ["batch_000000.npz"] and not (out / "summary.json").exists()


def test_sigint_keeps_finished_shards_and_the_rerun_completes_identically(data, tmp_path):
    clean = tmp_path / "clean"
    drive(PROBE, config(data), clean)
    out = tmp_path / "out"
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(InterruptedStudy, match=rf"^probe interrupted with 1 of 2 batches done; the finished shards in {out}/shards are kept; "
                                               rf"rerun the same command with hydra.run.dir={out} to resume$"):
        drive(PROBE, config(data, interrupt_at=0), out)
    assert shards(out) == ["batch_000000.npz"] and signal.getsignal(signal.SIGINT) is handler  # restored
    # the rerun (same settings, so the same fingerprint) does batch 1 only
    drive(PROBE, config(data, interrupt_at=0), out)
    with np.load(clean / "results.npz") as a, np.load(out / "results.npz") as b:
        assert a["value"].tolist() == b["value"].tolist() and a["index"].tolist() == b["index"].tolist()
