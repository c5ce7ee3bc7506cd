"""The SlimServe artifact: a directory with safetensors weights, `manifest.json` (format slimserve/v1,
rebuild recipe, quantization scheme, metrics, sha256 of every file), a report, written atomically and
verified on every read. The artifact digest is `sha256:` + sha256 of the manifest's bytes."""

from slimserve.artifacts.artifact import Artifact, load_artifact, save_artifact
from slimserve.artifacts.errors import ArtifactError, SlimServeError, StorageError
from slimserve.artifacts.manifest import FORMAT_VERSION, MANIFEST_NAME

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactError",
    "SlimServeError",
    "StorageError",
    "load_artifact",
    "save_artifact",
]
