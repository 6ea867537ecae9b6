"""Explicit registry of architectures: name -> (config class, core class).

The concrete architectures are registered by `archs.py` (this package never imports `trm` or
`hrm`); code that builds or loads a model imports `archs` once. `build_model` turns an `ArchConfig` into the official module tree
ACTLossHead(model=ACTModel(inner=<Core>)).
"""
from __future__ import annotations

from dataclasses import dataclass

from model_core.act import ACTModel
from model_core.config import ArchConfig
from model_core.core import RecurrentCore
from model_core.losses import ACTLossHead
from runtime.errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    config_cls: type[ArchConfig]
    core_cls: type[RecurrentCore]
    official_names: tuple[str, ...]  # values of `arch.name` in official all_config.yaml files


ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> None:
    ARCHS[spec.name] = spec


def get_arch(name: str) -> ArchSpec:
    for spec in ARCHS.values():
        if name == spec.name or name in spec.official_names:
            return spec
    raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS)) or 'none registered (import archs)'}")


def build_model(config: ArchConfig) -> ACTLossHead:
    """Model in the official wrapping (state-dict keys `model.inner.*`)."""
    spec = get_arch(config.name)
    return ACTLossHead(ACTModel(spec.core_cls(config)), config.loss_type)
