"""Every experiment preset composes, and the published recipes match the official ones.

Test hypothesis: `experiment=<name>` reproduces the official README runs (official.md section 3.2:
hyperparameters, 1,000 train groups, a global batch of 768 split over the ranks, evaluation and a
checkpoint at the end of every sampler iteration of `eval_interval` epochs, 65,100 TRM and 26,040
HRM steps) and builds the published models: the parameter counts are official.md section 1.5's,
counted as the official `num_params` (parameters only, not the puzzle table or H_init/L_init).
The CPU preset matches calibration.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from model_core.registry import build_model
from tests.integration.helpers import REPO, compose_pretrain, run_cli
from training.loop import derive_arch

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
PUBLISHED = {"trm_sudoku_mlp", "trm_sudoku_att", "trm_maze", "hrm_sudoku", "hrm_maze"}

TRM = dict(name="trm", hidden_size=512, num_heads=8, expansion=4.0, H_cycles=3, L_cycles=6, L_layers=2, halt_max_steps=16,
           halt_exploration_prob=0.1, puzzle_emb_ndim=512, puzzle_emb_len=16, forward_dtype="bfloat16", no_ACT_continue=True,
           loss_type="stablemax_cross_entropy")
HRM = dict(name="hrm", hidden_size=512, num_heads=8, expansion=4.0, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, halt_max_steps=16,
           halt_exploration_prob=0.1, puzzle_emb_ndim=512, pos_encodings="rope", forward_dtype="bfloat16", no_ACT_continue=False,
           loss_type="stablemax_cross_entropy")
# experiment -> (arch, dataset (vocab, seq_len), epochs, epochs per evaluation, EMA, official num_params, total steps)
RECIPES = {
    "trm_sudoku_mlp": ({**TRM, "mlp_t": True, "pos_encodings": "none"}, (11, 81), 50000, 5000, True, 5_028_866, 65_100),
    "trm_sudoku_att": ({**TRM, "mlp_t": False, "pos_encodings": "rope"}, (11, 81), 50000, 5000, True, 6_828_034, 65_100),
    "trm_maze": ({**TRM, "mlp_t": False, "pos_encodings": "rope", "L_cycles": 4}, (6, 900), 50000, 5000, True, 6_822_914, 65_100),
    "hrm_sudoku": (HRM, (11, 81), 20000, 2000, False, 27_275_266, 26_040),
    "hrm_maze": (HRM, (6, 900), 20000, 2000, False, 27_270_146, 26_040),
}
OPTIM = dict(lr=1e-4, lr_min_ratio=1.0, lr_warmup_steps=2000, beta1=0.9, beta2=0.95, weight_decay=1.0,
             puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0)
TRAIN_GROUPS, GLOBAL_BATCH, RANKS = 1000, 768, 2


def _fake_dataset(root: Path, vocab: int, seq_len: int) -> Path:
    """Only train/dataset.json, as the published sets have it (1,000 groups, one example each)."""
    (root / "train").mkdir(parents=True)
    (root / "train" / "dataset.json").write_text(json.dumps({
        "pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": vocab, "seq_len": seq_len,
        "num_puzzle_identifiers": 1, "total_groups": TRAIN_GROUPS, "mean_puzzle_examples": 1, "total_puzzles": TRAIN_GROUPS, "sets": ["all"],
    }))
    return root


def test_every_experiment_has_a_recipe_here_or_is_a_cpu_preset():
    assert set(EXPERIMENTS) == PUBLISHED | {"sudoku_tiny", "maze_tiny", "hrm_tiny"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(name):
    cfg = compose_pretrain([f"experiment={name}"])
    cfg.validate()
    assert cfg.experiment_name == name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_published_recipe_matches_the_official_run(name, tmp_path):
    arch, (vocab, seq_len), epochs, eval_epochs, ema, params, total_steps = RECIPES[name]
    cfg = compose_pretrain([f"experiment={name}"])
    for key, value in arch.items():
        assert getattr(cfg.arch, key) == value, key
    for key, value in OPTIM.items():
        assert getattr(cfg.optim, key) == value, key
    assert (cfg.optim.ema, cfg.optim.ema_rate) == (ema, 0.999)
    assert (cfg.global_batch_size, cfg.epochs, cfg.data.epochs_per_iter, cfg.augment.mode) == (GLOBAL_BATCH, epochs, eval_epochs, "none")
    # 2 GPUs, compiled; the batch stays global, so each rank takes half of it.
    assert (cfg.launcher.device, cfg.launcher.compile, cfg.launcher.expected_world_size) == ("cuda", True, RANKS)
    build = cfg.data.build
    if vocab == 11:
        assert (build.subsample, build.num_aug, build.n_test) == (TRAIN_GROUPS, 1000, None)  # full 422,786-puzzle test set
    else:
        assert (build.n_train, build.subsample, build.num_aug, build.n_test) == (None, None, 0, None)  # all 1,000 mazes, no aug

    # The official loop: eval_interval epochs per sampler iteration, each dropping its last partial
    # batch; evaluation and a checkpoint when an iteration ends.
    steps_per_iter = eval_epochs * TRAIN_GROUPS // GLOBAL_BATCH
    assert cfg.eval_interval == cfg.checkpoint_interval == steps_per_iter
    assert epochs // eval_epochs * steps_per_iter == total_steps

    derive_arch(cfg, _fake_dataset(tmp_path / "data", vocab, seq_len), world_size=RANKS)
    assert (cfg.arch.vocab_size, cfg.arch.seq_len, cfg.arch.batch_size) == (vocab, seq_len, GLOBAL_BATCH // RANKS)
    model = build_model(cfg.arch)
    assert sum(p.numel() for p in model.parameters()) == params


def test_cpu_preset_matches_calibration():
    """calibration.md: TRM-MLP hidden 64, 4 heads, expansion 4, 2 layers, H 2 / L 3 cycles, 8 ACT
    steps, puzzle embedding 64, float32; batch 64, lr 2e-3 for both optimizers, wd 0.1, 50 warmup
    steps, constant rate, no EMA; CPU only, a time cap well below the 10-minute benchmark."""
    cfg = compose_pretrain(["experiment=sudoku_tiny"])
    expected_arch = dict(name="trm", hidden_size=64, num_heads=4, expansion=4.0, L_layers=2, H_cycles=2, L_cycles=3, halt_max_steps=8,
                         puzzle_emb_ndim=64, puzzle_emb_len=16, mlp_t=True, pos_encodings="none", forward_dtype="float32")
    for key, value in expected_arch.items():
        assert getattr(cfg.arch, key) == value, key
    expected_optim = dict(lr=2e-3, puzzle_emb_lr=2e-3, weight_decay=0.1, puzzle_emb_weight_decay=0.1, lr_warmup_steps=50,
                          lr_min_ratio=1.0, beta1=0.9, beta2=0.95, ema=False)
    for key, value in expected_optim.items():
        assert getattr(cfg.optim, key) == value, key
    assert cfg.global_batch_size == 64 and cfg.launcher.device == "auto" and cfg.max_train_seconds <= 300
    assert (cfg.data.build.n_train, cfg.data.build.n_test, cfg.data.build.size) == (20000, 1000, 9)


def test_cfg_job_prints_the_composed_experiment():
    proc = run_cli(["pretrain.py", "experiment=hrm_sudoku", "--cfg", "job"])
    assert proc.returncode == 0, proc.stderr
    job = yaml.safe_load(proc.stdout)
    assert job["experiment_name"] == "hrm_sudoku" and job["arch"]["name"] == "hrm" and job["global_batch_size"] == GLOBAL_BATCH


def test_slurm_launcher_composes():
    """`launcher=slurm` switches Hydra to the submitit SLURM launcher: one node, 2 tasks x 2 GPUs,
    requeued on timeout; every task derives torchrun's variables and resumes automatically."""
    proc = run_cli(["pretrain.py", "launcher=slurm", "experiment=hrm_sudoku", "--cfg", "hydra"])
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (1, RANKS, RANKS)
    assert launcher["max_num_timeout"] > 0
    cfg = compose_pretrain(["launcher=slurm", "experiment=hrm_sudoku"])
    assert cfg.launcher.from_slurm and cfg.resume == "auto" and cfg.launcher.expected_world_size == RANKS
