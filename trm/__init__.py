"""TRM, the Tiny Recursive Model (Jolicoeur-Martineau, 2025): arch `trm`.

`SPEC` describes it to the architecture registry; `archs.py` registers it.
"""
from model_core.registry import ArchSpec
from trm.config import TRMConfig
from trm.model import TRMCore

SPEC = ArchSpec("trm", TRMConfig, TRMCore, official_names=("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",))

__all__ = ["SPEC", "TRMConfig", "TRMCore"]
