"""Study outputs: Markdown tables, `summary.json` and `report.md`, written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from reasoning_core.atomic import atomic_write_text


def format_value(value: Any) -> str:
    """A table cell: floats in compact scientific/fixed form, everything else via str()."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0.0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.6f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of `rows` restricted to `columns`, one line per row."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_outputs(out_dir: Path, summary: Mapping[str, Any], report: str) -> tuple[Path, Path]:
    """Write `out_dir/summary.json` and `out_dir/report.md`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    report_path = atomic_write_text(out_dir / "report.md", report.rstrip("\n") + "\n")
    return summary_path, report_path
