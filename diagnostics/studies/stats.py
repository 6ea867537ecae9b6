"""The `stats` study: the statistics of analysis §4 over the saved per-example arrays of a
`spectrum` run and a `displacement` run of the same checkpoint and sample, joined by `index`.

    python -m diagnostics study=stats 'study.inputs=[SPECTRUM_DIR,DISPLACEMENT_DIR[,EXTENDED_DIR][,BASIN_DIR]]'

Nothing is recomputed from the model. The two runs must share the checkpoint (sha256), dataset
(content sha256), split, sample seed, size, segments, dtype and the examples themselves (index
and givens arrays); an extended or basin run, optional, must share the checkpoint, dataset, split
and dtype. Anything else is refused in one line. The report opens with the verdict
(`diagnostics.verdict`): the failures' fates from the displacement run (and the extended and
basin runs when given) with Wilson intervals, and the AUCs below. Where both runs hold an array (exact, q_halt), the displacement run's is
used (a plain rollout, no tangent arithmetic); `n_exact_disagree` counts examples whose final
exact match differs between the two (float32 round-off can flip a borderline cell).

What is computed (success = `success`: "exact", or "valid_path" from a displacement run made
with study.success=valid_path):
  1. AUC with a seeded bootstrap 95% CI (Mann-Whitney, ties averaged) of each exponent lambda_1..
     lambda_k, the spectral mean, the sum of positive exponents, the number of positive exponents
     and d_late, all in the direction -score -> success, and of the final q_halt (+q_halt).
  2. Decile-matched AUC: among unsettled examples (d_late > tau of the displacement run), bins at
     `deciles` pooled quantiles of log10 d_late; AUC(-lambda_1) per bin and its mean weighted by
     bin size over the bins holding both outcomes (is lambda_1 more than a proxy for d_late?).
  3. Givens-binned AUC(-lambda_1): the same over `givens_bins` quantile bins of the number of
     givens (meaningful for Sudoku, where it measures difficulty; 0 switches it off).
  4. Early window w = `early_window`: among examples not solved at segment w, AUC for eventual
     success of the window exponents sort(sum of log_r_segment[:, :w]) / (w x sub-updates per
     segment) and of the early drift, the mean drift_zH over segments max(1, w-late_window+1)..w
     (**choice**: the late drift as it would read if the unroll stopped at w). The window starts
     at segment 1 whatever the spectrum run's warmup_segments.
  5. Effect sizes failure vs success of lambda_1, log10 d_late and final q_halt: Cohen's d
     (pooled SD), Gaussian Bhattacharyya coefficient, histogram overlap (`overlap_bins` bins).
  6. Does lambda add anything? Stratified `cv_folds`-fold cross-validated ridge logistic
     regression (Newton/IRLS, penalty `l2` on standardised features), features {log10 d_late,
     final q_halt} vs {log10 d_late, final q_halt, lambda_1} (**choice**: log10, as d_late spans
     decades); the AUCs of the out-of-fold probabilities with bootstrap CIs (conditional on the
     fitted folds), and their difference.

Outputs: `summary.json`, `report.md`, `auc_forest.png`, `manifest.json`, `metrics.jsonl` and
`results.npz` (index, success, d_late, q_halt_final, lambda1, folds, p_base, p_full: the out-of-fold
probabilities, NaN when the cross-validation is undefined).
"""
from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diagnostics.adapters.trajectory import check_success_rule
from diagnostics.config import StudyConfig
from diagnostics.estimators.statistics import (BOOTSTRAP_SAMPLES, auc_with_ci, bhattacharyya_gaussian, bootstrap_ci, cohens_d,
                                               cross_validated_probabilities, histogram_overlap, none_if_nan, paired_auc_difference,
                                               proportion_with_ci, quantile_bins, stratified_auc, stratified_folds)
from diagnostics.report import finish_study, markdown_table, new_figure, save_figure
from diagnostics.verdict import answer, findings, format_verdict
from runtime.dist import resolve_device
from runtime.errors import ConfigError, UserError
from runtime.logging import get_logger
from training.evaluation import halting_confidence

log = get_logger("diagnostics.stats")
FIGURE = "auc_forest.png"
INPUT_STUDIES = ("spectrum", "displacement")
VERDICT_STUDIES = ("extended", "basin")  # optional inputs: their summaries join the verdict
# summary.json keys that must agree between the joined spectrum and displacement runs
SAMPLE_KEYS = ("checkpoint_sha256", "data_sha256", "split", "seed", "n", "segments", "dtype")
# ... and with an extended or basin run (their own sample size and budget are theirs)
MODEL_KEYS = ("checkpoint_sha256", "data_sha256", "split", "dtype")
HEADLINES = (
    ("AUC(-lambda1)", "auc.lambda1.auc", "auc.lambda1.ci95"),
    ("AUC(-d_late)", "auc.d_late.auc", "auc.d_late.ci95"),
    ("AUC(q_halt)", "auc.q_halt.auc", "auc.q_halt.ci95"),
    ("decile-matched AUC(-lambda1)", "decile_matched.auc", None),
    ("CV AUC d_late+q_halt", "logistic.auc_base.auc", None),
    ("CV AUC +lambda1", "logistic.auc_full.auc", None),
)
SCALARS = ("accuracy", "auc_neg_lambda1", "auc_neg_d_late", "auc_q_halt", "auc_decile_matched")


@dataclass
class StatsStudyConfig(StudyConfig):
    """Settings of the `stats` study (conf/study/stats.yaml).

    inputs: output directories of one spectrum and one displacement run (same checkpoint, sample).
    success: "exact" or "valid_path" (needs a displacement run made with that rule).
    early_window: segments w of the early-window AUCs.
    deciles: log10 d_late bins of the decile-matched AUC.
    givens_bins: quantile bins of the givens-binned AUC (0 = off).
    overlap_bins: bins of the histogram overlap.
    cv_folds: folds of the cross-validated logistic regression.
    l2: ridge penalty of the logistic regression (on standardised features, mean log-loss).
    """

    name: str = "stats"
    inputs: list[str] = field(default_factory=list)
    success: str = "exact"
    early_window: int = 4
    deciles: int = 10
    givens_bins: int = 10
    overlap_bins: int = 50
    cv_folds: int = 5
    l2: float = 1e-3


# --- inputs ------------------------------------------------------------------------------------------

@dataclass
class StudyRun:
    """A finished study's output directory: its summary.json and results.npz arrays."""

    path: Path
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def study(self) -> str:
        return str(self.summary.get("study"))


def load_run(path: str | Path) -> StudyRun:
    """Read `path/summary.json` and `path/results.npz`; UserError when either is missing or corrupt."""
    path = Path(path)
    if not (path / "summary.json").is_file() or not (path / "results.npz").is_file():
        raise UserError(f"{path} is not a finished spectrum or displacement run (needs summary.json and results.npz)")
    try:
        summary = json.loads((path / "summary.json").read_text())
        with np.load(path / "results.npz") as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read its summary.json / results.npz ({e})") from None
    return StudyRun(path, summary, arrays)


def run_confidence(disp: StudyRun, segment: int = -1) -> np.ndarray:
    """(N,) the model's own confidence after `segment` (0-based; default the last), as its
    halting rule reads it: q_halt - q_continue for a model that halts on q_halt > q_continue
    (HRM, no_ACT_continue false), q_halt for one that halts on q_halt > 0 (TRM); it halts where
    the confidence is > 0 (`training.evaluation.halting_confidence`). Reported under the key `q_halt`."""
    hrm_rule = disp.summary.get("halting_rule") == "q_halt > q_continue"
    q_continue = disp.arrays["q_continue"][:, segment].astype(np.float64) if hrm_rule else None
    return halting_confidence(disp.arrays["q_halt"][:, segment].astype(np.float64), q_continue, no_act_continue=not hrm_rule)


def stratified_auc_with_ci(scores: np.ndarray, positive: np.ndarray, strata: np.ndarray, seed: int) -> tuple[list[dict[str, Any]], float, list[float] | None]:
    """(per-stratum rows, size-weighted mean AUC, its 95% CI): the CI from a seeded bootstrap over
    examples, each resample re-binned by the examples' own strata."""
    rows, mean = stratified_auc(scores, positive, strata)
    if math.isnan(mean):
        return rows, mean, None
    packed = np.column_stack([scores, strata])
    lo, hi = bootstrap_ci(lambda x, y: stratified_auc(x[:, 0], y, x[:, 1].astype(np.int64))[1], packed, positive, seed=seed)
    return rows, mean, None if math.isnan(lo) else [lo, hi]


def confidence_table(success: np.ndarray, confidence: np.ndarray, settled: np.ndarray) -> dict[str, Any]:
    """Confident-wrong and the selection ceiling (confident = confidence > 0, the halting rule):
    the share of failures that are confident, and confident and settled (Wilson CIs), and the
    accuracy of answering only when confident (selective accuracy) at its coverage."""
    confident = confidence > 0
    failure = ~success
    return {
        "confident_failures": proportion_with_ci(int((confident & failure).sum()), int(failure.sum())),
        "confident_settled_failures": proportion_with_ci(int((confident & failure & settled).sum()), int(failure.sum())),
        "coverage": proportion_with_ci(int(confident.sum()), len(success)),
        "selective_accuracy": proportion_with_ci(int((confident & success).sum()), int(confident.sum())),
    }


def pair_runs(runs: list[StudyRun]) -> tuple[StudyRun, StudyRun, dict[str, StudyRun]]:
    """(spectrum, displacement, {extended/basin: run}) of `runs`: one spectrum and one
    displacement run of the same checkpoint, dataset and sample, plus at most one extended and one
    basin run of the same checkpoint and dataset (for the verdict); anything else is refused."""
    by_study: dict[str, StudyRun] = {}
    for run in runs:
        if run.study not in INPUT_STUDIES + VERDICT_STUDIES:
            raise ConfigError(f"{run.path} is a {run.study} run; study.inputs takes one spectrum and one displacement run "
                              f"(and optionally one extended and one basin run)")
        if run.study in by_study:
            raise ConfigError(f"study.inputs holds two {run.study} runs ({by_study[run.study].path}, {run.path}); give one of each")
        by_study[run.study] = run
    missing = [s for s in INPUT_STUDIES if s not in by_study]
    if missing:
        raise ConfigError(f"study=stats needs a spectrum and a displacement run in study.inputs=[DIR,DIR]; missing: {', '.join(missing)}")
    spec, disp = by_study["spectrum"], by_study["displacement"]
    extras = {name: by_study[name] for name in VERDICT_STUDIES if name in by_study}
    for other, keys, what in [(disp, SAMPLE_KEYS, "checkpoint and sample")] + [(run, MODEL_KEYS, "checkpoint and dataset") for run in extras.values()]:
        for key in keys:
            a, b = spec.summary.get(key), other.summary.get(key)
            if a != b:
                a, b = (str(a)[:12], str(b)[:12]) if key.endswith("sha256") else (a, b)
                raise ConfigError(f"{spec.path} and {other.path} differ in {key} ({a} vs {b}): stats joins runs of the same {what}")
    for key in ("index", "givens"):
        if not np.array_equal(spec.arrays[key], disp.arrays[key]):
            raise ConfigError(f"{spec.path} and {disp.path} hold different examples ({key} differs): stats joins runs of the same sample")
    return spec, disp, extras


# --- statistics ----------------------------------------------------------------------------------------

def exponent_scores(lam: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example scores of a spectrum (N, k): lambda_i, spectral mean, sum and count of positives."""
    return {**{f"lambda{i + 1}": lam[:, i] for i in range(lam.shape[1])}, "spectral_mean": lam.mean(1),
            "sum_positive": np.clip(lam, 0, None).sum(1), "n_positive": (lam > 0).sum(1).astype(np.float64)}


def window_exponents(log_r_segment: np.ndarray, w: int, sub_updates_per_segment: int) -> np.ndarray:
    """(N, k) exponents per sub-update of segments 1..w: sort(sum of log_r_segment[:, :w]) descending
    / (w x sub-updates per segment)."""
    return -np.sort(-log_r_segment[:, :w].sum(1), axis=-1) / (w * sub_updates_per_segment)


def effect_sizes(values: np.ndarray, success: np.ndarray, bins: int) -> dict[str, float | None]:
    """Cohen's d (failure minus success), Bhattacharyya coefficient, histogram overlap."""
    fail, succ = values[~success], values[success]
    return {"cohens_d": none_if_nan(cohens_d(fail, succ)), "bhattacharyya": none_if_nan(bhattacharyya_gaussian(fail, succ)),
            "overlap": none_if_nan(histogram_overlap(fail, succ, bins))}


def logistic_comparison(features: dict[str, np.ndarray], success: np.ndarray, study: StatsStudyConfig, seed: int) -> dict[str, Any]:
    """Cross-validated AUCs of {log10 d_late, q_halt} and {log10 d_late, q_halt, lambda_1}; the
    out-of-fold probabilities are returned under "p_base"/"p_full" (NaN when undefined)."""
    n = len(success)
    folds = stratified_folds(success, study.cv_folds, seed=seed)
    out: dict[str, Any] = {"folds": folds, "p_base": np.full(n, np.nan), "p_full": np.full(n, np.nan)}
    if min(int(success.sum()), int((~success).sum())) < study.cv_folds:
        return {**out, "base": None, "full": None, "delta": None, "delta_ci95": None, "note": f"needs >= {study.cv_folds} examples of each outcome"}
    base = np.column_stack([features["log10_d_late"], features["q_halt"]])
    out["p_base"] = cross_validated_probabilities(base, success, folds, l2=study.l2)
    out["p_full"] = cross_validated_probabilities(np.column_stack([base, features["lambda1"]]), success, folds, l2=study.l2)
    out["base"], out["full"] = auc_with_ci(out["p_base"], success, seed=seed), auc_with_ci(out["p_full"], success, seed=seed)
    paired = paired_auc_difference(out["p_full"], out["p_base"], success, seed=seed)
    out["delta"], out["delta_ci95"] = paired["delta"], paired["ci95"]
    return {**out, "note": None}


def compute_stats(spec: StudyRun, disp: StudyRun, study: StatsStudyConfig, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(statistics for summary.json, per-example arrays for results.npz) of the joined runs."""
    ss, ds = spec.summary, disp.summary
    rule = "success" if study.success == "valid_path" else "exact"
    success = disp.arrays[rule].astype(bool)
    by_segment = disp.arrays[f"{rule}_by_segment"].astype(bool)
    lam = spec.arrays["lambda"]
    lam1 = spec.arrays["lambda1"] if "lambda1" in spec.arrays else lam[:, 0]  # older spectrum runs: the sorted maximum
    d_late = disp.arrays["d_late"]
    # the displacement run's floored log10 d_late (resolution floor); older runs: their drift_floor
    log_d = disp.arrays["log10_d_late"] if "log10_d_late" in disp.arrays else np.log10(np.maximum(d_late, ds["drift_floor"]))
    q_halt = run_confidence(disp)

    scores = {name: (-v, "-") for name, v in exponent_scores(lam).items()}
    scores["lambda1"] = (-lam1, "-")  # the first Benettin column (as k = 1), not the sorted maximum
    scores.update({"d_late": (-d_late, "-"), "q_halt": (q_halt, "+")})
    aucs = {name: {"direction": sign, **auc_with_ci(s, success, seed=seed)} for name, (s, sign) in scores.items()}

    tau = ds.get("tau")
    unsettled = ~(d_late <= tau) if tau is not None else np.ones(len(d_late), bool)
    deciles, decile_mean, decile_ci = stratified_auc_with_ci(-lam1[unsettled], success[unsettled], quantile_bins(log_d[unsettled], study.deciles), seed)
    givens_rows, givens_mean, givens_ci = ([], math.nan, None)
    if study.givens_bins > 0:
        givens = disp.arrays["givens"]
        bins = quantile_bins(givens, study.givens_bins)
        givens_rows, givens_mean, givens_ci = stratified_auc_with_ci(-lam1, success, bins, seed)
        for row in givens_rows:
            members = givens[bins == row["stratum"]]
            row["givens"] = str(members.min()) if members.min() == members.max() else f"{members.min()}-{members.max()}"

    w = study.early_window
    unsolved = ~by_segment[:, w - 1]
    early_lam = window_exponents(spec.arrays["log_r_segment"], w, ss["sub_updates_per_segment"])[unsolved]
    early_drift = disp.arrays["drift_zH"][:, max(0, w - ds["late_window"]):w].mean(1)[unsolved]
    early = {f"lambda{i + 1}": auc_with_ci(-early_lam[:, i], success[unsolved], seed=seed) for i in range(early_lam.shape[1])}
    early["drift"] = auc_with_ci(-early_drift, success[unsolved], seed=seed)
    early["q_halt"] = auc_with_ci(run_confidence(disp, w - 1)[unsolved], success[unsolved], seed=seed)

    features = {"lambda1": lam1, "log10_d_late": log_d, "q_halt": q_halt}
    cv = logistic_comparison(features, success, study, seed)
    stats = {
        "n_success": int(success.sum()),
        "n_failure": int((~success).sum()),
        "accuracy": float(success.mean()) if len(success) else None,
        "n_exact_disagree": int((spec.arrays["exact"] != disp.arrays["exact"]).sum()),
        "tau": tau,
        "auc": aucs,
        "decile_matched": {"n_unsettled": int(unsettled.sum()), "auc": none_if_nan(decile_mean), "ci95": decile_ci, "deciles": deciles},
        "givens_binned": {"auc": none_if_nan(givens_mean), "ci95": givens_ci, "bins": givens_rows},
        "confidence": confidence_table(success, q_halt, ~unsettled),
        "early_window": {"w": w, "n_unsolved": int(unsolved.sum()), "n_eventual_success": int(success[unsolved].sum()), "auc": early},
        "effect_sizes": {name: effect_sizes(v, success, study.overlap_bins) for name, v in features.items()},
        "logistic": {"features_base": ["log10_d_late", "q_halt"], "features_full": ["log10_d_late", "q_halt", "lambda1"], "folds": study.cv_folds,
                     "l2": study.l2, "auc_base": cv["base"], "auc_full": cv["full"], "delta_auc": cv["delta"], "delta_auc_ci95": cv["delta_ci95"],
                     "note": cv["note"]},
    }
    arrays = {"index": disp.arrays["index"], "success": success, "d_late": d_late, "q_halt_final": q_halt, "lambda1": lam1,
              "folds": cv["folds"], "p_base": cv["p_base"], "p_full": cv["p_full"]}
    return stats, arrays


# --- report --------------------------------------------------------------------------------------------

def auc_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per AUC of the summary (score, what, auc, ci95), in report order."""
    rows = [{"score": f"{v['direction']}{name}", "what": "full trajectory", "auc": v["auc"], "ci95": v["ci95"]} for name, v in summary["auc"].items()]
    rows.append({"score": "-lambda1", "what": f"decile-matched, unsettled (n={summary['decile_matched']['n_unsettled']})",
                 "auc": summary["decile_matched"]["auc"], "ci95": None})
    rows.append({"score": "-lambda1", "what": "givens-binned", "auc": summary["givens_binned"]["auc"], "ci95": None})
    early = summary["early_window"]
    what = f"early window w={early['w']}, unsolved (n={early['n_unsolved']})"
    rows += [{"score": ("+" if name == "q_halt" else "-") + name, "what": what, **v} for name, v in early["auc"].items()]
    for key, label in (("auc_base", "logistic CV {log10 d_late, q_halt}"), ("auc_full", "logistic CV {log10 d_late, q_halt, lambda1}")):
        value = summary["logistic"][key]
        rows.append({"score": "p(success)", "what": label, **(value or {"auc": None, "ci95": None})})
    return _na(rows)


def _na(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with None shown as n/a."""
    return [{k: "n/a" if v is None else v for k, v in row.items()} for row in rows]


def format_report(summary: dict[str, Any]) -> str:
    """report.md: inputs, all AUCs, the strata tables, effect sizes and the logistic comparison."""
    settings = [{"quantity": k, "value": summary[k]} for k in ("checkpoint", "checkpoint_sha256", "n", "segments", "success_rule", "k",
                                                                "dtype_spectrum", "dtype_displacement", "confidence_score", "tau", "n_exact_disagree")]
    effects = _na([{"quantity": name, **e} for name, e in summary["effect_sizes"].items()])
    logistic = summary["logistic"]
    delta = "n/a" if logistic["delta_auc"] is None else f"{logistic['delta_auc']:+.4f}"
    if logistic.get("delta_auc_ci95"):
        delta += f" (paired stratified bootstrap 95% CI {logistic['delta_auc_ci95'][0]:+.4f} to {logistic['delta_auc_ci95'][1]:+.4f})"
    return "\n\n".join([
        "# Statistics of lambda, drift and halting confidence",
        summary["verdict_markdown"].rstrip(),
        "Inputs: " + ", ".join(f"`{p}`" for p in summary["inputs"]),
        "## Settings\n\n" + markdown_table(_na(settings), ("quantity", "value")),
        "## AUCs for success\n\nMann-Whitney AUC (ties averaged) of each score for success; `-x` means low x predicts success. "
        f"95% bootstrap CIs ({summary['bootstrap']['samples']} resamples, seed {summary['bootstrap']['seed']}).\n\n"
        + markdown_table(auc_rows(summary), ("score", "what", "auc", "ci95")),
        f"![AUCs]({FIGURE})",
        "## Decile-matched AUC(-lambda1)\n\nUnsettled examples, bins of log10 d_late; the summary is the size-weighted mean over "
        f"bins with both outcomes: {_auc_text(summary['decile_matched'])}.\n\n"
        + markdown_table(_na(summary["decile_matched"]["deciles"]), ("stratum", "n", "n_positive", "auc")),
        f"## Givens-binned AUC(-lambda1)\n\nSize-weighted mean over givens bins: {_auc_text(summary['givens_binned'])}.\n\n"
        + markdown_table(_na(summary["givens_binned"]["bins"]), ("stratum", "givens", "n", "n_positive", "auc")),
        "## Confident failures and the selection ceiling\n\nConfident = the halting rule would stop (confidence > 0 after the "
        "last segment); fractions with 95% Wilson intervals.\n\n" + markdown_table(confidence_rows(summary["confidence"]),
                                                                                     ("quantity", "count", "n", "fraction", "ci95")),
        "## Effect sizes (failure vs success)\n\n" + markdown_table(effects, ("quantity", "cohens_d", "bhattacharyya", "overlap")),
        f"## Does lambda_1 add anything?\n\n{logistic['folds']}-fold cross-validated ridge logistic regression (l2={logistic['l2']}); "
        f"AUC gain from adding lambda_1: {delta}." + (f" ({logistic['note']})" if logistic["note"] else ""),
    ])


def _auc_text(entry: dict[str, Any]) -> str:
    if entry.get("auc") is None:
        return "n/a"
    ci = entry.get("ci95")
    return f"{entry['auc']:.4f}" + (f" (95% bootstrap CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")


def confidence_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {"confident_failures": "failures the model is confident about (of failures)",
              "confident_settled_failures": "failures confident and settled (of failures)",
              "coverage": "examples answered when only confident ones are (of all)",
              "selective_accuracy": "accuracy of the confident answers (of confident)"}
    return _na([{"quantity": labels[key], **{k: v for k, v in value.items()}} for key, value in table.items()])


def plot_aucs(summary: dict[str, Any], path: Path) -> Path:
    """Forest plot of every defined AUC with its CI, 0.5 marked."""
    rows = [r for r in auc_rows(summary) if r["auc"] != "n/a"]
    fig = new_figure(7.0, 0.3 * len(rows) + 1.2)
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        if row["ci95"] != "n/a":
            ax.plot(row["ci95"], [i, i], color="tab:gray")
        ax.plot([row["auc"]], [i], "o", color="tab:blue")
    ax.axvline(0.5, color="k", linestyle=":")
    ax.set_yticks(range(len(rows)), [f"{r['score']} ({r['what']})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("AUC for success")
    return save_figure(fig, path)


# --- the study ---------------------------------------------------------------------------------------

def _check(study: StatsStudyConfig) -> None:
    if not study.inputs:
        raise ConfigError("study=stats needs study.inputs=[SPECTRUM_DIR,DISPLACEMENT_DIR]")
    check_success_rule(study.success)
    if study.deciles < 1 or study.givens_bins < 0 or study.overlap_bins < 1 or study.cv_folds < 2 or study.l2 <= 0:
        raise ConfigError(f"need study.deciles >= 1, study.givens_bins >= 0, study.overlap_bins >= 1, study.cv_folds >= 2 and study.l2 > 0 "
                          f"(got {study.deciles}, {study.givens_bins}, {study.overlap_bins}, {study.cv_folds}, {study.l2})")


def run_stats(cfg: Any, out_dir: Path) -> int:
    """Run the study for `cfg` (a `DiagnoseConfig` whose `study` is a `StatsStudyConfig`) into
    `out_dir`; returns 0. Raises UserError subclasses for missing or mismatched inputs."""
    out_dir = Path(out_dir)
    study = cfg.study
    _check(study)
    spec, disp, extras = pair_runs([load_run(p) for p in study.inputs])
    segments = spec.summary["segments"]
    if not 1 <= study.early_window <= segments:
        raise ConfigError(f"study.early_window={study.early_window} must be in [1, {segments}] (the segments of the inputs)")
    if study.success == "valid_path" and disp.summary.get("success_rule") != "valid_path":
        raise ConfigError(f"study.success=valid_path needs a displacement run made with study.success=valid_path; {disp.path} used "
                          f"{disp.summary.get('success_rule')}")
    stats, arrays = compute_stats(spec, disp, study, seed=cfg.seed)
    summary = {
        "study": "stats",
        "inputs": [str(spec.path), str(disp.path), *(str(run.path) for run in extras.values())],
        "checkpoint": spec.summary.get("checkpoint"),
        **{key: spec.summary.get(key) for key in SAMPLE_KEYS},
        "success_rule": study.success,
        "k": spec.summary.get("k"),
        "dtype_spectrum": spec.summary.get("dtype"),
        "dtype_displacement": disp.summary.get("dtype"),
        "confidence_score": "q_halt - q_continue" if disp.summary.get("halting_rule") == "q_halt > q_continue" else "q_halt",
        **stats,
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": cfg.seed},
    }
    summary["auc_neg_lambda1"] = summary["auc"]["lambda1"]["auc"]
    summary["auc_neg_d_late"] = summary["auc"]["d_late"]["auc"]
    summary["auc_q_halt"] = summary["auc"]["q_halt"]["auc"]
    summary["auc_decile_matched"] = summary["decile_matched"]["auc"]
    verdict_inputs = {"displacement": disp.summary, "stats": summary, **{name: run.summary for name, run in extras.items()}}
    summary["verdict"] = [dataclasses.asdict(f) for f in findings(verdict_inputs)]
    summary["verdict_answer"] = answer(findings(verdict_inputs))
    summary["verdict_markdown"] = format_verdict(verdict_inputs)
    figure = plot_aucs(summary, out_dir / FIGURE)
    finish_study(out_dir, cfg, study="stats", summary=summary, report=format_report(summary), results=arrays, figures=[figure],
                 scalars=SCALARS, checkpoint=None,
                 device=resolve_device(cfg.device))
    log.info("stats: AUC(-lambda1) %s, AUC(-d_late) %s, decile-matched %s -> %s", summary["auc_neg_lambda1"], summary["auc_neg_d_late"],
             summary["auc_decile_matched"], out_dir)
    return 0
