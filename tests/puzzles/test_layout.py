"""Official on-disk layout: round trip, byte compatibility with the official writers, validation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from puzzles.layout import (PuzzleArrays, PuzzleMetadata, load_split, make_metadata, read_metadata,
                            write_dataset)
from runtime.errors import DatasetError


def tiny_splits() -> dict[str, dict[str, PuzzleArrays]]:
    rng = np.random.default_rng(0)
    train = PuzzleArrays.one_example_per_puzzle(rng.integers(1, 11, (6, 81)), rng.integers(2, 11, (6, 81)), 3)
    test = PuzzleArrays.one_example_per_puzzle(rng.integers(1, 11, (4, 81)), rng.integers(2, 11, (4, 81)))
    return {"train": {"all": train}, "test": {"all": test}}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", tiny_splits(), vocab_size=11)
    return tmp_path / "ds"


def test_round_trip(dataset):
    split = load_split(dataset, "train")
    want = tiny_splits()["train"]["all"]
    for name in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
        np.testing.assert_array_equal(getattr(split, name), getattr(want, name))
    assert split.inputs.dtype == np.uint8 and split.puzzle_indices.dtype == np.int32
    assert isinstance(split.inputs, np.memmap) and not split.inputs.flags.writeable
    assert split.group_indices.tolist() == [0, 3, 6]
    assert split.metadata == PuzzleMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11,
                                            seq_len=81, num_puzzle_identifiers=1, total_groups=2,
                                            mean_puzzle_examples=1.0, sets=["all"], total_puzzles=2)
    assert load_split(dataset, "test").metadata.total_groups == 4
    assert json.loads((dataset / "identifiers.json").read_text()) == ["<blank>"]
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["ds"]  # no temporary folder left


def test_dataset_json_is_official_serialisation(dataset):
    """Official builders write json.dump(PuzzleDatasetMetadata(...).model_dump()); the bytes must match."""
    pydantic = pytest.importorskip("pydantic")

    class PuzzleDatasetMetadata(pydantic.BaseModel):  # the official schema (TRM), field for field
        pad_id: int
        ignore_label_id: int | None
        blank_identifier_id: int
        vocab_size: int
        seq_len: int
        num_puzzle_identifiers: int
        total_groups: int
        mean_puzzle_examples: float
        total_puzzles: int
        sets: list[str]

    official = PuzzleDatasetMetadata(seq_len=81, vocab_size=11, pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                                     num_puzzle_identifiers=1, total_groups=2, mean_puzzle_examples=1,
                                     total_puzzles=2, sets=["all"])
    assert (dataset / "train" / "dataset.json").read_text() == json.dumps(official.model_dump())
    assert (dataset / "identifiers.json").read_text() == json.dumps(["<blank>"])


def test_hrm_metadata_without_total_puzzles(dataset):
    path = dataset / "train" / "dataset.json"
    data = json.loads(path.read_text())
    del data["total_puzzles"]
    path.write_text(json.dumps(data))
    assert read_metadata(dataset, "train").total_puzzles == 2  # defaults to total_groups


def test_accepts_plain_dicts_and_casts_to_official_dtypes(tmp_path):
    arrays = tiny_splits()["test"]["all"]
    plain = {name: np.asarray(getattr(arrays, name), dtype=np.int64) for name in
             ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}
    write_dataset(tmp_path / "ds", {"test": {"all": plain}}, vocab_size=11)
    split = load_split(tmp_path / "ds", "test")
    assert split.inputs.dtype == np.uint8 and split.group_indices.dtype == np.int32
    np.testing.assert_array_equal(split.inputs, arrays.inputs)


def test_multiple_sets(tmp_path):
    a, b = tiny_splits()["train"]["all"], tiny_splits()["test"]["all"]
    write_dataset(tmp_path / "ds", {"train": {"all": a, "extra": b}}, vocab_size=11)
    meta = read_metadata(tmp_path / "ds", "train")
    assert meta.sets == ["all", "extra"] and meta.total_groups == 2 + 4
    np.testing.assert_array_equal(load_split(tmp_path / "ds", "train", "extra").inputs, b.inputs)
    assert make_metadata({"all": a}, 11).total_puzzles == 2


def test_refuses_non_empty_output(dataset):
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        write_dataset(dataset, tiny_splits(), vocab_size=11)


def test_failed_write_leaves_nothing(tmp_path):
    bad = tiny_splits()
    bad["test"]["all"].inputs = np.full((4, 81), 300)  # fails after the train split was written
    with pytest.raises(ValueError, match="inputs values do not fit uint8"):
        write_dataset(tmp_path / "ds", bad, vocab_size=11)
    assert list(tmp_path.iterdir()) == []


def corrupt(dataset: Path, what: str) -> str:
    """Damage the dataset one way; return the expected error message."""
    split = dataset / "train"
    if what == "no root":
        return f"dataset directory {dataset / 'nope'} does not exist"
    if what == "no split":
        return f"dataset {dataset} has no 'valid' split (expected folder {dataset / 'valid'})"
    if what == "no dataset.json":
        (split / "dataset.json").unlink()
        return f"missing {split / 'dataset.json'}"
    if what == "bad json":
        (split / "dataset.json").write_text("{not json")
        return f"cannot parse {split / 'dataset.json'}"
    if what == "missing field":
        data = json.loads((split / "dataset.json").read_text())
        del data["seq_len"]
        (split / "dataset.json").write_text(json.dumps(data))
        return f"{split / 'dataset.json'} lacks field(s) seq_len"
    if what == "no array":
        (split / "all__labels.npy").unlink()
        return f"missing array file {split / 'all__labels.npy'}"
    if what == "bad npy":
        (split / "all__inputs.npy").write_bytes(b"garbage")
        return f"cannot read {split / 'all__inputs.npy'}"
    if what == "seq_len":
        np.save(split / "all__inputs.npy", np.ones((6, 80), np.uint8))
        return f"{split}/all__*.npy: inputs shape (6, 80) does not match seq_len 81"
    if what == "vocab":
        x = np.load(split / "all__labels.npy")
        x[2, 5] = 11
        np.save(split / "all__labels.npy", x)
        return f"{split}/all__*.npy: labels hold tokens outside 0..10 (vocab_size 11)"
    if what == "indices":
        np.save(split / "all__puzzle_indices.npy", np.arange(6, dtype=np.int32))
        return f"{split}/all__*.npy: puzzle_indices must rise from 0 to 6 examples (one entry per puzzle plus one)"
    if what == "short ids":
        ids = np.load(split / "all__puzzle_identifiers.npy")
        np.save(split / "all__puzzle_identifiers.npy", ids[:-1])
        return f"{split}/all__*.npy: puzzle_identifiers has {len(ids) - 1} entries for {len(ids)} puzzles"
    if what == "negative ids":
        meta = json.loads((split / "dataset.json").read_text())
        meta["num_puzzle_identifiers"] = -1
        (split / "dataset.json").write_text(json.dumps(meta))
        return f"{split / 'dataset.json'}: field num_puzzle_identifiers is -1, must be at least 1"
    if what == "float dtype":
        np.save(split / "all__inputs.npy", np.ones((6, 81), np.float32))
        return f"{split}/all__*.npy: inputs has dtype float32, expected integers"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["no root", "no split", "no dataset.json", "bad json", "missing field", "no array",
                                  "bad npy", "seq_len", "vocab", "indices", "short ids", "negative ids", "float dtype"])
def test_load_errors(dataset, what):
    message = corrupt(dataset, what)
    root = dataset / "nope" if what == "no root" else dataset
    split = "valid" if what == "no split" else "train"
    with pytest.raises(DatasetError) as e:
        load_split(root, split)
    assert str(e.value).startswith(message)


def test_unknown_set(dataset):
    with pytest.raises(DatasetError, match=r"has no set 'extra' \(sets: all\)"):
        load_split(dataset, "train", "extra")


def test_accepts_other_int_dtypes(dataset):
    split = dataset / "train"
    np.save(split / "all__inputs.npy", np.load(split / "all__inputs.npy").astype(np.int64))
    assert load_split(dataset, "train").inputs.dtype == np.int64
