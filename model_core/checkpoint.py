"""Checkpoint I/O: official TRM/HRM run files, this project's own format, and export.

Official layout: a run directory with `step_N` files (a bare state dict, keys
`[_orig_mod.][model.]inner.*`) and `all_config.yaml` beside them. Our format is one dict with
`format: "rrdyn"` holding the arch config, the raw weights (`inner.*` keys), the EMA weights and the
training state. Loading is strict and reports every missing / unexpected key and every shape
mismatch in one message; files are always read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

from model_core.act import ACTModel
from model_core.config import ArchConfig
from model_core.losses import ACTLossHead
from model_core.registry import build_model, get_arch
from runtime.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "rrdyn"
OFFICIAL_PREFIX = "_orig_mod.model."
STEP_RE = re.compile(r"^step_(\d+)(?:\.pt)?$")
OFFICIAL_SINGLE_FILE = "checkpoint"  # the published HRM checkpoints: one file named `checkpoint`


@dataclass
class LoadedCheckpoint:
    """A model ready for inference plus where it came from."""

    model: ACTLossHead
    arch: ArchConfig
    path: Path
    step: int
    kind: str  # "official" or "rrdyn"
    extra: dict[str, Any]
    native_dtype: str = ""  # the forward dtype the checkpoint was trained in (before `overrides`)


# --- reading ---------------------------------------------------------------------------------------

def pick_checkpoint_file(names: Iterable[str]) -> str | None:
    """Which of a folder's file names to load: the newest `step_N[.pt]`, else an official HRM
    `checkpoint` file (the published HRM repos), else None."""
    names = list(names)
    steps = sorted((int(m.group(1)), name) for name in names if (m := STEP_RE.match(name)))
    if steps:
        return steps[-1][1]
    return OFFICIAL_SINGLE_FILE if OFFICIAL_SINGLE_FILE in names else None


def resolve_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file to load for `path`.

    - a file: itself;
    - a folder: `pick_checkpoint_file` of its files, else of its `checkpoints/` subfolder (one of
      our training run directories);
    - `hf://OWNER/REPO[/PATH][@REVISION]`: downloaded and cached by `runtime.hub`, with
      the `all_config.yaml` beside it.
    """
    if isinstance(path, str) and path.startswith("hf://"):
        from runtime.hub import fetch_checkpoint  # noqa: PLC0415 (imports huggingface_hub)

        return fetch_checkpoint(path, pick_checkpoint_file)
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        for folder in (p, p / "checkpoints"):
            if folder.is_dir():
                chosen = pick_checkpoint_file(f.name for f in folder.iterdir() if f.is_file())
                if chosen is not None:
                    return folder / chosen
        raise CheckpointError(f"checkpoint directory {p} holds no step_N file (nor checkpoints/step_N, nor an official `checkpoint` file)")
    return p


def read_state_file(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into one readable line.

    A file that names Python code to run (a pickled class or function, which weights_only
    refuses) is reported as such, never as corrupt; nothing in it is executed.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _UNSAFE_GLOBAL.search(str(e))
        if code:
            raise CheckpointError(f"refusing to unpickle code from {path}: it references {code.group(1)}, "
                                  "which a checkpoint of weights never needs; load it only if you trust its source") from None
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_sentence(e)}") from None
    except Exception as e:  # noqa: BLE001 (any failure to unpickle means the file is not a checkpoint)
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_sentence(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return obj


_UNSAFE_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+)")


def _first_sentence(exc: BaseException) -> str:
    """The first line of an exception's message, cut at a sentence end (never mid-sentence)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) > 200:
        end = text.find(". ", 0, 200)
        text = text[: end + 1] if end > 0 else text
    return text


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip any `_orig_mod.` (torch.compile) and the `model.` loss-head prefix -> `inner.*` keys."""
    out = {}
    for key, value in state.items():
        while key.startswith("_orig_mod."):
            key = key[len("_orig_mod.") :]
        if key.startswith("model."):
            key = key[len("model.") :]
        out[key] = value
    return out


def official_arch_config(arch: dict[str, Any], state: dict[str, torch.Tensor], seq_len: int | None, source: Path) -> ArchConfig:
    """Map an official `arch:` section + the weights to our config, inferring data-derived sizes."""
    arch = dict(arch)
    spec = get_arch(str(arch.pop("name", "")))
    loss = arch.pop("loss", None) or {}
    if isinstance(loss, dict) and "loss_type" in loss:
        arch["loss_type"] = loss["loss_type"]
    field_names = {f.name for f in dataclasses.fields(spec.config_cls)}
    ignored = sorted(k for k in arch if k not in field_names)
    if ignored:
        log.info("ignoring official arch keys the model does not use: %s", ", ".join(ignored))
    kwargs = {k: v for k, v in arch.items() if k in field_names}
    cfg = spec.config_cls(**kwargs)
    if "inner.embed_tokens.embedding_weight" not in state:
        raise CheckpointError(f"{source} has no inner.embed_tokens.embedding_weight: not a TRM/HRM checkpoint")
    cfg.vocab_size = int(state["inner.embed_tokens.embedding_weight"].shape[0])
    if "inner.puzzle_emb.weights" in state:
        cfg.num_puzzle_identifiers = int(state["inner.puzzle_emb.weights"].shape[0])
    inferred = _infer_seq_len(cfg, state)
    if seq_len and inferred and seq_len != inferred:
        raise CheckpointError(f"{source} was trained on sequences of length {inferred}, the dataset has {seq_len}")
    cfg.seq_len = seq_len or inferred or 0
    if cfg.seq_len <= 0:
        raise CheckpointError(f"cannot tell the sequence length of {source}: pass a dataset (data_path) so it can be read from dataset.json")
    cfg.validate()
    return cfg


def _infer_seq_len(cfg: ArchConfig, state: dict[str, torch.Tensor]) -> int | None:
    P = cfg.puzzle_emb_positions
    for key, value in state.items():
        if key.endswith("mlp_t.gate_up_proj.weight"):
            return int(value.shape[1]) - P
    if "inner.embed_pos.embedding_weight" in state:
        return int(state["inner.embed_pos.embedding_weight"].shape[0]) - P
    return None


def check_state_fits(model: ACTModel, state: dict[str, torch.Tensor], source: Path, arch: ArchConfig) -> None:
    """Raise one CheckpointError naming every missing/unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {few(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches (checkpoint vs config): {few(mismatched)}")
    raise CheckpointError(f"{source} does not fit arch {arch.name} (hidden {arch.hidden_size}, seq_len {arch.seq_len}): " + "; ".join(parts))


def load_state_into(model: ACTModel, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors into the model, converting dtypes (H_init/L_init follow the forward dtype)."""
    with torch.no_grad():
        own = model.state_dict()
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """CheckpointError naming the first floating-point tensor with a NaN or Inf entry."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source} holds non-finite weights: {key} has {bad} NaN/Inf of {value.numel()} entries "
                                  "(a diverged run?); pick an earlier checkpoint, or pass allow_non_finite=true to inspect it")


def load_checkpoint(
    path: str | Path,
    *,
    seq_len: int | None = None,
    overrides: dict[str, Any] | None = None,
    use_ema: bool = True,
    device: torch.device | str = "cpu",
    allow_non_finite: bool = False,
) -> LoadedCheckpoint:
    """Load an official `step_N` file (or run directory) or one of our checkpoints for inference.

    `seq_len` comes from the dataset when the weights cannot tell it; `overrides` replace arch
    fields that do not change shapes (e.g. forward_dtype, halt_max_steps). The model is in eval mode.
    Weights holding NaN or Inf are refused (CheckpointError naming the tensor): every number a
    model with them produces is meaningless. `allow_non_finite=True` loads them for inspection.
    """
    file = resolve_checkpoint_path(path)
    raw = read_state_file(file)
    if raw.get("format") == FORMAT:
        arch_dict = dict(raw["arch"])
        spec = get_arch(arch_dict["name"])
        arch = spec.config_cls(**arch_dict)
        state = normalize_keys(raw["model"])
        if use_ema and raw.get("ema"):
            state.update(normalize_keys(raw["ema"]))
        kind, step, extra = FORMAT, int(raw.get("step", 0)), {k: raw[k] for k in ("config", "manifest") if k in raw}
        if seq_len is not None and seq_len != arch.seq_len:
            raise CheckpointError(f"{file} was trained on sequences of length {arch.seq_len}, the dataset has {seq_len}")
    else:
        if not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(f"{file} is neither an official state dict nor an rrdyn checkpoint")
        config_file = file.parent / "all_config.yaml"
        if not config_file.exists():
            raise CheckpointError(f"official checkpoint {file} needs all_config.yaml beside it ({config_file} not found)")
        try:
            all_config = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f"{config_file} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(all_config, dict) or not isinstance(all_config.get("arch"), dict):
            raise CheckpointError(f"{config_file} has no `arch:` section")
        state = normalize_keys(raw)
        arch = official_arch_config(all_config["arch"], state, seq_len, file)
        m = STEP_RE.match(file.name)
        kind, step, extra = "official", int(m.group(1)) if m else 0, {"all_config": all_config}
    native_dtype = arch.forward_dtype
    for key, value in (overrides or {}).items():
        if not hasattr(arch, key):
            raise CheckpointError(f"unknown arch override {key!r}")
        setattr(arch, key, value)
    arch.validate()
    model = build_model(arch)
    check_state_fits(model.model, state, file, arch)
    if not allow_non_finite:
        check_finite(state, file)
    load_state_into(model.model, state)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, arch=arch, path=file, step=step, kind=kind, extra=extra, native_dtype=native_dtype)


# --- writing ---------------------------------------------------------------------------------------

def official_arch_dict(arch: ArchConfig) -> dict[str, Any]:
    """Our arch config in the official `all_config.yaml` `arch:` schema."""
    spec = get_arch(arch.name)
    d = dataclasses.asdict(arch)
    for key in ("name", "vocab_size", "seq_len", "num_puzzle_identifiers", "batch_size", "loss_type"):
        d.pop(key)
    if spec.name == "trm":
        d["H_layers"] = 0  # present (and ignored) in the official TRM config
    return {"name": spec.official_names[0], "loss": {"name": "losses@ACTLossHead", "loss_type": arch.loss_type}, **d}


def export_official(model: ACTModel, arch: ArchConfig, out_dir: str | Path, step: int, extra_config: dict[str, Any] | None = None) -> Path:
    """Write `out_dir/step_<step>` (keys `_orig_mod.model.inner.*`, as official compiled training
    saves them) and `out_dir/all_config.yaml`, loadable by the official code and by this project."""
    from runtime.atomic import atomic_torch_save, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {OFFICIAL_PREFIX + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    target = out / f"step_{step}"
    atomic_torch_save(target, state)
    config = {"arch": official_arch_dict(arch), **(extra_config or {})}
    atomic_write_text(out / "all_config.yaml", yaml.safe_dump(config, sort_keys=True))
    return target
