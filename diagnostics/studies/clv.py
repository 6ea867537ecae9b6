"""The `clv` study: angles between covariant Lyapunov vectors along a checkpoint's inference.

What is measured: for each sampled test example, the first k covariant Lyapunov vectors (CLVs,
`diagnostics.estimators.clv`, Ginelli et al. 2007) of the joint latent recurrence (z_H, z_L) at
the end of every segment s = warmup_segments, ..., S of the fixed unroll (analysis §1-2; halting
recorded, not applied), and the angle in degrees, in [0, 90], between CLV 1 (the most expanding
direction) and CLV k (the most contracting of the k computed). A hyperbolic trajectory keeps its
expanding and contracting directions apart; angles near 0 (tangencies) signal non-hyperbolic
dynamics, where small perturbations can switch between growing and shrinking, as on a chaotic
saddle (Kuptsov & Parlitz 2012). Per example: the minimum and the median angle over the points.

Algorithm, per batch:
  1. x = input embedding, z0 = the reset carry; k Gaussian tangents and a Gaussian upper-triangular
     C per example, drawn from a generator seeded by (tangent_seed, example index) (frame first,
     as the spectrum study draws it), so results do not depend on batching.
  2. Forward: the sub-update map (`diagnostics.adapters.step_map.SubUpdateMap`) pushes the state
     and the frame (closed-form JVPs, `jvp_impl=manual`, or `torch.func.jvp`, `func`) with a QR
     after every sub-update, through S + backward_segments segments. **Choice**: the backward
     window runs past the budget S (the same recurrence, unrolled further), so every point up to
     segment S gets `backward_segments` segments of future; the answer is still decoded at S.
  3. Backward: C_{t-1} = R_t^{-1} C_t with renormalised columns from the last sub-update down to
     the first point; at each point the angle between CLV 1 and CLV k follows from the columns of
     C alone (the Gram-Schmidt frame is orthonormal), so no D-dimensional vector is stored.
  4. A plain rollout of S segments (same operations as the pushed primal) gives the read-outs:
     exact match after every segment; success = exact at segment S.
The forward pass is the spectrum study's Benettin run with the same draws; `lambda` (its exponents
over segments [warmup_segments, S)) equals the spectrum study's at the same k, tangent_seed and
warmup_segments up to summation order.

Run by `diagnostics.driver.drive`. Outputs in the run directory: `summary.json`, `report.md`,
`clv_angle_hist.png`, `manifest.json`, `metrics.jsonl`, `shards/` and `results.npz`, N examples
joined by `index`:

    index (N,) int64                position in the test split (seeded sample, sorted)
    exact (N,) bool                 success = exact match at the last segment
    exact_by_segment (N, S) bool    exact match after each segment
    angles (N, P) float64           angle(CLV 1, CLV k) in degrees at the P = S - warmup + 1 points
    angle_min, angle_median (N,)    its minimum and median over the points
    lambda (N, k) float64           Benettin exponents per sub-update over [warmup_segments, S)
                                    (all S segments when warmup_segments = S), descending

Statistics: per outcome the median of angle_min and of angle_median, each with a seeded bootstrap
95% CI (1000 resamples of that outcome's examples); AUC(angle_min -> success) (Mann-Whitney, ties
averaged) with its bootstrap CI: above 0.5 when successes keep their directions further apart;
and how converged the CLVs are: the median smallest gap between adjacent exponents times the
sub-updates of the warm-up and of the backward window (e-folds of the two transients).

Known failure modes: the CLVs converge like exp(-gap * steps) in both passes; with small exponent
gaps (models often have several exponents near 0) and short windows the angles still carry the
random start (seeded, so reproducible, not meaningful); raise warmup_segments and
backward_segments. Exponents that are degenerate (equal or a complex pair) have no unique CLVs.
In float32 the frame carries the Benettin estimator's round-off (`diagnostics.estimators.lyapunov`);
the backward pass runs in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.adapters.step_map import JVP_IMPLS, SubUpdateMap, rollout
from diagnostics.config import BatchedStudyConfig
from diagnostics.driver import BatchedRun
from diagnostics.estimators.clv import ESTIMATOR, clv_along_orbit, random_upper_triangular
from diagnostics.estimators.statistics import BOOTSTRAP_SAMPLES, auc_with_ci, bootstrap_ci, median_or_none
from diagnostics.report import new_figure, save_figure, settings_table
from runtime.errors import ConfigError

FIGURE = "clv_angle_hist.png"
HEADLINES = (
    ("median min CLV angle success", "median_angle_min_success", "median_angle_min_success_ci95"),
    ("median min CLV angle failure", "median_angle_min_failure", "median_angle_min_failure_ci95"),
    ("AUC(min CLV angle)", "auc_angle_min", "auc_angle_min_ci95"),
)
SCALARS = ("accuracy", "median_angle_min_success", "median_angle_min_failure", "auc_angle_min")


@dataclass
class ClvStudyConfig(BatchedStudyConfig):
    """Settings of the `clv` study (conf/study/clv.yaml).

    k: CLVs per example (>= 2); the angle is between CLV 1 and CLV k.
    segments: ACT segments of the budget; None = the checkpoint's halt_max_steps (>= 1 otherwise).
    warmup_segments: segments before the first point (the forward transient; >= 1, <= S).
    backward_segments: segments past S that start the backward iteration (>= 1).
    jvp_impl: "manual" (closed-form block JVPs, fast) or "func" (torch.func.jvp, for checking).
    tangent_seed: seeds the initial frames and C (per example, with the example index).
    """

    name: str = "clv"
    k: int = 8
    warmup_segments: int = 4
    backward_segments: int = 4
    jvp_impl: str = "manual"
    tangent_seed: int = 0


# --- per-batch computation -------------------------------------------------------------------------

def example_draws(index: np.ndarray, k: int, state_shape: tuple[int, ...], tangent_seed: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, from a generator seeded by (tangent_seed, index[i]): the Gaussian frame
    (B, k, *state) (drawn first, the same numbers as the spectrum study's frame) and the start
    C_T (B, k, k) float64 of the backward iteration."""
    frames, coefficients = [], []
    for idx in index:
        seed = int(np.random.SeedSequence([tangent_seed, int(idx)]).generate_state(1, dtype=np.uint64)[0])
        g = torch.Generator().manual_seed(seed)
        frames.append(torch.randn((1, k, *state_shape), generator=g, dtype=dtype))
        coefficients.append(random_upper_triangular(1, k, g))
    return torch.cat(frames).to(device), torch.cat(coefficients).to(device)


def segment_angles(smap: SubUpdateMap, *, segments: int, k: int, warmup_segments: int, backward_segments: int, jvp_impl: str,
                   tangents: torch.Tensor | None = None, coefficients: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """angle(CLV 1, CLV k) at the end of segments warmup_segments..segments, and the Benettin
    exponents over [warmup_segments, segments), from one forward-backward run.

    Args:
        smap: the batch's map (restarted at the beginning of the schedule).
        tangents (B, k, 2, S, D), coefficients (B, k, k): the draws (default from `generator`).
    Returns:
        (angles (B, P) float64 degrees, lambda (B, k) float64 per sub-update, sorted descending).
    """
    n_sub = smap.sub_updates_per_segment
    times = [s * n_sub for s in range(warmup_segments, segments + 1)]
    smap.reset()
    result = clv_along_orbit(None, smap.initial_state(), k=k, times=times, n_backward=backward_segments * n_sub,
                             push=partial(smap.push, jvp_impl=jvp_impl), generator=generator, tangents=tangents, coefficients=coefficients)
    window = (warmup_segments * n_sub, segments * n_sub) if warmup_segments < segments else (0, segments * n_sub)
    return result.angles(0, k - 1), result.exponents(*window)


def per_batch(run: BatchedRun, rows: slice, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The study's arrays for one batch (see `results.npz` in the module doc)."""
    study, inputs = run.settings, run.inputs
    smap = SubUpdateMap(inputs.core, batch)
    z0 = smap.initial_state()
    frames, coefficients = example_draws(inputs.index[rows], study.k, tuple(z0.shape[1:]), study.tangent_seed, z0.dtype, z0.device)
    angles, lam = segment_angles(smap, segments=run.segments, k=study.k, warmup_segments=study.warmup_segments,
                                 backward_segments=study.backward_segments, jvp_impl=study.jvp_impl, tangents=frames, coefficients=coefficients)
    _, readouts = rollout(smap, run.segments)
    exact_by_segment = readouts.exact(batch["labels"]).cpu().numpy()
    angles = angles.cpu().numpy()
    return {
        "index": inputs.index[rows].astype(np.int64),
        "exact": exact_by_segment[:, -1],
        "exact_by_segment": exact_by_segment,
        "angles": angles,
        "angle_min": angles.min(1),
        "angle_median": np.median(angles, axis=1),
        "lambda": lam.cpu().numpy(),
    }


# --- settings ----------------------------------------------------------------------------------------

def check(run: BatchedRun) -> None:
    """Refuse settings that cannot run on this checkpoint (k between 2 and the state dimension
    2 S D; at least one point after the warm-up; a backward window)."""
    study, arch = run.settings, run.inputs.arch
    state_dim = 2 * arch.seq_total * arch.hidden_size
    if study.jvp_impl not in JVP_IMPLS:
        raise ConfigError(f"study.jvp_impl={study.jvp_impl!r} is not one of {list(JVP_IMPLS)}")
    if not 2 <= study.k <= state_dim:
        raise ConfigError(f"study.k={study.k} must be in [2, {state_dim}]: the angle is between CLV 1 and CLV k of a state of dimension {state_dim}")
    if not 1 <= study.warmup_segments <= run.segments:
        raise ConfigError(f"study.warmup_segments={study.warmup_segments} must be in [1, {run.segments}] so that the frame has aligned "
                          "before the first point and a point lies within the budget")
    if study.backward_segments < 1:
        raise ConfigError(f"study.backward_segments={study.backward_segments} must be >= 1 (the backward iteration runs past segment S)")


def meta(run: BatchedRun) -> dict[str, Any]:
    """The settings summary.json records (beside the driver's provenance)."""
    study = run.settings
    return {"estimator": ESTIMATOR, "jvp_impl": study.jvp_impl, "k": study.k, "warmup_segments": study.warmup_segments,
            "backward_segments": study.backward_segments, "points": run.segments - study.warmup_segments + 1, "tangent_seed": study.tangent_seed}


# --- summary, figure, report -------------------------------------------------------------------------

def median_with_ci(values: np.ndarray, seed: int) -> tuple[float | None, list[float] | None]:
    """Median of `values` (n,) and its seeded percentile-bootstrap 95% CI over the values (None
    when empty; the CI is None when fewer than 2 values)."""
    if not len(values):
        return None, None
    lo, hi = bootstrap_ci(lambda s, _: float(np.median(s)), values, np.ones(len(values), dtype=bool), seed=seed) if len(values) > 1 else (math.nan, math.nan)
    return median_or_none(values), None if math.isnan(lo) else [lo, hi]


def convergence(lam: np.ndarray, meta: dict[str, Any]) -> dict[str, float | None]:
    """How far the two transients have decayed: the smallest gap between adjacent exponents (N, k)
    per sub-update, median over examples, and the e-folds gap x sub-updates of the forward
    (warm-up) and backward windows. Both passes converge like exp(-e-folds); below ~5 the angles
    still depend on the random start."""
    if not len(lam):
        return {"median_min_gap": None, "efolds_forward": None, "efolds_backward": None}
    gap = float(np.median((lam[:, :-1] - lam[:, 1:]).min(1)))
    per_seg = meta.get("sub_updates_per_segment", 1)
    return {"median_min_gap": gap, "efolds_forward": gap * per_seg * meta.get("warmup_segments", 0),
            "efolds_backward": gap * per_seg * meta.get("backward_segments", 0)}


def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], settings: ClvStudyConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """summary.json: `meta` plus accuracy, per-outcome medians of the minimum and median angle
    (with bootstrap CIs), AUC(angle_min -> success) with its bootstrap CI and the convergence
    e-folds (`convergence`)."""
    success = results["exact"].astype(bool)
    out: dict[str, Any] = {
        **meta,
        "n_success": int(success.sum()),
        "n_failure": int((~success).sum()),
        "accuracy": float(success.mean()) if len(success) else None,
    }
    for key in ("angle_min", "angle_median"):
        for label, pick in (("success", success), ("failure", ~success)):
            out[f"median_{key}_{label}"], out[f"median_{key}_{label}_ci95"] = median_with_ci(results[key][pick], seed)
    auc_min = auc_with_ci(results["angle_min"], success, seed=seed)
    out["auc_angle_min"], out["auc_angle_min_ci95"] = auc_min["auc"], auc_min["ci95"]
    out["min_angle_overall"] = float(results["angle_min"].min()) if len(success) else None
    out.update(convergence(results["lambda"], meta))
    out["bootstrap"] = {"samples": BOOTSTRAP_SAMPLES, "seed": seed}
    return out


def plot_angle_min(results: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Histogram of the minimum CLV 1 - CLV k angle for successes and failures (PNG, atomic)."""
    success = results["exact"].astype(bool)
    angle = results["angle_min"]
    fig = new_figure()
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 90.0, 46)  # 2-degree bins over the whole range of line angles
    for mask, label, color in ((success, "success", "tab:blue"), (~success, "failure", "tab:red")):
        if mask.any():
            ax.hist(angle[mask], bins=bins, alpha=0.6, label=f"{label} (n={int(mask.sum())})", color=color)
    ax.set_xlabel("min over the trajectory of angle(CLV 1, CLV k) (degrees)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """The minimum-angle histogram, in the run directory."""
    return [plot_angle_min(results, run.out_dir / FIGURE, f"{run.checkpoint_name}: CLV 1 vs CLV {run.settings.k} ({run.cfg.dtype})")]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: a settings table, a results table and the minimum-angle histogram."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "warmup_segments", "backward_segments", "points", "sub_updates_per_segment",
                "sub_update_convention", "estimator", "jvp_impl", "k", "dtype"]
    results = ["accuracy", "n_success", "n_failure", "median_angle_min_success", "median_angle_min_success_ci95", "median_angle_min_failure",
               "median_angle_min_failure_ci95", "median_angle_median_success", "median_angle_median_failure", "auc_angle_min",
               "auc_angle_min_ci95", "min_angle_overall", "median_min_gap", "efolds_forward", "efolds_backward"]
    return "\n\n".join([
        "# Covariant Lyapunov vectors: expanding vs contracting directions",
        "## Settings\n\n" + settings_table(summary, settings),
        f"## Results\n\nAngle in degrees (0 to 90) between CLV 1 and CLV k = {summary['k']} at the end of each segment from "
        f"warmup_segments to S ({summary['points']} points); per example its minimum (angle_min) and median (angle_median). Medians by "
        "outcome with seeded bootstrap 95% CIs; AUC of angle_min for success (Mann-Whitney, ties averaged; above 0.5: successes "
        "keep the directions further apart). Small angles are near-tangencies, a sign of non-hyperbolic dynamics. "
        "Convergence: median_min_gap is the smallest gap between adjacent exponents (per sub-update, median over examples); "
        "efolds_forward / efolds_backward = that gap x the sub-updates of the warm-up / backward window. Both transients decay like "
        "exp(-efolds): below ~5 the angles still depend on the random start (raise warmup_segments and backward_segments).\n\n"
        + settings_table(summary, results),
        f"![minimum CLV angle, successes vs failures]({FIGURE})",
    ])
