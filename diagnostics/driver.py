"""The one driver of the batched studies: inputs -> batches -> resumable shards -> summary -> report.

Every study that rolls a checkpoint over a seeded sample (spectrum, displacement, extended, basin)
runs through `drive`; the study itself only supplies the hooks of its `diagnostics.registry.Study`
record. The steps, in order:

  1. Refuse a request that cannot run before anything is loaded (one-line ConfigError): no
     checkpoint or data_path, batch_size < 1, `study.segments` 0 or negative.
  2. Load the checkpoint in the study dtype and the seeded sample (`diagnostics.inputs`); resolve
     the budget S = `study.segments`, or the checkpoint's `halt_max_steps` when it is None.
  3. `check(run)`: the study's own refusals, now that S and the dataset are known.
  4. The provenance in summary.json and in the shard fingerprint: study name, sub-update
     convention and count per segment, S, the study's `meta(run)` fields, and the sample
     (`inputs.sample_provenance`: checkpoint path and sha256, data, split, n, seed, dtype).
  5. `batch(run, rows, batch)` for every batch of `batch_size` examples not already on disk,
     each saved as a shard (`diagnostics.shards`; fingerprint = provenance + batch_size + the
     study config), so a killed run restarted with the same settings resumes and ends with
     identical arrays; the shards are concatenated in batch order into `results`. A batch whose
     `finite` arrays hold NaN or Inf is refused (`NonFiniteError`, naming the examples) before
     it is saved. SIGINT/SIGTERM stop the run after the batch in flight (`InterruptedStudy`:
     the finished shards stay, the message says how to resume).
  6. `jobs(run, results)` (optional): a second resumable pass planned from the pooled arrays
     (basin: restarts of the failures), shards under `<out_dir>/<folder>/shards`.
  7. `pooled(run, results)` (optional): per-example arrays computed on the pooled results.
  8. `summarise`, `figures`, `report`, then `report.finish_study` writes results.npz,
     summary.json, report.md, the manifest and the metrics.jsonl / W&B record.

Studies that do not iterate checkpoint batches (stats, validate) give their `run(cfg, out_dir)`
instead, and `drive` calls it. Either way the output directory is locked for the run
(`runtime.lock`): a second study writing into the same folder stops at once, naming the owner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from diagnostics.adapters.step_map import SUB_UPDATE_CONVENTION, keep_freed_memory
from diagnostics.config import DiagnoseConfig
from diagnostics.inputs import StudyInputs, load_study_inputs, sample_provenance
from diagnostics.report import config_dict, finish_study
from diagnostics.shards import ShardStore
from runtime.dist import resolve_device
from runtime.errors import ConfigError, UserError
from runtime.lock import DirectoryLock
from runtime.logging import get_logger, rank0_tqdm
from runtime.signals import StopSignals

if TYPE_CHECKING:
    from diagnostics.registry import Study

log = get_logger("diagnostics.driver")


@dataclass
class BatchedRun:
    """What a batched study's hooks see: the typed config, the loaded inputs, the budget S, the
    output directory, the device, and (from step 4 on) the provenance `meta` of summary.json."""

    cfg: DiagnoseConfig
    inputs: StudyInputs
    segments: int
    out_dir: Path
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Any:
        """The study's own settings (`cfg.study`, a `BatchedStudyConfig` subclass)."""
        return self.cfg.study

    @property
    def checkpoint_name(self) -> str:
        """The checkpoint's file or folder name, for figure titles."""
        return Path(self.inputs.checkpoint.path).name


@dataclass
class Jobs:
    """A second resumable pass planned from the pooled first-pass arrays.

    items: one shard each, in order (a resumed run must plan the same list).
    run: item -> the arrays of its shard.
    collect: the concatenated shards (None when there are no items) -> arrays added to results.
    folder: the pass's shards go to `<out_dir>/<folder>/shards`.
    desc: progress-bar label.
    """

    items: Sequence[Any]
    run: Callable[[Any], dict[str, np.ndarray]]
    collect: Callable[[dict[str, np.ndarray] | None], dict[str, np.ndarray]]
    folder: str
    desc: str


class NonFiniteError(UserError):
    """A study's per-example numbers came out NaN or infinite; nothing is summarised from them."""


class InterruptedStudy(UserError):
    """SIGINT or SIGTERM arrived; the batch in flight finished and every finished shard is kept."""


def refuse_non_finite(study: str, arrays: dict[str, np.ndarray], keys: Sequence[str], index: np.ndarray) -> None:
    """Raise NonFiniteError naming the examples (their `index` in the split) whose `keys` arrays
    (first axis = examples) hold NaN or Inf; `index` (B,) labels the rows."""
    for key in keys:
        values = np.asarray(arrays[key], dtype=np.float64)
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            shown = ", ".join(str(int(i)) for i in index[bad][:5]) + (", ..." if bad.sum() > 5 else "")
            raise NonFiniteError(f"{study}: non-finite {key} for {int(bad.sum())} of {len(bad)} examples (index {shown}); "
                                 f"nothing summarised. The recurrence overflowed (try dtype=float64 or fewer segments) or the weights are not finite")


def resume_hint(out_dir: Path) -> str:
    return f"rerun the same command with hydra.run.dir={out_dir} to resume"


def check_request(cfg: DiagnoseConfig, study: str) -> None:
    """Step 1: refuse what cannot run, before loading anything (one-line ConfigError)."""
    if cfg.checkpoint is None or cfg.data_path is None:
        raise ConfigError(f"study={study} needs checkpoint=PATH and data_path=DIR")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1")
    segments = cfg.study.segments
    if segments is not None and segments < 1:
        raise ConfigError(f"study.segments={segments} must be >= 1 (or null: the checkpoint's halt_max_steps)")


def drive(study: Study, cfg: DiagnoseConfig, out_dir: str | Path) -> int:
    """Run `study` for `cfg` (whose `study` holds its settings) into `out_dir`; returns the exit
    code (0, or a non-batched study's own). Raises UserError subclasses for bad paths and settings."""
    out_dir = Path(out_dir)
    with DirectoryLock(out_dir, purpose=f"study ({study.name})"):
        if study.run is not None:
            return study.run(cfg, out_dir)
        return drive_batches(study, cfg, out_dir)


def drive_batches(study: Study, cfg: DiagnoseConfig, out_dir: Path) -> int:
    """Steps 1-8 for a batched study (the caller holds the directory lock)."""
    check_request(cfg, study.name)
    keep_freed_memory()  # fewer page faults in tangent propagation (see its docstring)
    device = resolve_device(cfg.device)
    inputs = load_study_inputs(cfg.checkpoint, cfg.data_path, n=cfg.n, seed=cfg.seed, dtype=cfg.dtype, device=device,
                               allow_non_finite=cfg.allow_non_finite)
    segments = inputs.arch.halt_max_steps if cfg.study.segments is None else cfg.study.segments
    run = BatchedRun(cfg, inputs, segments, out_dir, device)
    if study.check is not None:
        study.check(run)
    n_sub = len(inputs.core.sub_updates())
    run.meta = {
        "study": study.name,
        "sub_update_convention": SUB_UPDATE_CONVENTION,
        "sub_updates_per_segment": n_sub,
        "segments": segments,
        **(study.meta(run) if study.meta is not None else {}),
        **sample_provenance(inputs, data_path=cfg.data_path, seed=cfg.seed, dtype=cfg.dtype),
    }
    fingerprint = {**run.meta, "batch_size": cfg.batch_size, "study_config": config_dict(cfg.study)}

    store = ShardStore(out_dir, fingerprint)
    n_batches = -(-len(inputs.index) // cfg.batch_size)
    log.info("%s: %d examples, %d batches (%d to do), %d segments x %d sub-updates, %s", study.name, len(inputs.index), n_batches,
             sum(not store.done(b) for b in range(n_batches)), segments, n_sub, cfg.dtype)
    with StopSignals(unit="batch") as signals:
        for b, rows, batch in rank0_tqdm(inputs.batches(cfg.batch_size), total=n_batches, desc=study.name):
            if store.done(b):
                continue
            if signals.received is not None:
                done = sum(store.done(i) for i in range(n_batches))
                raise InterruptedStudy(f"{study.name} interrupted with {done} of {n_batches} batches done; the finished shards in "
                                       f"{store.dir} are kept; {resume_hint(out_dir)}")
            arrays = study.batch(run, rows, batch)
            refuse_non_finite(study.name, arrays, study.finite, inputs.index[rows])
            store.save(b, arrays)
    results = store.load_all(n_batches)

    if study.jobs is not None:
        results.update(run_jobs(study.jobs(run, results), out_dir, fingerprint, study.name))
    if study.pooled is not None:
        results.update(study.pooled(run, results))
    summary = study.summarise(results, run.meta, cfg.study, cfg.seed)
    figures = study.figures(run, results, summary) if study.figures is not None else []
    finish_study(out_dir, cfg, study=study.metrics_key or study.name, summary=summary, report=study.report(summary), results=results,
                 figures=figures, scalars=study.scalars, checkpoint=inputs.checkpoint.path, device=device)
    log.info("%s: %s -> %s", study.name, ", ".join(f"{key} {summary.get(key)}" for key in study.scalars), out_dir)
    return 0


def run_jobs(jobs: Jobs, out_dir: Path, fingerprint: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """Step 6: run the jobs not already on disk, one shard each; returns `jobs.collect` of them all."""
    store = ShardStore(out_dir / jobs.folder, fingerprint)
    log.info("%s: %s, %d jobs (%d to do)", name, jobs.desc, len(jobs.items), sum(not store.done(i) for i in range(len(jobs.items))))
    with StopSignals(unit="job") as signals:
        for i, item in enumerate(rank0_tqdm(jobs.items, desc=f"{name}: {jobs.desc}")):
            if store.done(i):
                continue
            if signals.received is not None:
                done = sum(store.done(j) for j in range(len(jobs.items)))
                raise InterruptedStudy(f"{name} interrupted with {done} of {len(jobs.items)} {jobs.desc} jobs done; the finished shards in "
                                       f"{store.dir} are kept; {resume_hint(out_dir)}")
            store.save(i, jobs.run(item))
    return jobs.collect(store.load_all(len(jobs.items)) if len(jobs.items) else None)
