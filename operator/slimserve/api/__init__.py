"""Spec and status models of SlimServe's custom resources.

These pydantic models are the single source of truth: the CRDs in `crds/` are generated from them
(`python -m slimserve.api.crd`), and a test fails when the committed YAML is stale.

The names below are loaded on first use: the pod contract (`slimserve.api.workload`) and the URI rules
(`slimserve.api.uri`) live in this package too, and a command that only reads its environment or prints its
help should not pay for building every resource model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "API_VERSION": "slimserve.api.common",
    "GROUP": "slimserve.api.common",
    "VERSION": "slimserve.api.common",
    "Condition": "slimserve.api.common",
    "ConditionStatus": "slimserve.api.common",
    "DistillConfig": "slimserve.api.steps",
    "PruneConfig": "slimserve.api.steps",
    "QuantizeConfig": "slimserve.api.steps",
    "Step": "slimserve.api.steps",
    "StepConfig": "slimserve.api.steps",
    "StudentSpec": "slimserve.api.steps",
    "CompressionJob": "slimserve.api.compression_job",
    "CompressionJobSpec": "slimserve.api.compression_job",
    "CompressionJobStatus": "slimserve.api.compression_job",
    "BatchInference": "slimserve.api.batch_inference",
    "BatchInferenceSpec": "slimserve.api.batch_inference",
    "BatchInferenceStatus": "slimserve.api.batch_inference",
    "ModelService": "slimserve.api.model_service",
    "ModelServiceSpec": "slimserve.api.model_service",
    "ModelServiceStatus": "slimserve.api.model_service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
