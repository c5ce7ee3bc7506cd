"""Object-store access and artifact references: shared by both resources and by the artifact store itself,
which depends on these models and on no resource's module."""

from __future__ import annotations

from pydantic import Field

from slimserve.api.common import LocalObjectReference, SpecModel, StatusModel


class S3Spec(SpecModel):
    """Access to an S3-compatible object store for s3:// URIs."""

    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Endpoint URL of an S3-compatible store, e.g. http://minio.storage:9000. Empty means AWS.",
    )
    region: str | None = Field(default=None, max_length=64, description="Region, e.g. eu-west-1.")
    credentials_secret: LocalObjectReference | None = Field(
        default=None,
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, passed to the pod as environment.",
    )


class ArtifactRef(StatusModel):
    uri: str = Field(description="Where the artifact was written.")
    digest: str = Field(description="sha256 of the artifact's manifest, e.g. sha256:ab12...")
    size_bytes: int = Field(description="Total size of the artifact's files in bytes.")
    format: str = Field(default="slimserve/v1", description="Artifact format and version.")
