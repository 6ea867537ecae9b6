"""Build puzzle datasets in the official layout: `python -m puzzles.build KIND key=value ...`.

KIND is one of
- `sudoku`: generated 9x9 (or 6x6/4x4) puzzles with `givens` givens (or a uniform mix of
  givens..givens_max) and a unique solution;
- `maze`: generated `size` x `size` mazes with a shortest path of at least `min_path` moves;
- `sudoku_extreme`, `maze_hard`: the published sets (hub, or a local `source_dir`).

Examples:
    python -m puzzles.build sudoku out=data/sudoku-45 n_train=20000 n_test=1000 givens=45 seed=0
    python -m puzzles.build sudoku out=data/sudoku-mixed n_train=20000 n_test=1000 givens=30 givens_max=50
    python -m puzzles.build maze out=data/maze-small size=12 min_path=20 n_train=500 n_test=100
    python -m puzzles.build sudoku_extreme out=data/sudoku-extreme-1k-aug-1000 subsample=1000 num_aug=1000

Keys are checked against the kind's dataclass (an unknown key or a wrong type is a one-line
error). `out` may contain `{hash}`, replaced by a hash of the rest of the config, which is how
`build_dataset` caches generated data for training runs. Train groups are an original puzzle and
its `num_aug` augmentations; test puzzles are never augmented. Besides the official files the
output holds `build.json`: builder (`kind`), puzzle kind (`puzzle_kind`, see `puzzles.kinds`), config,
seed, format version and the sha256 of the data files. The builders themselves are in
`puzzles.builders`.
An existing output with the same config is reused (after checking that hash); one with another
config is an error; everything is written to a temporary folder beside `out` and renamed.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from puzzles import hub
from puzzles.builders import MazeGenConfig, MazeHardConfig, SudokuExtremeConfig, SudokuGenConfig
from puzzles.kinds import BUILDERS, builder_for
from puzzles.layout import content_hash, write_dataset
from runtime.errors import ConfigError, DatasetError, exit_on_user_error

FORMAT_VERSION = 2  # bump when generated content changes for the same config (2: per-example givens/rating files)


BuildConfig = Union[SudokuGenConfig, MazeGenConfig, SudokuExtremeConfig, MazeHardConfig]


def kind_of(cfg: BuildConfig) -> str:
    """The builder name of `cfg` (`sudoku`, `maze`, `sudoku_extreme`, `maze_hard`)."""
    return builder_for(cfg).name


def _identity(cfg: BuildConfig) -> dict:
    """What determines the content: builder, format version and every field except `out`."""
    config = {k: v for k, v in asdict(cfg).items() if k != "out"}
    return {"kind": kind_of(cfg), "format_version": FORMAT_VERSION, "config": config}


def config_hash(cfg: BuildConfig) -> str:
    """12 hex digits of sha256 over the canonical JSON of `_identity(cfg)`."""
    return hashlib.sha256(json.dumps(_identity(cfg), sort_keys=True).encode()).hexdigest()[:12]


def output_dir(cfg: BuildConfig) -> Path:
    """`cfg.out` with `{hash}` replaced by `config_hash(cfg)`."""
    return Path(cfg.out.replace("{hash}", config_hash(cfg)))


def _check_common(cfg: BuildConfig) -> None:
    if not cfg.out:
        raise ConfigError("out must name the output directory")
    for name in ("n_train", "n_test", "subsample"):
        value = getattr(cfg, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    if cfg.num_aug < 0:
        raise ConfigError(f"num_aug={cfg.num_aug} must be >= 0")
    givens_max = getattr(cfg, "givens_max", None)
    if givens_max is not None and givens_max < cfg.givens:
        raise ConfigError(f"givens_max={givens_max} must be >= givens={cfg.givens} (each puzzle draws its givens from givens..givens_max)")


def _existing(out: Path, identity: dict) -> bool:
    """True if `out` already holds this dataset intact; False if absent or empty; else DatasetError."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        raise DatasetError(f"output directory {out} already exists and holds no readable build.json; "
                           f"choose another out= or delete it") from None
    found = {k: info.get(k) if isinstance(info, dict) else None for k in identity}
    if found != identity:
        old = found["config"] if isinstance(found["config"], dict) else {}
        diffs = [f"{k}={old.get(k)!r} where {v!r} was asked" for k, v in identity["config"].items() if old.get(k) != v]
        if found["kind"] == identity["kind"] and diffs:
            detail = ", ".join(diffs)
        elif found["kind"] == identity["kind"] and found["format_version"] != identity["format_version"]:
            detail = f"written by generator format {found['format_version']}, this one writes format {identity['format_version']}"
        else:
            detail = f"kind {found['kind']}"
        raise DatasetError(f"output directory {out} already holds a different dataset ({detail}); "
                           f"choose another out= or delete it")
    if content_hash(out) != info.get("content_sha256"):
        raise DatasetError(f"output directory {out} has files that no longer match its build.json hash; delete it")
    return True


def build_dataset(cfg: BuildConfig, download: hub.Download | None = None) -> Path:
    """Build (or reuse) the dataset described by `cfg`; returns its directory.

    Training can call this with `out` containing `{hash}` to get a cached generated dataset.
    `download(repo_id, filename, repo_type=...)` replaces `huggingface_hub.hf_hub_download`.
    Raises ConfigError for bad values and DatasetError for unusable sources or outputs.
    """
    _check_common(cfg)
    out = output_dir(cfg)
    identity = _identity(cfg)
    if _existing(out, identity):
        return out
    builder = builder_for(cfg)
    splits, vocab = builder.build(cfg, download)
    build_info = {**identity, "seed": cfg.seed, "puzzle_kind": builder.kind}
    try:
        write_dataset(out, splits, vocab, build_info=build_info)
    except (DatasetError, OSError):
        if _existing(out, identity):  # another process built the same dataset meanwhile
            return out
        raise
    return out


def parse_config(kind: str, overrides: list[str]) -> BuildConfig:
    """A typed config from `key=value` strings; ConfigError names an unknown key or a bad value."""
    if kind not in BUILDERS:
        raise ConfigError(f"unknown dataset kind '{kind}' (choose from {', '.join(BUILDERS)})")
    cls = BUILDERS[kind].config_cls
    known = [f.name for f in fields(cls)]
    cfg = OmegaConf.structured(cls)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got '{item}'")
        if key not in known:
            raise ConfigError(f"unknown key '{key}' for {kind} (known keys: {', '.join(known)})")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException:
            expected = next(f.type for f in fields(cls) if f.name == key)
            raise ConfigError(f"invalid value for {key}: '{value}' (expected {expected})") from None
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; prints the output directory and the split sizes."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    with exit_on_user_error():
        if not args:
            raise ConfigError(f"missing KIND: python -m puzzles.build KIND key=value ... with KIND one of {', '.join(BUILDERS)} (--help explains)")
        cfg = parse_config(args[0], args[1:])
        out = build_dataset(cfg)
        sizes = {split: json.loads((out / split / "dataset.json").read_text())["total_groups"]
                 for split in ("train", "test")}
        print(f"{out}: {sizes['train']} train groups, {sizes['test']} test puzzles")


if __name__ == "__main__":
    main()
