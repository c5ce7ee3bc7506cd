"""The error every model loader raises for a model it cannot load (its message names `model.uri`)."""

from __future__ import annotations

from slimserve.artifacts import SlimServeError


class ModelLoadError(SlimServeError):
    reason = "InvalidModel"
