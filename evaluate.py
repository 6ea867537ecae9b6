"""Evaluate a TRM/HRM checkpoint (official `step_N` or ours) on a dataset in the official layout.

    python evaluate.py checkpoint=PATH data_path=DIR output_dir=OUT [segments=S act_halting=true
        batch_size=B n=N seed=0 device=auto dtype=float32 wandb.mode=offline]

PATH is a checkpoint file, a run directory or `hf://OWNER/REPO[/PATH][@REVISION]` (downloaded and
cached, see runtime/hub.py). Writes OUT/metrics.json, OUT/predictions.npz and
OUT/manifest.json; nothing is written when loading fails. The config and the job live in
training/evaluate_job.py; this file only composes and converts.
"""
from __future__ import annotations

import hydra
from omegaconf import OmegaConf

from runtime.cli import hydra_cli
from runtime.errors import exit_on_user_error
from training.evaluate_job import register_configs, run

register_configs()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(dict_cfg) -> None:
    with exit_on_user_error():
        run(OmegaConf.to_object(dict_cfg))


if __name__ == "__main__":
    hydra_cli("evaluate", main)
