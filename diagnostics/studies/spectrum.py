"""The `spectrum` study: finite-time Lyapunov spectra of a checkpoint's inference, per example.

What is estimated (analysis §1-2): for each sampled test example, the k leading finite-time
Lyapunov exponents of the joint latent recurrence (z_H, z_L) over a fixed unroll of S ACT segments
(default `halt_max_steps`; halting recorded, not applied), per module evaluation ("sub-update":
TRM Sudoku 21 per segment, HRM default 6), natural log. Multiply by sub-updates per segment for
exponents per segment.

Algorithm, per batch (`diagnostics.adapters.step_map.segment_ftle`):
  1. x = input embedding, z0 = the reset carry (H_init, L_init); k Gaussian tangents per example,
     seeded per example from (tangent_seed, example index), so an example's result does not depend
     on the batch it falls in; QR-orthonormalised.
  2. Each sub-update pushes the state and the tangents (closed-form JVPs, `jvp_impl=manual`, or
     `torch.func.jvp`, `func`); QR every t_ons sub-updates and at each segment end; log|R_ii|
     (|R_ii| clamped at 1e-30) summed per segment -> log_r_segment (N, S, k), frame order.
  3. lambda = sort(sum of log_r_segment over segments [warmup_segments, S)) / sub-updates in that
     window. **Choice**: warmup segments are part of the S-segment trajectory (the answer is
     still decoded at segment S) and are only left out of lambda; log_r_segment keeps them.
  4. After every segment: answer = argmax of the logits at positions P:, exact match against the
     labels, q_halt, q_continue. Success = exact at segment S.

Run by `diagnostics.driver.drive` (loading, shards, outputs). Outputs in the run directory:
`summary.json`, `report.md`, `lambda1_hist.png`, `manifest.json`, `metrics.jsonl`, `shards/` (one
file per finished batch: a killed run restarted with the same settings resumes and gives identical
arrays) and `results.npz`, N examples joined by `index`:

    index (N,) int64            position in the test split (seeded sample, sorted)
    exact (N,) bool             success = exact match at the last segment
    lambda (N, k) float64       exponents per sub-update, descending (the sorted spectrum)
    lambda1 (N,) float64        lambda_1 as k = 1 computes it: the first Benettin column's
                                exponent (what the summary, AUC and figures call lambda_1)
    log_r_segment (N, S, k)     per-segment sums of log|R_ii|, frame order, float64
    exact_by_segment (N, S)     exact match after each segment
    q_halt, q_continue (N, S)   halting logits after each segment, float32
    givens (N,) int64           non-blank input cells (Sudoku: tokens other than pad 0, blank 1)

Computed on the pooled results (`pooled`) and added to results.npz:

    ky_dimension (N,) float64   Kaplan-Yorke dimension of each example's k exponents
                                (`diagnostics.estimators.dimension`); k when their sum is >= 0,
                                then only a lower bound (counted in summary.json)

Statistics: accuracy, median lambda_1 of successes and failures, AUC(-lambda_1 -> success)
(Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI (1000 resamples of examples); median
Kaplan-Yorke dimension by outcome; and the distribution of local growth rates: the leading frame
direction's finite-time exponent over each one-segment window of [warmup_segments, S)
(log_r_segment[:, s, 0] / sub-updates per segment), pooled over the examples of each outcome,
as quantiles and the fraction of positive windows (Kaplan & Yorke 1979; Abarbanel, Brown &
Kennel 1991).
Known failure modes: see `diagnostics.estimators.lyapunov` (float32 drift, near-zero exponents);
exponents of different estimators, dtypes or sub-update conventions are not comparable, so all
are stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.adapters.step_map import JVP_IMPLS, SubUpdateMap, segment_ftle
from diagnostics.adapters.trajectory import givens_count
from diagnostics.config import BatchedStudyConfig
from diagnostics.driver import BatchedRun
from diagnostics.estimators.dimension import kaplan_yorke_dimension, local_growth_rates
from diagnostics.estimators.lyapunov import ESTIMATOR
from diagnostics.estimators.statistics import BOOTSTRAP_SAMPLES, auc_with_ci, median_or_none, none_if_nan
from diagnostics.report import markdown_table, new_figure, save_figure, settings_table
from runtime.errors import ConfigError

FIGURE = "lambda1_hist.png"
CURVES = "lambda1_curves.png"
HEADLINES = (
    ("median lambda1 success", "median_lambda1_success", None),
    ("median lambda1 failure", "median_lambda1_failure", None),
    ("AUC(-lambda1)", "auc_neg_lambda1", "auc_neg_lambda1_ci95"),
)
SCALARS = ("accuracy", "median_lambda1_success", "median_lambda1_failure", "auc_neg_lambda1")
LOCAL_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # of the per-segment local lambda_1, by outcome


@dataclass
class SpectrumStudyConfig(BatchedStudyConfig):
    """Settings of the `spectrum` study (conf/study/spectrum.yaml).

    k: exponents per example (tangent vectors); 1 gives lambda_1 alone.
    t_ons: sub-updates between QR re-orthonormalisations (within a segment).
    segments: ACT segments unrolled; None = the checkpoint's halt_max_steps (>= 1 otherwise).
    warmup_segments: leading segments left out of lambda (still unrolled and stored).
    jvp_impl: "manual" (closed-form block JVPs, fast) or "func" (torch.func.jvp, for checking).
    tangent_seed: seeds the initial frames (per example, with the example index).
    """

    name: str = "spectrum"
    k: int = 8
    t_ons: int = 1
    warmup_segments: int = 0
    jvp_impl: str = "manual"
    tangent_seed: int = 0


# --- per-batch computation -------------------------------------------------------------------------

def example_frames(index: np.ndarray, k: int, state_shape: tuple[int, ...], tangent_seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(B, k, *state) Gaussian tangents, example i's drawn from a generator seeded by
    (tangent_seed, index[i]), independent of batching."""
    frames = []
    for idx in index:
        seed = int(np.random.SeedSequence([tangent_seed, int(idx)]).generate_state(1, dtype=np.uint64)[0])
        g = torch.Generator().manual_seed(seed)
        frames.append(torch.randn((1, k, *state_shape), generator=g, dtype=dtype))
    return torch.cat(frames).to(device)


def first_column_exponent(log_r_segment: np.ndarray, start: int, per_segment: int) -> np.ndarray:
    """(N,) lambda_1 as k = 1 computes it: the first Benettin column's log growth over segments
    [start, S) per sub-update. log_r_segment (N, S, k), columns in frame order. Unlike the largest
    of the k sorted column exponents, it is not biased upward when the leading exponents are
    nearly degenerate, and it does not change with k."""
    window = log_r_segment[:, start:, 0]
    return window.sum(1) / (window.shape[1] * per_segment)


def per_batch(run: BatchedRun, rows: slice, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The study's arrays for one batch (see `results.npz` in the module doc)."""
    study, inputs = run.settings, run.inputs
    smap = SubUpdateMap(inputs.core, batch)
    z0 = smap.initial_state()
    frames = example_frames(inputs.index[rows], study.k, tuple(z0.shape[1:]), study.tangent_seed, z0.dtype, z0.device)
    ftle = segment_ftle(smap, segments=run.segments, k=study.k, t_ons=study.t_ons, z0=z0, tangents=frames, jvp_impl=study.jvp_impl)
    exact_by_segment = ftle.readouts.exact(batch["labels"])
    return {
        "index": inputs.index[rows].astype(np.int64),
        "exact": exact_by_segment[:, -1].cpu().numpy(),
        "lambda": ftle.exponents(start=study.warmup_segments).cpu().numpy(),
        "lambda1": first_column_exponent(ftle.log_r_segment.cpu().numpy(), study.warmup_segments, ftle.sub_updates_per_segment),
        "log_r_segment": ftle.log_r_segment.cpu().numpy(),
        "exact_by_segment": exact_by_segment.cpu().numpy(),
        "q_halt": ftle.readouts.q_halt.float().cpu().numpy(),
        "q_continue": ftle.readouts.q_continue.float().cpu().numpy(),
        "givens": givens_count(inputs.inputs[rows]),
    }


# --- settings ----------------------------------------------------------------------------------------

def check(run: BatchedRun) -> None:
    """Refuse settings that cannot run on this checkpoint: the state dimension per example is
    2 S D (z_H and z_L), the most tangent vectors there can be."""
    study, arch = run.settings, run.inputs.arch
    state_dim = 2 * arch.seq_total * arch.hidden_size
    if study.jvp_impl not in JVP_IMPLS:
        raise ConfigError(f"study.jvp_impl={study.jvp_impl!r} is not one of {list(JVP_IMPLS)}")
    if study.k < 1 or study.t_ons < 1:
        raise ConfigError(f"study.k={study.k} and study.t_ons={study.t_ons} must both be >= 1")
    if study.k > state_dim:
        raise ConfigError(f"study.k={study.k} tangent vectors do not fit a state of dimension {state_dim} per example; use 1 <= study.k <= {state_dim}")
    if not 0 <= study.warmup_segments < run.segments:
        raise ConfigError(f"study.warmup_segments={study.warmup_segments} must be in [0, {run.segments}) so that some segments are measured")


def meta(run: BatchedRun) -> dict[str, Any]:
    """The settings summary.json records (beside the driver's provenance)."""
    study = run.settings
    return {"estimator": ESTIMATOR, "jvp_impl": study.jvp_impl, "k": study.k, "t_ons": study.t_ons, "warmup_segments": study.warmup_segments,
            "tangent_seed": study.tangent_seed}


def pooled(run: BatchedRun, results: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ky_dimension (N,): the Kaplan-Yorke dimension of each example's k exponents."""
    return {"ky_dimension": kaplan_yorke_dimension(results["lambda"])}


# --- summary, figure, report -------------------------------------------------------------------------

def dimension_summary(results: dict[str, np.ndarray], success: np.ndarray) -> dict[str, Any]:
    """Median Kaplan-Yorke dimension by outcome and how many examples sit at the k bound (the sum
    of their k exponents is >= 0, so D_KY = k is only a lower bound). Recomputed from lambda when
    results.npz predates `ky_dimension`."""
    lam = results["lambda"]
    ky = results["ky_dimension"] if "ky_dimension" in results else kaplan_yorke_dimension(lam)
    return {
        "median_ky_dimension_success": median_or_none(ky[success]),
        "median_ky_dimension_failure": median_or_none(ky[~success]),
        "n_ky_at_k_bound": int((ky >= lam.shape[1]).sum()) if len(ky) else 0,
    }


def local_rate_summary(results: dict[str, np.ndarray], success: np.ndarray, per_segment: int, warmup_segments: int) -> dict[str, Any] | None:
    """Quantiles and fraction positive of the one-segment local exponent (per sub-update) of the
    leading frame direction over segments [warmup_segments, S), pooled by outcome; None without
    log_r_segment (a summary built from lambda alone)."""
    if "log_r_segment" not in results or results["log_r_segment"].shape[1] <= warmup_segments:
        return None
    rates = local_growth_rates(results["log_r_segment"][:, warmup_segments:], 1, steps_per_entry=per_segment)[..., 0]  # (N, S - w)
    out: dict[str, Any] = {"window_segments": 1, "segments": [warmup_segments, int(results["log_r_segment"].shape[1])],
                           "quantiles": list(LOCAL_QUANTILES)}
    for label, pick in (("success", success), ("failure", ~success)):
        values = rates[pick].ravel()
        out[label] = np.quantile(values, LOCAL_QUANTILES).tolist() if len(values) else None
        out[f"fraction_positive_{label}"] = float((values > 0).mean()) if len(values) else None
    return out


def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], settings: SpectrumStudyConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """summary.json: `meta` plus accuracy, medians and AUC(-lambda_1 -> success) with its seeded
    bootstrap CI. `settings` is not read: what the summary reports of them is in `meta`."""
    success = results["exact"].astype(bool)
    lam1 = results["lambda1"] if "lambda1" in results else results["lambda"][:, 0]  # older runs: the sorted maximum
    k = results["lambda"].shape[1]
    auc_ci = auc_with_ci(-lam1, success, seed=seed)  # stratified bootstrap
    auc_value = math.nan if auc_ci["auc"] is None else auc_ci["auc"]
    lo, hi = auc_ci["ci95"] if auc_ci["ci95"] else (math.nan, math.nan)
    per_seg = meta["sub_updates_per_segment"]
    med_s, med_f = median_or_none(lam1[success]), median_or_none(lam1[~success])

    return {
        **meta,
        "n_success": int(success.sum()),
        "n_failure": int((~success).sum()),
        "accuracy": float(success.mean()) if len(success) else None,
        "lambda1_definition": "first Benettin column (as k = 1)" if "lambda1" in results else "largest of the k sorted exponents",
        "n_positive_capped": int((results["lambda"] > 0).all(1).sum()) if len(results["lambda"]) else 0,
        "median_lambda1_success": med_s,
        "median_lambda1_failure": med_f,
        "median_lambda1_success_per_segment": None if med_s is None else med_s * per_seg,
        "median_lambda1_failure_per_segment": None if med_f is None else med_f * per_seg,
        "mean_spectrum_success": results["lambda"][success].mean(0).tolist() if success.any() else None,
        "mean_spectrum_failure": results["lambda"][~success].mean(0).tolist() if (~success).any() else None,
        "auc_neg_lambda1": none_if_nan(auc_value),
        "auc_neg_lambda1_ci95": None if math.isnan(lo) else [lo, hi],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": seed},
        **dimension_summary(results, success),
        "local_lambda1": local_rate_summary(results, success, per_seg, meta.get("warmup_segments", 0)),
    }


def plot_lambda1(results: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Density histograms of lambda_1 for successes and failures with the zero line (expanding
    to its right), written atomically as a PNG."""
    success = results["exact"].astype(bool)
    lam1 = results["lambda1"] if "lambda1" in results else results["lambda"][:, 0]
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(lam1, bins=40) if len(lam1) else 10
    for mask, label, color in ((success, "success", "tab:blue"), (~success, "failure", "tab:red")):
        if mask.any():
            ax.hist(lam1[mask], bins=bins, alpha=0.6, density=True, label=f"{label} (n={int(mask.sum())})", color=color)
    ax.axvline(0.0, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("lambda_1 per sub-update (nats)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_lambda1_curves(results: dict[str, np.ndarray], path: Path, title: str, per_segment: int) -> Path:
    """lambda_1(t): the first Benettin column's running exponent over segments 1..t, per
    sub-update, median and interquartile band of successes and failures."""
    log_r = results["log_r_segment"][:, :, 0]
    t = np.arange(1, log_r.shape[1] + 1)
    running = np.cumsum(log_r, axis=1) / (t * per_segment)
    success = results["exact"].astype(bool)
    fig = new_figure()
    ax = fig.add_subplot()
    for mask, label, color in ((success, "success", "tab:blue"), (~success, "failure", "tab:red")):
        if mask.any():
            lo, mid, hi = np.quantile(running[mask], [0.25, 0.5, 0.75], axis=0)
            ax.plot(t, mid, color=color, label=f"{label} median (n={int(mask.sum())})")
            ax.fill_between(t, lo, hi, color=color, alpha=0.2)
    ax.axhline(0.0, color="k", linestyle=":", linewidth=1)
    ax.set_xlabel("segments unrolled t")
    ax.set_ylabel("lambda_1(t) per sub-update (nats)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """The lambda_1 density histogram and the lambda_1(t) curves, in the run directory."""
    tag = f"k={run.settings.k}, {run.cfg.dtype}"
    return [plot_lambda1(results, run.out_dir / FIGURE, f"{run.checkpoint_name}: lambda_1 ({tag})"),
            plot_lambda1_curves(results, run.out_dir / CURVES, f"{run.checkpoint_name}: lambda_1(t) ({tag})",
                                summary["sub_updates_per_segment"])]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: a settings table, a results table and the lambda_1 histogram."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "warmup_segments", "sub_updates_per_segment", "sub_update_convention",
                "estimator", "jvp_impl", "k", "t_ons", "dtype"]
    results = ["accuracy", "n_success", "n_failure", "lambda1_definition", "median_lambda1_success", "median_lambda1_failure",
               "median_lambda1_success_per_segment", "median_lambda1_failure_per_segment", "auc_neg_lambda1", "auc_neg_lambda1_ci95",
               "n_positive_capped"]
    capped = summary.get("n_positive_capped") or 0
    warning = (f"\n\n**Warning**: {capped} of {summary.get('n')} examples have all k = {summary.get('k')} exponents positive, so their "
               "number of positive exponents is capped at k (run with a larger study.k to count them)." if capped else "")
    return "\n\n".join([
        "# Finite-time Lyapunov spectrum",
        "## Settings\n\n" + settings_table(summary, settings),
        "## Results\n\nExponents per module evaluation (natural log); AUC of -lambda_1 for success "
        "(Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI.\n\n" + settings_table(summary, results) + warning,
        f"![lambda_1, successes vs failures]({FIGURE})",
        f"![lambda_1(t), successes vs failures]({CURVES})",
        format_dimension_section(summary),
    ])


def format_dimension_section(summary: dict[str, Any]) -> str:
    """report.md section: Kaplan-Yorke dimension by outcome and the local growth-rate quantiles."""
    keys = ["median_ky_dimension_success", "median_ky_dimension_failure", "n_ky_at_k_bound"]
    text = ("## Dimension and local growth rates\n\nKaplan-Yorke dimension j + (lambda_1 + ... + lambda_j) / |lambda_(j+1)| of "
            f"each example's k = {summary.get('k')} exponents; n_ky_at_k_bound examples have a non-negative sum of all k, so their "
            "dimension k is only a lower bound.\n\n" + settings_table(summary, keys))
    local = summary.get("local_lambda1")
    if local is None:
        return text
    rows = []
    for label in ("success", "failure"):
        values = local[label] or [None] * len(local["quantiles"])
        row = {f"q{q:g}": v for q, v in zip(local["quantiles"], values)}
        row.update(outcome=label, **{"windows > 0": local[f"fraction_positive_{label}"]})
        rows.append({key: "n/a" if v is None else v for key, v in row.items()})
    columns = ("outcome", *(f"q{q:g}" for q in local["quantiles"]), "windows > 0")
    return text + ("\n\nLocal lambda_1: the leading frame direction's exponent per module evaluation over each one-segment "
                   f"window of segments [{local['segments'][0]}, {local['segments'][1]}), pooled over the examples of each outcome "
                   "(quantiles; windows > 0 = fraction of windows that expand).\n\n" + markdown_table(rows, columns))


def load_results(out_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a finished run (`results.npz`), e.g. to re-window log_r_segment."""
    with np.load(Path(out_dir) / "results.npz") as z:
        return {key: z[key] for key in z.files}
