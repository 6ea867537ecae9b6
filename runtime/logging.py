"""Rank-aware logging, progress bars and the metrics sink (local JSON lines + optional W&B).

- `get_logger(name)`: a stdlib logger whose records carry a `[rank r]` prefix; ranks other than
  0 emit WARNING and above only. Works under Hydra's logging config and without one.
- `rank0_tqdm(...)`: `runtime.progress.progress_bar`, the rank-0 bar that stays readable in a log.
- `MetricsSink`: on rank 0, appends one JSON object per `log()` call to `run_dir/metrics.jsonl`
  (always, whatever the W&B mode) and mirrors scalars, tables and images to W&B when the mode is
  `online` or `offline`. `online` without credentials falls back to `offline` with one warning,
  so a run never stops at a login prompt; `offline` runs can be uploaded later with
  `wandb sync`.
- `dashboard_config(...)`: where a run goes on the W&B dashboard. Training, `evaluate.py` and
  every diagnostics study fill the unset W&B fields the same way, so a sweep reads as one
  dashboard: `job_type` is `train`, `eval` or `diagnose/<study>`; `group` is the experiment (the
  run name without one) for training and, for evaluation and studies, the group of the training
  run the checkpoint came from (`checkpoint_run`), in that run's project.
"""
from __future__ import annotations

import json
import logging
import netrc
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import yaml

from runtime.atomic import atomic_write_text
from runtime.dist import get_rank
from runtime.errors import ConfigError
from runtime.progress import progress_bar as rank0_tqdm  # noqa: F401 (re-exported)

WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "rrdyn"  # W&B project of evaluations and studies whose checkpoint names none


class _RankFilter(logging.Filter):
    """Prefix each record with its rank and drop sub-WARNING records on ranks other than 0.

    The rank is read when the record is emitted, so module-level loggers created before
    `init_distributed` still report the right rank.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        rank = get_rank()
        if rank != 0 and record.levelno < logging.WARNING:
            return False
        if not getattr(record, "_rank_prefixed", False):
            record.msg = f"[rank {rank}] {record.msg}"
            record._rank_prefixed = True
        return True


def get_logger(name: str) -> logging.Logger:
    """Logger `name` at INFO with the rank filter; installs a stderr handler if none exists."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankFilter) for f in logger.filters):
        logger.addFilter(_RankFilter())
        logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        # Outside Hydra nothing configured logging; give records somewhere to go.
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return logger


@dataclass
class WandbConfig:
    """W&B settings; `mode` is online, offline or disabled (metrics.jsonl is written regardless).

    `dir` is where W&B puts its `wandb/` folder: this value, else $WANDB_DIR, else the run dir.
    """

    mode: str = "offline"
    project: str | None = None
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None

    def __post_init__(self) -> None:
        # Runs when Hydra's config becomes this dataclass, so a mistyped mode fails before any work.
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"wandb mode {self.mode!r} is not one of {', '.join(WANDB_MODES)}")


def wandb_api_key_available() -> bool:
    """True if $WANDB_API_KEY is set or the netrc file has an entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str, logger: logging.Logger | None = None) -> str:
    """Validate `mode`; `online` without an API key becomes `offline` with a one-line warning."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"wandb mode {mode!r} is not one of {', '.join(WANDB_MODES)}")
    if mode == "online" and not wandb_api_key_available():
        (logger or get_logger(__name__)).warning(
            "wandb mode is online but no API key was found (WANDB_API_KEY or ~/.netrc); "
            "logging offline instead (upload later with `wandb sync`)"
        )
        return "offline"
    return mode


def checkpoint_run(checkpoint: str | os.PathLike) -> dict[str, str | None]:
    """{"project", "group"} of the training run that wrote a checkpoint file, read from beside it.

    - official run file (`step_N` + `all_config.yaml`): project_name and run_name;
    - one of our runs (`RUN/checkpoints/step_N.pt` + `RUN/config.yaml`): logger.project and
      logger.group (else experiment_name, else logger.name);
    - anything else: no project, and the name of the folder holding the file as group.
    """
    path = Path(checkpoint)
    folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    for config_file, official in ((path.parent / "all_config.yaml", True), (folder / "config.yaml", False)):
        try:
            config = yaml.safe_load(config_file.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict):
            continue
        if official:
            return {"project": config.get("project_name"), "group": config.get("run_name") or folder.name}
        logger = config.get("logger") or {}
        group = logger.get("group") or config.get("experiment_name") or logger.get("name") or folder.name
        return {"project": logger.get("project"), "group": group}
    return {"project": None, "group": folder.name or None}


def dashboard_config(
    cfg: WandbConfig | None,
    job_type: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    group: str | None = None,
) -> WandbConfig:
    """A copy of `cfg` with its unset fields filled so the run joins its sweep's dashboard.

    job_type <- `job_type` (train, eval, diagnose/<study>); group <- `group`, else the
    checkpoint's training run (`checkpoint_run`); project <- the checkpoint's project, else
    DEFAULT_PROJECT. Values set in `cfg` always win. `cfg=None` means W&B off (mode disabled).
    """
    base = cfg if cfg is not None else WandbConfig(mode="disabled")
    origin = checkpoint_run(checkpoint) if checkpoint is not None else {"project": None, "group": None}
    return replace(
        base,
        job_type=base.job_type or job_type,
        group=base.group or group or origin["group"],
        project=base.project or origin["project"] or DEFAULT_PROJECT,
        tags=list(base.tags),
    )


def _scalar(value: Any) -> Any:
    """A JSON-friendly Python scalar from a float, int, bool, str, numpy or 0-d torch value."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return float(value)  # NaN/inf are written as NaN/Infinity, which json.loads reads back


def _cell(value: Any) -> Any:
    """A table cell: a scalar as `_scalar`; lists and dicts as compact JSON text (W&B columns
    hold one type, and a summary mixes numbers with spectra and settings)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return _scalar(value)


def _safe_name(key: str) -> str:
    """A file-name-safe version of a metric key ("eval/all/acc" -> "eval_all_acc")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "table"


class MetricsSink:
    """Where a run's metrics go: `run_dir/metrics.jsonl` and, optionally, one W&B run.

    Only the main rank does anything; on other ranks every method is a no-op. Tables are also
    written to `run_dir/tables/<key>.step_<N>.json` and indexed, like images, in
    `run_dir/media.jsonl`. Use as a context manager or call `close()` at the end of the run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        wandb_cfg: WandbConfig,
        is_main: bool,
        *,
        config: Mapping[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.wandb_mode = resolve_wandb_mode(wandb_cfg.mode) if is_main else "disabled"
        self.run = None
        self._metrics_file = None
        if not is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._metrics_file = open(self.metrics_path, "a", buffering=1, encoding="utf-8")
        if self.wandb_mode != "disabled":
            self.run = self._start_wandb(wandb_cfg, dict(config or {}))

    def _start_wandb(self, cfg: WandbConfig, config: dict[str, Any]) -> Any:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb  # noqa: PLC0415 (slow import, only needed when W&B is on)

        wandb_dir = Path(cfg.dir or os.environ.get("WANDB_DIR") or self.run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            silent=True,  # no banners or login prompts on the console
            console="off",  # do not wrap stdout/stderr (keeps tqdm intact)
            x_disable_stats=True,  # no system-metrics sampler process, as in the official runs
        )
        return wandb.init(
            mode=self.wandb_mode,
            project=cfg.project,
            name=cfg.name,
            group=cfg.group,
            job_type=cfg.job_type,
            tags=list(cfg.tags) or None,
            dir=str(wandb_dir),
            config=config,
            settings=settings,
        )

    def _append_media(self, record: Mapping[str, Any]) -> None:
        with open(self.run_dir / "media.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalars at `step`: {"step": step, "time": unix seconds, key: value, ...}."""
        if not self.is_main:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(time.time(), 3), **values}
        self._metrics_file.write(json.dumps(record, default=str) + "\n")
        if self.run is not None:
            self.run.log(values, step=int(step))

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]], step: int) -> Path | None:
        """Record a table (one dict per row; columns are the union of keys, first-seen order;
        list and dict values are stored as JSON text). A study's summary is `[summary]`."""
        if not self.is_main:
            return None
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_cell(row.get(c)) for c in columns] for row in rows]
        path = self.run_dir / "tables" / f"{_safe_name(key)}.step_{int(step)}.json"
        atomic_write_text(path, json.dumps({"columns": columns, "data": data}, default=str))
        relpath = str(path.relative_to(self.run_dir))
        self._append_media({"step": int(step), "key": key, "kind": "table", "path": relpath})
        if self.run is not None:
            import wandb  # noqa: PLC0415

            self.run.log({key: wandb.Table(columns=columns, data=data)}, step=int(step))
        return path

    def log_images(self, key: str, paths: Sequence[str | os.PathLike], step: int) -> None:
        """Record PNG files (already written by the caller) under `key` at `step`."""
        if not self.is_main:
            return
        paths = [Path(p) for p in paths]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"image(s) to log do not exist: {', '.join(missing)}")
        self._append_media(
            {"step": int(step), "key": key, "kind": "images", "paths": [str(p) for p in paths]}
        )
        if self.run is not None:
            import wandb  # noqa: PLC0415

            self.run.log({key: [wandb.Image(str(p)) for p in paths]}, step=int(step))

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Add values to the W&B run config (derived sizes, parameter count, git SHA, ...)."""
        if self.run is not None:
            self.run.config.update(dict(values), allow_val_change=True)

    def close(self) -> None:
        """Flush and close metrics.jsonl and finish the W&B run (idempotent)."""
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
