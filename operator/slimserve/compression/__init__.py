"""The compression engine: prune, distill and quantize a model under an accuracy budget, write an artifact.

`compress(spec, sinks)` runs a CompressionJob's spec; step transforms register per config class in
`registry` (one module per step kind: `prune`, `distill`, `quantize_step`); `budget` searches gentler
configs when a step drops the metric more than `evaluation.maxDrop`.

Names are imported on first use, so that light sub-modules (e.g. `status_sink`) load without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compress": "slimserve.compression.pipeline",
    "CompressionOutcome": "slimserve.compression.progress",
    "JsonLinesSink": "slimserve.compression.progress",
    "ProgressSink": "slimserve.compression.progress",
    "RichProgressSink": "slimserve.compression.progress",
    "apply_step": "slimserve.compression.registry",
    "register_relaxations": "slimserve.compression.registry",
    "register_transform": "slimserve.compression.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
