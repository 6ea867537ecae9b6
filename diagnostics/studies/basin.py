"""The `basin` study: can a small kick to the initial carry free a failure? (analysis §6)

What is measured: each segment-S failure is restarted K times (`restarts`, default 8) per noise
level sigma from a perturbed reset carry z0 + sigma * s * eps, with s = std(H_init) (the scale of
the model's own initial carry, population std over D) and eps ~ N(0, I) on z_H, z_L or both
(`where`). Each restart runs S_b = `segments_basin` (48) segments with halting recorded, not
applied. Read-outs per restart: solved at segment S, and ever solved: at some segment t with
S <= t <= S_b (the same definition as the extended study's "solved later": a restart that is
right only before S and wrong again at S does not count). If failures sit on a
chaotic saddle with nearby success basins, small kicks free most of them; a failure inside a wrong
basin needs a kick that leaves it, so some failures (the hard core) are freed by no restart at
any sigma. As a control, successes are restarted the same way: how often does a kick break one?

Algorithm:
  1. Base rollout of every sampled example from z0 for S_b segments (per-batch shards); failures
     = not solved at S; controls = a seeded subset of the successes (`control_successes`,
     default as many as failures, capped at the number of successes).
  2. For each sigma and chunk of tested examples (failures and controls, batch_size // K
     examples, so about batch_size rows per forward): each example repeated K times, eps drawn
     per row from a generator seeded by (noise_seed, example index, the bits of sigma, restart),
     so a row's noise does not depend on batching or on the other sigmas listed. sigma = 0 runs
     one row per example (its K restarts coincide) from z0 unchanged, so it reproduces the base
     trajectory exactly.
  3. Per sigma over failures: single-restart solve rate (mean over failures and restarts; 95%
     bootstrap CI over failures, 1000 seeded resamples) and best-of-K rate (some restart solves),
     for both read-outs; over controls: break rate (a restart not solved at S) and the fraction
     broken by some restart. Hard core: failures that no restart at any sigma solves (per read-out),
     with the rule-of-three bound when it is empty.

Run by `diagnostics.driver.drive`: step 1 is its batches, step 2 its `jobs` pass. Outputs:
`summary.json`, `report.md`, `solve_rate.png`, `hard_core.png`, `manifest.json`,
`metrics.jsonl`, `shards/` (base batches) and `restarts/shards/` (one per sigma and chunk; a
killed run resumes with identical results), and `results.npz`:

    index (N,) int64                       sampled positions in the test split (sorted)
    success_by_segment (N, S_b) bool       base (unperturbed) success after each segment
    drift_zH (N, S_b) float64              base ||z_H(t) - z_H(t-1)|| per segment (finite, checked)
    sigmas (n_sigma,) float64              the noise levels, in units of std(H_init)
    tested_index (M,) int64                examples restarted: failures, then controls mixed in
    tested_failure (M,) bool               True for a segment-S failure, False for a control
    solved_at_budget (M, n_sigma, K) bool  restart solved at segment S
    first_solved (M, n_sigma, K) int64     first segment t in S..S_b solved, -1 if never

Known failure modes: with std(H_init) tiny (a degenerate init) sigma is relative to almost
nothing; rates over few failures are noisy (see the CIs); sigma = 0 reproduces the base exactly
only on hardware whose kernels are batch-invariant (the summary's `sigma0_reproduces` checks it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.adapters.step_map import SubUpdateMap
from diagnostics.adapters.trajectory import check_success_rule, first_solved_after, record_rollout, sample_success
from diagnostics.config import BatchedStudyConfig
from diagnostics.driver import BatchedRun, Jobs, refuse_non_finite
from diagnostics.estimators.statistics import BOOTSTRAP_SAMPLES, bootstrap_ci, none_if_nan, proportion_with_ci, rule_of_three
from diagnostics.inputs import StudyInputs
from diagnostics.report import markdown_table, new_figure, save_figure, settings_table
from runtime.errors import ConfigError
from runtime.logging import get_logger
from training.evaluation import restart_noise  # the same noise as evaluate.py's restart-and-select

log = get_logger("diagnostics.basin")
WHERE = {"z_H": (0,), "z_L": (1,), "both": (0, 1)}  # state channels perturbed, (B, 2, S, D) layout
READOUTS = ("at_budget", "ever")
FIGURES = ("solve_rate.png", "hard_core.png")
PUBLISHED = ("Published (qualitative, analysis §6): a small kick frees most TRM failures; a hard core of "
             "HRM failures is never freed.")
HEADLINES = (
    ("failures", "n_failures", None),
    ("hard core (never solved)", "hard_core_ever", None),
    ("sigma=0 reproduces", "sigma0_reproduces", None),
)
SCALARS = ("accuracy", "n_failures", "hard_core_at_budget", "hard_core_ever")


@dataclass
class BasinStudyConfig(BatchedStudyConfig):
    """Settings of the `basin` study (conf/study/basin.yaml).

    segments: the budget S; None = the checkpoint's halt_max_steps (>= 1 otherwise).
    segments_basin: S_b >= S, segments run per restart (read-out "ever solved by S_b").
    restarts: K restarts per tested example and sigma.
    sigmas: noise levels in units of std(H_init), distinct and >= 0 (0 = the unperturbed control).
    where: "z_H", "z_L" or "both", the part of the carry perturbed.
    success: "exact" or (Maze) "valid_path".
    control_successes: successes restarted as a control; None = as many as failures (capped).
    noise_seed: seeds the restart noise and the choice of controls.
    """

    name: str = "basin"
    segments_basin: int = 48
    restarts: int = 8
    sigmas: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.03, 0.1, 0.3, 1.0])
    where: str = "both"
    success: str = "exact"
    control_successes: int | None = None
    noise_seed: int = 0


# --- noise and restarts ---------------------------------------------------------------------------------

def perturb(z0: torch.Tensor, noise: torch.Tensor, sigma: float, scale: float, where: str) -> torch.Tensor:
    """z0 (B, 2, S, D) + sigma * scale * noise on the channels of `where`; z0 itself when sigma = 0."""
    if sigma == 0:
        return z0
    mask = torch.zeros(1, 2, 1, 1, dtype=z0.dtype, device=z0.device)
    mask[:, list(WHERE[where])] = 1
    return z0 + (sigma * scale) * mask * noise.to(z0.device)


def rows_batch(inputs: StudyInputs, positions: np.ndarray) -> dict[str, torch.Tensor]:
    """A device batch of the sample rows `positions` (repeats allowed)."""
    return {
        "inputs": torch.from_numpy(inputs.inputs[positions]).to(inputs.device),
        "labels": torch.from_numpy(inputs.labels[positions]).to(inputs.device),
        "puzzle_identifiers": torch.from_numpy(inputs.puzzle_ids[positions]).to(inputs.device),
    }


def restart_job(inputs: StudyInputs, positions: np.ndarray, sigma_index: int, study: BasinStudyConfig, segments: int, scale: float) -> dict[str, np.ndarray]:
    """Restarts of the sample rows `positions` (c,) at sigmas[sigma_index]: row (c,), sigma_index
    (c,), solved_at_budget (c, K) and first_solved (c, K)."""
    sigma, k = float(study.sigmas[sigma_index]), study.restarts
    reps = 1 if sigma == 0 else k  # sigma 0: the K restarts are one and the same trajectory
    rep_pos = np.repeat(positions, reps)
    smap = SubUpdateMap(inputs.core, rows_batch(inputs, rep_pos))
    z0 = smap.initial_state()
    noise = restart_noise(inputs.index[positions], sigma, reps, tuple(z0.shape[1:]), study.noise_seed, z0.dtype) if sigma else None
    traj = record_rollout(smap, study.segments_basin, perturb(z0, noise, sigma, scale, study.where))
    refuse_non_finite(f"basin (sigma {sigma:g})", {"drift_zH": traj.drift_zH.cpu().numpy()}, ("drift_zH",), inputs.index[rep_pos])
    success = sample_success(inputs, rep_pos, traj.readouts.preds.cpu().numpy(), study.success)
    solved = success[:, segments - 1].reshape(len(positions), reps)
    first = first_solved_after(success, segments - 1).reshape(len(positions), reps)  # solved at S or later
    return {
        "row": positions.astype(np.int64),
        "sigma_index": np.full(len(positions), sigma_index, dtype=np.int64),
        "solved_at_budget": np.repeat(solved, k // reps, axis=1),
        "first_solved": np.repeat(first, k // reps, axis=1),
    }


def select_controls(success_rows: np.ndarray, n_failures: int, requested: int | None, seed: int) -> np.ndarray:
    """Sorted sample rows of the successes restarted as a control: a seeded choice of
    min(requested or n_failures, number of successes) of `success_rows`."""
    m = min(n_failures if requested is None else requested, len(success_rows))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return np.sort(rng.choice(success_rows, size=m, replace=False)) if m else np.zeros(0, np.int64)


def assemble(jobs: dict[str, np.ndarray], tested_rows: np.ndarray, n_sigma: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the concatenated job rows into (M, n_sigma, K) solved_at_budget and first_solved."""
    k = jobs["solved_at_budget"].shape[1]
    solved = np.zeros((len(tested_rows), n_sigma, k), dtype=bool)
    first = np.full((len(tested_rows), n_sigma, k), -2, dtype=np.int64)  # -2 = not filled
    m = np.searchsorted(tested_rows, jobs["row"])
    solved[m, jobs["sigma_index"]] = jobs["solved_at_budget"]
    first[m, jobs["sigma_index"]] = jobs["first_solved"]
    if (first == -2).any():
        raise RuntimeError("restart shards do not cover every tested example and sigma")
    return solved, first


# --- statistics ----------------------------------------------------------------------------------------------

def rate_with_ci(per_example: np.ndarray, seed: int) -> tuple[float | None, list[float] | None]:
    """Mean of (M,) per-example values and its seeded percentile-bootstrap 95% CI over examples."""
    if len(per_example) == 0:
        return None, None
    lo, hi = bootstrap_ci(lambda v, _: float(v.mean()), per_example, per_example, seed=seed)
    return float(per_example.mean()), [lo, hi]


def freed(results: dict[str, np.ndarray], readout: str) -> np.ndarray:
    """(M, n_sigma, K) bool: restart solved at S ("at_budget") or at some segment t with
    S <= t <= S_b ("ever": the extended study's definition, at or after the budget)."""
    return results["solved_at_budget"] if readout == "at_budget" else results["first_solved"] >= 0


def hard_core(results: dict[str, np.ndarray], readout: str) -> np.ndarray:
    """(n_sigma,) fraction of failures not freed by any restart at any sigma <= sigmas[j] (cumulative
    in the order of increasing sigma); the last entry over all sigmas is the hard core."""
    fail = results["tested_failure"]
    order = np.argsort(results["sigmas"])
    any_restart = freed(results, readout)[fail][:, order].any(-1)  # (F, n_sigma)
    cumulative = np.logical_or.accumulate(any_restart, axis=1) if len(any_restart) else any_restart
    out = np.full(len(order), math.nan)
    out[order] = 1.0 - cumulative.mean(0) if len(any_restart) else math.nan
    return out


def summarise(results: dict[str, np.ndarray], meta: dict[str, Any], study: BasinStudyConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """summary.json: `meta` (with h_init_std, the noise scale), per-sigma solve and break rates
    with CIs seeded by `seed`, hard core and the sigma-0 check. `study` is not read: what the
    summary reports of it is in `meta`."""
    segments = meta["segments"]
    fail, sigmas = results["tested_failure"], results["sigmas"]
    control = ~fail
    per_sigma = []
    for j, sigma in enumerate(sigmas):
        row: dict[str, Any] = {"sigma": float(sigma)}
        for readout in READOUTS:
            hits = freed(results, readout)[fail, j]  # (F, K)
            row[f"single_{readout}"], row[f"single_{readout}_ci95"] = rate_with_ci(hits.mean(1), seed)
            row[f"best_of_k_{readout}"], row[f"best_of_k_{readout}_ci95"] = rate_with_ci(hits.any(1).astype(np.float64), seed)
        broken = ~results["solved_at_budget"][control, j]  # (C, K)
        row["break_rate"], row["break_rate_ci95"] = rate_with_ci(broken.mean(1), seed)
        row["broken_by_some_restart"] = float(broken.any(1).mean()) if len(broken) else None
        per_sigma.append(row)
    n_fail = int(fail.sum())
    base = results["success_by_segment"]
    summary: dict[str, Any] = {
        **meta,
        "accuracy": float(base[:, segments - 1].mean()) if len(base) else None,
        "n_failures": n_fail,
        "n_controls": int(control.sum()),
        "unperturbed_ever_solved_fraction": float(base[~base[:, segments - 1]][:, segments:].any(1).mean()) if n_fail else None,
        "per_sigma": per_sigma,
    }
    for readout in READOUTS:
        core = hard_core(results, readout)
        last = none_if_nan(float(core[np.argmax(sigmas)])) if n_fail else None
        summary[f"hard_core_{readout}_by_sigma"] = [none_if_nan(float(c)) for c in core]
        summary[f"hard_core_{readout}"] = last
        summary[f"hard_core_{readout}_count"] = None if last is None else int(round(last * n_fail))
        summary[f"hard_core_{readout}_upper95"] = rule_of_three(n_fail) if last == 0.0 else None  # rule of three, empty core only
        summary[f"hard_core_{readout}_ci95"] = None if last is None else proportion_with_ci(summary[f"hard_core_{readout}_count"], n_fail)["ci95"]
    summary["sigma0_reproduces"] = sigma0_check(results, segments)
    summary["bootstrap"] = {"samples": BOOTSTRAP_SAMPLES, "seed": seed, "over": "tested examples"}
    return summary


def sigma0_check(results: dict[str, np.ndarray], segments: int) -> bool | None:
    """True when every sigma-0 restart has the base trajectory's read-outs (None: 0 not in sigmas)."""
    zero = np.flatnonzero(results["sigmas"] == 0)
    if len(zero) == 0:
        return None
    rows = np.searchsorted(results["index"], results["tested_index"])
    base = results["success_by_segment"][rows]
    same_solved = (results["solved_at_budget"][:, zero[0]] == base[:, segments - 1:segments]).all()
    same_first = (results["first_solved"][:, zero[0]] == first_solved_after(base, segments - 1)[:, None]).all()
    return bool(same_solved and same_first)


# --- figures and report -----------------------------------------------------------------------------------

def _sigma_axis(ax: Any, sigmas: np.ndarray) -> None:
    positive = sigmas[sigmas > 0]
    if len(positive):
        ax.set_xscale("symlog", linthresh=float(positive.min()))  # keeps sigma = 0 on the axis
    ax.set_xlabel("sigma (units of std(H_init))")


def plot_solve_rates(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Single-restart (with CI) and best-of-K solve rates of failures, and the control break rate."""
    rows = sorted(summary["per_sigma"], key=lambda r: r["sigma"])
    sigmas = np.array([r["sigma"] for r in rows])
    fig = new_figure()
    ax = fig.add_subplot()

    def values(key: str) -> np.ndarray:
        return np.array([math.nan if r[key] is None else r[key] for r in rows])

    for readout, style, single_color, best_color in (("at_budget", "-", "tab:blue", "tab:green"), ("ever", "--", "tab:cyan", "tab:olive")):
        single = values(f"single_{readout}")
        ci = np.array([[math.nan, math.nan] if r[f"single_{readout}_ci95"] is None else r[f"single_{readout}_ci95"] for r in rows])
        label = f"at S={summary['segments']}" if readout == "at_budget" else f"by S_b={summary['segments_basin']}"
        ax.errorbar(sigmas, single, yerr=np.abs(ci.T - single), fmt="o" + style, color=single_color, capsize=3, label=f"single restart, {label}")
        ax.plot(sigmas, values(f"best_of_k_{readout}"), "s" + style, color=best_color, label=f"best of K={summary['restarts']}, {label}")
    ax.plot(sigmas, values("break_rate"), "x:", color="tab:red", label=f"control: successes broken at S (n={summary['n_controls']})")
    _sigma_axis(ax, sigmas)
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_hard_core(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Fraction of failures freed by no restart at any sigma' <= sigma, per read-out."""
    sigmas = np.array([r["sigma"] for r in summary["per_sigma"]])
    order = np.argsort(sigmas)
    fig = new_figure()
    ax = fig.add_subplot()
    for readout, label in (("at_budget", f"solved at S={summary['segments']}"), ("ever", f"solved by S_b={summary['segments_basin']}")):
        core = np.array([math.nan if c is None else c for c in summary[f"hard_core_{readout}_by_sigma"]])
        ax.plot(sigmas[order], core[order], "o-", label=f"not freed, {label}")
    _sigma_axis(ax, sigmas)
    ax.set_ylabel(f"failures freed by no sigma' <= sigma (n={summary['n_failures']})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def format_report(summary: dict[str, Any]) -> str:
    """report.md: settings, the per-sigma table, hard core, the published result, figures."""
    settings = ["checkpoint", "checkpoint_sha256", "n", "segments", "segments_basin", "restarts", "where", "success", "h_init_std", "dtype",
                "noise_seed"]
    results = ["accuracy", "n_failures", "n_controls", "unperturbed_ever_solved_fraction", "hard_core_at_budget", "hard_core_at_budget_ci95",
               "hard_core_at_budget_upper95", "hard_core_ever", "hard_core_ever_ci95", "hard_core_ever_upper95", "sigma0_reproduces"]
    columns = ("sigma", "single_at_budget", "single_at_budget_ci95", "best_of_k_at_budget", "single_ever", "best_of_k_ever", "break_rate",
               "broken_by_some_restart")
    table = markdown_table([{c: "n/a" if r[c] is None else r[c] for c in columns} for r in summary["per_sigma"]], columns)
    return "\n\n".join([
        "# Basin accessibility: restarts from a perturbed carry",
        "## Settings\n\n" + settings_table(summary, settings),
        "## Per sigma\n\nRates over the segment-S failures (single restart: mean over failures and restarts, seeded bootstrap "
        "95% CI over failures; best of K: some restart solves); break rate over the control successes.\n\n" + table,
        "## Hard core and checks\n\n" + settings_table(summary, results),
        PUBLISHED,
        *(f"![{Path(name).stem}]({name})" for name in FIGURES),
    ])


# --- hooks of the driver ---------------------------------------------------------------------------------

def check(run: BatchedRun) -> None:
    """Refuse settings that cannot run, once S and the dataset are known."""
    study, segments = run.settings, run.segments
    if study.segments_basin < segments:
        raise ConfigError(f"study.segments_basin={study.segments_basin} must be at least the budget study.segments={segments}")
    if study.restarts < 1:
        raise ConfigError(f"study.restarts={study.restarts} must be >= 1")
    if not study.sigmas:
        raise ConfigError("study.sigmas is empty; give at least one noise level, e.g. study.sigmas=[0,0.1]")
    if any(not s >= 0 or math.isinf(s) for s in study.sigmas):
        raise ConfigError(f"study.sigmas={list(study.sigmas)} must be finite and >= 0")
    if len(set(study.sigmas)) != len(study.sigmas):
        raise ConfigError(f"study.sigmas={list(study.sigmas)} lists a sigma twice")
    if study.where not in WHERE:
        raise ConfigError(f"study.where={study.where!r} is not one of {list(WHERE)}")
    if study.control_successes is not None and study.control_successes < 0:
        raise ConfigError(f"study.control_successes={study.control_successes} must be >= 0 (or null: as many as failures)")
    check_success_rule(study.success, run.inputs.kind)


def meta(run: BatchedRun) -> dict[str, Any]:
    """The settings summary.json records, and h_init_std = std(H_init), the unit of sigma."""
    study = run.settings
    return {"segments_basin": study.segments_basin, "restarts": study.restarts, "where": study.where, "success": study.success,
            "noise_seed": study.noise_seed, "h_init_std": float(run.inputs.core.H_init.double().std(correction=0))}


def per_batch(run: BatchedRun, rows: slice, batch: dict) -> dict[str, np.ndarray]:
    """Step 1, one batch: index, the base success after each of S_b segments (B, S_b) and the
    base drift of z_H (B, S_b), which must be finite (a NaN state has an argmax answer too)."""
    traj = record_rollout(SubUpdateMap(run.inputs.core, batch), run.settings.segments_basin)
    return {"index": run.inputs.index[rows].astype(np.int64),
            "success_by_segment": sample_success(run.inputs, rows, traj.readouts.preds.cpu().numpy(), run.settings.success),
            "drift_zH": traj.drift_zH.cpu().numpy()}


def jobs(run: BatchedRun, base: dict[str, np.ndarray]) -> Jobs:
    """Step 2: the restarts of the failures and controls, one job per sigma and chunk of
    batch_size // K tested examples; they add sigmas, tested_index, tested_failure,
    solved_at_budget and first_solved to the results."""
    study, inputs, segments, scale = run.settings, run.inputs, run.segments, run.meta["h_init_std"]
    solved = base["success_by_segment"][:, segments - 1]
    failures = np.flatnonzero(~solved)
    controls = select_controls(np.flatnonzero(solved), len(failures), study.control_successes, study.noise_seed)
    tested = np.sort(np.concatenate([failures, controls]))
    chunk = max(1, run.cfg.batch_size // study.restarts)
    items = [(j, tested[c:c + chunk]) for j in range(len(study.sigmas)) for c in range(0, len(tested), chunk)]
    log.info("basin: %d failures and %d controls x %d sigmas x %d restarts, %d segments", len(failures), len(controls), len(study.sigmas),
             study.restarts, study.segments_basin)

    def collect(shards: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        out = {"sigmas": np.asarray(study.sigmas, dtype=np.float64), "tested_index": inputs.index[tested].astype(np.int64),
               "tested_failure": ~solved[tested]}
        if shards is None:
            shape = (0, len(study.sigmas), study.restarts)
            out["solved_at_budget"], out["first_solved"] = np.zeros(shape, bool), np.zeros(shape, np.int64)
        else:
            out["solved_at_budget"], out["first_solved"] = assemble(shards, tested, len(study.sigmas))
        return out

    return Jobs(items, run=lambda item: restart_job(inputs, item[1], item[0], study, segments, scale), collect=collect, folder="restarts",
                desc="restarts")


def figures(run: BatchedRun, results: dict[str, np.ndarray], summary: dict[str, Any]) -> list[Path]:
    """Solve and break rates per sigma, and the hard core, in the run directory."""
    name, out = run.checkpoint_name, run.out_dir
    return [plot_solve_rates(summary, out / FIGURES[0], f"{name}: restarts of failures ({run.settings.where})"),
            plot_hard_core(summary, out / FIGURES[1], f"{name}: failures no restart frees")]
