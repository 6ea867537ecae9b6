"""HRM, the Hierarchical Reasoning Model (Wang et al., 2025), registered as arch `hrm`."""
from hrm.config import HRMConfig
from hrm.model import HRMCore
from reasoning_core.registry import ArchSpec, register_arch

register_arch(ArchSpec("hrm", HRMConfig, HRMCore, official_names=("hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",)))

__all__ = ["HRMConfig", "HRMCore"]
