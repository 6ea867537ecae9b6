"""Typed configuration of `pretrain.py`: one dataclass per concern, collected by `PretrainConfig`.

Every dataclass is registered in Hydra's ConfigStore as a schema (`pretrain_schema`,
`arch/schema_trm`, `optim/schema`, ...) and every YAML file under `conf/` lists its schema first
in its defaults, so an unknown key or a value of the wrong type fails when the config is composed,
before any work starts. `pretrain.py` converts the composed config once with
`OmegaConf.to_object`; everything below it takes these dataclasses.

`global_batch_size` is global: it is split evenly over the ranks of a torchrun job.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

import archs
from puzzles.kinds import BUILDERS, Builder
from runtime.errors import ConfigError
from runtime.logging import WandbConfig
from training.augment import AugmentConfig
from training.flossing import FlossingConfig


@dataclass
class DataConfig:
    """Training data. `path`: an existing dataset folder in the official layout. Without it,
    `build` (a `puzzles.build` recipe) is built once on rank 0 and cached by its config hash.

    `epochs_per_iter` is how many shuffled passes over the train groups one sampler iteration
    concatenates (the official loop uses eval_interval epochs; it only changes the batch order).
    `eval_split` is evaluated during training; `eval_n` subsamples it (None = all examples).
    `val_n`: hold out that many train groups (seeded by `seed`) as a validation split that chooses
    best.pt; the evaluations during training then score it, and `eval_split` is evaluated at the
    end with the final and with best.pt's weights (training/validation.py). None: no validation
    split, best.pt follows `eval_split` (selection on the test split: optimistic).
    """

    path: Optional[str] = None
    build: Any = None
    epochs_per_iter: int = 1
    eval_split: str = "test"
    eval_n: Optional[int] = None
    eval_batch_size: int = 256
    val_n: Optional[int] = None


def data_schema(builder: Builder) -> type[DataConfig]:
    """`DataConfig` whose `build` is the builder's config: the schema `data/schema_<builder>`."""
    name = "".join(part.title() for part in builder.name.split("_")) + "Data"
    return make_dataclass(name, [("build", builder.config_cls, field(default_factory=builder.config_cls))], bases=(DataConfig,))


DATA_SCHEMAS: dict[str, type[DataConfig]] = {name: data_schema(builder) for name, builder in BUILDERS.items()}


@dataclass
class OptimConfig:
    """AdamATan2 on the dense parameters, SignSGD on the puzzle table (official names and
    defaults, official.md 3.1-3.5). The rate warms up linearly over `lr_warmup_steps` optimizer
    steps, then follows a half cosine down to `lr_min_ratio` * lr at the end (1.0 = constant)."""

    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = False
    ema_rate: float = 0.999
    fused: Optional[bool] = None


@dataclass
class LauncherConfig:
    """Where and how the processes run: device (auto, cpu, cuda), torch.compile, deterministic
    algorithms, the world size the recipe expects (a mismatch only warns: the global batch is
    what the recipe fixes), and whether to derive torchrun's variables from SLURM (submitit).

    `dist_timeout_minutes` bounds every collective of a torchrun job (nccl and its gloo side
    group alike), including the other ranks' wait while rank 0 builds and hashes the dataset:
    raise it for a dataset that takes longer to build, or build it first with `puzzles.build`.
    `cpu_matmul`: "onednn" sends CPU fp32 matmuls to oneDNN where that keeps fp32 accuracy (2-3x
    MKL on AMD processors; training/fast_path.py), "default" leaves PyTorch's BLAS. `compile`
    runs the training step under torch.compile, on CPU or CUDA: with `compile_scope` "step" the
    forward and loss (and so their backward) and the evaluation, with "blocks" each transformer
    block in place (a much shorter compile, ~15 s on 2 CPU cores).
    """

    device: str = "auto"
    compile: bool = False
    cpu_matmul: str = "default"
    compile_scope: str = "step"
    deterministic: bool = False
    expected_world_size: Optional[int] = None
    from_slurm: bool = False
    dist_timeout_minutes: float = 30.0


@dataclass
class PretrainConfig:
    """Everything one training run needs. Step counts are optimizer steps (1-indexed).

    Training stops at the first of: `epochs` passes over the train groups (the official count,
    which drops each iteration's last partial batch), `max_steps`, `max_train_seconds` of wall
    time. `eval_interval` and `checkpoint_interval` are independent (None: only at the end; an
    evaluation that improves the best exact accuracy always writes a checkpoint for best.pt;
    that accuracy is on the validation split when `data.val_n` is set, else on `data.eval_split`).
    `resume`: None (fresh run; the run dir must not hold another run), "auto" (the newest valid
    checkpoint in the run dir, else a fresh start) or a checkpoint file. A resume whose dataset's
    content hash differs from the checkpoint's is refused unless `allow_data_change=true` (the
    change is then recorded in the manifest's history).
    """

    arch: Any = MISSING
    data: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularize: FlossingConfig = field(default_factory=FlossingConfig)
    logger: WandbConfig = field(default_factory=WandbConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    experiment_name: Optional[str] = None
    run_dir: Optional[str] = None
    resume: Optional[str] = None
    allow_data_change: bool = False
    seed: int = 0
    global_batch_size: int = 768
    epochs: int = 100000
    max_steps: Optional[int] = None
    max_train_seconds: Optional[float] = None
    eval_interval: Optional[int] = None
    checkpoint_interval: Optional[int] = None
    keep_last_checkpoints: int = 3
    log_interval: int = 1
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError for values that cannot run (cross-field checks Hydra cannot do)."""
        positive = {
            "global_batch_size": self.global_batch_size,
            "epochs": self.epochs,
            "keep_last_checkpoints": self.keep_last_checkpoints,
            "log_interval": self.log_interval,
            "data.epochs_per_iter": self.data.epochs_per_iter,
            "data.eval_batch_size": self.data.eval_batch_size,
        }
        for key in ("max_steps", "eval_interval", "checkpoint_interval"):
            if getattr(self, key) is not None:
                positive[key] = getattr(self, key)
        for key in ("eval_n", "val_n"):
            if getattr(self.data, key) is not None:
                positive[f"data.{key}"] = getattr(self.data, key)
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if not self.launcher.dist_timeout_minutes > 0:
            raise ConfigError(f"launcher.dist_timeout_minutes={self.launcher.dist_timeout_minutes} must be > 0")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ConfigError(f"max_train_seconds={self.max_train_seconds} must be > 0")
        if self.data.path in (None, "???") and self.data.build is None:
            raise ConfigError("data.path=... is required (or pick a data=... recipe that builds one)")
        if not 0.0 <= self.optim.lr_min_ratio <= 1.0:
            raise ConfigError(f"optim.lr_min_ratio={self.optim.lr_min_ratio} must be in [0, 1]")
        if self.optim.lr_warmup_steps < 0:
            raise ConfigError(f"optim.lr_warmup_steps={self.optim.lr_warmup_steps} must be >= 0")
        for key in ("lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay"):
            value = getattr(self.optim, key)
            if not value >= 0.0:  # also catches NaN
                raise ConfigError(f"optim.{key}={value} must be >= 0")
        for key in ("beta1", "beta2"):
            value = getattr(self.optim, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"optim.{key}={value} must be in [0, 1)")
        self.augment.validate()
        self.regularize.validate()
        if hasattr(self.arch, "validate"):
            self.arch.validate(derived=False)


def run_label(experiment_name: Optional[str], arch_choice: Optional[str]) -> str:
    """Folder name of a run under outputs/train: the experiment, else the arch preset."""
    return str(experiment_name or arch_choice or "run")


def default_run_dir(run_dir: Optional[str], experiment_name: Optional[str], arch_choice: Optional[str], now: str) -> str:
    """Hydra's run dir: an explicit `run_dir`, else outputs/train/<experiment or arch>/<now>."""
    return str(run_dir) if run_dir else f"outputs/train/{run_label(experiment_name, arch_choice)}/{now}"


def register_configs() -> None:
    """Register every schema in ConfigStore and the run-dir resolvers used by conf/pretrain.yaml."""
    cs = ConfigStore.instance()
    cs.store(name="pretrain_schema", node=PretrainConfig)
    for spec in archs.SPECS:
        cs.store(group="arch", name=f"schema_{spec.name}", node=spec.config_cls)
    cs.store(group="data", name="schema_path", node=DataConfig)
    for name, schema in DATA_SCHEMAS.items():  # one per puzzles.kinds builder
        cs.store(group="data", name=f"schema_{name}", node=schema)
    cs.store(group="optim", name="schema", node=OptimConfig)
    cs.store(group="augment", name="schema", node=AugmentConfig)
    cs.store(group="regularize", name="schema", node=FlossingConfig)
    cs.store(group="logger", name="schema", node=WandbConfig)
    cs.store(group="launcher", name="schema", node=LauncherConfig)
    for name, resolver in (("rrdyn.run_label", run_label), ("rrdyn.run_dir", default_run_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
