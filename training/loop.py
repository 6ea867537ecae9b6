"""The training loop behind pretrain.py: the official TRM/HRM recipe, resumable and multi-process.

One optimizer step (official `train_batch`, official.md section 3):
    carry, loss, metrics = model(carry, batch)    # one ACT segment for every slot; the carry
                                                  # persists across steps and evaluations
    (loss / global_batch).backward()              # global batch = loader rows x trajectories
    all_reduce_sum_(grads)                        # no DDP: the SUM is the gradient of the mean
    sparse SignSGD step, then AdamATan2 step      # lr from warmup + cosine, 1-indexed step
    EMA update                                    # TRM recipe; evaluation and export use it

Under torchrun each rank trains on its slice of every global batch (same sampler seed on every
rank); parameters and buffers start from rank 0's. The run directory holds config.yaml,
manifest.json, metrics.jsonl, eval/ and checkpoints/ (see train_state). Train metrics add up on
the device and are all-reduced and read once per `log_interval` window (and before every
evaluation, checkpoint and stop), so a GPU step never waits for the host to log; the stop flags
(time budget, SIGINT/SIGTERM) are host values summed over ranks every step through the CPU group,
so every rank stops at the same step. Batches are sampled a few steps ahead in a thread
(training/prefetch.py); `launcher.cpu_matmul` and `launcher.compile` select the fast path
(training/fast_path.py).
Sections one rank may fail in while the others would wait in a collective (the dataset build,
each step's forward/backward, a checkpoint save, an evaluation) run inside `rdist.fail_together`:
the other ranks then stop with one line naming the failing rank and its message (no hang).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf

from model_core.act import ACTCarry
from model_core.checkpoint import FORMAT
from model_core.config import ArchConfig
from model_core.losses import ACTLossHead
from model_core.registry import build_model, get_arch
from puzzles.build import build_dataset
from puzzles.dataset import LoaderConfig, PuzzleDataset
from puzzles.layout import read_metadata
from runtime import dist as rdist
from runtime.atomic import atomic_write_text, free_space_problem
from runtime.errors import CheckpointError, ConfigError, DatasetError, UserError
from runtime.lock import DirectoryLock
from runtime.logging import MetricsSink, dashboard_config, get_logger, rank0_tqdm
from runtime.manifest import build_manifest, write_manifest
from runtime.signals import StopSignals
from training import state as ts
from training.augment import TrajectoryAugmenter
from training.config import PretrainConfig
from training.ema import EMA
from training.evaluation import EvalOptions, evaluate_split
from training.fast_path import compile_training, get_cpu_matmul, set_cpu_matmul
from training.flossing import FlossingConfig, Flosser
from training.optim import AdamATan2, SparseEmbeddingSignSGD
from training.prefetch import Prefetcher
from training.schedule import apply_lr_schedule
from training.validation import first_examples, holdout_groups

log = get_logger(__name__)

# Config sections that define a run; resuming with different values is refused.
IDENTITY_KEYS = ("arch", "data", "optim", "augment", "regularize", "seed", "global_batch_size", "epochs")
# Settings inside those sections that do not change what is trained (only how it is measured).
NOT_IDENTITY = {"data": ("eval_n", "eval_batch_size")}
NO_RESUME = (None, "", "none")  # values of `resume` that start a fresh run
# Arch fields `derive_arch` fills from the data and the ranks: not part of a run's identity (the
# data is), and still 0 in a config that has not been derived yet.
DERIVED_ARCH_KEYS = ("vocab_size", "seq_len", "num_puzzle_identifiers", "batch_size")


class DivergenceError(ConfigError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class InterruptedRun(UserError):
    """SIGINT or SIGTERM arrived; the step in flight finished and a checkpoint was written."""


def resume_command(run_dir: Path) -> str:
    """The command line that continues this run: this process's arguments with run_dir and
    resume set (`torchrun ...` launchers add their own prefix)."""
    keep = [a for a in sys.argv[1:] if not a.split("=", 1)[0].lstrip("+") in ("run_dir", "resume")]
    return " ".join(["python", "pretrain.py", *map(shlex.quote, keep), shlex.quote(f"run_dir={run_dir}"), "resume=auto"])


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports: the last step, the final and best eval metrics, where it lives.
    With a validation split (`data.val_n`) `eval_metrics` and `best_exact_accuracy` are on it, and
    `test_metrics` holds the eval split's metrics for {"final": ..., "best_on_val": ...} weights."""

    run_dir: Path
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, Any]
    best_exact_accuracy: float | None
    test_metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# --- setup helpers -------------------------------------------------------------------------------

def torchrun_env_from_slurm() -> None:
    """Fill RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from a SLURM (submitit) task, so
    `init_distributed` joins the job as it would under torchrun. A no-op under torchrun; outside
    both, `launcher=slurm` was used without Hydra's multirun flag, which would train on this host."""
    if "LOCAL_RANK" in os.environ:
        return
    if "SLURM_PROCID" not in os.environ:
        raise ConfigError("launcher=slurm submits through Hydra's submitit launcher: add -m (multirun), e.g. `python pretrain.py -m launcher=slurm experiment=...`")
    import submitit  # noqa: PLC0415 (only on SLURM)

    env = submitit.JobEnvironment()
    os.environ.update(
        RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
        MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + int(env.job_id.split("_")[0]) % 20000),
    )


def set_determinism(enabled: bool) -> None:
    """Deterministic kernels (CPU: bit-reproducible runs and resumes; CUDA: also cuBLAS)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)


def prepare_data(cfg: PretrainConfig, info: rdist.DistInfo) -> Path:
    """The dataset folder: `data.path`, or the `data.build` recipe built (cached) on rank 0.

    While rank 0 builds, the other ranks wait in `fail_together`, which runs on the CPU (gloo)
    group even on nccl runs: NCCL's watchdog never sees the wait, the group's explicit timeout
    (`launcher.dist_timeout_minutes`) bounds it, and a failed build stops every rank with rank
    0's message instead of leaving them in the broadcast. (Polling a "ready" file would need the
    other ranks to know the cache path and a second channel for errors; the gloo wait has both.)
    """
    if cfg.data.path is not None:
        root = Path(cfg.data.path).expanduser()
    else:
        root = None
        with rdist.fail_together("the dataset build"):
            if info.is_main:
                root = Path(build_dataset(cfg.data.build))
        root = rdist.broadcast_object(root)
    if not (root / "train" / "dataset.json").is_file():
        raise DatasetError(f"dataset {root} has no train/dataset.json (build it with `python -m puzzles.build`, or fix data.path)")
    return root


def derive_arch(cfg: PretrainConfig, root: Path, world_size: int) -> ArchConfig:
    """Fill the data-derived arch fields (vocab, seq_len, ids, per-rank batch) after checking that
    the data fits what the user fixed by hand; returns the arch (also stored in cfg.arch)."""
    meta = read_metadata(root, "train")
    arch: ArchConfig = cfg.arch
    for key in ("vocab_size", "seq_len"):
        fixed, actual = getattr(arch, key), getattr(meta, key)
        if fixed and fixed != actual:
            raise DatasetError(f"arch.{key}={fixed} does not fit dataset {root} ({key} {actual}); leave arch.{key} unset (0) to take it from the data")
    if cfg.global_batch_size % world_size:
        raise ConfigError(f"global_batch_size={cfg.global_batch_size} is not divisible by the {world_size} ranks")
    per_iter = cfg.data.epochs_per_iter * meta.total_groups * meta.mean_puzzle_examples
    if per_iter < cfg.global_batch_size:
        raise DatasetError(
            f"dataset {root} yields {per_iter:g} training examples per sampler iteration, fewer than "
            f"global_batch_size={cfg.global_batch_size}; lower the batch or raise data.epochs_per_iter"
        )
    per_rank = cfg.global_batch_size // world_size
    arch.derive_from_data(vocab_size=meta.vocab_size, seq_len=meta.seq_len, num_puzzle_identifiers=meta.num_puzzle_identifiers, batch_size=per_rank * cfg.augment.copies)
    if getattr(arch, "mlp_t", False) and arch.pos_encodings == "rope":
        log.warning("arch.mlp_t=true with pos_encodings=rope: the MLP token mixer ignores RoPE (the official recipe uses none)")
    return arch


def config_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what config.yaml and checkpoints hold)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def check_same_run(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to continue a run whose defining config differs from the current one (the
    data-derived arch fields are left out: the per-rank batch may differ, as a run can resume on
    another number of ranks). `where` names the saved run in the message, e.g. "run directory X"."""
    saved, current = dict(saved), dict(current)
    saved.setdefault("regularize", dataclasses.asdict(FlossingConfig()))  # runs from before the option trained without it
    for d in (saved, current):
        if isinstance(d.get("arch"), dict):
            d["arch"] = {k: v for k, v in d["arch"].items() if k not in DERIVED_ARCH_KEYS}
        for section, keys in NOT_IDENTITY.items():
            if isinstance(d.get(section), dict):
                d[section] = {k: v for k, v in d[section].items() if k not in keys}
    for key in IDENTITY_KEYS:
        if saved.get(key) != current.get(key):
            detail = ""
            if isinstance(saved.get(key), dict) and isinstance(current.get(key), dict):
                diff = sorted(k for k in set(saved[key]) | set(current[key]) if saved[key].get(k) != current[key].get(k))
                detail = f" ({', '.join(f'{key}.{k}: {saved[key].get(k)!r} -> {current[key].get(k)!r}' for k in diff[:3])})"
            raise ConfigError(f"{where} belongs to another run: `{key}` differs{detail}; choose another run_dir or restore the settings")


def official_names(arch: ArchConfig, root: Path) -> tuple[str, str]:
    """W&B project `<Dataset basename capitalized>-ACT-torch` and run `<ClassName> <slug>`."""
    import coolname  # noqa: PLC0415

    cls = get_arch(arch.name).official_names[0].split("@")[-1]
    return f"{root.name.capitalize()}-ACT-torch", f"{cls} {coolname.generate_slug(2)}"


# --- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """Owns the model, optimizers, EMA, sampler, carry and run directory of one training run."""

    def __init__(self, cfg: PretrainConfig, info: rdist.DistInfo, run_dir: Path, data_root: Path, resume: tuple[Path, dict] | None):
        self.cfg, self.info, self.run_dir, self.data_root = cfg, info, run_dir, data_root
        self.device = info.device
        arch = cfg.arch
        self.copies = cfg.augment.copies
        self.global_batch = cfg.global_batch_size * self.copies  # trajectories per global step

        self.model: ACTLossHead = build_model(arch).to(self.device)
        self.model.train()
        self._broadcast_from_rank0()
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if arch.puzzle_emb_ndim > 0:  # official order: sparse first, then AdamATan2
            self.optimizers["sparse"] = SparseEmbeddingSignSGD(
                self.model.model.puzzle_emb.buffers(), lr=0.0, weight_decay=cfg.optim.puzzle_emb_weight_decay, world_size=info.world_size
            )
        self.optimizers["adam"] = AdamATan2(
            self.model.parameters(), lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2), weight_decay=cfg.optim.weight_decay, fused=cfg.optim.fused
        )
        self.base_lrs = {"sparse": cfg.optim.puzzle_emb_lr, "adam": cfg.optim.lr}
        self.ema = EMA(self.model.model, cfg.optim.ema_rate) if cfg.optim.ema else None
        self.augmenter = TrajectoryAugmenter(cfg.augment, cfg.global_batch_size // info.world_size, self.device, seed=cfg.seed * 1_000_003 + 7919 * (info.rank + 1))
        self.augmenter.install(self.model.model)
        self.flosser = Flosser(cfg.regularize, cfg.global_batch_size // info.world_size * self.copies, cfg.seed, info.rank, info.world_size)
        self.forward = compile_training(self.model, cfg.launcher.compile, cfg.launcher.compile_scope)

        meta = read_metadata(data_root, "train")
        # Validation split (training/validation.py): held-out train groups choose best.pt.
        self.val_groups = holdout_groups(data_root, cfg.data.val_n, cfg.seed) if cfg.data.val_n else None
        self.val_index = first_examples(data_root, self.val_groups) if self.val_groups is not None else None
        train_groups = meta.total_groups - (len(self.val_groups) if self.val_groups is not None else 0)
        self.total_steps = int(cfg.epochs * train_groups * meta.mean_puzzle_examples / cfg.global_batch_size)
        self.total_iters = math.ceil(cfg.epochs / cfg.data.epochs_per_iter)
        loader_cfg = LoaderConfig(
            seed=cfg.seed, global_batch_size=cfg.global_batch_size, epochs_per_iter=cfg.data.epochs_per_iter,
            rank=info.rank, world_size=info.world_size, test_set_mode=False,
            exclude_groups=tuple(int(g) for g in self.val_groups) if self.val_groups is not None else (),
        )
        self.loader = PuzzleDataset(str(data_root), "train", loader_cfg)
        eval_meta = read_metadata(data_root, cfg.data.eval_split)
        self.eval_set = "+".join(eval_meta.sets)
        self.select_set = "val" if self.val_index is not None else self.eval_set  # what best.pt follows

        self.signals: StopSignals | None = None
        self.step = 0
        self.iters_done = 0
        self.loader_state = self.loader.state_dict()  # sampler position after the last batch trained on
        self.carry: ACTCarry | None = None
        self.best: dict[str, Any] = {"exact_accuracy": None, "step": None}
        self.elapsed_before = 0.0
        self.last_saved_step = self.last_eval_step = -1
        self.stop_step = 0  # set by fit
        self.window: torch.Tensor | None = None  # train metric sums since the last read (device)
        self.window_steps = 0
        self.window_keys: list[str] = []
        self.config = config_dict(cfg)
        self.manifest: dict[str, Any] = {}
        if resume is not None:
            self._restore(*resume)

    # --- state ----------------------------------------------------------------------------------
    def _broadcast_from_rank0(self) -> None:
        if rdist.is_distributed():
            with torch.no_grad():
                for t in list(self.model.parameters()) + list(self.model.buffers()):
                    torch.distributed.broadcast(t.data, src=0)

    def save(self, best: bool = False) -> Path | None:
        """Collective: gather per-rank state to rank 0 (CPU tensors, through the CPU group), which
        writes the checkpoint atomically. A failure on any rank, in either half, stops every rank."""
        with rdist.fail_together("checkpoint save"):
            rdist.inject_fault("save")
            rank_state = {
                "rng": ts.capture_rng(self.device),
                "carry": ts.carry_to_state(self.carry),
                "augment": self.augmenter.state_dict() if self.augmenter.enabled else None,
            }
        gathered = rdist.gather_object(rank_state)
        self.last_saved_step = self.step
        path = None
        with rdist.fail_together("checkpoint save"):  # also the barrier: every rank waits for the file
            if self.info.is_main:
                path = self._write_checkpoint(gathered, best)
        return path

    def _write_checkpoint(self, gathered: list[dict[str, Any]], best: bool) -> Path:
        """Rank 0: the checkpoint payload (model, EMA, optimizers, sampler, every rank's RNG and
        carry) written atomically as the step file, last.pt and, when `best`, best.pt."""
        payload = {
            "format": FORMAT,
            "version": ts.VERSION,
            "arch": dataclasses.asdict(self.cfg.arch),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.model.state_dict().items()},
            "ema": {k: v.detach().cpu().clone() for k, v in self.ema.shadow.items()} if self.ema else None,
            "step": self.step,
            "config": self.config,
            "manifest": self.manifest,
            "train": {
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "ema_decay": self.ema.decay if self.ema else None,
                "loader": self.loader_state,
                "iters_done": self.iters_done,
                "rng": [g["rng"] for g in gathered],
                "carry": [g["carry"] for g in gathered],
                "augment": [g["augment"] for g in gathered],
                "world_size": self.info.world_size,
                "best": dict(self.best),
                "elapsed_seconds": self.elapsed(),
            },
        }
        return ts.save_checkpoint(self.run_dir, payload, self.cfg.keep_last_checkpoints, best=best)

    def _restore(self, path: Path, payload: dict[str, Any]) -> None:
        check_same_run(payload["config"], self.config, f"checkpoint {path}")
        train = payload["train"]
        self.model.model.load_state_dict(payload["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(train["optimizers"][name])
        if self.ema is not None:
            self.ema.load_state_dict({"decay": train["ema_decay"], "shadow": payload["ema"]})
        self.loader.load_state_dict(train["loader"])
        self.step = self.last_saved_step = int(payload["step"])
        self.iters_done = int(train["iters_done"])
        self.loader_state = self.loader.state_dict()
        self.best = dict(train["best"])
        self.elapsed_before = float(train["elapsed_seconds"])
        rank, world = self.info.rank, self.info.world_size
        if train["world_size"] == world:
            ts.restore_rng(train["rng"][rank], self.device)
            if train["augment"][rank] is not None:
                self.augmenter.load_state_dict(train["augment"][rank])
        else:
            log.warning("checkpoint was written by %d ranks, resuming with %d: random streams are reseeded (not bit-exact)", train["world_size"], world)
            torch.manual_seed(self.cfg.seed + rank + 7 * self.step)
        self.carry = ts.carry_from_state(ts.reshard_carries(train["carry"], world)[rank], self.device)
        log.info("resumed from %s at step %d", path, self.step)

    # --- steps ----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_start)

    def batches(self) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Loader batches until the configured number of sampler iterations is done, each with
        the sampler position right after it ({"loader", "iters_done"}, what a checkpoint taken
        after training on it records). Runs ahead in the prefetch thread (training/prefetch.py)."""
        iters_done = self.iters_done
        while iters_done < self.total_iters:
            for _set_name, batch, _n in self.loader:
                yield batch, {"loader": self.loader.state_dict(), "iters_done": iters_done}
            iters_done += 1

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on this rank's slice; returns the stop flags ("_stop", "_interrupt",
        summed over ranks) and, when the step ends a metrics window, the window's global train
        metrics (per-step means; every rank)."""
        self.step += 1
        self.augmenter.step = self.step
        batch = self.augmenter.replicate({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
        with rdist.fail_together(f"training step {self.step}"):
            rdist.inject_fault("step")
            if self.carry is None:
                self.carry = self.model.initial_carry(batch)
            if self.augmenter.enabled:  # noise drawn here, outside torch.compile (tensors in, no step guard)
                self.augmenter.prepare(self.carry)
            self.carry, loss, metrics, _, _ = self.forward(self.carry, batch)
            (loss / self.global_batch).backward()
            self.flosser.backward(self.model.model.inner, self.carry, self.step)  # regularize=flossing only
        rdist.all_reduce_sum_([p.grad for p in self.model.parameters() if p.grad is not None])

        # Stop flags are host values, summed over ranks every step through the CPU group (no device
        # sync); the metrics add up on the device and are read (one sync) at the end of a window.
        over_time = self.cfg.max_train_seconds is not None and self.info.is_main and self.elapsed() > self.cfg.max_train_seconds
        interrupted = self.signals is not None and self.signals.received is not None
        flags = torch.tensor([float(over_time), float(interrupted)], dtype=torch.float64)
        if rdist.is_distributed():
            torch.distributed.all_reduce(flags, group=rdist.cpu_group())
        stop, interrupt = flags.tolist()
        keys = sorted(metrics)
        values = torch.stack([metrics[k].detach().to(torch.float64) for k in keys] + [loss.detach().to(torch.float64)])
        self.window = values if self.window is None else self.window + values
        self.window_steps += 1
        self.window_keys = keys + ["loss"]
        sync = self.window_ends(stop + interrupt > 0)
        if sync:
            sums = self.read_window()
        lrs = {}
        for name, opt in self.optimizers.items():
            lrs[name] = apply_lr_schedule(
                opt, self.step, base_lr=self.base_lrs[name], warmup_steps=self.cfg.optim.lr_warmup_steps,
                total_steps=self.total_steps, min_ratio=self.cfg.optim.lr_min_ratio,
            )
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model.model)

        out: dict[str, float] = {}
        if sync:  # window means: losses per trajectory, accuracies per halted example
            count = max(sums["count"], 1e-12)
            out = {f"train/{k}": (v / self.global_batch if k.endswith("loss") else v / count) for k, v in sums.items() if k != "count"}
            out["train/count"] = sums["count"]
            out["train/lr"] = lrs["adam"]
        out.update(self.flosser.metrics())  # train/floss_* (collective when the term ran)
        out["_stop"] = stop
        out["_interrupt"] = interrupt
        if self.augmenter.enabled:  # perturbation the model received, over this logging window
            out.update(self.augmenter.window_metrics(end_window=sync))
        return out

    def read_window(self) -> dict[str, float]:
        """Sum the window's train metrics over ranks and read them (the device sync): per-step
        means, keyed as the loss head names them plus "loss". DivergenceError when the loss was
        not finite in it; with a one-step window that is before the step's update."""
        rdist.all_reduce_sum_([self.window])
        sums = dict(zip(self.window_keys, (self.window / self.window_steps).tolist()))
        first, self.window, self.window_steps = self.step - self.window_steps + 1, None, 0
        if not math.isfinite(sums["loss"]):
            kept = ts.checkpoint_dir(self.run_dir) / ts.checkpoint_name(self.last_saved_step) if self.last_saved_step > 0 else None
            when = (f"at step {self.step}; training stopped before the update" if first == self.step else
                    f"in steps {first}..{self.step}; training stopped at step {self.step} (the weights in memory are not saved)")
            raise DivergenceError(
                f"non-finite loss ({sums['loss']}) {when}, "
                + (f"the last good checkpoint is {kept} (also last.pt)" if kept else "no checkpoint was written yet")
                + "; lower optim.lr or check the data"
            )
        return sums

    def window_ends(self, stopping: bool) -> bool:
        """Whether this step reads the train metrics (a device sync): every `log_interval` steps,
        at the last step, before an evaluation or checkpoint (a non-finite loss is caught before
        anything is saved), and when the run stops."""
        cfg, step = self.cfg, self.step
        return (stopping or step % cfg.log_interval == 0 or step >= self.stop_step
                or any(interval and step % interval == 0 for interval in (cfg.eval_interval, cfg.checkpoint_interval)))

    def evaluate(self, test: bool = False, model: ACTLossHead | None = None) -> dict[str, Any]:
        """Evaluate the (EMA) weights on the selection set: the validation examples when
        `data.val_n` is set, else the eval split; `test=True` forces the eval split. `model`: other
        weights to evaluate as they are (best.pt's). Rank 0 gets the metrics, others {}."""
        on_val = self.val_index is not None and not test
        split, index = ("train", self.val_index) if on_val else (self.cfg.data.eval_split, None)
        opts = EvalOptions(batch_size=self.cfg.data.eval_batch_size, n=None if on_val else self.cfg.data.eval_n, keep_logits=False,
                           compile=self.cfg.launcher.compile and self.cfg.launcher.compile_scope == "step")
        swap = self.ema.swapped(self.model.model) if self.ema and model is None else contextlib.nullcontext()
        with swap:
            result = evaluate_split(model or self.model, self.data_root, split, opts, self.device, self.info, progress=self.cfg.progress, index=index)
        self.model.train()
        return result.metrics

    def best_model(self) -> ACTLossHead:
        """A copy of the model holding best.pt's evaluation weights (its EMA shadow when kept)."""
        path = ts.checkpoint_dir(self.run_dir) / "best.pt"
        payload = ts.read_train_checkpoint(path)
        state = dict(payload["model"])
        state.update(payload["ema"] or {})
        model = copy.deepcopy(self.model)
        model.model.load_state_dict(state)
        return model

    def test_final_and_best(self, sink: MetricsSink) -> dict[str, dict[str, Any]]:
        """The eval split scored with the final weights and with best.pt's (chosen on validation),
        logged as test/final/* and test/best_on_val/*, written to eval/test_{final,best_on_val}.json."""
        final = self.evaluate(test=True)
        with rdist.fail_together("loading best.pt"):
            model = self.best_model()
        best = self.evaluate(test=True, model=model)
        out = {"final": final, "best_on_val": best}
        with rdist.fail_together("evaluation"):
            if self.info.is_main:
                steps = {"final": self.step, "best_on_val": self.best["step"]}
                for label, metrics in out.items():
                    sink.log({f"test/{label}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.step)
                    atomic_write_text(self.run_dir / "eval" / f"test_{label}.json",
                                      OmegaConf.to_yaml({"split": self.cfg.data.eval_split, "weights_step": steps[label], **metrics}))
                log.info("test (%s): final step %d exact %.4f | best on validation, step %s: exact %.4f", self.eval_set, self.step,
                         final.get("exact_accuracy", float("nan")), self.best["step"], best.get("exact_accuracy", float("nan")))
        return out

    # --- the loop -------------------------------------------------------------------------------
    def fit(self, sink: MetricsSink) -> TrainResult:
        """Train until the epochs, `max_steps` or `max_train_seconds` run out; evaluate and
        checkpoint on their intervals and once more at the end. SIGINT/SIGTERM finish the step
        in flight, write a checkpoint and raise InterruptedRun with the command that resumes."""
        cfg = self.cfg
        stop_step = self.stop_step = min(self.total_steps, cfg.max_steps or self.total_steps)
        self.t_start = time.perf_counter()
        train_metrics: dict[str, float] = {}
        eval_metrics: dict[str, Any] = {}
        bar = rank0_tqdm(total=stop_step, initial=self.step, desc="train", disable=not cfg.progress)
        last_t, last_step = time.perf_counter(), self.step
        prefetch = Prefetcher(self.batches(), depth=2, pin_memory=self.device.type == "cuda")
        with StopSignals() as self.signals, contextlib.closing(prefetch):
            while self.step < stop_step:
                item = next(prefetch, None)  # fetched ahead; its sampler position is recorded on use (exact resume)
                if item is None:
                    break
                self.loader_state, self.iters_done = item.state["loader"], item.state["iters_done"]
                train_metrics = self.train_step(item.batch)
                bar.update(1)
                if "train/loss" in train_metrics:  # the step closed a metrics window
                    now = time.perf_counter()
                    train_metrics["train/examples_per_s"] = (self.step - last_step) * cfg.global_batch_size / max(now - last_t, 1e-9)
                    last_t, last_step = now, self.step
                    sink.log({k: v for k, v in train_metrics.items() if not k.startswith("_")}, step=self.step)
                    bar.set_postfix(loss=f"{train_metrics['train/loss']:.3f}", exact=f"{train_metrics['train/exact_accuracy']:.3f}", refresh=False)
                if train_metrics["_interrupt"] > 0:  # summed over ranks: all of them save together
                    bar.close()
                    path = self.save() if self.last_saved_step != self.step else ts.checkpoint_dir(self.run_dir) / ts.checkpoint_name(self.step)
                    raise InterruptedRun(f"interrupted at step {self.step}; checkpoint {path} written; continue with: {resume_command(self.run_dir)}")
                if train_metrics["_stop"] > 0:
                    log.info("max_train_seconds=%s reached at step %d", cfg.max_train_seconds, self.step)
                    break
                improved = False
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step != stop_step:
                    eval_metrics, improved = self._eval_and_log(sink)
                if improved or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    self.save(best=improved)
        bar.close()
        if self.window is not None:  # the sampler ran out inside a window: check it before saving
            self.read_window()
        if self.step == 0:
            raise DatasetError(f"the sampler yielded no training batch from {self.data_root}")
        improved = False
        if self.last_eval_step != self.step:
            eval_metrics, improved = self._eval_and_log(sink)
        if self.last_saved_step != self.step:
            self.save(best=improved)
        elif improved and self.info.is_main:
            ts.mark_best(self.run_dir, self.step)
        test_metrics = self.test_final_and_best(sink) if self.val_index is not None else {}
        train_metrics.pop("_stop", None)
        train_metrics.pop("_interrupt", None)
        return TrainResult(self.run_dir, self.step, train_metrics, eval_metrics, self.best["exact_accuracy"], test_metrics)

    def _eval_and_log(self, sink: MetricsSink) -> tuple[dict[str, Any], bool]:
        """Evaluate, log eval/<set>/<metric>, write eval/step_N.json; returns (metrics, improved)."""
        metrics = self.evaluate()
        self.last_eval_step = self.step
        improved = False
        with rdist.fail_together("evaluation"):
            if self.info.is_main:
                improved = self._record_eval(sink, metrics)
        improved, self.best = rdist.broadcast_object((improved, self.best))
        return metrics, improved

    def _record_eval(self, sink: MetricsSink, metrics: dict[str, Any]) -> bool:
        """Rank 0: log and write the evaluation, update the best score; returns whether it improved."""
        sink.log({f"eval/{self.select_set}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.step)
        atomic_write_text(self.run_dir / "eval" / f"step_{self.step:07d}.json", OmegaConf.to_yaml({"step": self.step, **metrics}))
        exact = metrics.get("exact_accuracy")
        improved = exact is not None and (self.best["exact_accuracy"] is None or exact > self.best["exact_accuracy"])
        if improved:
            self.best = {"exact_accuracy": exact, "step": self.step}
        log.info("step %d eval: exact %.4f token %.4f (best %.4f at step %s)", self.step, metrics.get("exact_accuracy", float("nan")), metrics.get("token_accuracy", float("nan")), self.best["exact_accuracy"] or 0.0, self.best["step"])
        return improved


# --- entry ---------------------------------------------------------------------------------------

def resolve_run_dir(cfg: PretrainConfig, info: rdist.DistInfo, hydra_dir: str | None) -> Path:
    """cfg.run_dir, else Hydra's output dir, as rank 0 sees it (`${now:}` differs per process)."""
    mine = Path(cfg.run_dir or hydra_dir or "outputs/train/run")
    chosen = Path(rdist.broadcast_object(str(mine)))
    if chosen != mine and mine.is_dir() and not any(mine.iterdir()):
        mine.rmdir()  # the empty folder Hydra made for this rank's own timestamp
    if chosen.exists() and not chosen.is_dir():
        raise ConfigError(f"run_dir {chosen} is a file, not a directory")
    return chosen


def take_run_lock(run_dir: Path, info: rdist.DistInfo) -> DirectoryLock | None:
    """Rank 0 locks the run directory (one writer per run); every rank raises when it is taken."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = DirectoryLock(run_dir, "training run").acquire()
        except UserError as e:
            error = str(e)
    error = rdist.broadcast_object(error)
    if error:
        raise ConfigError(error)
    return lock


def checkpoint_size_estimate(model: torch.nn.Module) -> int:
    """Bytes a full checkpoint may take: the weights four times (weights, two AdamATan2 moments,
    the EMA copy), an upper bound checked against the free space before the first step."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def data_change(resume: tuple[Path, dict] | None, manifest: dict[str, Any], allowed: bool) -> str | None:
    """Why resuming on this dataset is refused (None when it is the checkpoint's, or allowed)."""
    if resume is None:
        return None
    saved = ((resume[1].get("manifest") or {}).get("dataset") or {})
    now = manifest["dataset"]
    if not saved.get("sha256") or saved["sha256"] == now["sha256"]:
        return None
    changed = sorted(k for k in set(saved.get("files", {})) | set(now["files"]) if saved.get("files", {}).get(k) != now["files"].get(k))
    detail = ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")
    if allowed:
        log.warning("dataset %s changed since checkpoint %s (%s); continuing as allow_data_change=true asks", now["path"], resume[0], detail)
        return None
    return (f"dataset {now['path']} changed since checkpoint {resume[0]} was written ({detail} differ); "
            f"resume on the original data, start a fresh run_dir, or pass allow_data_change=true to continue on the new data")


def find_resume(cfg: PretrainConfig, run_dir: Path) -> tuple[Path, dict] | None:
    """What to resume from, after checking the run dir is not another run's.

    A directory whose run never wrote a checkpoint (it failed or was killed before its first
    save) has nothing to lose or resume: it is started again in place, with a warning.
    """
    if cfg.resume in NO_RESUME:
        if ts.list_checkpoints(run_dir):
            raise ConfigError(f"run directory {run_dir} already holds a run; pass resume=auto to continue it or choose another run_dir")
        if (run_dir / "config.yaml").exists():
            log.warning("run directory %s holds a run that saved no checkpoint; starting it again in place", run_dir)
        return None
    if cfg.resume == "auto":
        found = ts.find_resume_checkpoint(run_dir)
        if found is None and ts.list_checkpoints(run_dir):
            raise CheckpointError(f"no readable checkpoint in {run_dir / 'checkpoints'}; every file failed to load (see warnings)")
        if found is None and (run_dir / "config.yaml").exists():
            log.warning("run directory %s holds no checkpoint to resume; starting the run again in place", run_dir)
        return found
    path = Path(cfg.resume).expanduser()
    return path, ts.read_train_checkpoint(path)


def run(cfg: PretrainConfig, hydra_dir: str | None = None) -> TrainResult:
    """Train as configured; under torchrun every rank calls this. Returns rank 0's summary."""
    cfg.validate()
    if cfg.launcher.from_slurm:
        torchrun_env_from_slurm()
    info = rdist.init_distributed(rdist.resolve_device(cfg.launcher.device), cfg.launcher.dist_timeout_minutes)
    was_deterministic, was_matmul = torch.are_deterministic_algorithms_enabled(), get_cpu_matmul()
    lock: DirectoryLock | None = None
    try:
        set_determinism(cfg.launcher.deterministic)
        matmul_line = set_cpu_matmul(cfg.launcher.cpu_matmul)
        torch.manual_seed(cfg.seed + info.rank)
        np.random.seed(cfg.seed + info.rank)
        if cfg.launcher.expected_world_size and cfg.launcher.expected_world_size != info.world_size:
            log.warning("this recipe expects %d ranks, running with %d (the global batch stays %d)", cfg.launcher.expected_world_size, info.world_size, cfg.global_batch_size)
        run_dir = resolve_run_dir(cfg, info, hydra_dir)
        lock = take_run_lock(run_dir, info)
        resume = find_resume(cfg, run_dir)
        data_root = prepare_data(cfg, info)
        derive_arch(cfg, data_root, info.world_size)
        if cfg.logger.project is None or cfg.logger.name is None:
            saved = resume[1]["config"]["logger"] if resume else {}
            project, name = rdist.broadcast_object(official_names(cfg.arch, data_root))
            cfg.logger.project = cfg.logger.project or saved.get("project") or project
            cfg.logger.name = cfg.logger.name or saved.get("name") or name
        cfg.logger = dashboard_config(cfg.logger, "train", group=cfg.experiment_name or cfg.logger.name)
        trainer = Trainer(cfg, info, run_dir, data_root, resume)
        problem = None
        with rdist.fail_together("hashing the dataset"):  # rank 0 may take minutes; the others wait on gloo
            if info.is_main:  # hash the dataset (cached) and compare it with the resumed checkpoint's
                trainer.manifest = build_manifest(config=trainer.config, dataset_dir=data_root, device=str(info.device))
                if trainer.val_groups is not None:
                    trainer.manifest["validation"] = {"source_split": "train", "n_groups": len(trainer.val_groups), "seed": cfg.seed,
                                                      "groups": trainer.val_groups.tolist()}
                problem = data_change(resume, trainer.manifest, cfg.allow_data_change) or free_space_problem(
                    run_dir, checkpoint_size_estimate(trainer.model), "a checkpoint (weights, optimizer moments, EMA)")
        problem = rdist.broadcast_object(problem)
        if problem:
            raise ConfigError(problem)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            ts.remove_stale_temporaries(run_dir)
            if cfg.resume not in NO_RESUME:
                # Records logged after the checkpoint (or by a run killed before its first one).
                ts.trim_metrics(run_dir, trainer.step if resume else -1)
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(trainer.config))
            write_manifest(run_dir, trainer.manifest)
            log.info("run dir %s | %s | %d parameters | device %s x%d | dtype %s | git %s%s", run_dir, cfg.arch.name, trainer.num_params, info.device, info.world_size,
                     cfg.arch.forward_dtype, trainer.manifest["git"]["commit"][:10], " (dirty)" if trainer.manifest["git"]["dirty"] else "")
            log.info("optimizer: %s | %s | compile %s", trainer.optimizers["adam"].describe_path(), matmul_line,
                     cfg.launcher.compile_scope if cfg.launcher.compile else "off")
        with MetricsSink(run_dir, cfg.logger, info.is_main, config=trainer.config) as sink:
            sink.update_config({"num_params": trainer.num_params, "world_size": info.world_size})
            if not resume:
                sink.log({"num_params": trainer.num_params}, step=0)
            return trainer.fit(sink)
    finally:
        if lock is not None:
            lock.release()
        torch.use_deterministic_algorithms(was_deterministic)
        set_cpu_matmul(was_matmul)
        rdist.cleanup()
