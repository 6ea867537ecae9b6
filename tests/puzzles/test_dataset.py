"""The official batch sampler: train packing, rank slices, test padding, exact resume."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from puzzles.dataset import LoaderConfig, PuzzleDataset
from puzzles.layout import PuzzleArrays, make_metadata, write_dataset
from runtime.errors import ConfigError

GROUP_SIZES = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3]  # puzzles per group, one example per puzzle


def tagged(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs whose first two tokens spell the example index; labels with some 0 (ignored) tokens."""
    idx = np.arange(n)
    inputs = np.ones((n, 6), np.uint8)
    inputs[:, 0], inputs[:, 1] = idx % 200 + 1, idx // 200 + 1
    labels = np.full((n, 6), 7, np.uint8)
    labels[:, 5] = 0
    return inputs, labels


def example_ids(batch: dict[str, torch.Tensor]) -> list[int]:
    x = batch["inputs"].numpy()
    return [int(a - 1 + 200 * (b - 1)) if a else -1 for a, b in zip(x[:, 0], x[:, 1])]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    n = sum(GROUP_SIZES)
    inputs, labels = tagged(n)
    train = PuzzleArrays(inputs, labels, np.zeros(n, np.int32), np.arange(n + 1, dtype=np.int32),
                         np.concatenate([[0], np.cumsum(GROUP_SIZES)]).astype(np.int32))
    test = PuzzleArrays.one_example_per_puzzle(*tagged(10))
    write_dataset(tmp_path / "ds", {"train": {"all": train}, "test": {"all": test}}, vocab_size=201)
    return tmp_path / "ds"


def reference_pass(seed: int, iters: int, epochs: int, batch: int) -> list[list[int]]:
    """The official packing for one-example puzzles, written out from official.md 4.5."""
    bounds = np.concatenate([[0], np.cumsum(GROUP_SIZES)])
    rng = np.random.Generator(np.random.Philox(seed=seed + iters))
    order = np.concatenate([rng.permutation(len(GROUP_SIZES)) for _ in range(epochs)])
    out, current = [], []
    for group in order:
        current.append(int(rng.integers(bounds[group], bounds[group + 1])))
        if len(current) == batch:
            out.append(current)
            current = []
    return out  # the short tail is dropped


def run(ds: PuzzleDataset) -> list[tuple[str, list[int], int]]:
    return [(name, example_ids(batch), n) for name, batch, n in ds]


def test_train_matches_official_packing(root):
    ds = PuzzleDataset(root, "train", LoaderConfig(seed=3, global_batch_size=4, epochs_per_iter=2))
    for iters in (1, 2):  # each __iter__ is a new pass with Philox(seed + iters)
        got = run(ds)
        assert [ids for _, ids, _ in got] == reference_pass(3, iters, 2, 4)
        assert {(name, n) for name, _, n in got} == {("all", 4)}
    assert len(reference_pass(3, 1, 2, 4)) == 22 // 4


def test_batch_format(root):
    _, batch, _ = next(iter(PuzzleDataset(root, "train", LoaderConfig(global_batch_size=4))))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {
        "inputs": (torch.int32, (4, 6)), "labels": (torch.int32, (4, 6)), "puzzle_identifiers": (torch.int32, (4,))}
    assert (batch["labels"][:, 5] == -100).all() and (batch["labels"][:, :5] == 7).all()


def test_rank_slices_partition_the_global_batch(root):
    full = run(PuzzleDataset(root, "train", LoaderConfig(seed=1, global_batch_size=4)))
    ranks = [run(PuzzleDataset(root, "train", LoaderConfig(seed=1, global_batch_size=4, rank=r, world_size=2)))
             for r in range(2)]
    assert [a[1] + b[1] for a, b in zip(*ranks)] == [ids for _, ids, _ in full]
    assert all(n == 4 for rank in ranks for _, _, n in rank)


def test_multi_example_puzzles(tmp_path):
    """Puzzles with several examples: min(size, room) distinct examples of one puzzle per pick."""
    sizes = [3, 1, 5, 2, 4, 2]
    n = sum(sizes)
    inputs, labels = tagged(n)
    arrays = PuzzleArrays(inputs, labels, np.arange(len(sizes), dtype=np.int32),
                          np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
                          np.array([0, 2, 4, 6], np.int32))
    meta = replace(make_metadata({"all": arrays}, 201), num_puzzle_identifiers=len(sizes))
    write_dataset(tmp_path / "ds", {"train": {"all": arrays}}, vocab_size=201, metadata={"train": meta})
    cfg = LoaderConfig(seed=0, global_batch_size=4, epochs_per_iter=3)
    a, b = run(PuzzleDataset(tmp_path / "ds", "train", cfg)), run(PuzzleDataset(tmp_path / "ds", "train", cfg))
    assert a == b and len(a) > 0
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for _, batch, _ in PuzzleDataset(tmp_path / "ds", "train", cfg):
        ids = example_ids(batch)
        puzzles = batch["puzzle_identifiers"].tolist()
        assert len(ids) == 4
        for e, p in zip(ids, puzzles):
            assert starts[p] <= e < starts[p + 1]  # the example belongs to its puzzle
        for p in set(puzzles):
            mine = [e for e, q in zip(ids, puzzles) if q == p]
            assert len(mine) == len(set(mine))  # without replacement


def test_test_mode_sequential_and_padded(root):
    cfgs = [LoaderConfig(global_batch_size=4, rank=r, world_size=2, test_set_mode=True) for r in range(2)]
    got = [run(PuzzleDataset(root, "test", cfg)) for cfg in cfgs]
    assert [ids for _, ids, _ in got[0]] == [[0, 1], [4, 5], [8, 9]]
    assert [ids for _, ids, _ in got[1]] == [[2, 3], [6, 7], [-1, -1]]
    assert [n for _, _, n in got[1]] == [4, 4, 2]  # real examples in the global chunk
    *_, (_, last, _) = PuzzleDataset(root, "test", cfgs[1])
    assert (last["inputs"] == 0).all() and (last["labels"] == -100).all() and (last["puzzle_identifiers"] == 0).all()
    single = run(PuzzleDataset(root, "test", LoaderConfig(global_batch_size=3, test_set_mode=True)))
    assert [ids for _, ids, _ in single] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, -1, -1]]


def take(ds: PuzzleDataset, k: int) -> list[tuple[str, list[int], int]]:
    """The first k batches of a new pass, leaving the generator suspended like a killed job."""
    it = iter(ds)
    return [(name, example_ids(b), n) for _, (name, b, n) in zip(range(k), it)]


@pytest.mark.parametrize("full_passes,stop_after", [(0, 0), (0, 1), (0, 3), (1, 2)])
def test_exact_resume(root, full_passes, stop_after):
    """Test hypothesis: stopping after any batch and resuming from state_dict in a new object
    reproduces the uninterrupted stream exactly (3 batches per pass here)."""
    cfg = LoaderConfig(seed=5, global_batch_size=3)
    ref = PuzzleDataset(root, "train", cfg)
    uninterrupted = run(ref) + run(ref) + run(ref)
    assert len(uninterrupted) == 9
    first = PuzzleDataset(root, "train", cfg)
    head = sum((run(first) for _ in range(full_passes)), []) + take(first, stop_after)
    resumed = PuzzleDataset(root, "train", cfg)
    resumed.load_state_dict(first.state_dict())
    tail = run(resumed) + run(resumed)
    assert len(head + tail) == 3 * (full_passes + 2)  # the interrupted pass is completed, then one more
    assert head + tail == uninterrupted[: len(head + tail)]


def test_resume_test_mode(root):
    cfg = LoaderConfig(global_batch_size=3, test_set_mode=True)
    full = run(PuzzleDataset(root, "test", cfg))
    ds = PuzzleDataset(root, "test", cfg)
    it = iter(ds)
    next(it), next(it)
    resumed = PuzzleDataset(root, "test", cfg)
    resumed.load_state_dict(ds.state_dict())
    assert run(resumed) == full[2:]


def test_works_in_a_dataloader(root):
    ds = PuzzleDataset(root, "train", LoaderConfig(seed=3, global_batch_size=4, epochs_per_iter=2))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    assert [example_ids(b) for _, b, _ in loader] == reference_pass(3, 1, 2, 4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(global_batch_size=5, world_size=2), "global_batch_size=5 must be a positive multiple of world_size=2"),
    (dict(global_batch_size=4, world_size=2, rank=2), "rank=2 must lie in 0..1"),
    (dict(global_batch_size=4, epochs_per_iter=0), "epochs_per_iter must be at least 1, got 0"),
])
def test_bad_loader_config(root, kwargs, message):
    with pytest.raises(ConfigError) as e:
        PuzzleDataset(root, "train", LoaderConfig(**kwargs))
    assert str(e.value) == message
