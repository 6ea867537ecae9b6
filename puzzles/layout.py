"""The official on-disk puzzle layout (official.md 4.4): reader, validator and atomic writer.

    <root>/identifiers.json                    ["<blank>"]
    <root>/<split>/dataset.json                PuzzleMetadata (official field order)
    <root>/<split>/<set>__inputs.npy           (N_examples, seq_len) uint8 tokens
    <root>/<split>/<set>__labels.npy           (N_examples, seq_len) uint8 tokens
    <root>/<split>/<set>__puzzle_identifiers.npy  (N_puzzles,) int32
    <root>/<split>/<set>__puzzle_indices.npy   (N_puzzles + 1,) int32 example offsets
    <root>/<split>/<set>__group_indices.npy    (N_groups + 1,) int32 puzzle offsets

Generated sets may add per-example arrays beside these (`PuzzleArrays.extras`), e.g.

    <root>/<split>/<set>__givens.npy           (N_examples,) int16 givens of each Sudoku
    <root>/<split>/<set>__rating.npy           (N_examples,) int64 solver backtracks (difficulty)

which the official loaders ignore (they open the five files above by name); `load_extras` reads them.

Files are written as the official builders write them (`json.dump` with default separators,
`np.save`), so the same puzzles give byte-identical files. HRM's dataset.json lacks
`total_puzzles`; it is read as optional.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.errors import DatasetError

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
_MMAPPED = ("inputs", "labels")  # large; the index arrays are small and held in memory
_OFFICIAL_ORDER = ("pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len",
                   "num_puzzle_identifiers", "total_groups", "mean_puzzle_examples", "total_puzzles", "sets")


@dataclass
class PuzzleMetadata:
    """dataset.json of one split. `total_puzzles` is optional (HRM's files lack it)."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: list[str]
    total_puzzles: int | None = None

    def __post_init__(self) -> None:
        if self.total_puzzles is None:
            self.total_puzzles = self.total_groups

    def to_json(self) -> str:
        """The official serialisation: fields in official order, `json.dumps` default separators."""
        data = {name: getattr(self, name) for name in _OFFICIAL_ORDER}
        data["mean_puzzle_examples"] = float(data["mean_puzzle_examples"])
        return json.dumps(data)


@dataclass
class PuzzleArrays:
    """One set of one split, in memory: (N, L) uint8 tokens and int32 index arrays."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (N_examples,) array, written as <set>__<name>.npy

    @classmethod
    def one_example_per_puzzle(cls, inputs: np.ndarray, labels: np.ndarray, group_size: int = 1) -> "PuzzleArrays":
        """Sudoku/Maze indexing: example i is puzzle i (identifier 0); consecutive groups of
        `group_size` puzzles (an original and its augmentations) form one group."""
        n = len(inputs)
        if n % group_size:
            raise ValueError(f"{n} examples do not split into groups of {group_size}")
        return cls(
            inputs=np.ascontiguousarray(inputs, dtype=np.uint8),
            labels=np.ascontiguousarray(labels, dtype=np.uint8),
            puzzle_identifiers=np.zeros(n, dtype=np.int32),
            puzzle_indices=np.arange(n + 1, dtype=np.int32),
            group_indices=np.arange(0, n + 1, group_size, dtype=np.int32),
        )


@dataclass
class PuzzleSplit:
    """One set of one split as loaded: inputs/labels memory-mapped read-only, indices in memory."""

    metadata: PuzzleMetadata
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray


def make_metadata(sets: Mapping[str, PuzzleArrays], vocab_size: int, *, pad_id: int = 0,
                  ignore_label_id: int | None = 0, blank_identifier_id: int = 0,
                  num_puzzle_identifiers: int = 1) -> PuzzleMetadata:
    """Metadata for one split as the official Sudoku/Maze builders compute it.

    total_groups sums the sets' groups; total_puzzles repeats it (the official misnomer);
    mean_puzzle_examples is examples per puzzle.
    """
    seq_lens = {a.inputs.shape[1] for a in sets.values()}
    if len(seq_lens) != 1:
        raise ValueError(f"all sets of a split need one sequence length, got {sorted(seq_lens)}")
    groups = sum(len(a.group_indices) - 1 for a in sets.values())
    puzzles = sum(len(a.puzzle_identifiers) for a in sets.values())
    examples = sum(len(a.inputs) for a in sets.values())
    return PuzzleMetadata(pad_id=pad_id, ignore_label_id=ignore_label_id, blank_identifier_id=blank_identifier_id,
                          vocab_size=vocab_size, seq_len=seq_lens.pop(), num_puzzle_identifiers=num_puzzle_identifiers,
                          total_groups=groups, mean_puzzle_examples=examples / max(puzzles, 1),
                          sets=list(sets), total_puzzles=groups)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def content_hash(root: str | Path) -> str:
    """sha256 over the relative paths and bytes of every dataset file under `root` (build.json and
    hidden files excluded, e.g. an old `.content_hash.json` cache or editor files)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "build.json"
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _official_arrays(value: PuzzleArrays | Mapping[str, np.ndarray]) -> PuzzleArrays:
    """C-contiguous uint8 tokens and int32 indices (the official dtypes); ValueError if they do not fit."""
    raw = value if isinstance(value, Mapping) else {name: getattr(value, name) for name in FIELDS}
    out = {}
    for name in FIELDS:
        arr = np.asarray(raw[name])
        dtype = np.uint8 if name in ("inputs", "labels") else np.int32
        if arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
            raise ValueError(f"{name} values do not fit {np.dtype(dtype).name}")
        out[name] = np.ascontiguousarray(arr, dtype=dtype)
    extras = {} if isinstance(value, Mapping) else dict(value.extras)
    for name, arr in extras.items():
        if name in FIELDS or not name.isidentifier():
            raise ValueError(f"extra array name {name!r} must be an identifier other than {', '.join(FIELDS)}")
        if len(arr) != len(out["inputs"]):
            raise ValueError(f"extra array {name!r} has {len(arr)} entries for {len(out['inputs'])} examples")
    return PuzzleArrays(**out, extras={name: np.ascontiguousarray(arr) for name, arr in extras.items()})


def write_dataset(root: str | Path, splits: Mapping[str, Mapping[str, PuzzleArrays | Mapping[str, np.ndarray]]],
                  vocab_size: int, *,
                  metadata: Mapping[str, PuzzleMetadata] | None = None, identifiers: tuple[str, ...] = ("<blank>",),
                  build_info: Mapping | None = None) -> str:
    """Write a dataset atomically: everything goes to a temporary folder beside `root`, then one rename.

    Args:
        root: output folder; must not exist or be empty.
        splits: {split: {set_name: PuzzleArrays or {field: array}}}, e.g. {"train": {"all": ...}}.
        vocab_size: token vocabulary (11 Sudoku, 6 Maze) for the default metadata.
        metadata: per-split metadata overriding `make_metadata`.
        identifiers: contents of identifiers.json.
        build_info: if given, written to build.json with the content hash added.
    Returns:
        The content hash (see `content_hash`).
    Raises:
        DatasetError: `root` holds files.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"output directory {root} already exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()  # not mkdtemp: the folder keeps the umask's permissions after the rename
    try:
        for split, raw_sets in splits.items():
            sets = {name: _official_arrays(arrays) for name, arrays in raw_sets.items()}
            meta = (metadata or {}).get(split) or make_metadata(sets, vocab_size)
            (tmp / split).mkdir()
            _write_bytes(tmp / split / "dataset.json", meta.to_json().encode())
            for set_name, arrays in sets.items():
                for name in FIELDS:
                    _write_npy(tmp / split / f"{set_name}__{name}.npy", getattr(arrays, name))
                for name, extra in arrays.extras.items():
                    _write_npy(tmp / split / f"{set_name}__{name}.npy", extra)
        _write_bytes(tmp / "identifiers.json", json.dumps(list(identifiers)).encode())
        digest = content_hash(tmp)
        if build_info is not None:
            info = {**build_info, "content_sha256": digest}
            _write_bytes(tmp / "build.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise DatasetError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot parse {path}: {e}") from None


def _metadata_from_dict(data: object, path: Path) -> PuzzleMetadata:
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    known = {f.name: f for f in fields(PuzzleMetadata)}
    missing = [name for name, f in known.items() if name != "total_puzzles" and name not in data]
    if missing:
        raise DatasetError(f"{path} lacks field(s) {', '.join(missing)}")
    values = {name: data[name] for name in known if name in data}
    for name, value in values.items():
        ok = {
            "ignore_label_id": value is None or _is_int(value),
            "total_puzzles": value is None or _is_int(value),
            "mean_puzzle_examples": isinstance(value, (int, float)) and not isinstance(value, bool),
            "sets": isinstance(value, list) and all(isinstance(s, str) for s in value) and len(value) > 0,
        }.get(name, _is_int(value))
        if not ok:
            raise DatasetError(f"{path}: field {name} has an invalid value {value!r}")
    for name in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if values[name] < 1:
            raise DatasetError(f"{path}: field {name} is {values[name]}, must be at least 1")
    for name in ("total_groups", "mean_puzzle_examples"):
        if values[name] < 0:
            raise DatasetError(f"{path}: field {name} is {values[name]}, must not be negative")
    return PuzzleMetadata(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_metadata(root: str | Path, split: str) -> PuzzleMetadata:
    """Read and check `<root>/<split>/dataset.json`; DatasetError if missing or malformed."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    if not (root / split).is_dir():
        raise DatasetError(f"dataset {root} has no '{split}' split (expected folder {root / split})")
    path = root / split / "dataset.json"
    return _metadata_from_dict(_load_json(path), path)


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing array file {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def _check(split: PuzzleSplit, where: Path, set_name: str) -> None:
    """Shape, dtype, offset and token-range checks; the first violation raises DatasetError."""
    meta = split.metadata

    def fail(what: str) -> None:
        raise DatasetError(f"{where}/{set_name}__*.npy: {what}")

    for name in FIELDS:
        arr = getattr(split, name)
        if not np.issubdtype(arr.dtype, np.integer):
            fail(f"{name} has dtype {arr.dtype}, expected integers")
    x, y = split.inputs, split.labels
    if x.ndim != 2 or x.shape[1] != meta.seq_len:
        fail(f"inputs shape {x.shape} does not match seq_len {meta.seq_len}")
    if y.shape != x.shape:
        fail(f"labels shape {y.shape} differs from inputs shape {x.shape}")
    for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        if getattr(split, name).ndim != 1:
            fail(f"{name} must be one-dimensional")
    pi, gi, ids = split.puzzle_indices, split.group_indices, split.puzzle_identifiers
    if len(pi) < 1 or pi[0] != 0 or pi[-1] != len(x) or np.any(np.diff(pi) < 1):
        fail(f"puzzle_indices must rise from 0 to {len(x)} examples (one entry per puzzle plus one)")
    if len(ids) != len(pi) - 1:
        fail(f"puzzle_identifiers has {len(ids)} entries for {len(pi) - 1} puzzles (puzzle_indices has {len(pi)} entries)")
    if len(gi) < 1 or gi[0] != 0 or gi[-1] != len(ids) or np.any(np.diff(gi) < 1):
        fail(f"group_indices must rise from 0 to {len(ids)} puzzles")
    if len(ids) and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
        allowed = f"0..{meta.num_puzzle_identifiers - 1}" if meta.num_puzzle_identifiers > 0 else "nothing (num_puzzle_identifiers is not positive)"
        fail(f"puzzle_identifiers hold ids {ids.min()}..{ids.max()}, outside {allowed}")
    for name, arr in (("inputs", x), ("labels", y)):
        if arr.size and (arr.min() < 0 or arr.max() >= meta.vocab_size):
            fail(f"{name} hold tokens outside 0..{meta.vocab_size - 1} (vocab_size {meta.vocab_size})")


def load_extras(root: str | Path, split: str, set_name: str = "all") -> dict[str, np.ndarray]:
    """The per-example arrays a generator wrote beside the official files of one set (name ->
    (N_examples,) array; empty for official datasets). DatasetError for one of the wrong length."""
    where = Path(root) / split
    n = len(_load_array(where / f"{set_name}__inputs.npy", True))
    extras = {}
    for path in sorted(where.glob(f"{set_name}__*.npy")):
        name = path.name[len(set_name) + 2:-4]
        if name in FIELDS:
            continue
        extras[name] = _load_array(path, False)
        if len(extras[name]) != n:
            raise DatasetError(f"{path} has {len(extras[name])} entries for {n} examples")
    return extras


def load_split(root: str | Path, split: str, set_name: str = "all") -> PuzzleSplit:
    """Load and validate one set of one split; inputs/labels are read-only memory maps.

    Raises DatasetError naming the path for a missing root, split, dataset.json or array file,
    corrupt JSON/npy, or arrays that disagree with the metadata.
    """
    meta = read_metadata(root, split)
    where = Path(root) / split
    if set_name not in meta.sets:
        raise DatasetError(f"{where}/dataset.json has no set '{set_name}' (sets: {', '.join(meta.sets)})")
    arrays = {name: _load_array(where / f"{set_name}__{name}.npy", name in _MMAPPED) for name in FIELDS}
    result = PuzzleSplit(metadata=meta, **arrays)
    _check(result, where, set_name)
    return result
