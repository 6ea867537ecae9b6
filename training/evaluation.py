"""Inference over a dataset split with per-segment records: the code behind evaluate.py and the
evaluation inside training.

Every example runs a fixed number of segments (default `halt_max_steps`, as the official
evaluation does: halting is recorded, not applied). With `act_halting=True` each example's answer
is frozen at the first segment where the model's own halting rule fires (TRM: q_halt > 0; HRM:
q_halt > q_continue). Segments may exceed `halt_max_steps` (extended rollouts).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model_core.act import ACTModel
from model_core.config import ArchConfig
from model_core.core import RecurrentCore
from model_core.losses import IGNORE_LABEL_ID, ACTLossHead, stablemax_cross_entropy
from puzzles.kinds import PuzzleKind, dataset_kind
from puzzles.layout import PuzzleMetadata, PuzzleSplit, load_split
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.dist import DistInfo, gather_arrays_to_rank0
from runtime.errors import ConfigError, DatasetError
from runtime.logging import rank0_tqdm


@dataclass
class EvalOptions:
    """How to run inference. `n`/`seed` draw a seeded subsample (sorted indices)."""

    segments: int | None = None
    act_halting: bool = False
    batch_size: int = 256
    n: int | None = None
    seed: int = 0
    keep_logits: bool = True


@dataclass
class EvalResult:
    """Scalar metrics (plus per-segment lists) and per-example arrays joined by `index`."""

    metrics: dict[str, float | int | list[float]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def check_data_fits(arch: ArchConfig, meta: PuzzleMetadata, split: PuzzleSplit, root: str | Path) -> None:
    """Refuse a dataset whose vocabulary, length or puzzle ids the model cannot take."""
    if meta.vocab_size != arch.vocab_size:
        raise DatasetError(f"dataset {root} has vocab_size {meta.vocab_size} but the model was built for {arch.vocab_size}")
    if meta.seq_len != arch.seq_len:
        raise DatasetError(f"dataset {root} has seq_len {meta.seq_len} but the model was built for {arch.seq_len}")
    if arch.puzzle_emb_ndim > 0 and len(split.puzzle_identifiers) and int(split.puzzle_identifiers.max()) >= arch.num_puzzle_identifiers:
        raise DatasetError(
            f"dataset {root} uses puzzle identifier {int(split.puzzle_identifiers.max())} but the model's table has {arch.num_puzzle_identifiers} rows"
        )


def select_indices(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """All examples, or a sorted seeded subsample of n of them."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    if n < 1:
        raise ConfigError(f"n={n} must be >= 1")
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def example_puzzle_ids(split: PuzzleSplit, index: np.ndarray) -> np.ndarray:
    """The puzzle identifier of each example (examples are grouped by puzzle_indices)."""
    puzzle_of_example = np.searchsorted(split.puzzle_indices, index, side="right") - 1
    return np.asarray(split.puzzle_identifiers)[puzzle_of_example]


def halting_fires(arch: ArchConfig, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
    """The model's own halting rule for one segment (B,) bool."""
    return q_halt > 0 if arch.no_ACT_continue else q_halt > q_continue


@torch.no_grad()
def run_segments(core: RecurrentCore, batch: dict[str, torch.Tensor], segments: int, act_halting: bool) -> dict[str, torch.Tensor]:
    """Roll one batch for `segments` segments from the initial carry; return per-example records.

    Returns logits (B, L, V) float32 at the final segment (with act_halting: at the halting
    segment), q_halt_logits / q_continue_logits (B, S) float32, exact_by_segment (B, S) bool and
    halt_segment (B,), the first segment (1-based) at which the halting rule fires, S if never.
    """
    arch = core.config
    labels = batch["labels"]
    B = labels.shape[0]
    carry = core.initial_carry(B, labels.device)
    mask = labels != IGNORE_LABEL_ID
    q_halt, q_cont, exact = [], [], []
    halt_segment = torch.full((B,), segments, dtype=torch.int64, device=labels.device)
    fired = torch.zeros(B, dtype=torch.bool, device=labels.device)
    logits = None
    for s in range(segments):
        carry, out = core(carry, batch)
        step_logits = out.logits.to(torch.float32)
        preds = step_logits.argmax(-1)
        exact.append(((preds == labels) | ~mask).all(-1))
        q_halt.append(out.q_halt_logits)
        q_cont.append(out.q_continue_logits)
        fires = halting_fires(arch, out.q_halt_logits, out.q_continue_logits) & ~fired
        halt_segment = torch.where(fires, s + 1, halt_segment)
        if logits is None or not act_halting:
            logits = step_logits
        else:
            # Rows that halted earlier keep their answer; the others take this segment's.
            logits = torch.where(fired.view(-1, 1, 1), logits, step_logits)
        fired |= fires
    return {
        "logits": logits,
        "q_halt_logits": torch.stack(q_halt, 1),
        "q_continue_logits": torch.stack(q_cont, 1),
        "exact_by_segment": torch.stack(exact, 1),
        "halt_segment": halt_segment,
    }


def evaluate_split(
    model: ACTLossHead | ACTModel | RecurrentCore,
    data_root: str | Path,
    split: str = "test",
    opts: EvalOptions | None = None,
    device: torch.device | str = "cpu",
    dist: DistInfo | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `model` on `data_root/split`. Under torchrun each rank takes a contiguous shard and
    rank 0 gathers; other ranks get an EvalResult with empty metrics."""
    opts = opts or EvalOptions()
    core = _core_of(model)
    arch = core.config
    data = load_split(data_root, split)
    meta = data.metadata
    check_data_fits(arch, meta, data, data_root)
    segments = opts.segments or arch.halt_max_steps
    if segments < 1 or opts.batch_size < 1:
        raise ConfigError(f"segments ({segments}) and batch_size ({opts.batch_size}) must be >= 1")
    index = select_indices(len(data.inputs), opts.n, opts.seed)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    shard = np.array_split(index, world)[rank]
    puzzle_ids = example_puzzle_ids(data, shard)

    was_training = core.training
    core.eval()
    records: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(shard), opts.batch_size)
    for start in rank0_tqdm(starts, desc=f"eval {Path(data_root).name}/{split}", disable=not progress, total=len(starts)):
        rows = shard[start : start + opts.batch_size]
        labels = torch.from_numpy(np.asarray(data.labels[rows]).astype(np.int64))
        if meta.ignore_label_id is not None:
            labels = torch.where(labels == meta.ignore_label_id, IGNORE_LABEL_ID, labels)
        batch = {
            "inputs": torch.from_numpy(np.asarray(data.inputs[rows]).astype(np.int32)).to(device),
            "labels": labels.to(device),
            "puzzle_identifiers": torch.from_numpy(puzzle_ids[start : start + opts.batch_size].astype(np.int32)).to(device),
        }
        out = run_segments(core, batch, segments, opts.act_halting)
        mask = batch["labels"] != IGNORE_LABEL_ID
        preds = out["logits"].argmax(-1)
        token_acc = ((preds == batch["labels"]) & mask).sum(-1) / mask.sum(-1).clamp_min(1)
        lm_loss = (stablemax_cross_entropy(out["logits"], batch["labels"]).sum(-1) / mask.sum(-1).clamp_min(1)).to(torch.float32)
        rec = {
            "index": torch.from_numpy(rows),
            "preds": preds.to(torch.uint8 if arch.vocab_size <= 256 else torch.int32),
            "labels": torch.where(mask, batch["labels"], -100).to(torch.int16),
            "inputs": batch["inputs"].to(torch.int16),
            "exact": ((preds == batch["labels"]) | ~mask).all(-1),
            "token_accuracy": token_acc.to(torch.float32),
            "lm_loss": lm_loss,
            **{k: v for k, v in out.items() if k != "logits"},
        }
        if opts.keep_logits:
            rec["logits"] = out["logits"]
        for key, value in rec.items():
            records.setdefault(key, []).append(value.cpu().numpy())
    if was_training:
        core.train()

    local = {k: np.concatenate(v) for k, v in records.items()} if records else {}
    arrays = gather_arrays_to_rank0(local) if world > 1 else local
    if arrays is None:
        return EvalResult(metrics={})
    return EvalResult(metrics=summarize(arrays, dataset_kind(data_root, meta), segments, opts.act_halting), arrays=arrays)


def summarize(arrays: dict[str, np.ndarray], kind: PuzzleKind, segments: int, act_halting: bool) -> dict:
    """Dataset-level metrics from per-example arrays; the puzzle kind adds its own (e.g. Maze's
    `valid_path_accuracy`, with the per-example `valid_path` array added to `arrays`)."""
    count = int(len(arrays.get("index", [])))
    if count == 0:
        return {"count": 0}
    exact = arrays["exact"]
    q_final = arrays["q_halt_logits"][np.arange(count), arrays["halt_segment"] - 1] if act_halting else arrays["q_halt_logits"][:, -1]
    metrics: dict = {
        "count": count,
        "segments": segments,
        "exact_accuracy": float(exact.mean()),
        "token_accuracy": float(arrays["token_accuracy"].mean()),
        "exact_accuracy_by_segment": [float(x) for x in arrays["exact_by_segment"].mean(0)],
        "q_halt_accuracy": float(((q_final >= 0) == exact).mean()),
        "mean_halt_segment": float(arrays["halt_segment"].mean()),
        "lm_loss": float(arrays["lm_loss"].mean()),
    }
    extra_arrays, extra_metrics = kind.extra_metrics(arrays["preds"].astype(np.int64), arrays["inputs"].astype(np.int64),
                                                     arrays["labels"].astype(np.int64))
    arrays.update(extra_arrays)
    metrics.update(extra_metrics)
    metrics["puzzle_kind"] = kind.name
    return metrics


def write_eval_outputs(out_dir: str | Path, result: EvalResult, extra: dict | None = None) -> None:
    """`metrics.json` and `predictions.npz` (written atomically) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **result.arrays)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    atomic_write_text(out / "metrics.json", json.dumps({**result.metrics, **(extra or {})}, indent=2) + "\n")


def _core_of(model: ACTLossHead | ACTModel | RecurrentCore) -> RecurrentCore:
    if isinstance(model, ACTLossHead):
        return model.model.inner
    if isinstance(model, ACTModel):
        return model.inner
    return model

