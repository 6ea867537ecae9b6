"""Evaluate a TRM/HRM checkpoint (official `step_N` or ours) on a dataset in the official layout.

    python evaluate.py checkpoint=PATH data_path=DIR output_dir=OUT [segments=S act_halting=true
        batch_size=B n=N seed=0 device=auto dtype=float32 wandb.mode=offline]

PATH is a checkpoint file, a run directory or `hf://OWNER/REPO[/PATH][@REVISION]` (downloaded and
cached, see reasoning_core/hub.py). Writes OUT/metrics.json, OUT/predictions.npz and
OUT/manifest.json; nothing is written when loading fails. With W&B on, the metrics also go to a
run of job type `eval` in the group and project of the checkpoint's training run. Under torchrun
every rank takes a shard of the examples and rank 0 writes the outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import hrm  # noqa: F401  (registers the arch)
import trm  # noqa: F401
from reasoning_core.checkpoint import load_checkpoint
from reasoning_core.config import DTYPES
from reasoning_core.dist import cleanup, init_distributed, resolve_device
from reasoning_core.cli import hydra_cli
from reasoning_core.errors import ConfigError, exit_on_user_error
from reasoning_core.evaluation import EvalOptions, evaluate_split, write_eval_outputs
from reasoning_core.logging import MetricsSink, WandbConfig, dashboard_config, get_logger
from reasoning_core.manifest import build_manifest, write_manifest
from puzzles.layout import read_metadata

log = get_logger("evaluate")


@dataclass
class EvaluateConfig:
    """evaluate.py options. `dtype` overrides the checkpoint's forward dtype (None keeps it)."""

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
    keep_logits: bool = True
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(mode="disabled"))


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def run(cfg: EvaluateConfig) -> dict:
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir} is a file; name a folder to write metrics.json and predictions.npz into")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of {sorted(DTYPES)}")
    device = resolve_device(cfg.device)
    dist = init_distributed(device)
    try:
        meta = read_metadata(cfg.data_path, cfg.split)
        overrides = {"forward_dtype": cfg.dtype} if cfg.dtype else {}
        loaded = load_checkpoint(cfg.checkpoint, seq_len=meta.seq_len, overrides=overrides, use_ema=cfg.use_ema, device=device)
        log.info("loaded %s checkpoint %s (arch %s, step %d)", loaded.kind, loaded.path, loaded.arch.name, loaded.step)
        opts = EvalOptions(segments=cfg.segments, act_halting=cfg.act_halting, batch_size=cfg.batch_size, n=cfg.n, seed=cfg.seed, keep_logits=cfg.keep_logits)
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
        return result.metrics
    finally:
        cleanup()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(dict_cfg) -> None:
    with exit_on_user_error():
        run(OmegaConf.to_object(dict_cfg))


if __name__ == "__main__":
    hydra_cli("evaluate", main)
