"""Typed configuration of `python -m diagnostics` (conf/diagnose.yaml + conf/study/*.yaml).

`DiagnoseConfig` holds what every study shares (checkpoint, data, sample size, device, dtype,
W&B); `study` holds one `StudyConfig` subclass, chosen with `study=<name>` on the command line.
Adding a study: subclass `StudyConfig` here, add it to `STUDY_SCHEMAS`, write
`conf/study/<name>.yaml` whose defaults list `/schema/study/<name>@_here_` first, and map the name
to its runner in `diagnostics.__main__.STUDIES`. Mistyped keys then fail when the config is
composed. Schemas live in the group `schema/study`, not `study`, so `study=` lists only real
studies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from runtime.logging import WandbConfig

# Rows of the known-answer table (analysis §7), in report order; see diagnostics.validate.
VALIDATE_CHECKS = ("diagonal", "symmetric", "shear", "henon", "logistic", "lorenz", "logdet", "conjugation")


@dataclass
class StudyConfig:
    """Base of every study's settings; `name` selects the runner in `STUDIES`."""

    name: str = MISSING


@dataclass
class ValidateStudyConfig(StudyConfig):
    """Known-answer validation of the Lyapunov estimator (float64, seeded by the top-level seed).

    checks: which rows of the table to compute (default: all of `VALIDATE_CHECKS`).
    """

    name: str = "validate"
    checks: list[str] = field(default_factory=lambda: list(VALIDATE_CHECKS))


def _default_wandb() -> WandbConfig:
    """Off by default; project, group and job type are filled per run (`dashboard_config`)."""
    return WandbConfig(mode="disabled")


@dataclass
class DiagnoseConfig:
    """Top-level settings shared by all studies.

    checkpoint / data_path: the model and dataset studied (unused by `validate`).
    n: examples sampled by a seeded permutation (analysis §1; 2048 for headline numbers).
    dtype: float32 or float64, the precision of the recurrence and its tangents.
    batch_size: examples per forward pass.
    """

    study: StudyConfig = MISSING
    checkpoint: str | None = None
    data_path: str | None = None
    n: int = 512
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 64
    wandb: WandbConfig = field(default_factory=_default_wandb)


STUDY_SCHEMAS: dict[str, type[StudyConfig]] = {"validate": ValidateStudyConfig}


def register_configs() -> None:
    """Store the schemas that conf/diagnose.yaml and conf/study/*.yaml extend (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="diagnose_schema", node=DiagnoseConfig)
    for name, schema in STUDY_SCHEMAS.items():
        cs.store(group="schema/study", name=name, node=schema)


register_configs()
