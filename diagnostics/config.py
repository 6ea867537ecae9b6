"""Typed configuration of `python -m diagnostics` (conf/diagnose.yaml + conf/study/<name>.yaml).

`DiagnoseConfig` holds what every study shares (checkpoint, data, sample size, device, dtype,
batch size, W&B); its `study` field holds one `StudyConfig` subclass, chosen on the command line
with `study=<name>`. Each study's subclass lives in its own module (`diagnostics.studies.<name>`);
`BatchedStudyConfig` adds the setting every study driven over checkpoint batches shares, the budget
S (`segments`). The schemas are stored in Hydra's ConfigStore by `diagnostics.registry` (one loop
over its `STUDIES`), which also says how to add a study.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from runtime.logging import WandbConfig


@dataclass
class StudyConfig:
    """Base of every study's settings; `name` looks the study up in `diagnostics.registry.STUDIES`."""

    name: str = MISSING


@dataclass
class BatchedStudyConfig(StudyConfig):
    """Base of the studies that roll a checkpoint over batches of sampled examples (the driver's).

    segments: the budget S, ACT segments unrolled (halting recorded, not applied); None = the
        checkpoint's `halt_max_steps`; 0 or negative is refused.
    """

    segments: int | None = None


def _default_wandb() -> WandbConfig:
    """Off by default; project, group and job type are filled per run (`dashboard_config`)."""
    return WandbConfig(mode="disabled")


@dataclass
class DiagnoseConfig:
    """Top-level settings shared by all studies.

    checkpoint / data_path: the model and dataset studied (unused by `validate` and `stats`).
    n: examples sampled by a seeded permutation (analysis §1; 2048 for headline numbers).
    seed: the sample's permutation, and the bootstrap and folds of the statistics.
    dtype: float32 or float64, the precision of the recurrence and its tangents.
    batch_size: examples per forward pass.
    allow_non_finite: load a checkpoint with NaN/Inf weights (to inspect it; any study still
        refuses to summarise non-finite exponents or drifts).
    cpu_matmul: CPU fp32 matmul routing, as training's `launcher.cpu_matmul` ("onednn" only where
        a probe shows fp32 accuracy; float64 studies are unaffected).
    """

    study: StudyConfig = MISSING
    checkpoint: str | None = None
    data_path: str | None = None
    n: int = 512
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 64
    allow_non_finite: bool = False
    cpu_matmul: str = "onednn"
    wandb: WandbConfig = field(default_factory=_default_wandb)
