"""Export a checkpoint to the official TRM/HRM layout: `OUT/step_<N>` + `OUT/all_config.yaml`.

    python -m training.export CKPT OUT_DIR [--raw]

CKPT is one of our training checkpoints (step_0001000.pt, best.pt, last.pt) or an official file.
The exported weights are the EMA weights when the checkpoint has them (as official TRM training
saves them), the raw weights with --raw. Keys read `_orig_mod.model.inner.*`, as an official
compiled run writes them, so the official code and `model_core.checkpoint.load_checkpoint`
both load the result.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import archs  # noqa: F401  (registers trm and hrm)
from model_core.checkpoint import LoadedCheckpoint, export_official, load_checkpoint
from runtime.errors import exit_on_user_error


def export(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write the official layout for `checkpoint` into `out_dir`; returns the step file."""
    return export_loaded(load_checkpoint(checkpoint, use_ema=use_ema), out_dir)


def export_loaded(loaded: LoadedCheckpoint, out_dir: str | Path) -> Path:
    """Write the official layout for an already loaded checkpoint; returns the step file."""
    extra = {}
    config = loaded.extra.get("config")
    if isinstance(config, dict):
        # The training hyperparameters under their official names, for readers of all_config.yaml.
        optim = config.get("optim", {})
        extra = {k: optim[k] for k in ("lr", "lr_min_ratio", "lr_warmup_steps", "beta1", "beta2", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay", "ema", "ema_rate") if k in optim}
        extra.update({k: config[k] for k in ("global_batch_size", "epochs", "seed") if k in config})
        logger = config.get("logger", {})
        extra.update(project_name=logger.get("project"), run_name=logger.get("name"))
    return export_official(loaded.model.model, loaded.arch, out_dir, loaded.step, extra_config=extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint file (or an official run directory)")
    parser.add_argument("out_dir", help="folder to write step_N and all_config.yaml into")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        path = export(args.checkpoint, args.out_dir, use_ema=not args.raw)
        print(path)


if __name__ == "__main__":
    main()
