"""Study outputs: Markdown tables, figures, `results.npz`, `summary.json`, `report.md`, the
manifest and the metrics/W&B record, all written atomically (`finish_study` does the lot)."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.atomic import atomic_write_bytes, atomic_write_text


def format_value(value: Any) -> str:
    """A table cell: floats in compact scientific/fixed form (also inside a list of floats such as
    a CI, "[a, b]"), everything else via str()."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
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


def settings_table(summary: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A two-column (quantity, value) Markdown table of `summary[keys]`, None shown as n/a."""
    rows = [{"quantity": key, "value": "n/a" if summary[key] is None else summary[key]} for key in keys]
    return markdown_table(rows, ("quantity", "value"))


def write_outputs(out_dir: Path, summary: Mapping[str, Any], report: str) -> tuple[Path, Path]:
    """Write `out_dir/summary.json` and `out_dir/report.md`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    report_path = atomic_write_text(out_dir / "report.md", report.rstrip("\n") + "\n")
    return summary_path, report_path


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """np.savez of `arrays`, written atomically (a kill leaves the old file or the complete new one)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def config_dict(cfg: Any) -> dict[str, Any]:
    """A (dataclass) config as plain containers, for manifests and W&B."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))


def save_figure(fig: Any, path: Path) -> Path:
    """Render a matplotlib Figure to PNG at `path`, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    """A matplotlib Figure on the Agg canvas (no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (slow import)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def finish_study(
    out_dir: Path,
    cfg: Any,
    *,
    study: str,
    summary: Mapping[str, Any],
    report: str,
    results: Mapping[str, np.ndarray] | None,
    figures: Sequence[Path],
    scalars: Sequence[str],
    checkpoint: Path | None,
    device: Any,
) -> None:
    """Everything a study writes after its computation, in one place:
    results.npz (when given), summary.json, report.md (also printed), manifest.json, and the
    metrics.jsonl / W&B record: the `scalars` keys of the summary under `diag/<study>/`, the whole
    summary as a one-row table and the figures as images. The W&B run is of job type
    `diagnose/<study name>`, in the group and project of the checkpoint's training run."""
    from runtime.logging import MetricsSink, dashboard_config  # noqa: PLC0415
    from runtime.manifest import build_manifest, write_manifest  # noqa: PLC0415

    if results is not None:
        save_npz(out_dir / "results.npz", results)
    print(report, flush=True)
    write_outputs(out_dir, summary, report)
    config = config_dict(cfg)
    write_manifest(out_dir, build_manifest(config=config, dataset_dir=getattr(cfg, "data_path", None), checkpoint=checkpoint, device=device))
    job_type = f"diagnose/{getattr(getattr(cfg, 'study', None), 'name', study)}"
    with MetricsSink(out_dir, dashboard_config(getattr(cfg, "wandb", None), job_type, checkpoint=checkpoint), is_main=True, config=config) as sink:
        sink.log({f"diag/{study}/{key}": summary[key] for key in scalars if isinstance(summary.get(key), (int, float))}, step=0)
        sink.log_table(f"diag/{study}/summary", [summary], step=0)
        for fig in figures:
            sink.log_images(f"diag/{study}/{Path(fig).stem}", [fig], step=0)
