"""The job behind `python evaluate.py`: its typed config and `run`.

Loads a TRM/HRM checkpoint (official `step_N`, ours, or `hf://...`), evaluates it on a dataset
split for a fixed segment budget (`training.evaluation`), and writes OUT/metrics.json,
OUT/predictions.npz and OUT/manifest.json; nothing is written when loading fails. With W&B on, the
metrics also go to a run of job type `eval` in the group and project of the checkpoint's training
run. Under torchrun every rank takes a shard of the examples and rank 0 writes the outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import archs  # noqa: F401  (registers trm and hrm)
from model_core.checkpoint import load_checkpoint
from model_core.config import DTYPES
from puzzles.layout import read_metadata
from runtime.atomic import atomic_write_text, ensure_writable_dir
from runtime.dist import cleanup, init_distributed, resolve_device
from runtime.errors import ConfigError, DatasetError
from runtime.logging import MetricsSink, WandbConfig, dashboard_config, get_logger
from runtime.manifest import build_manifest, write_manifest
from training.evaluation import EvalOptions, evaluate_split, write_eval_outputs
from training.fast_path import cpu_matmul_routing
from training.restart_policies import format_policy_table

log = get_logger("evaluate")


@dataclass
class EvaluateConfig:
    """evaluate.py options. `dtype` overrides the checkpoint's forward dtype (None keeps it);
    `allow_non_finite` loads weights that hold NaN/Inf (refused otherwise); `restarts` > 1 turns
    on restart-and-select inference (`select`, `sigma`, `restart_seed`: see
    `training.evaluation.EvalOptions`); `cpu_matmul` routes CPU fp32 matmuls as training's
    `launcher.cpu_matmul` does (oneDNN only where a probe shows fp32 accuracy; the official
    fixtures' predictions are reproduced either way)."""

    checkpoint: str = "???"
    data_path: str = "???"
    output_dir: str = "???"
    split: str = "test"
    segments: int | None = None
    act_halting: bool = False
    batch_size: int = 256
    n: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str | None = None
    use_ema: bool = True
    allow_non_finite: bool = False
    keep_logits: bool = True
    restarts: int = 1
    select: str = "q_halt"
    sigma: float = 0.1
    restart_seed: int = 0
    cpu_matmul: str = "onednn"
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(mode="disabled"))


def register_configs() -> None:
    """Register the `evaluate_schema` that conf/evaluate.yaml lists first."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate `cfg.checkpoint` on `cfg.split` of `cfg.data_path`; rank 0 writes the outputs. Returns
    the metrics (the same dict as OUT/metrics.json's metrics)."""
    with cpu_matmul_routing(cfg.cpu_matmul, "cpu_matmul") as line:
        log.info("%s", line)
        return evaluate_checkpoint(cfg)


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """`run` under the chosen matmul routing."""
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir} is a file; name a folder to write metrics.json and predictions.npz into")
    ensure_writable_dir(cfg.output_dir)  # before any work: an unwritable folder fails now, not after the evaluation
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of {sorted(DTYPES)}")
    EvalOptions(restarts=cfg.restarts, select=cfg.select, sigma=cfg.sigma, act_halting=cfg.act_halting).check()  # before any work
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    try:
        meta = read_metadata(cfg.data_path, cfg.split)
        if meta.total_puzzles == 0 or meta.total_groups == 0:
            raise DatasetError(f"split {cfg.split!r} of {cfg.data_path} holds no puzzles; nothing to evaluate")
        overrides = {"forward_dtype": cfg.dtype} if cfg.dtype else {}
        loaded = load_checkpoint(cfg.checkpoint, seq_len=meta.seq_len, overrides=overrides, use_ema=cfg.use_ema, device=device,
                                 allow_non_finite=cfg.allow_non_finite)
        log.info("loaded %s checkpoint %s (arch %s, step %d)", loaded.kind, loaded.path, loaded.arch.name, loaded.step)
        opts = EvalOptions(segments=cfg.segments, act_halting=cfg.act_halting, batch_size=cfg.batch_size, n=cfg.n, seed=cfg.seed, keep_logits=cfg.keep_logits,
                           restarts=cfg.restarts, select=cfg.select, sigma=cfg.sigma, restart_seed=cfg.restart_seed)
        start = time.perf_counter()
        result = evaluate_split(loaded.model, cfg.data_path, cfg.split, opts, device=device, dist=dist)
        if dist.is_main:
            extra = {"checkpoint": str(loaded.path), "checkpoint_kind": loaded.kind, "step": loaded.step, "seconds": round(time.perf_counter() - start, 3)}
            write_eval_outputs(cfg.output_dir, result, extra)
            config = OmegaConf.to_container(OmegaConf.structured(cfg))
            manifest = build_manifest(config=config, dataset_dir=cfg.data_path, checkpoint=loaded.path, device=str(device))
            write_manifest(cfg.output_dir, manifest)
            m = result.metrics
            if cfg.wandb.mode != "disabled":
                with MetricsSink(cfg.output_dir, dashboard_config(cfg.wandb, "eval", checkpoint=loaded.path), True, config=config) as sink:
                    eval_set = "+".join(meta.sets)  # the key training logs under, so the two line up
                    sink.log({f"eval/{eval_set}/{k}": v for k, v in m.items() if isinstance(v, (int, float))}, step=loaded.step)
            log.info("exact %.4f  token %.4f  count %d  -> %s", m["exact_accuracy"], m["token_accuracy"], m["count"], cfg.output_dir)
            if "restarts" in m:
                r = m["restarts"]
                ci = r["gain_ci95"] or [float("nan")] * 2
                log.info("restart-and-select (K=%d, select=%s, sigma=%g): exact %.4f -> %.4f, gain %+.4f (95%% CI %+.4f to %+.4f); "
                         "oracle best-of-K %.4f", r["k"], cfg.select, cfg.sigma, r["exact_accuracy_plain"], r["exact_accuracy_selected"],
                         r["gain"], ci[0], ci[1], r["oracle_best_of_k"])
                table = Path(cfg.output_dir) / "restart_policies.md"
                atomic_write_text(table, format_policy_table(r["policies"], m["count"]))
                log.info("restarts against early pruning at equal compute: %s", table)
        return result.metrics
    finally:
        cleanup()
