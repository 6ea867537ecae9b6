"""The architectures this project trains and studies: the one module that imports the model packages.

Importing it registers every `ArchSpec` in `model_core.registry`, so a config's `arch.name` (ours or
an official `all_config.yaml` name) resolves to its config class and core, and `training.config`
registers one Hydra schema per entry (`arch/schema_<name>`). Adding an architecture is one package
(a config dataclass, a `RecurrentCore` subclass and its `SPEC`) plus one line in `SPECS`.
"""
from __future__ import annotations

import hrm
import trm
from model_core.registry import ArchSpec, register_arch

SPECS: tuple[ArchSpec, ...] = (
    trm.SPEC,
    hrm.SPEC,
)

for _spec in SPECS:
    register_arch(_spec)
