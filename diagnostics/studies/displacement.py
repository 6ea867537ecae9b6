"""The `displacement` study: how far the latent state still moves late in inference, per example,
and whether "settled" separates successes from failures (analysis §1, §3).

What is measured: for each sampled test example, the fixed unroll of S ACT segments (default
`halt_max_steps`; halting recorded, not applied) from the reset carry, and after every segment t
the drift ||z(t) - z(t-1)||_2 of z_H and of z_L over the whole (P+L) x D tensor
(`diagnostics.adapters.trajectory.segment_record`). Then:

  1. d_late = mean drift_zH over the last `late_window` segments (default 4).
  2. Settled = log10 d_late <= log10 tau, with tau from Otsu's method (`otsu_bins`-bin histogram,
     Otsu 1979) on the pooled log10 d_late of all examples, or a fixed `threshold` (d_late units).
     Otsu splits any data; its separability eta (between-class / total variance, in [0, 1]) is
     reported so that a split of unimodal drift (eta well below 1) is not mistaken for settling.
     **Choice**: d_late is floored at the recurrence dtype's resolution before the log,
     RESOLUTION_ULPS (4) x eps x ||z_H|| (mean over the late window; never below `drift_floor`):
     exact zeros (a segment that repeats the state to the last bit) and round-off-sized drift are
     the same thing, a settled trajectory, and form one cluster, so Otsu cannot split between
     them (`diagnostics.adapters.trajectory.resolution_floor`); summary.json reports how many
     were floored.
  3. The 2x2 table A settled & correct, B settled & wrong, C unsettled & correct, D unsettled &
     wrong: counts, fractions, and for an empty cell the rule-of-three 95% upper bound on its
     share of that outcome ("0 of 254 failures settle" -> at most 3/254).
  4. Sensitivity: the table at thresholds on pooled percentiles of d_late (`percentiles`).
     Threshold-free: the share of success d_late below the smallest failure d_late.
  5. AUC(-d_late -> success) (Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI.

Success is `success` ("exact": every labelled cell right; "valid_path", Maze only: a shortest
S-G path on the unchanged maze), decided after every segment; the final one is at segment S.

Run by `diagnostics.driver.drive`. Outputs in the run directory: `summary.json`, `report.md`,
`drift_curves.png`, `d_late_hist.png`, `cells.png`, `manifest.json`, `metrics.jsonl`, `shards/`
(one file per finished batch; a killed run restarted with the same settings resumes and gives
identical arrays) and `results.npz`, N examples joined by `index` (the same sample as a spectrum
run with equal n and seed):

    index (N,) int64                position in the test split (seeded sample, sorted)
    exact (N,) bool                 exact match at the last segment
    success (N,) bool               success under `success` at the last segment
    drift_zH, drift_zL (N, S)       per-segment displacement of z_H / z_L, float64
    d_late (N,) float64             mean drift_zH over the last `late_window` segments
    d_floor (N,) float64            its resolution floor (see step 2)
    first_settled (N,) int64        first segment whose floored drift_zH <= tau (-1: never)
    stays_settled (N,) bool         entered the band and never left it up to S
    log10_d_late (N,) float64       log10 max(d_late, d_floor), what tau and the statistics use
    norm_zH (N, S) float64          ||z_H|| after each segment
    exact_by_segment (N, S) bool    exact match after each segment
    success_by_segment (N, S) bool  success under `success` after each segment
    q_halt, q_continue (N, S)       halting logits after each segment, float32
    givens (N,) int64               non-blank input cells (Sudoku: tokens other than pad 0, blank 1)

Known failure modes: in float32 a settled trajectory bottoms out at the precision of the state
(~1e-7 of ||z||), so settled d_late of float32 and float64 runs differ by orders of magnitude;
tau is fitted per run. With a handful of examples, or when every example has the same outcome,
Otsu's tau and the AUC are poorly defined (NaN/None in the summary).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.adapters.step_map import SubUpdateMap
from diagnostics.adapters.trajectory import (DRIFT_FLOOR, LATE_WINDOW, OTSU_BINS, check_success_rule, floored_log_drift, late_drift,
                                             record_rollout, resolution_floor, segment_record, settling_threshold)
from diagnostics.config import BatchedStudyConfig
from diagnostics.driver import BatchedRun
from diagnostics.estimators.statistics import (BOOTSTRAP_SAMPLES, SETTLING_CELLS, auc_with_ci, fraction_below, median_or_none, none_if_nan,
                                               percentile_sweep, proportion_with_ci, separability, settling_cells, settling_counts)
from diagnostics.report import markdown_table, new_figure, save_figure, settings_table
from runtime.errors import ConfigError

FIGURES = {"drift": "drift_curves.png", "hist": "d_late_hist.png", "cells": "cells.png", "pca": "trajectories_pca.png"}
PCA_EXAMPLES = 4  # successes and failures each drawn in the PCA figure
HEADLINES = (
    ("tau", "tau", None),
    ("A settled&correct", "cells.A.count", None),
    ("B settled&wrong", "cells.B.count", None),
    ("C unsettled&correct", "cells.C.count", None),
    ("D unsettled&wrong", "cells.D.count", None),
    ("AUC(-d_late)", "auc_neg_d_late", "auc_neg_d_late_ci95"),
)
SCALARS = ("accuracy", "tau", "median_d_late_success", "median_d_late_failure", "auc_neg_d_late")


@dataclass
class DisplacementStudyConfig(BatchedStudyConfig):
    """Settings of the `displacement` study (conf/study/displacement.yaml).

    segments: ACT segments unrolled; None = the checkpoint's halt_max_steps (>= 1 otherwise).
    late_window: trailing segments averaged into d_late.
    success: "exact" or "valid_path" (Maze only), the success rule.
    threshold: fixed tau in d_late units; None = Otsu's threshold on pooled log10 d_late.
    otsu_bins: histogram bins of Otsu's method.
    percentiles: pooled d_late percentiles (0..100) of the sensitivity sweep.
    drift_floor: d_late below this counts as this value before log10 (exact zeros).
    """

    name: str = "displacement"
    late_window: int = LATE_WINDOW
    success: str = "exact"
    threshold: float | None = None
    otsu_bins: int = OTSU_BINS
    percentiles: list[float] = field(default_factory=lambda: [float(p) for p in range(5, 100, 5)])
    drift_floor: float = DRIFT_FLOOR


# --- per-batch computation and settings ----------------------------------------------------------------

def per_batch(run: BatchedRun, rows: slice, batch: dict) -> dict[str, np.ndarray]:
    """The per-example arrays of one batch (results.npz, less d_late)."""
    return segment_record(run.inputs, rows, batch, run.segments, run.settings.success)


def check(run: BatchedRun) -> None:
    """Refuse settings that cannot run, once S and the dataset are known."""
    study = run.settings
    check_success_rule(study.success, run.inputs.kind)
    if study.otsu_bins < 2 or study.drift_floor <= 0 or (study.threshold is not None and study.threshold <= 0):
        raise ConfigError(f"study.otsu_bins={study.otsu_bins} must be >= 2, study.drift_floor={study.drift_floor} and "
                          f"study.threshold={study.threshold} > 0")
    if any(not 0 <= p <= 100 for p in study.percentiles):
        raise ConfigError(f"study.percentiles={list(study.percentiles)} must lie in [0, 100]")
    if not 1 <= study.late_window <= run.segments:
        raise ConfigError(f"study.late_window={study.late_window} must be in [1, {run.segments}] (the segments unrolled)")


def meta(run: BatchedRun) -> dict[str, Any]:
    """The settings summary.json records (beside the driver's provenance)."""
    study = run.settings
    return {"success_rule": study.success, "late_window": study.late_window, "otsu_bins": study.otsu_bins, "drift_floor": study.drift_floor,
            "vocab_size": run.inputs.metadata.vocab_size, "halting_rule": "q_halt > 0" if run.inputs.arch.no_ACT_continue else "q_halt > q_continue"}


def pooled(run: BatchedRun, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """d_late (N,): mean drift_zH over the last `late_window` segments; its resolution floor
    d_floor and the floored log10_d_late (N,)."""
    study = run.settings
    window = study.late_window
    d_late = late_drift(results["drift_zH"], window)
    d_floor = resolution_floor(late_drift(results["norm_zH"], window), run.cfg.dtype, study.drift_floor)
    log_d = floored_log_drift(d_late, d_floor)
    log_tau, _ = settling_threshold(log_d, threshold=study.threshold, drift_floor=study.drift_floor, otsu_bins=study.otsu_bins)
    per_segment = floored_log_drift(results["drift_zH"], resolution_floor(results["norm_zH"], run.cfg.dtype, study.drift_floor))
    first, stays = band_entry(per_segment, log_tau)
    run.meta.update(native_label_check(run, results))  # recorded in summary.json beside the provenance
    return {"d_late": d_late, "d_floor": d_floor, "log10_d_late": log_d, "first_settled": first, "stays_settled": stays}


def native_label_check(run: BatchedRun, results: dict[str, np.ndarray]) -> dict[str, Any]:
    """Success is labelled by the study's recurrence (float32/float64). When the checkpoint was
    trained in another dtype (bf16 for the recipes), roll the sample once more in that dtype, as
    evaluate.py does by default, and count the examples whose exact label differs."""
    native = run.inputs.checkpoint.native_dtype
    out: dict[str, Any] = {"success_labelled_in": run.cfg.dtype, "native_dtype": native or None, "n_label_disagree_native": None}
    if not native or native == run.cfg.dtype:
        return out
    from model_core.checkpoint import load_checkpoint  # noqa: PLC0415 (only for checkpoints trained in another dtype)
    from training.evaluation import run_segments  # noqa: PLC0415

    core = load_checkpoint(run.inputs.checkpoint.path, seq_len=run.inputs.metadata.seq_len, device=run.device,
                           allow_non_finite=run.cfg.allow_non_finite).model.model.inner
    exact = [run_segments(core, batch, run.segments, act_halting=False)["exact_by_segment"][:, -1].cpu().numpy()
             for _, _, batch in run.inputs.batches(run.cfg.batch_size)]
    out["n_label_disagree_native"] = int((np.concatenate(exact) != results["exact"].astype(bool)).sum())
    return out


def band_entry(log_drift: np.ndarray, log_tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(first_settled (N,) int64, stays_settled (N,) bool) of the floored log10 drift_zH (N, S):
    the first segment t (1-based) whose drift is at or below tau (-1 if none), and whether every
    later segment's is too (enter the low-velocity band and stay). NaN tau: nobody enters."""
    inside = log_drift <= log_tau
    entered = inside.any(axis=1)
    first = np.where(entered, inside.argmax(axis=1) + 1, -1).astype(np.int64)
    after = np.arange(inside.shape[1])[None, :] >= (first - 1)[:, None]
    stays = entered & (inside | ~after).all(axis=1)
    return first, stays


# --- settling statistics ---------------------------------------------------------------------------

def band_summary(results: dict[str, np.ndarray], success: np.ndarray) -> dict[str, Any]:
    """Per outcome: how many entered the low-velocity band (drift_zH <= tau) by S, how many of
    those left it again (Wilson CIs), and the median segment of entry."""
    first, stays = results["first_settled"], results["stays_settled"].astype(bool)
    out: dict[str, Any] = {}
    for name, group in (("success", success), ("failure", ~success)):
        entered = group & (first > 0)
        out[f"band_entered_{name}"] = proportion_with_ci(int(entered.sum()), int(group.sum()))
        out[f"band_left_{name}"] = proportion_with_ci(int((entered & ~stays).sum()), int(entered.sum()))
        out[f"band_entry_segment_median_{name}"] = float(np.median(first[entered])) if entered.any() else None
    return out


def sensitivity_sweep(log_d: np.ndarray, success: np.ndarray, percentiles: list[float]) -> list[dict[str, Any]]:
    """The 2x2 counts at thresholds on pooled percentiles of log10 d_late (= those of d_late)."""
    if not len(log_d):
        return []
    rows = []
    for p, t in zip(percentiles, percentile_sweep(log_d, percentiles)):
        rows.append({"percentile": float(p), "tau": float(10**t), "log10_tau": float(t), **settling_counts(log_d <= t, success)})
    return rows


def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], study: DisplacementStudyConfig, seed: int) -> dict[str, Any]:
    """summary.json: `meta` plus accuracy, d_late medians, tau, the 2x2 cells, the sweep, the
    threshold-free statement and AUC(-d_late -> success) with its bootstrap CI."""
    success = results["success"].astype(bool)
    d_late = results["d_late"]
    d_floor = results.get("d_floor", study.drift_floor)
    log_d = floored_log_drift(d_late, d_floor)
    log_tau, method = settling_threshold(log_d, threshold=study.threshold, drift_floor=study.drift_floor, otsu_bins=study.otsu_bins)
    settled = log_d <= log_tau  # all False when tau is NaN (fewer than two distinct values)
    min_failure = float(d_late[~success].min()) if (~success).any() else math.nan
    below = fraction_below(d_late[success], min_failure)
    auc_d = auc_with_ci(-d_late, success, seed=seed)
    band = band_summary(results, success) if "first_settled" in results else {}
    return {
        **meta,
        **band,
        "n_success": int(success.sum()),
        "n_failure": int((~success).sum()),
        "accuracy": float(success.mean()) if len(success) else None,
        "accuracy_exact": float(results["exact"].mean()) if len(success) else None,
        "median_d_late_success": median_or_none(d_late[success]),
        "median_d_late_failure": median_or_none(d_late[~success]),
        "n_at_floor": int((d_late <= d_floor).sum()),
        "threshold_method": method,
        "tau": none_if_nan(10**log_tau),
        "log10_tau": none_if_nan(log_tau),
        "separability": none_if_nan(separability(log_d, log_tau)),
        "cells": settling_cells(settled, success),
        "sweep": sensitivity_sweep(log_d, success, list(study.percentiles)),
        "min_failure_d_late": none_if_nan(min_failure),
        "success_below_min_failure": none_if_nan(below),
        "auc_neg_d_late": auc_d["auc"],
        "auc_neg_d_late_ci95": auc_d["ci95"],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": seed},
    }


# --- figures -----------------------------------------------------------------------------------------

OUTCOMES = ((True, "success", "tab:blue"), (False, "failure", "tab:red"))


def plot_drift_curves(results: dict[str, np.ndarray], path: Path, title: str, floor: float) -> Path:
    """Median and interquartile band of drift_zH and drift_zL per segment, successes vs failures."""
    success = results["success"].astype(bool)
    fig = new_figure(10.0, 4.0)
    for col, key in enumerate(("drift_zH", "drift_zL")):
        ax = fig.add_subplot(1, 2, col + 1)
        drift = np.maximum(results[key], floor)
        t = np.arange(1, drift.shape[1] + 1)
        for outcome, label, color in OUTCOMES:
            pick = success == outcome
            if pick.any():
                q25, q50, q75 = np.percentile(drift[pick], [25, 50, 75], axis=0)
                ax.plot(t, q50, color=color, label=f"{label} (n={int(pick.sum())})")
                ax.fill_between(t, q25, q75, color=color, alpha=0.25)
        ax.set_yscale("log")
        ax.set_xlabel("segment")
        ax.set_ylabel(f"drift of z_{key[-1]}: median and IQR")
        ax.legend()
    fig.suptitle(title)
    fig.subplots_adjust(wspace=0.3)
    return save_figure(fig, path)


def plot_d_late_hist(results: dict[str, np.ndarray], summary: dict[str, Any], path: Path, title: str, floor: float) -> Path:
    """Histogram of log10 d_late by outcome with the settling threshold tau."""
    success = results["success"].astype(bool)
    log_d = floored_log_drift(results["d_late"], results.get("d_floor", floor))
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(log_d, bins=40) if len(log_d) else 10
    for outcome, label, color in OUTCOMES:
        pick = success == outcome
        if pick.any():
            ax.hist(log_d[pick], bins=bins, alpha=0.6, color=color, label=f"{label} (n={int(pick.sum())})")
    if summary["log10_tau"] is not None:
        ax.axvline(summary["log10_tau"], color="k", linestyle="--", label=f"tau ({summary['threshold_method']})")
    ax.set_xlabel("log10 d_late")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_cells(summary: dict[str, Any], path: Path, title: str) -> Path:
    """The 2x2 settled x outcome table as a heat map of counts, annotated with fractions of n."""
    cells = summary["cells"]
    grid = [["A", "B"], ["C", "D"]]
    counts = np.array([[cells[c]["count"] for c in row] for row in grid])
    fig = new_figure(4.5, 3.5)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for i, row in enumerate(grid):
        for j, c in enumerate(row):
            frac = cells[c]["fraction"]
            text = f"{c}: {cells[c]['count']}" + ("" if frac is None else f"\n{100 * frac:.1f}%")
            ax.text(j, i, text, ha="center", va="center", color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set_xticks([0, 1], ["correct", "wrong"])
    ax.set_yticks([0, 1], ["settled", "unsettled"])
    ax.set_title(title)
    return save_figure(fig, path)


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """The drift curves, the d_late histogram with tau and the 2x2 heat map, in the run directory."""
    study, name, out = run.settings, run.checkpoint_name, run.out_dir
    return [
        plot_drift_curves(results, out / FIGURES["drift"], f"{name}: drift per segment ({run.cfg.dtype})", study.drift_floor),
        plot_d_late_hist(results, summary, out / FIGURES["hist"], f"{name}: late drift, last {study.late_window} segments", study.drift_floor),
        plot_cells(summary, out / FIGURES["cells"], f"{name}: settled x outcome"),
        plot_pca_trajectories(run, results, out / FIGURES["pca"], f"{name}: z_H trajectories, first two principal components"),
    ]


def pca_trajectories(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates (M, T, 2), explained variance ratio (2,)) of M trajectories of T states each
    (M, T, ...) projected on the first two principal components of all M x T states pooled."""
    m, t = states.shape[:2]
    flat = states.reshape(m * t, -1).astype(np.float64)
    centred = flat - flat.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    ratio = sing**2 / max(float((sing**2).sum()), np.finfo(np.float64).tiny)
    return (centred @ vt[:2].T).reshape(m, t, 2), ratio[:2]


def plot_pca_trajectories(run: BatchedRun, results: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """The first PCA_EXAMPLES successes and failures of the sample rolled again (same segments,
    z_H after each segment 1..S from the reset carry, which itself is left out: its jump to
    segment 1 would take the first component), each centred on its own mean (different puzzles
    sit far apart; the motion is what matters), drawn in the plane of the first two principal
    components of the pooled deviations: settling trajectories end in a point, wandering ones do not."""
    success = results["success"].astype(bool)
    picks = np.r_[np.flatnonzero(success)[:PCA_EXAMPLES], np.flatnonzero(~success)[:PCA_EXAMPLES]]
    fig = new_figure()
    ax = fig.add_subplot()
    if len(picks):
        batch = {"inputs": torch.from_numpy(run.inputs.inputs[picks]).to(run.device),
                 "labels": torch.from_numpy(run.inputs.labels[picks]).to(run.device),
                 "puzzle_identifiers": torch.from_numpy(run.inputs.puzzle_ids[picks]).to(run.device)}
        smap = SubUpdateMap(run.inputs.core, batch)
        # segments 1..S: the reset carry is left out, its jump to segment 1 would be PC1
        states = record_rollout(smap, run.segments, keep_last=run.segments).late_zH.cpu().numpy()  # (M, S, P + L, D)
        states = states - states.mean(axis=1, keepdims=True)  # each trajectory about its own mean: motion, not puzzle identity
        coords, ratio = pca_trajectories(states)
        for i, row in enumerate(picks):
            color = "tab:blue" if success[row] else "tab:red"
            ax.plot(coords[i, :, 0], coords[i, :, 1], "-o", color=color, markersize=2, linewidth=1, alpha=0.8,
                    label=("success" if success[row] else "failure") if i in (0, int(success[picks].sum())) else None)
            ax.plot(coords[i, -1, 0], coords[i, -1, 1], "s", color=color, markersize=5)
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% of variance)" if len(ratio) > 1 else "PC2")
        ax.legend()
    ax.set_title(title)
    return save_figure(fig, path)


# --- report ------------------------------------------------------------------------------------------

def band_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    def text(p: dict[str, Any] | None) -> str:
        if not p or p.get("fraction") is None:
            return "n/a"
        return f"{p['count']} of {p['n']} ({100 * p['fraction']:.1f}%, 95% CI {100 * p['ci95'][0]:.1f}-{100 * p['ci95'][1]:.1f}%)"
    return [{"outcome": name, "entered": text(summary.get(f"band_entered_{name}")), "left again": text(summary.get(f"band_left_{name}")),
             "median entry segment": summary.get(f"band_entry_segment_median_{name}") or "n/a"} for name in ("success", "failure")]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: settings, results, the 2x2 table, the sensitivity sweep and the figures."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "late_window", "success_rule", "threshold_method", "otsu_bins",
                "drift_floor", "dtype", "success_labelled_in", "native_dtype", "n_label_disagree_native"]
    results = ["accuracy", "accuracy_exact", "n_success", "n_failure", "median_d_late_success", "median_d_late_failure", "tau",
               "log10_tau", "separability", "n_at_floor", "min_failure_d_late", "success_below_min_failure", "auc_neg_d_late", "auc_neg_d_late_ci95"]

    cells = [{"cell": c, **{k: "n/a" if v is None else v for k, v in summary["cells"][c].items()}} for c in SETTLING_CELLS]
    below = summary["success_below_min_failure"]
    free = "The smallest failure d_late " + ("is undefined (one outcome is empty)." if below is None else
                                             f"({summary['min_failure_d_late']:.3e}) exceeds {100 * below:.1f}% of success d_late.")
    return "\n\n".join([
        "# Late displacement and settling",
        "## Settings\n\n" + settings_table(summary, [key for key in settings if key in summary]),
        "## Results\n\nd_late = mean ||z_H(t) - z_H(t-1)||_2 over the last late_window segments; settled = d_late <= tau; "
        "separability = Otsu's eta of the split of log10 d_late at tau (near 1: bimodal; low: tau is arbitrary); "
        "AUC of -d_late for success (Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI.\n\n"
        + settings_table(summary, results) + "\n\n" + free,
        "## Settled x outcome\n\nfraction: of all n; fraction_of_outcome: of the successes (A, C) or failures (B, D); "
        "ci95: its 95% Wilson interval; upper95: rule-of-three bound on that share for an empty cell.\n\n"
        + markdown_table(cells, ("cell", "label", "count", "fraction", "fraction_of_outcome", "ci95", "upper95")),
        "## Entering the low-velocity band\n\nPer outcome: examples whose floored drift_zH reached tau at some segment up to S, "
        "those of them that left the band again, and the median segment of entry.\n\n" + markdown_table(band_rows(summary),
                                                                                                    ("outcome", "entered", "left again", "median entry segment")),
        f"![2x2]({FIGURES['cells']})",
        "## Threshold sensitivity\n\nThe 2x2 counts with tau at pooled percentiles of d_late.\n\n"
        + markdown_table([{**row, "percentile": f"{row['percentile']:g}"} for row in summary["sweep"]],
                         ("percentile", "tau", "A", "B", "C", "D")),
        f"![drift per segment]({FIGURES['drift']})\n\n![log10 d_late]({FIGURES['hist']})",
        f"Trajectories of {PCA_EXAMPLES} successes (blue) and {PCA_EXAMPLES} failures (red), z_H after each "
        f"segment 1..S about each trajectory's own mean, projected on the first two principal components of the pooled "
        f"deviations (squares: segment S).\n\n"
        f"![PCA of trajectories]({FIGURES['pca']})",
    ])
