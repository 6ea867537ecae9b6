"""HRM, the Hierarchical Reasoning Model (Wang et al., 2025): arch `hrm`.

`SPEC` describes it to the architecture registry; `archs.py` registers it.
"""
from hrm.config import HRMConfig
from hrm.model import HRMCore
from model_core.registry import ArchSpec

SPEC = ArchSpec("hrm", HRMConfig, HRMCore, official_names=("hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",))

__all__ = ["SPEC", "HRMConfig", "HRMCore"]
