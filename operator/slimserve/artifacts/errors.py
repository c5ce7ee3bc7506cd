"""Errors with a machine-readable reason, reported as one line (CLI) or a status condition (operator)."""

from __future__ import annotations


class SlimServeError(Exception):
    """An error caused by the input (a spec, a URI, a file), not by a bug: reported without a traceback."""

    reason = "Failed"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class StorageError(SlimServeError):
    """A URI that cannot be read or written: unknown scheme, missing path, object-store failure."""

    reason = "StorageError"


class ArtifactError(SlimServeError):
    """An artifact that fails verification: missing manifest, unknown format, digest mismatch, truncation."""

    reason = "InvalidArtifact"
