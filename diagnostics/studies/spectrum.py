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
    lambda (N, k) float64       exponents per sub-update, descending
    log_r_segment (N, S, k)     per-segment sums of log|R_ii|, frame order, float64
    exact_by_segment (N, S)     exact match after each segment
    q_halt, q_continue (N, S)   halting logits after each segment, float32
    givens (N,) int64           non-blank input cells (Sudoku: tokens other than pad 0, blank 1)

Statistics: accuracy, median lambda_1 of successes and failures, AUC(-lambda_1 -> success)
(Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI (1000 resamples of examples).
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
from diagnostics.estimators.lyapunov import ESTIMATOR
from diagnostics.estimators.statistics import BOOTSTRAP_SAMPLES, auc, bootstrap_ci, median_or_none, none_if_nan
from diagnostics.report import new_figure, save_figure, settings_table
from runtime.errors import ConfigError

FIGURE = "lambda1_hist.png"
HEADLINES = (
    ("median lambda1 success", "median_lambda1_success", None),
    ("median lambda1 failure", "median_lambda1_failure", None),
    ("AUC(-lambda1)", "auc_neg_lambda1", "auc_neg_lambda1_ci95"),
)
SCALARS = ("accuracy", "median_lambda1_success", "median_lambda1_failure", "auc_neg_lambda1")


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


# --- summary, figure, report -------------------------------------------------------------------------

def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], settings: SpectrumStudyConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """summary.json: `meta` plus accuracy, medians and AUC(-lambda_1 -> success) with its seeded
    bootstrap CI. `settings` is not read: what the summary reports of them is in `meta`."""
    success = results["exact"].astype(bool)
    lam1 = results["lambda"][:, 0]
    auc_value = auc(-lam1, success)
    lo, hi = bootstrap_ci(auc, -lam1, success, seed=seed) if not math.isnan(auc_value) else (math.nan, math.nan)
    per_seg = meta["sub_updates_per_segment"]
    med_s, med_f = median_or_none(lam1[success]), median_or_none(lam1[~success])

    return {
        **meta,
        "n_success": int(success.sum()),
        "n_failure": int((~success).sum()),
        "accuracy": float(success.mean()) if len(success) else None,
        "median_lambda1_success": med_s,
        "median_lambda1_failure": med_f,
        "median_lambda1_success_per_segment": None if med_s is None else med_s * per_seg,
        "median_lambda1_failure_per_segment": None if med_f is None else med_f * per_seg,
        "mean_spectrum_success": results["lambda"][success].mean(0).tolist() if success.any() else None,
        "mean_spectrum_failure": results["lambda"][~success].mean(0).tolist() if (~success).any() else None,
        "auc_neg_lambda1": none_if_nan(auc_value),
        "auc_neg_lambda1_ci95": None if math.isnan(lo) else [lo, hi],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": seed},
    }


def plot_lambda1(results: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Histogram of lambda_1 for successes and failures, written atomically as a PNG."""
    success = results["exact"].astype(bool)
    lam1 = results["lambda"][:, 0]
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(lam1, bins=40) if len(lam1) else 10
    for mask, label, color in ((success, "success", "tab:blue"), (~success, "failure", "tab:red")):
        if mask.any():
            ax.hist(lam1[mask], bins=bins, alpha=0.6, label=f"{label} (n={int(mask.sum())})", color=color)
    ax.set_xlabel("lambda_1 per sub-update (nats)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """The lambda_1 histogram, in the run directory."""
    return [plot_lambda1(results, run.out_dir / FIGURE, f"{run.checkpoint_name}: lambda_1 (k={run.settings.k}, {run.cfg.dtype})")]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: a settings table, a results table and the lambda_1 histogram."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "warmup_segments", "sub_updates_per_segment", "sub_update_convention",
                "estimator", "jvp_impl", "k", "t_ons", "dtype"]
    results = ["accuracy", "n_success", "n_failure", "median_lambda1_success", "median_lambda1_failure",
               "median_lambda1_success_per_segment", "median_lambda1_failure_per_segment", "auc_neg_lambda1", "auc_neg_lambda1_ci95"]
    return "\n\n".join([
        "# Finite-time Lyapunov spectrum",
        "## Settings\n\n" + settings_table(summary, settings),
        "## Results\n\nExponents per module evaluation (natural log); AUC of -lambda_1 for success "
        "(Mann-Whitney, ties averaged) with a seeded bootstrap 95% CI.\n\n" + settings_table(summary, results),
        f"![lambda_1, successes vs failures]({FIGURE})",
    ])


def load_results(out_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a finished run (`results.npz`), e.g. to re-window log_r_segment."""
    with np.load(Path(out_dir) / "results.npz") as z:
        return {key: z[key] for key in z.files}
