"""Inference over a dataset split with per-segment records: the code behind evaluate.py and the
evaluation inside training.

Every example runs a fixed number of segments (default `halt_max_steps`, as the official
evaluation does: halting is recorded, not applied). With `act_halting=True` each example's answer
is frozen at the first segment where the model's own halting rule fires (TRM: q_halt > 0; HRM:
q_halt > q_continue). Segments may exceed `halt_max_steps` (extended rollouts).
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import bootstrap

from model_core.act import ACTModel
from model_core.config import ArchConfig
from model_core.core import LatentCarry, RecurrentCore
from model_core.losses import IGNORE_LABEL_ID, ACTLossHead, stablemax_cross_entropy
from puzzles.kinds import PuzzleKind, dataset_kind
from puzzles.layout import PuzzleMetadata, PuzzleSplit, load_split
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.dist import DistInfo, fail_together, gather_arrays_to_rank0, inject_fault
from runtime.errors import ConfigError, DatasetError
from runtime.logging import rank0_tqdm
from training.fast_path import compile_model
from training.restart_policies import compare_policies


SELECT_RULES = ("q_halt", "vote", "adaptive")


@dataclass
class EvalOptions:
    """How to run inference. `n`/`seed` draw a seeded subsample (sorted indices).

    restarts K > 1: restart-and-select inference. Restart 0 is the plain trajectory; restarts
    1..K-1 start from the initial carry plus sigma x std(H_init) x eps on z_H and z_L (eps from
    `restart_noise`, seeded by (restart_seed, example index, sigma, restart), as the basin study
    draws it). Every restart runs the full budget; the answer is the restart chosen by `select`:
    "q_halt", the one the model is most confident about after the last segment (q_halt, or
    q_halt - q_continue for a model that halts on q_halt > q_continue); "vote", the answer most
    restarts give (ties: the most confident); "adaptive", restarts in order until one ends
    confident (its halting rule fires after the last segment), else the most confident: the
    low-confidence trajectories are abandoned and their budget spent on a fresh restart. No
    oracle is involved; "q_halt" and "vote" cost K times the compute, "adaptive" only the
    restarts it runs (reported as `mean_segments`).

    compile: run the core under torch.compile (same predictions as eager up to float round-off;
    the plain path pads the last batch so one graph serves every batch).
    """

    segments: int | None = None
    act_halting: bool = False
    batch_size: int = 256
    n: int | None = None
    seed: int = 0
    keep_logits: bool = True
    restarts: int = 1
    select: str = "q_halt"
    sigma: float = 0.1
    restart_seed: int = 0
    compile: bool = False

    def check(self) -> None:
        """ConfigError for restart settings that cannot run."""
        if self.restarts < 1:
            raise ConfigError(f"restarts={self.restarts} must be >= 1 (1 = plain inference)")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"select={self.select!r} is not one of {list(SELECT_RULES)}")
        if self.restarts > 1 and not self.sigma > 0:
            raise ConfigError(f"sigma={self.sigma} must be > 0 when restarts > 1 (sigma = 0 repeats one trajectory)")
        if self.restarts > 1 and self.act_halting:
            raise ConfigError("restarts > 1 runs the full segment budget; it does not combine with act_halting=true")


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


def halting_confidence(q_halt, q_continue, no_act_continue: bool):
    """The model's own confidence, as its halting rule reads it (torch tensors or numpy arrays of
    one shape): q_halt for a model that halts on q_halt > 0 (TRM, no_ACT_continue), q_halt -
    q_continue for one that halts on q_halt > q_continue (HRM). It halts where this is > 0."""
    return q_halt if no_act_continue else q_halt - q_continue


def halting_fires(arch: ArchConfig, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
    """The model's own halting rule for one segment (B,) bool."""
    return halting_confidence(q_halt, q_continue, arch.no_ACT_continue) > 0


def restart_noise(index: np.ndarray, sigma: float, restarts: int, state_shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """(len(index) * restarts, *state_shape) standard normal noise, row (i, r) at i * restarts + r,
    each from a generator seeded by (seed, index[i], the float64 bits of sigma, r): a row's noise
    does not depend on batching or on the other restarts."""
    sigma_bits = int(np.float64(sigma).view(np.uint64))
    rows = []
    for idx in index:
        for r in range(restarts):
            state = np.random.SeedSequence([seed, int(idx), sigma_bits, r]).generate_state(1, dtype=np.uint64)[0]
            rows.append(torch.randn(state_shape, generator=torch.Generator().manual_seed(int(state)), dtype=dtype))
    return torch.stack(rows)


@torch.no_grad()
def run_segments(core: RecurrentCore, batch: dict[str, torch.Tensor], segments: int, act_halting: bool,
                 carry: LatentCarry | None = None) -> dict[str, torch.Tensor]:
    """Roll one batch for `segments` segments from `carry` (default: the initial carry); return
    per-example records.

    Returns logits (B, L, V) float32 at the final segment (with act_halting: at the halting
    segment), q_halt_logits / q_continue_logits (B, S) float32, exact_by_segment (B, S) bool and
    halt_segment (B,), the first segment (1-based) at which the halting rule fires, S if never.
    """
    arch = core.config
    labels = batch["labels"]
    B = labels.shape[0]
    carry = core.initial_carry(B, labels.device) if carry is None else carry
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


def run_segments_padded(core: RecurrentCore, batch: dict[str, torch.Tensor], segments: int, act_halting: bool,
                        rows: int) -> dict[str, torch.Tensor]:
    """`run_segments` on `batch` padded to `rows` rows (copies of its first row), records cut back
    to the batch's own rows: rows are independent, so a compiled core sees one batch shape."""
    n = batch["labels"].shape[0]
    if n >= rows:
        return run_segments(core, batch, segments, act_halting)
    padded = {k: torch.cat([v, v[:1].expand(rows - n, *v.shape[1:])]) for k, v in batch.items()}
    return {k: v[:n] for k, v in run_segments(core, padded, segments, act_halting).items()}


def select_restart(preds: torch.Tensor, confidence: torch.Tensor, rule: str) -> torch.Tensor:
    """(B,) int64 index of the chosen restart. preds (B, K, L) answers, confidence (B, K) the
    model's own halting confidence. "q_halt": the most confident restart (the first on ties);
    "vote": a restart giving the answer most restarts give, ties between answers broken by the
    higher confidence; "adaptive": the first restart that ends confident (> 0), else the most
    confident."""
    if rule == "q_halt":
        return confidence.argmax(1)
    if rule == "adaptive":
        fired = confidence > 0
        return torch.where(fired.any(1), fired.to(torch.int64).argmax(1), confidence.argmax(1))
    votes = (preds[:, :, None] == preds[:, None]).all(-1).sum(-1).to(torch.float64)  # (B, K): restarts agreeing with each
    return (votes + 0.5 * torch.sigmoid(confidence.to(torch.float64))).argmax(1)  # the bonus < 1 only breaks ties


@torch.no_grad()
def restart_and_select(core: RecurrentCore, batch: dict[str, torch.Tensor], rows: np.ndarray, segments: int,
                       opts: EvalOptions) -> dict[str, torch.Tensor]:
    """`run_segments` records of restart 0, with `logits` replaced by the selected restart's, plus
    restart_exact (B, K) bool, restart_confidence (B, K) float32 (final-segment confidence),
    restart_chosen (B,) int64, exact_unperturbed (B,) bool, and per segment for the policy
    replay of `training.restart_policies`: restart_exact_by_segment (B, K, S) bool,
    restart_confidence_by_segment (B, K, S) float32 and restart_answer (B, K) int64 (the first
    restart giving the same final answer: equal ids, equal answers)."""
    arch = core.config
    K, B = opts.restarts, len(rows)
    base = run_segments(core, batch, segments, act_halting=False)
    z0 = core.initial_carry(B, batch["inputs"].device)
    scale = float(core.H_init.double().std(correction=0))
    shape = (2, *z0.z_H.shape[1:])
    noise = restart_noise(rows, opts.sigma, K - 1, shape, opts.restart_seed, torch.float32).to(z0.z_H.device)  # (B * (K-1), 2, S, D)
    reps = {k: v.repeat_interleave(K - 1, 0) for k, v in batch.items()}
    step = opts.sigma * scale
    start = LatentCarry((z0.z_H.repeat_interleave(K - 1, 0) + step * noise[:, 0]).to(z0.z_H.dtype),
                        (z0.z_L.repeat_interleave(K - 1, 0) + step * noise[:, 1]).to(z0.z_L.dtype))
    kicked = run_segments(core, reps, segments, act_halting=False, carry=start)
    logits = torch.cat([base["logits"][:, None], kicked["logits"].view(B, K - 1, *base["logits"].shape[1:])], 1)  # (B, K, L, V)
    final = {key: torch.cat([base[key][:, -1:], kicked[key][:, -1].view(B, K - 1)], 1) for key in ("q_halt_logits", "q_continue_logits")}
    confidence = halting_confidence(final["q_halt_logits"], final["q_continue_logits"], arch.no_ACT_continue)  # (B, K)
    preds = logits.argmax(-1)  # (B, K, L)
    chosen = select_restart(preds, confidence, opts.select)
    labels = batch["labels"]
    mask = labels != IGNORE_LABEL_ID
    restart_exact = ((preds == labels[:, None]) | ~mask[:, None]).all(-1)
    per_segment = {key: torch.cat([base[key][:, None], kicked[key].view(B, K - 1, segments)], 1)
                   for key in ("exact_by_segment", "q_halt_logits", "q_continue_logits")}  # (B, K, S)
    answer = (preds[:, :, None] == preds[:, None]).all(-1).to(torch.int64).argmax(-1)  # (B, K)
    return {**base, "logits": logits[torch.arange(B), chosen], "restart_exact": restart_exact, "restart_chosen": chosen,
            "restart_confidence": confidence, "exact_unperturbed": base["exact_by_segment"][:, -1],
            "restart_exact_by_segment": per_segment["exact_by_segment"], "restart_answer": answer,
            "restart_confidence_by_segment": halting_confidence(per_segment["q_halt_logits"], per_segment["q_continue_logits"],
                                                                arch.no_ACT_continue).to(torch.float32)}


def evaluate_split(
    model: ACTLossHead | ACTModel | RecurrentCore,
    data_root: str | Path,
    split: str = "test",
    opts: EvalOptions | None = None,
    device: torch.device | str = "cpu",
    dist: DistInfo | None = None,
    progress: bool = True,
    index: np.ndarray | None = None,
) -> EvalResult:
    """Evaluate `model` on `data_root/split`. Under torchrun each rank takes a contiguous shard and
    rank 0 gathers; other ranks get an EvalResult with empty metrics. `index`: the example indices
    to score (e.g. the validation examples held out of train), instead of `opts.n`'s subsample."""
    opts = opts or EvalOptions()
    opts.check()
    core = _core_of(model)
    forward = compile_model(core) if opts.compile else core  # delegates config/initial_carry to core
    arch = core.config
    data = load_split(data_root, split)
    meta = data.metadata
    check_data_fits(arch, meta, data, data_root)
    segments = opts.segments or arch.halt_max_steps
    if segments < 1 or opts.batch_size < 1:
        raise ConfigError(f"segments ({segments}) and batch_size ({opts.batch_size}) must be >= 1")
    index = select_indices(len(data.inputs), opts.n, opts.seed) if index is None else np.asarray(index)
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    shard = np.array_split(index, world)[rank]
    puzzle_ids = example_puzzle_ids(data, shard)

    was_training = core.training
    core.eval()
    records: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(shard), opts.batch_size)
    # One rank failing on its shard stops every rank before the gather below (else they hang in it).
    guard = fail_together("evaluation") if world > 1 else contextlib.nullcontext()
    with guard:
        inject_fault("eval")
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
            if opts.restarts == 1:  # compiled: every batch padded to one shape (no recompile for the last)
                out = run_segments_padded(forward, batch, segments, opts.act_halting, min(opts.batch_size, len(shard)) if opts.compile else 0)
            else:
                out = restart_and_select(forward, batch, rows, segments, opts)
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
    if "restart_exact" in arrays:
        metrics["restarts"] = restart_metrics(arrays)
    return metrics


def restart_metrics(arrays: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Restart-and-select figures: exact accuracy of the plain trajectory and of the selected
    answer, the gain with a 95% percentile bootstrap CI over examples (paired: each example's
    selected minus plain outcome, `scipy.stats.bootstrap`, 1000 resamples, seeded), how often the
    selection kept the plain answer, and the oracle best-of-K (some restart right: a ceiling no
    selector without the labels can pass). `restarts_run_if_adaptive`: the mean number of
    restarts the adaptive rule runs (its compute in units of the plain evaluation; the other
    rules run all k). `policies`: restarts against early pruning at equal compute, one row per
    policy (`training.restart_policies.compare_policies`)."""
    selected = arrays["exact"].astype(np.float64)
    plain = arrays["exact_unperturbed"].astype(np.float64)
    k = int(arrays["restart_exact"].shape[1])
    fired = arrays["restart_confidence"] > 0
    runs_adaptive = np.where(fired.any(1), fired.argmax(1) + 1, k)  # restarts an adaptive selector runs
    diff = selected - plain
    ci = None
    if len(diff) >= 2:
        res = bootstrap((diff,), np.mean, n_resamples=1000, method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
        ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return {
        "k": k,
        "restarts_run_if_adaptive": float(runs_adaptive.mean()),
        "exact_accuracy_plain": float(plain.mean()),
        "exact_accuracy_selected": float(selected.mean()),
        "gain": float(diff.mean()),
        "gain_ci95": ci,
        "kept_plain_answer": float((arrays["restart_chosen"] == 0).mean()),
        "oracle_best_of_k": float(arrays["restart_exact"].any(1).mean()),
        "policies": compare_policies(arrays["restart_exact_by_segment"], arrays["restart_confidence_by_segment"],
                                     arrays["restart_answer"], seed=seed),
    }


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

