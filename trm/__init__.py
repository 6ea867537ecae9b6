"""TRM, the Tiny Recursive Model (Jolicoeur-Martineau, 2025), registered as arch `trm`."""
from reasoning_core.registry import ArchSpec, register_arch
from trm.config import TRMConfig
from trm.model import TRMCore

register_arch(ArchSpec("trm", TRMConfig, TRMCore, official_names=("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",)))

__all__ = ["TRMConfig", "TRMCore"]
