"""The studies of `python -m diagnostics`: one `Study` record each, in `STUDIES`.

Everything that needs the list of studies reads it here: the command line (`diagnostics.__main__`
looks `study=<name>` up), the Hydra schemas (`register_configs` stores each study's schema as
`schema/study/<name>`), `diagnostics.collect` (headline columns) and `diagnostics.demo` (the order in
which it runs the studies of a checkpoint).

Adding a study `foo` that rolls a checkpoint over batches of examples:

  1. `diagnostics/studies/foo.py` with `FooStudyConfig(BatchedStudyConfig)` (`name: str = "foo"`
     plus its settings; `segments`, the budget S, is inherited), `per_batch(run, rows, batch)`
     (the per-example arrays of one batch, first axis = its examples, `index` among them),
     `summarise(results, meta, settings, seed)` (summary.json) and `format_report(summary)`
     (report.md); optionally `check(run)`, `meta(run)`, `figures(run, results, summary)`,
     `HEADLINES` and `SCALARS`. `run` is the driver's `BatchedRun` (config, loaded inputs, S,
     output directory). A study imports adapters, estimators and the driver, never another study:
     what two studies share belongs in `diagnostics.adapters` or `diagnostics.driver`.
  2. `conf/study/foo.yaml`: defaults `[/schema/study/foo@_here_, _self_]`, then the settings
     with the schema's defaults (a mistyped key then fails when the config is composed).
  3. One entry in `STUDIES` below: `Study("foo", foo.FooStudyConfig, foo.HEADLINES,
     batch=foo.per_batch, summarise=foo.summarise, report=foo.format_report, ...)`.

`python -m diagnostics study=foo checkpoint=... data_path=...` then runs it through
`diagnostics.driver.drive` (loading, resumable shards, segments default and checks, outputs,
W&B), and `python -m diagnostics.collect` shows its headline columns. A study that does not
iterate checkpoint batches gives `run=foo.run` (`run(cfg, out_dir) -> exit code`) instead of
the batch hooks. tests/diagnostics/test_registry.py adds a toy study exactly this way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hydra.core.config_store import ConfigStore

from diagnostics.config import BatchedStudyConfig, DiagnoseConfig, StudyConfig
from diagnostics.driver import BatchedRun, Jobs, drive
from diagnostics.studies import basin, clv, displacement, extended, spectrum, stats, validate
from runtime.errors import ConfigError
from runtime.logging import get_logger
from training.fast_path import cpu_matmul_routing

log = get_logger(__name__)

# (column of the collect table, dotted key of the value in summary.json, dotted key of its
# [lo, hi] 95% CI or None); columns with the same name in several studies share one column
Headline = tuple[str, str, str | None]
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Study:
    """One study: its name and config schema, how to run it, and what `collect` shows of it.

    name: `study=<name>` on the command line, conf/study/<name>.yaml, `schema/study/<name>`.
    schema: its `StudyConfig` subclass (a `BatchedStudyConfig` for batched studies).
    headlines: the collect table's columns of this study (`Headline` tuples).
    of_checkpoint: the study describes one checkpoint, directly or through other studies'
        outputs (False for `validate`, which checks the estimators on known systems).
    run: `run(cfg, out_dir) -> exit code`, for a study that does not iterate checkpoint batches;
        None for a batched study, which `diagnostics.driver.drive` runs from the hooks:
    batch: `(run, rows, batch) -> arrays` of one batch (required when batched).
    summarise: `(results, meta, settings, seed) -> summary dict` (required when batched).
    report: `summary -> report.md text` (required when batched).
    figures: `(run, results, summary) -> [PNG paths]` written into the run directory.
    check: `run -> None`, raising ConfigError for settings that cannot run on these inputs.
    meta: `run -> dict` of the study's settings recorded in summary.json and the fingerprint.
    jobs: `(run, results) -> Jobs`, a second resumable pass (basin's restarts).
    pooled: `(run, results) -> arrays` computed on the pooled results, added to results.npz.
    scalars: summary keys logged as `diag/<metrics_key>/<key>` scalars (metrics.jsonl, W&B).
    finite: keys of `batch`'s arrays that must be finite; a batch with NaN or Inf there stops
        the run with the examples named (`diagnostics.driver.NonFiniteError`).
    metrics_key: the study's metric namespace; "" = its name.
    """

    name: str
    schema: type[StudyConfig]
    headlines: tuple[Headline, ...] = ()
    of_checkpoint: bool = True
    run: Callable[[DiagnoseConfig, Path], int] | None = None
    batch: Callable[[BatchedRun, slice, dict], Arrays] | None = None
    summarise: Callable[[Arrays, dict[str, Any], Any, int], dict[str, Any]] | None = None
    report: Callable[[dict[str, Any]], str] | None = None
    figures: Callable[[BatchedRun, Arrays, dict[str, Any]], list[Path]] | None = None
    check: Callable[[BatchedRun], None] | None = None
    meta: Callable[[BatchedRun], dict[str, Any]] | None = None
    jobs: Callable[[BatchedRun, Arrays], Jobs] | None = None
    pooled: Callable[[BatchedRun, Arrays], Arrays] | None = None
    scalars: tuple[str, ...] = ()
    finite: tuple[str, ...] = ()
    metrics_key: str = ""

    def __post_init__(self) -> None:
        if self.run is not None:
            if self.batch is not None or self.jobs is not None:
                raise ValueError(f"study {self.name!r}: give either run or the batch hooks, not both")
            return
        if self.batch is None or self.summarise is None or self.report is None:
            raise ValueError(f"study {self.name!r}: a batched study needs batch, summarise and report (or give run)")
        if not issubclass(self.schema, BatchedStudyConfig):
            raise ValueError(f"study {self.name!r}: the schema of a batched study subclasses BatchedStudyConfig")

    @property
    def batched(self) -> bool:
        """True when `diagnostics.driver.drive` runs it from the batch hooks."""
        return self.run is None


STUDIES: dict[str, Study] = {study.name: study for study in (
    Study("spectrum", spectrum.SpectrumStudyConfig, spectrum.HEADLINES, batch=spectrum.per_batch, summarise=spectrum.summarise,
          report=spectrum.format_report, figures=spectrum.figures, check=spectrum.check, meta=spectrum.meta, pooled=spectrum.pooled,
          scalars=spectrum.SCALARS, finite=("lambda", "log_r_segment"), metrics_key="lyap"),
    Study("displacement", displacement.DisplacementStudyConfig, displacement.HEADLINES, batch=displacement.per_batch,
          summarise=displacement.summarise, report=displacement.format_report, figures=displacement.figures, check=displacement.check,
          meta=displacement.meta, pooled=displacement.pooled, scalars=displacement.SCALARS, finite=("drift_zH", "drift_zL"), metrics_key="disp"),
    Study("extended", extended.ExtendedStudyConfig, extended.HEADLINES, batch=extended.per_batch, summarise=extended.summarise,
          report=extended.format_report, figures=extended.figures, check=extended.check, meta=extended.meta, pooled=extended.pooled,
          scalars=extended.SCALARS, finite=("drift_zH", "drift_zL")),
    Study("basin", basin.BasinStudyConfig, basin.HEADLINES, batch=basin.per_batch, summarise=basin.summarise, report=basin.format_report,
          figures=basin.figures, check=basin.check, meta=basin.meta, jobs=basin.jobs, scalars=basin.SCALARS, finite=("drift_zH",)),
    Study("clv", clv.ClvStudyConfig, clv.HEADLINES, batch=clv.per_batch, summarise=clv.summarise, report=clv.format_report, figures=clv.figures,
          check=clv.check, meta=clv.meta, scalars=clv.SCALARS, finite=("angles", "angle_min", "angle_median", "lambda")),
    Study("stats", stats.StatsStudyConfig, stats.HEADLINES, run=stats.run_stats),
    Study("validate", validate.ValidateStudyConfig, validate.HEADLINES, of_checkpoint=False, run=validate.run_validate),
)}


def get_study(name: str) -> Study:
    """The study called `name`; ConfigError (one line, with the choices) when there is none."""
    study = STUDIES.get(name)
    if study is None:
        raise ConfigError(f"study {name!r} has no runner; available: {', '.join(STUDIES)}")
    return study


def run_study(cfg: DiagnoseConfig, out_dir: str | Path) -> int:
    """Run the study named `cfg.study.name` into `out_dir` (what `python -m diagnostics` does
    after composing the config); returns its exit code."""
    study = get_study(cfg.study.name)
    with cpu_matmul_routing(cfg.cpu_matmul, "cpu_matmul") as line:
        log.info("%s", line)
        return drive(study, cfg, Path(out_dir))


def register_configs() -> None:
    """Store the schemas that conf/diagnose.yaml and conf/study/*.yaml extend (idempotent): the
    top level as `diagnose_schema`, each study's as `schema/study/<name>` (a group apart from
    `study`, so that `study=` lists only real studies)."""
    cs = ConfigStore.instance()
    cs.store(name="diagnose_schema", node=DiagnoseConfig)
    for study in STUDIES.values():
        cs.store(group="schema/study", name=study.name, node=study.schema)
