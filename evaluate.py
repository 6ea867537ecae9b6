"""Evaluate a TRM/HRM checkpoint (official `step_N` or ours) on a dataset in the official layout.

    python evaluate.py checkpoint=PATH data_path=DIR output_dir=OUT [segments=S act_halting=true
        batch_size=B n=N seed=0 device=auto dtype=float32]

Writes OUT/metrics.json and OUT/predictions.npz; nothing is written when loading fails. Under
torchrun every rank takes a shard of the examples and rank 0 writes the outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import hrm  # noqa: F401  (registers the arch)
import trm  # noqa: F401
from reasoning_core.checkpoint import load_checkpoint
from reasoning_core.dist import cleanup, init_distributed, resolve_device
from reasoning_core.cli import hydra_cli
from reasoning_core.errors import exit_on_user_error
from reasoning_core.evaluation import EvalOptions, evaluate_split, write_eval_outputs
from reasoning_core.logging import get_logger
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


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def run(cfg: EvaluateConfig) -> dict:
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
            manifest = build_manifest(config=OmegaConf.to_container(OmegaConf.structured(cfg)), dataset_dir=cfg.data_path, checkpoint=loaded.path, device=str(device))
            write_manifest(cfg.output_dir, manifest)
            m = result.metrics
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
