"""Spec and status models of SlimServe's custom resources.

These pydantic models are the single source of truth: the CRDs in `crds/` are generated from them
(`python -m slimserve.api.crd`), and a test fails when the committed YAML is stale.
"""

from slimserve.api.common import GROUP, VERSION, API_VERSION, Condition, ConditionStatus
from slimserve.api.steps import (
    DistillConfig,
    PruneConfig,
    QuantizeConfig,
    Step,
    StepConfig,
    StudentSpec,
)
from slimserve.api.compression_job import CompressionJob, CompressionJobSpec, CompressionJobStatus
from slimserve.api.model_service import ModelService, ModelServiceSpec, ModelServiceStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "CompressionJob",
    "CompressionJobSpec",
    "CompressionJobStatus",
    "Condition",
    "ConditionStatus",
    "DistillConfig",
    "ModelService",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "PruneConfig",
    "QuantizeConfig",
    "Step",
    "StepConfig",
    "StudentSpec",
]
