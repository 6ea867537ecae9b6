"""The `extended` study: what failures do after the budget (transient chaos vs trapping, analysis §5).

What is measured: every sampled test example is rolled S_ext segments (`segments_ext`, default
128) from the reset carry, far past the inference budget S (`segments`, default the checkpoint's
`halt_max_steps`); halting is recorded, never applied (analysis §1). After every segment
t = 1..S_ext: success (exact match, or for Maze the valid-path rule), the drift of z_H and z_L
(analysis §3) and the halting logits. If failures at the budget sit on a chaotic saddle, they
leave it at a constant rate: the fraction still unsolved decays exponentially, s(t) ~ exp(-kappa t)
(Lai & Tel, "Transient Chaos", 2011, ch. 1). A failure trapped at a wrong fixed point never
leaves and its drift falls to the settled band.

Algorithm (after all batches, on the pooled arrays):
  1. Segment-S failures: examples not solved at segment S.
  2. first_solved: the first segment t in (S, S_ext] at which the example is solved, -1 if never
     (1-based segment numbers; written for every example, read for failures).
  3. tau: the settling threshold on drift_zH, exactly as the displacement study computes it at
     the budget (`diagnostics.adapters.trajectory.settling_threshold`): d_late = mean drift_zH
     over the `late_window` (4) segments ending at S, floored at the dtype's resolution
     (`resolution_floor`: 4 ulps of ||z_H||, never below `drift_floor`); log10 tau = Otsu
     (`otsu_bins` bins) on the pooled log10 d_late of all examples, or `threshold` (drift units)
     when given. The same sample and S therefore give the same tau in both studies.
  4. Fate of each failure: solved-later (first_solved >= 0); settled-wrong (never solved, and
     the mean drift_zH over the last `settle_window` (8) segments of the rollout, floored, at or
     below tau; **choice**: the mean, the statistic tau was fitted to); churning (the rest).
  5. Survival s(t), t = S..S_ext: fraction of failures with no solve by t; escape rate kappa =
     -slope of log s(t) on t (least squares) over the t where at least `min_remaining` (10)
     failures remain (`estimators.statistics.escape_rate_fit`), 95% CI from a seeded bootstrap
     over failures (1000 resamples). kappa per segment, and per module evaluation (divided by the
     sub-updates per segment).
  6. Accuracy after each segment, for all examples.
  7. Recurrence test of the failures never solved by S_ext (is a "wrong attractor" a fixed point,
     a periodic trap, or neither?): r_p = max over the last `recurrence_window` (4) segments of
     ||z_H(t) - z_H(t-p)|| / ||z_H(t)||, p = 1..`max_period` (8); period = 1 (fixed point) when
     r_1 <= `recurrence_tol` (1e-3, **choice**: far above float32 round-off of a settled state,
     far below the relative step of a moving one), else the smallest p with r_p <= tol
     (periodic), else 0 (aperiodic within max_period). Counted in `attractor_counts`; a wrong
     attractor is a fixed point or a periodic trap (`fraction_wrong_attractor`, of all failures
     at S), which the verdict reports.

Run by `diagnostics.driver.drive`. Outputs in the run directory: `summary.json`, `report.md`,
`survival.png`, `accuracy.png`, `fates.png`, `manifest.json`, `metrics.jsonl`, `shards/` (one file
per batch: a killed run restarted with the same settings resumes with identical results) and
`results.npz`:

    index (N,) int64                   position in the test split (seeded sample, sorted)
    success_by_segment (N, S_ext) bool success (rule `success`) after each segment
    exact_by_segment (N, S_ext) bool   exact match after each segment
    drift_zH, drift_zL (N, S_ext)      ||z(t) - z(t-1)||_2 of z_H / z_L, float64
    q_halt, q_continue (N, S_ext)      halting logits, float32
    givens (N,) int64                  non-blank input cells (Sudoku)
    d_late (N,) float64                mean drift_zH over the late window ending at S
    first_solved (N,) int64            first segment in (S, S_ext] solved, -1 if never
    fate (N,) int8                     index into FATES (0 = solved at S)
    recurrence (N, P) float64          r_p of step 7 for every example
    period (N,) int64                  1 fixed point, p >= 2 periodic, 0 aperiodic (step 7)

Known failure modes: kappa is only meaningful when log s(t) is close to linear (look at the
figure: a plateau means a trapped sub-population, a fast initial drop a mixture of rates); with
fewer than `min_remaining` failures there is no fit (null). Solving is counted at its first
occurrence: a failure that solves and then unsolves counts as escaped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diagnostics.adapters.trajectory import (DRIFT_FLOOR, LATE_WINDOW, OTSU_BINS, check_success_rule, classify_recurrence, first_solved_after,
                                             floored_log_drift, late_drift, resolution_floor, segment_record, settling_threshold)
from diagnostics.config import BatchedStudyConfig
from diagnostics.driver import BatchedRun
from diagnostics.estimators.statistics import BOOTSTRAP_SAMPLES, bootstrap_ci, escape_rate_fit, none_if_nan, proportion_with_ci, survival_curve
from diagnostics.report import new_figure, save_figure, settings_table
from runtime.errors import ConfigError

FATES = ("success", "solved_later", "settled_wrong", "churning")
SOLVED_AT_BUDGET, SOLVED_LATER, SETTLED_WRONG, CHURNING = range(len(FATES))
FIGURES = ("survival.png", "accuracy.png", "fates.png")
PUBLISHED = ("Published (qualitative, analysis §5): TRM failures mostly escape and self-correct "
             "within the extended rollout; HRM failures stay trapped far longer; neither settles "
             "to a wrong fixed point.")
HEADLINES = (
    ("tau", "tau", None),
    ("accuracy final", "accuracy_final", None),
    ("kappa per segment", "kappa_per_segment", "kappa_per_segment_ci95"),
    ("kappa per module evaluation", "kappa_per_module_evaluation", "kappa_per_module_evaluation_ci95"),
    ("wrong attractor", "fraction_wrong_attractor", None),
)
SCALARS = ("accuracy_at_budget", "accuracy_final", "fraction_solved_later", "fraction_settled_wrong", "fraction_churning", "kappa_per_segment",
           "kappa_per_module_evaluation")


@dataclass
class ExtendedStudyConfig(BatchedStudyConfig):
    """Settings of the `extended` study (conf/study/extended.yaml).

    segments: the budget S; None = the checkpoint's halt_max_steps (>= 1 otherwise).
    segments_ext: segments rolled in all, S_ext > S.
    success: "exact" or (Maze) "valid_path", the success rule of every segment.
    late_window: segments ending at S averaged into d_late for the Otsu threshold.
    settle_window: last segments of the rollout whose mean drift_zH decides "settled".
    threshold: tau in drift units (L2 norm of the z_H step); None = Otsu on log10 d_late.
    otsu_bins, drift_floor: as in the displacement study (histogram bins; drift below the floor
        counts as the floor before log10), with the same defaults
        (`diagnostics.adapters.trajectory`).
    min_remaining: failures that must remain unsolved for a segment to enter the kappa fit.
    max_period, recurrence_window, recurrence_tol: the recurrence test of the never-solved
        failures on z_H over the last max_period + recurrence_window segments (see step 7).
    """

    name: str = "extended"
    segments_ext: int = 128
    success: str = "exact"
    late_window: int = LATE_WINDOW
    settle_window: int = 8
    threshold: float | None = None
    otsu_bins: int = OTSU_BINS
    drift_floor: float = DRIFT_FLOOR
    min_remaining: int = 10
    max_period: int = 8
    recurrence_window: int = 4
    recurrence_tol: float = 1e-3


# --- estimators on the pooled arrays ------------------------------------------------------------------

def classify_fates(success: np.ndarray, drift_zH: np.ndarray, segments: int, log_tau: float, settle_window: int,
                   drift_floor: float | np.ndarray) -> np.ndarray:
    """(N,) int8 fate codes (FATES) from success (N, T) and drift_zH (N, T), T = S_ext.

    solved at S -> "success"; otherwise solved at some t in (S, T] -> "solved_later"; otherwise
    log10 max(mean drift_zH over the last `settle_window` segments, drift_floor (one value or
    per example)) <= log_tau ->
    "settled_wrong" (never solved, so wrong at T); otherwise "churning". A NaN log_tau settles
    nothing.
    """
    success = np.asarray(success, dtype=bool)
    settled = floored_log_drift(late_drift(np.asarray(drift_zH), settle_window), drift_floor) <= log_tau
    fate = np.where(settled, SETTLED_WRONG, CHURNING)
    fate = np.where(first_solved_after(success, segments) >= 0, SOLVED_LATER, fate)
    return np.where(success[:, segments - 1], SOLVED_AT_BUDGET, fate).astype(np.int8)


# --- hooks of the driver -------------------------------------------------------------------------------

def per_batch(run: BatchedRun, rows: slice, batch: dict) -> dict[str, np.ndarray]:
    """The per-example arrays of one batch (`results.npz` up to givens): the rollout record of
    `diagnostics.adapters.trajectory.segment_record` over S_ext segments, without its
    last-segment `exact` / `success`."""
    study = run.settings
    arrays = segment_record(run.inputs, rows, batch, study.segments_ext, study.success, study.max_period, study.recurrence_window)
    return {key: value for key, value in arrays.items() if key not in ("exact", "success")}


def check(run: BatchedRun) -> None:
    """Refuse settings that cannot run, once S and the dataset are known."""
    study, segments = run.settings, run.segments
    if study.segments_ext <= segments:
        raise ConfigError(f"study.segments_ext={study.segments_ext} must exceed the budget study.segments={segments}")
    if not 1 <= study.late_window <= segments:
        raise ConfigError(f"study.late_window={study.late_window} must be in [1, {segments}] (segments up to the budget)")
    if not 1 <= study.settle_window <= study.segments_ext:
        raise ConfigError(f"study.settle_window={study.settle_window} must be in [1, {study.segments_ext}]")
    if study.min_remaining < 1:
        raise ConfigError(f"study.min_remaining={study.min_remaining} must be >= 1")
    if study.max_period < 1 or study.recurrence_window < 1 or study.max_period + study.recurrence_window > study.segments_ext:
        raise ConfigError(f"study.max_period={study.max_period} and study.recurrence_window={study.recurrence_window} must be >= 1 "
                          f"and fit in study.segments_ext={study.segments_ext} together")
    if not study.recurrence_tol > 0:
        raise ConfigError(f"study.recurrence_tol={study.recurrence_tol} must be > 0")
    if study.threshold is not None and not study.threshold > 0:
        raise ConfigError(f"study.threshold={study.threshold} must be a positive drift (or null for Otsu)")
    if study.otsu_bins < 2 or not study.drift_floor > 0:
        raise ConfigError(f"study.otsu_bins={study.otsu_bins} must be >= 2 and study.drift_floor={study.drift_floor} > 0")
    check_success_rule(study.success, run.inputs.kind)


def meta(run: BatchedRun) -> dict[str, Any]:
    """The settings summary.json records (beside the driver's provenance)."""
    study = run.settings
    return {"segments_ext": study.segments_ext, "success": study.success, "late_window": study.late_window, "settle_window": study.settle_window,
            "min_remaining": study.min_remaining, "otsu_bins": study.otsu_bins, "drift_floor": study.drift_floor,
            "max_period": study.max_period, "recurrence_window": study.recurrence_window, "recurrence_tol": study.recurrence_tol}


def budget_tau(d_late: np.ndarray, study: ExtendedStudyConfig, floor: float | np.ndarray | None = None) -> tuple[float, str]:
    """(log10 tau, its source) of the settling threshold on d_late (N,) at the budget, floored at
    `floor` (the resolution floor per example; default study.drift_floor)."""
    log_d = floored_log_drift(d_late, study.drift_floor if floor is None else floor)
    return settling_threshold(log_d, threshold=study.threshold, drift_floor=study.drift_floor, otsu_bins=study.otsu_bins)


def pooled(run: BatchedRun, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d_late (mean drift_zH over the late window ending at S), first_solved and fate (N,)."""
    study, segments = run.settings, run.segments
    success, drift_zH = results["success_by_segment"], results["drift_zH"]
    d_late = late_drift(drift_zH[:, :segments], study.late_window)
    d_floor = resolution_floor(late_drift(results["norm_zH"][:, :segments], study.late_window), run.cfg.dtype, study.drift_floor)
    settle_floor = resolution_floor(late_drift(results["norm_zH"], study.settle_window), run.cfg.dtype, study.drift_floor)
    log_tau, _ = budget_tau(d_late, study, d_floor)
    return {"d_late": d_late, "d_floor": d_floor, "first_solved": first_solved_after(success, segments),
            "fate": classify_fates(success, drift_zH, segments, log_tau, study.settle_window, settle_floor),
            "period": classify_recurrence(results["recurrence"], study.recurrence_tol)}


def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], study: ExtendedStudyConfig, seed: int) -> dict[str, Any]:
    """summary.json: settings, accuracy curve, tau, fates of the segment-S failures, survival and
    kappa (bootstrap CI seeded by `seed`)."""
    segments, n_sub = meta["segments"], meta["sub_updates_per_segment"]
    log_tau, tau_source = budget_tau(results["d_late"], study, results.get("d_floor"))
    success = results["success_by_segment"].astype(bool)
    failure = ~success[:, segments - 1]
    first = results["first_solved"][failure]
    times = np.arange(segments, study.segments_ext + 1)
    fit = escape_rate_fit(first, times, study.min_remaining)
    lo, hi = (math.nan, math.nan)
    if not math.isnan(fit.kappa):
        lo, hi = bootstrap_ci(lambda f, _: escape_rate_fit(f, times, study.min_remaining).kappa, first, np.ones(len(first), bool), seed=seed)
    n_fail = int(failure.sum())
    counts = {name: int((results["fate"][failure] == code).sum()) for code, name in enumerate(FATES) if code != SOLVED_AT_BUDGET}
    fractions = {f"fraction_{name}": (counts[name] / n_fail if n_fail else None) for name in counts}
    fractions.update({f"fraction_{name}_ci95": proportion_with_ci(counts[name], n_fail)["ci95"] for name in counts})
    solved_later = first[first >= 0]
    never = failure & (results["first_solved"] < 0)
    period = results["period"][never]
    attractors = {"fixed_point": int((period == 1).sum()), "periodic": int((period >= 2).sum()), "aperiodic": int((period == 0).sum())}
    periods = {str(p): int((period == p).sum()) for p in sorted(set(period[period >= 2].tolist()))}
    accuracy = success.mean(0) if len(success) else np.full(success.shape[1], math.nan)
    return {
        **meta,
        "n_failure_at_budget": n_fail,
        "n_success_at_budget": int((~failure).sum()),
        "accuracy_at_budget": none_if_nan(float(accuracy[segments - 1])),
        "accuracy_final": none_if_nan(float(accuracy[-1])),
        "accuracy_best": none_if_nan(float(np.nanmax(accuracy))) if len(success) else None,
        "accuracy_by_segment": [none_if_nan(float(a)) for a in accuracy],
        "tau": none_if_nan(10**log_tau),
        "log10_tau": none_if_nan(log_tau),
        "tau_source": tau_source,
        "fate_counts": counts,
        **fractions,
        "median_segments_to_solve": float(np.median(solved_later - segments)) if len(solved_later) else None,
        "n_never_solved": int(never.sum()),
        "attractor_counts": attractors,
        "periods": periods,
        "fraction_wrong_attractor": (attractors["fixed_point"] + attractors["periodic"]) / n_fail if n_fail else None,
        "survival": [none_if_nan(float(s)) for s in survival_curve(first, times)],
        "survival_segments": [int(segments), int(study.segments_ext)],
        "kappa_per_segment": none_if_nan(fit.kappa),
        "kappa_per_segment_ci95": None if math.isnan(lo) else [lo, hi],
        "kappa_per_module_evaluation": none_if_nan(fit.kappa / n_sub),
        "kappa_per_module_evaluation_ci95": None if math.isnan(lo) else [lo / n_sub, hi / n_sub],
        "kappa_fit_segments": [int(fit.times_used[0]), int(fit.times_used[-1])] if len(fit.times_used) else None,
        "kappa_intercept": none_if_nan(fit.intercept),
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": seed, "over": "segment-S failures"},
    }


def plot_survival(summary: dict[str, Any], path: Path, title: str) -> Path:
    """s(t) of the segment-S failures on a log axis, with the fitted exp(intercept - kappa t)."""
    start, stop = summary["survival_segments"]
    times = np.arange(start, stop + 1)
    s = np.array([math.nan if v is None else v for v in summary["survival"]])
    fig = new_figure()
    ax = fig.add_subplot()
    ax.step(times[s > 0], s[s > 0], where="post", label=f"failures at S={start} (n={summary['n_failure_at_budget']})")
    if summary["kappa_per_segment"] is not None:
        lo, hi = summary["kappa_fit_segments"]
        fit_t = np.arange(lo, hi + 1)
        ax.plot(fit_t, np.exp(summary["kappa_intercept"] - summary["kappa_per_segment"] * fit_t), "--", color="tab:red",
                label=f"fit: kappa = {summary['kappa_per_segment']:.4g} / segment")
    ax.set_yscale("log")
    ax.set_xlabel("segment t")
    ax.set_ylabel("fraction of failures not yet solved")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_accuracy(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Accuracy of all examples after each segment, the budget S marked."""
    acc = np.array([math.nan if v is None else v for v in summary["accuracy_by_segment"]])
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(acc) + 1), acc, color="tab:blue")
    ax.axvline(summary["segments"], color="gray", linestyle=":", label=f"budget S = {summary['segments']}")
    ax.set_xlabel("segment t")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_fates(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Bar chart: how many segment-S failures are solved later, settle wrong, or churn."""
    counts = summary["fate_counts"]
    fig = new_figure()
    ax = fig.add_subplot()
    ax.bar(list(counts), list(counts.values()), color=["tab:green", "tab:orange", "tab:red"])
    ax.set_ylabel(f"failures at S (n={summary['n_failure_at_budget']})")
    ax.set_title(title)
    return save_figure(fig, path)


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """Survival of the failures, accuracy per segment and the fates, in the run directory."""
    study, name, out = run.settings, run.checkpoint_name, run.out_dir
    return [plot_survival(summary, out / FIGURES[0], f"{name}: survival of failures past S"),
            plot_accuracy(summary, out / FIGURES[1], f"{name}: accuracy vs segments ({study.success})"),
            plot_fates(summary, out / FIGURES[2], f"{name}: fates of failures by S_ext = {study.segments_ext}")]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: settings, results, the published qualitative result and the three figures."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "segments_ext", "success", "sub_updates_per_segment", "dtype",
                "late_window", "settle_window", "otsu_bins", "drift_floor", "min_remaining", "max_period", "recurrence_window", "recurrence_tol"]
    results = ["accuracy_at_budget", "accuracy_final", "accuracy_best", "n_failure_at_budget", "tau", "tau_source", "fraction_solved_later",
               "fraction_solved_later_ci95", "fraction_settled_wrong", "fraction_settled_wrong_ci95", "fraction_churning", "fraction_churning_ci95",
               "median_segments_to_solve", "n_never_solved", "attractor_counts", "periods",
               "fraction_wrong_attractor", "kappa_per_segment", "kappa_per_segment_ci95",
               "kappa_per_module_evaluation", "kappa_per_module_evaluation_ci95", "kappa_fit_segments"]
    return "\n\n".join([
        "# Extended rollout: transient chaos vs trapping",
        "## Settings\n\n" + settings_table(summary, settings),
        "## Results\n\nFates of the failures at the budget S (fractions of them); kappa = escape rate fitted to "
        f"log s(t) where at least {summary['min_remaining']} failures remain, seeded bootstrap 95% CI over failures.\n\n"
        + settings_table(summary, results),
        PUBLISHED,
        *(f"![{Path(name).stem}]({name})" for name in FIGURES),
    ])
