"""Collect finished study runs into one comparison table.

    python -m diagnostics.collect DIR [DIR ...] [--out table.md] [--csv table.csv]

Walks every DIR (a single run, `outputs/diagnostics/`, or a multirun folder
`multirun/diagnostics/<time>/`) for `summary.json` files and prints one Markdown table, one row
per run: the run directory, study, checkpoint (the shortest tail of its path, at least two parts
such as `run/step_0058590`, that tells the collected checkpoints apart), n, accuracy and the
headline numbers of each study (its `Study.headlines` in `diagnostics.registry.STUDIES`; an AUC
is shown with its 95% CI; a column name used by several studies is one column). Studies without
headlines get the common columns. `--out` writes the same Markdown, `--csv` a CSV
in which each CI is split into `<column> lo` / `<column> hi`.

When two or more `extended` runs are collected, a second table compares their escape rates
(TRM vs HRM: "HRM failures stay trapped far longer"): kappa per segment and per module
evaluation with their bootstrap CIs, and the ratio of each run's kappa per module evaluation to
the first run's (`--kappa-ref RUN` picks another reference) with an approximate 95% CI: the two
runs' samples are independent, so on the log scale the standard errors (read off each CI as
(ln hi - ln lo) / (2 x 1.96)) add in quadrature (delta method; a CI that reaches 0 gives none).

With `--by KEY[,KEY...]` (dotted keys of the training config, e.g. `augment.mode,augment.sigma`)
a third table aggregates a sweep over training settings and seeds: every collected checkpoint is
placed in a condition by the values of those keys in its run's `config.yaml` (next to its
`checkpoints/` folder, as pretrain.py writes it), and per condition each sweep metric is the mean
over its checkpoints (one per training seed) with a 95% Student-t interval (scipy.stats.t; n is
the number of checkpoints, so 3 seeds give a wide interval, as they should). The metrics: test
exact accuracy from evaluate.py's `metrics.json` (found below the same DIRs), median lambda_1 of
successes and failures and AUC(-lambda_1) (spectrum), the fraction of failures settled (B / (B +
D) of the displacement study's settling cells) and the hard core (basin: failures no restart ever
solves).

Runs that cannot be read (corrupt summary.json) and partial runs (a Hydra job directory or
result shards without summary.json, e.g. a study still running or killed) are listed below the
table, never fatal. A DIR that does not exist, or a walk that finds nothing at all, is an error
(one line, exit 2).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from scipy.stats import t as student_t

from diagnostics.registry import STUDIES, Headline
from diagnostics.report import format_value, markdown_table
from runtime.atomic import atomic_write_text
from runtime.errors import UserError, exit_on_user_error

COMMON = ("run", "study", "checkpoint", "n", "accuracy")
PARTIAL_MARKERS = (".hydra", "shards")


def headlines() -> dict[str, tuple[Headline, ...]]:
    """study name -> its headline columns (column, dotted key of the value, dotted key of its
    [lo, hi] CI or None), read from the registry at call time."""
    return {name: study.headlines for name, study in STUDIES.items()}


@dataclass
class Collection:
    """Rows of the table (column -> value; CIs under "<column> ci95") and the runs left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def columns(self) -> list[str]:
        """The common columns, then every headline column some row has, in registry order."""
        present = {key for row in self.rows for key in row}
        heads = [col for spec in headlines().values() for col, _, _ in spec]
        return list(COMMON) + [c for c in dict.fromkeys(heads) if c in present]


def lookup(summary: dict[str, Any], dotted: str) -> Any:
    """summary["a"]["b"] for "a.b"; None where a level is missing."""
    value: Any = summary
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def natural_key(text: str) -> list[Any]:
    """Sort key in which digit runs compare as numbers (multirun job 10 after job 9)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def display_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def short_names(paths: list[str]) -> dict[str, str]:
    """Each path -> its shortest tail of at least two parts (`run/step_100`) that no other path
    in `paths` shares, so a sweep over checkpoints shows which is which without full paths."""
    parts = {p: Path(p).parts for p in set(paths)}
    for depth in range(2, max((len(v) for v in parts.values()), default=2) + 1):
        tails = {p: "/".join(v[-depth:]) for p, v in parts.items()}
        if len(set(tails.values())) == len(tails):
            return tails
    return {p: p for p in parts}


def summary_row(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row of a run's summary.json."""
    study = str(summary.get("study"))
    row: dict[str, Any] = {"run": display_path(run_dir), "study": study, "checkpoint": summary.get("checkpoint"), "_summary": summary,
                           "n": summary.get("n"), "accuracy": summary.get("accuracy", summary.get("accuracy_at_budget"))}
    for column, key, ci_key in headlines().get(study, ()):
        row[column] = lookup(summary, key)
        if ci_key is not None:
            row[f"{column} ci95"] = lookup(summary, ci_key)
    return row


def find_runs(roots: list[Path]) -> Collection:
    """Read every summary.json below `roots`; list unreadable and partial run directories."""
    found = Collection()
    finished: set[Path] = set()
    partial: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise UserError(f"{root} does not exist")
        for path in root.rglob("summary.json"):
            run_dir = path.parent
            finished.add(run_dir)
            try:
                summary = json.loads(path.read_text())
                if not isinstance(summary, dict) or "study" not in summary:
                    raise ValueError("no 'study' key")
            except (OSError, ValueError) as e:
                found.skipped.append((display_path(run_dir), f"unreadable summary.json ({e})"))
                continue
            found.rows.append(summary_row(run_dir, summary))
        for marker in PARTIAL_MARKERS:
            partial.update(p.parent for p in root.rglob(marker) if p.is_dir())
    # A study's own sub-folders (basin's restarts/shards) belong to its finished run.
    partial = {d for d in partial - finished if not any(p in finished for p in d.parents)}
    found.skipped += [(display_path(d), "partial: no summary.json (still running, or stopped)") for d in partial]
    found.rows.sort(key=lambda r: natural_key(r["run"]))
    names = short_names([str(r["checkpoint"]) for r in found.rows if r["checkpoint"]])
    for row in found.rows:
        row["_checkpoint_path"] = row["checkpoint"]
        row["checkpoint"] = names.get(str(row["checkpoint"]))
    found.skipped.sort(key=lambda s: natural_key(s[0]))
    if not found.rows and not found.skipped:
        raise UserError(f"no study runs (summary.json) under {', '.join(map(str, roots))}")
    return found


def cell(value: Any, ci: Any = None) -> Any:
    """A Markdown cell: the value, with its CI appended when there is one; missing -> empty."""
    if value is None:
        return ""
    if isinstance(ci, list) and len(ci) == 2:
        return f"{format_value(float(value))} {format_value([float(c) for c in ci])}"
    return value


def to_markdown(found: Collection) -> str:
    """The table, then the runs left out as a list."""
    columns = found.columns()
    rows = [{c: cell(r.get(c), r.get(f"{c} ci95")) for c in columns} for r in found.rows]
    text = markdown_table(rows, columns) if rows else "(no finished runs)"
    if found.skipped:
        text += "\n\nNot collected:\n" + "\n".join(f"- {path}: {reason}" for path, reason in found.skipped)
    return text + "\n"


def log_se(ci: Any) -> float | None:
    """Standard error on the log scale implied by a positive 95% CI [lo, hi], else None."""
    if not isinstance(ci, list) or len(ci) != 2 or ci[0] is None or ci[1] is None or not (ci[0] > 0 and ci[1] > 0):
        return None
    return (math.log(ci[1]) - math.log(ci[0])) / (2 * 1.959964)


def kappa_ratio(value: float | None, ci: Any, ref: float | None, ref_ci: Any) -> tuple[float | None, list[float] | None]:
    """(value / ref, its approximate 95% CI) for two independent positive rates with CIs."""
    if value is None or ref is None or not (value > 0 and ref > 0):
        return None, None
    ratio = value / ref
    se, se_ref = log_se(ci), log_se(ref_ci)
    if se is None or se_ref is None:
        return ratio, None
    half = 1.959964 * math.hypot(se, se_ref)
    return ratio, [ratio * math.exp(-half), ratio * math.exp(half)]


def kappa_table(found: Collection, ref: str | None = None) -> str:
    """The escape-rate comparison of the extended runs ("" with fewer than two)."""
    runs = [r for r in found.rows if r["study"] == "extended"]
    if len(runs) < 2:
        return ""
    base = next((r for r in runs if ref is not None and (r["run"] == ref or r["run"].endswith(ref))), runs[0])
    key = "kappa per module evaluation"
    rows = []
    for r in runs:
        ratio, ci = (1.0, None) if r is base else kappa_ratio(r.get(key), r.get(f"{key} ci95"), base.get(key), base.get(f"{key} ci95"))
        rows.append({"run": r["run"], "checkpoint": r["checkpoint"],
                     "kappa per segment": cell(r.get("kappa per segment"), r.get("kappa per segment ci95")),
                     key: cell(r.get(key), r.get(f"{key} ci95")), f"ratio to {base['run']}": cell(ratio, ci)})
    return ("\nEscape rates of the extended runs (a smaller kappa: failures stay trapped longer; ratio CI: delta method on "
            "the log scale, independent runs):\n\n" + markdown_table(rows, list(rows[0])) + "\n")


def to_csv(found: Collection) -> str:
    """CSV of the table; a CI column becomes `<column> lo` and `<column> hi`."""
    header: list[str] = []
    for c in found.columns():
        header.append(c)
        if any(f"{c} ci95" in r for r in found.rows):
            header += [f"{c} lo", f"{c} hi"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for r in found.rows:
        out = {c: r.get(c) for c in header if c in r}
        for c in header:
            if c.endswith((" lo", " hi")) and isinstance(r.get(c[:-3] + " ci95"), list):
                out[c] = r[c[:-3] + " ci95"][0 if c.endswith(" lo") else 1]
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in out.items()})
    return buf.getvalue()


def failures_settled(summary: dict[str, Any]) -> float | None:
    """B / (B + D) of a displacement summary: the fraction of failures whose late drift settled."""
    b, d = lookup(summary, "cells.B.count"), lookup(summary, "cells.D.count")
    return None if b is None or d is None or b + d == 0 else b / (b + d)


# (column, source: "evaluate" or a study name, value of that source's record)
SWEEP_METRICS: tuple[tuple[str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("test exact", "evaluate", lambda m: m.get("exact_accuracy")),
    ("median lambda1 success", "spectrum", lambda s: s.get("median_lambda1_success")),
    ("median lambda1 failure", "spectrum", lambda s: s.get("median_lambda1_failure")),
    ("AUC(-lambda1)", "spectrum", lambda s: s.get("auc_neg_lambda1")),
    ("failures settled", "displacement", failures_settled),
    ("hard core", "basin", lambda s: s.get("hard_core_ever")),
)


def checkpoint_key(path: Any) -> str:
    return str(Path(str(path)).expanduser().resolve())


def find_evaluations(roots: list[Path]) -> dict[str, dict[str, Any]]:
    """Checkpoint (resolved path) -> evaluate.py's metrics.json below `roots` (the newest wins)."""
    found: dict[str, tuple[float, dict[str, Any]]] = {}
    for root in roots:
        for path in root.rglob("metrics.json"):
            try:
                metrics = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(metrics, dict) and "exact_accuracy" in metrics and metrics.get("checkpoint"):
                key, mtime = checkpoint_key(metrics["checkpoint"]), path.stat().st_mtime
                if key not in found or mtime > found[key][0]:
                    found[key] = (mtime, metrics)
    return {k: m for k, (_, m) in found.items()}


def training_config(checkpoint: str) -> dict[str, Any] | None:
    """The training config of a checkpoint's run: `config.yaml` beside its `checkpoints/` folder
    (or beside the file itself); None for a checkpoint without one (e.g. an official one)."""
    path = Path(checkpoint)
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            try:
                config = yaml.safe_load((folder / "config.yaml").read_text())
            except (OSError, yaml.YAMLError):
                return None
            return config if isinstance(config, dict) else None
    return None


def mean_t_interval(values: list[float]) -> tuple[float | None, list[float] | None]:
    """Mean and its 95% Student-t interval over independent runs (no interval below 2 values)."""
    if not values:
        return None, None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    half = float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return m, [m - half, m + half]


def sweep_table(found: Collection, evaluations: dict[str, dict[str, Any]], keys: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per condition: the `keys` values of the training config) with, per sweep
    metric, the mean over the condition's checkpoints, its 95% t-interval and n; the second
    value lists the checkpoints left out (no config.yaml, or a key missing from it)."""
    per_checkpoint: dict[str, dict[str, dict[str, Any]]] = {}
    for row in found.rows:
        if row.get("_checkpoint_path"):
            per_checkpoint.setdefault(checkpoint_key(row["_checkpoint_path"]), {})[row["study"]] = row["_summary"]
    for key, metrics in evaluations.items():
        per_checkpoint.setdefault(key, {})["evaluate"] = metrics
    conditions: dict[tuple, dict[str, list]] = {}
    left_out: list[str] = []
    for checkpoint, sources in sorted(per_checkpoint.items(), key=lambda kv: natural_key(kv[0])):
        config = training_config(checkpoint)
        values = [lookup(config, k) if config else None for k in keys]
        if config is None or any(v is None and not has_key(config, k) for v, k in zip(values, keys)):
            left_out.append(f"{display_path(Path(checkpoint))}: " + ("no config.yaml beside its checkpoints/ folder" if config is None
                                                                      else f"its config.yaml has no {', '.join(k for k in keys if not has_key(config, k))}"))
            continue
        cond = conditions.setdefault(tuple(str(v) for v in values), {"seeds": []})
        cond["seeds"].append(config.get("seed"))
        for column, source, value_of in SWEEP_METRICS:
            value = value_of(sources[source]) if source in sources else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                cond.setdefault(column, []).append(float(value))
    rows = []
    for cond_key, cond in conditions.items():
        row: dict[str, Any] = dict(zip(keys, cond_key))
        row["checkpoints"] = len(cond["seeds"])
        row["seeds"] = ",".join(str(s) for s in sorted(cond["seeds"], key=lambda s: (s is None, s)))
        for column, _, _ in SWEEP_METRICS:
            values = cond.get(column, [])
            row[column], row[f"{column} ci95"] = mean_t_interval(values)
            row[f"{column} n"] = len(values)
        rows.append(row)
    return rows, left_out


def has_key(config: dict[str, Any], dotted: str) -> bool:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def sweep_markdown(rows: list[dict[str, Any]], left_out: list[str], keys: list[str]) -> str:
    """The per-condition table: mean [95% t-interval] (n) for every sweep metric."""
    columns = [*keys, "checkpoints", "seeds", *(c for c, _, _ in SWEEP_METRICS)]
    cells = []
    for r in rows:
        out = {c: r[c] for c in (*keys, "checkpoints", "seeds")}
        for c, _, _ in SWEEP_METRICS:
            out[c] = "" if r[c] is None else f"{cell(r[c], r[f'{c} ci95'])} (n={r[f'{c} n']})"
        cells.append(out)
    text = (f"\nPer condition of {', '.join(keys)}: mean over checkpoints (one per training seed) [95% Student-t interval] (n "
            "checkpoints). test exact: evaluate.py; lambda1 and AUC: spectrum; failures settled: displacement B / (B + D); "
            "hard core: basin, failures no restart solves.\n\n" + markdown_table(cells, columns) + "\n")
    if left_out:
        text += "\nNot in a condition:\n" + "\n".join(f"- {line}" for line in left_out) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line: print the Markdown table; write --out / --csv when given; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m diagnostics.collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories to walk")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="write the table as CSV here")
    parser.add_argument("--kappa-ref", default=None, help="run whose escape rate the other extended runs are compared with (default: the first)")
    parser.add_argument("--by", default=None, help="training-config keys (comma-separated, e.g. augment.mode,augment.sigma) to aggregate "
                                                   "checkpoints over seeds by")
    args = parser.parse_args(argv)
    found = find_runs(args.dirs)
    table = to_markdown(found) + kappa_table(found, args.kappa_ref)
    if args.by:
        keys = [k.strip() for k in args.by.split(",") if k.strip()]
        rows, left_out = sweep_table(found, find_evaluations(args.dirs), keys)
        if not rows:  # a mistyped key, or runs that are not this project's
            first = next((line for line in left_out if " has no " in line), left_out[0] if left_out else None)
            raise UserError(f"--by {args.by}: no collected checkpoint could be placed in a condition"
                            + (f" ({first}{f', and {len(left_out) - 1} more' if len(left_out) > 1 else ''})" if first else ""))
        table += sweep_markdown(rows, left_out, keys)
    print(table, end="", flush=True)
    if args.out:
        atomic_write_text(args.out, table)
    if args.csv:
        atomic_write_text(args.csv, to_csv(found))
    return 0


if __name__ == "__main__":
    with exit_on_user_error():
        sys.exit(main())
