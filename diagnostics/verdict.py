"""The verdict at the top of a report: what the failures of one checkpoint do, in counts with CIs.

The project's question: is a failed trajectory a wrong attractor (it settles on a wrong answer) or
a trajectory that never settles (transient chaos)? `findings` answers it from the summaries
(summary.json dicts) of the studies of one checkpoint, any subset of

    displacement  of the F failures at the budget S: settled on a wrong answer (late drift below
                  tau; cell B) vs still moving (cell D); AUC(-d_late) for success
    extended      rolled on to S_ext segments, of the F failures: solved later, settled on a
                  wrong answer, still moving at S_ext (the fates)
    basin         the hard core: tested failures that no restart at any sigma solves by S_b
    spectrum      AUC(-lambda_1) for success (local expansion of failures vs successes)
    stats         the same two AUCs on the joined spectrum and displacement sample

Every fraction carries its 95% Wilson interval (`proportion_with_ci`), every AUC its bootstrap CI
as the study computed it, and every finding its n; one plain sentence says what each means.
`answer` turns the fates into the one-line answer only when the interval is on one side of 1/2.
Published figures (analysis.md §9) sit in their own, labelled table (`PUBLISHED`), never mixed
into this run's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from diagnostics.estimators.statistics import proportion_with_ci
from diagnostics.report import markdown_table

Summary = Mapping[str, Any]

# analysis.md §9 and §5-6, as published (TRM-MLP and HRM on Sudoku-Extreme, n = 2048)
PUBLISHED = (
    {"model": "TRM-MLP Sudoku @58590", "n": 2048, "accuracy": "87.6%", "AUC(-lambda1)": "0.9935 (0.9908-0.9957)",
     "failures that settle": "0 of 254", "basin": "a small kick frees most failures"},
    {"model": "HRM Sudoku @26040", "n": 2048, "accuracy": "52.6%", "AUC(-lambda1)": "0.987",
     "failures that settle": "0.55% (strict band)", "basin": "a hard core is never freed"},
)


@dataclass(frozen=True)
class Finding:
    """One number of the verdict: `value` (a fraction or an AUC) with its 95% CI, the count and n
    it rests on (None for an AUC), the study it comes from and one sentence in plain words."""

    key: str
    value: float | None
    ci95: list[float] | None
    count: int | None
    n: int | None
    source: str
    sentence: str


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None, percent: bool = True) -> str:
    if not ci:
        return "CI n/a"
    lo, hi = ci
    return f"95% CI {_pct(lo)}-{_pct(hi)}" if percent else f"95% CI {lo:.3f}-{hi:.3f}"


def _fraction(key: str, count: int, n: int, source: str, text: str) -> Finding:
    """A fraction finding; `text` completes "x of n failures (p%, CI) ..."."""
    p = proportion_with_ci(count, n)
    sentence = f"{count} of {n} failures ({_pct(p['fraction'])}, {_ci(p['ci95'])}) {text}."
    return Finding(key, p["fraction"], p["ci95"], count, n, source, sentence)


def _auc(key: str, score: str, summary: Summary, value_key: str, ci_key: str, source: str, n_success: int | None, n_failure: int | None,
         meaning: str) -> Finding | None:
    value, ci = summary.get(value_key), summary.get(ci_key)
    if value is None:
        return None
    n = None if n_success is None or n_failure is None else n_success + n_failure
    if ci and ci[0] > 0.5:
        reading = f"a lower {score} goes with success: {meaning}"
    elif ci and ci[1] < 0.5:
        reading = f"a higher {score} goes with success (the opposite of the published direction)"
    else:
        reading = f"{score} does not separate successes from failures at this n"
    sample = f"n = {n}: {n_success} successes, {n_failure} failures" if n is not None else "n n/a"
    sentence = f"AUC(-{score}) for success = {value:.3f} ({_ci(ci, percent=False)}, {sample}): {reading}."
    return Finding(key, value, ci, None, n, source, sentence)


def findings(summaries: Mapping[str, Summary]) -> list[Finding]:
    """The verdict's findings from the studies present in `summaries` (study name -> summary)."""
    out: list[Finding] = []
    disp = summaries.get("displacement")
    if disp and disp.get("n_failure"):
        n_fail, cells = int(disp["n_failure"]), disp.get("cells") or {}
        settled = int((cells.get("B") or {}).get("count", 0))
        tau = disp.get("tau")
        band = f"late drift below tau = {tau:.3g}" if tau is not None else "no settling threshold could be fitted"
        out.append(_fraction("settled_at_budget", settled, n_fail, "displacement",
                             f"have settled on a wrong answer by the budget S = {disp.get('segments')} ({band})"))
        out.append(_fraction("moving_at_budget", n_fail - settled, n_fail, "displacement",
                             f"are still moving at the budget S = {disp.get('segments')}"))
    ext = summaries.get("extended")
    if ext and ext.get("n_failure_at_budget"):
        n_fail, counts = int(ext["n_failure_at_budget"]), ext.get("fate_counts") or {}
        horizon = (ext.get("survival_segments") or [None, None])[1]
        out.append(_fraction("solved_later", int(counts.get("solved_later", 0)), n_fail, "extended",
                             f"are solved later when the rollout goes on from S = {ext.get('segments')} to {horizon} segments"))
        out.append(_fraction("settled_wrong", int(counts.get("settled_wrong", 0)), n_fail, "extended",
                             f"settle on a wrong answer by segment {horizon} (never solved, late drift below tau)"))
        out.append(_fraction("still_moving", int(counts.get("churning", 0)), n_fail, "extended",
                             f"are neither solved nor settled at segment {horizon}: still moving"))
        attractors = ext.get("attractor_counts")
        if attractors:
            fixed, periodic = int(attractors.get("fixed_point", 0)), int(attractors.get("periodic", 0))
            periods = ", ".join(f"{count} of period {p}" for p, count in (ext.get("periods") or {}).items()) or "none"
            out.append(_fraction("wrong_attractor", fixed + periodic, n_fail, "extended",
                                 f"are trapped in a wrong attractor at segment {horizon}: {fixed} at a fixed point, {periodic} on a "
                                 f"periodic orbit ({periods}; recurrence test, relative tolerance {ext.get('recurrence_tol')})"))
            out.append(_fraction("aperiodic", int(attractors.get("aperiodic", 0)), n_fail, "extended",
                                 f"are never solved and neither fixed nor periodic up to period {ext.get('max_period')}: aperiodic"))
    basin = summaries.get("basin")
    if basin and basin.get("n_failures") and basin.get("hard_core_ever_count") is not None:
        sigmas = [row["sigma"] for row in basin.get("per_sigma", [])]
        out.append(_fraction("hard_core", int(basin["hard_core_ever_count"]), int(basin["n_failures"]), "basin",
                             f"are a hard core: none of {basin.get('restarts')} restarts at any sigma up to {max(sigmas, default=0):g} "
                             f"x std(H_init) solves them within {basin.get('segments_basin')} segments"))
    joined = summaries.get("stats")
    spec = summaries.get("spectrum")
    if joined and joined.get("auc"):
        n_s, n_f = joined.get("n_success"), joined.get("n_failure")
        aucs = joined["auc"]
        lam = _auc("auc_neg_lambda1", "lambda_1", aucs.get("lambda1", {}), "auc", "ci95", "stats", n_s, n_f,
                   "failing trajectories are locally more expansive")
        dl = _auc("auc_neg_d_late", "d_late", aucs.get("d_late", {}), "auc", "ci95", "stats", n_s, n_f,
                  "failing trajectories are still moving at the budget")
        out += [f for f in (lam, dl) if f is not None]
    else:
        if spec:
            n_s = spec.get("n_success")
            n_f = spec.get("n_failure")
            found = _auc("auc_neg_lambda1", "lambda_1", spec, "auc_neg_lambda1", "auc_neg_lambda1_ci95", "spectrum", n_s, n_f,
                         "failing trajectories are locally more expansive")
            out += [found] if found is not None else []
        if disp:
            found = _auc("auc_neg_d_late", "d_late", disp, "auc_neg_d_late", "auc_neg_d_late_ci95", "displacement", disp.get("n_success"),
                         disp.get("n_failure"), "failing trajectories are still moving at the budget")
            out += [found] if found is not None else []
    return out


def answer(found: list[Finding]) -> str:
    """The one-line answer to the project's question, from the fraction of failures in a wrong
    attractor (the extended study's recurrence test; without it its drift-settled fraction, else
    the displacement study's at the budget): stated only when its 95% CI lies on one side of 1/2,
    else "not decided at this n"."""
    by_key = {f.key: f for f in found}
    settled = by_key.get("wrong_attractor") or by_key.get("settled_wrong") or by_key.get("settled_at_budget")
    if settled is None or settled.ci95 is None:
        return "No verdict: the displacement or extended study is missing, or it saw no failures."
    lo, hi = settled.ci95
    what = "are in a wrong attractor (fixed or periodic)" if settled.key == "wrong_attractor" else "settle on a wrong answer"
    where = f"{settled.count} of {settled.n} {what} ({settled.source})"
    if hi < 0.5:
        return f"**Failures are mostly trajectories that never settle, not wrong attractors**: {where}, 95% CI {_pct(lo)}-{_pct(hi)}."
    if lo > 0.5:
        return f"**Failures are mostly wrong attractors**: {where}, 95% CI {_pct(lo)}-{_pct(hi)}."
    return f"**Not decided at this n**: {where}, 95% CI {_pct(lo)}-{_pct(hi)} straddles one half."


def format_verdict(summaries: Mapping[str, Summary]) -> str:
    """The markdown section: answer, one bullet per finding, a table of the numbers, then the
    published values in their own labelled table."""
    found = findings(summaries)
    lines = ["## Verdict", "", answer(found), ""]
    lines += [f"- {f.sentence}" for f in found]
    if found:
        rows = [{"finding": f.key, "value": f.value, "95% CI": None if f.ci95 is None else f"[{f.ci95[0]:.4f}, {f.ci95[1]:.4f}]",
                 "count": "n/a" if f.count is None else f.count, "n": f.n, "study": f.source} for f in found]
        lines += ["", "This run (fractions: Wilson intervals; AUCs: seeded bootstrap):", "", markdown_table(rows, list(rows[0]))]
    lines += ["", "Published values (analysis.md §9; other models and data, for comparison only, not this run):", "",
              markdown_table(PUBLISHED, list(PUBLISHED[0]))]
    return "\n".join(lines) + "\n"
