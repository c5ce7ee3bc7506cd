"""Pieces shared by both resources: the base model, conditions, resources, object references."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError
from pydantic.alias_generators import to_camel

GROUP = "slimserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Storage URIs a model or an artifact may live at. `builtin://` names a demo model shipped with SlimServe;
# http(s):// and hf:// are read-only sources (slimserve.api.uri has the rules of each).
MODEL_URI_PATTERN = r"^(builtin|file|pvc|s3|https?|hf)://[^\s]+$"
ARTIFACT_URI_PATTERN = r"^(file|pvc|s3)://[^\s]+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class SpecModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields rejected, validated on assignment."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The resource's JSON form (camelCase, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        return cls.model_validate(data)


class StatusModel(SpecModel):
    """Status is written by the operator and read by many tools: tolerate fields added by newer versions."""

    model_config = ConfigDict(extra="ignore")


# Kubernetes quantities are integers or strings ("500m", "2Gi", 4). The pattern is the one Kubernetes' own
# OpenAPI gives resource.Quantity: the CRD refuses "lots" at admission (a pod template holding it would be
# refused on every apply instead), and `slimserve run` refuses it the same way.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _one_quantity_error(value: Any, handler):
    """One error naming the value, instead of one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "quantity", "{value} is not a Kubernetes quantity, e.g. 500m, 2Gi or 4", {"value": repr(value)}
        ) from None


Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)], WrapValidator(_one_quantity_error)
]


class ResourceRequirements(SpecModel):
    """Compute resources of the pod's main container, as in a core/v1 container."""

    requests: dict[str, Quantity] | None = Field(
        default=None, description='Minimum resources, e.g. {"cpu": "2", "memory": "4Gi"}.'
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        description='Maximum resources, e.g. {"cpu": "2", "memory": "4Gi"}. Inference threads follow the CPU limit.',
    )


class LocalObjectReference(SpecModel):
    name: str = Field(
        description="Name of the object in the same namespace.", min_length=1, max_length=253, pattern=DNS_LABEL_PATTERN
    )


# hf:// sources' token, by reference: the pods get the Secret's HF_TOKEN key as HF_TOKEN (huggingface_hub's variable).
HfTokenSecret = Annotated[
    LocalObjectReference | None,
    Field(description="hf:// URIs: a Secret whose key HF_TOKEN is the Hub token, given to the pods as HF_TOKEN."),
]


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One observation of the resource's state, per the Kubernetes API conventions."""

    type: str = Field(description="Kind of condition, e.g. Ready, Succeeded, ModelAvailable.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason for the last transition.")
    message: str = Field(default="", description="Human-readable details of the last transition.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was set for."
    )


class ResourceKind:
    """Static facts of a custom resource kind, used to generate its CRD and to address it."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[list[str]]
    description: ClassVar[str]
    # The scale subresource's paths (specReplicasPath, statusReplicasPath, labelSelectorPath); None: no /scale.
    scale: ClassVar[dict[str, str] | None] = None
