"""Calibration for int8-static: the range each quantized module's input takes on task data."""

from __future__ import annotations

import torch
from torch import nn

from slimserve.quant.int8_static import UINT8_MAX, UINT8_MIN
from slimserve.quant.kernels import MIN_SCALE


class ActivationRange:
    """Running min/max of a module's input over the calibration batches."""

    def __init__(self) -> None:
        self.low = float("inf")
        self.high = float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        self.low = min(self.low, float(x.detach().min()))
        self.high = max(self.high, float(x.detach().max()))

    def uint8_params(self) -> tuple[float, int]:
        """(scale, zero point) of an asymmetric uint8 grid covering the range and exactly representing 0."""
        if self.low > self.high:
            raise ValueError("calibration never reached this layer")
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / (UINT8_MAX - UINT8_MIN), MIN_SCALE)
        zero_point = int(min(max(round(UINT8_MIN - low / scale), UINT8_MIN), UINT8_MAX))
        return scale, zero_point


def calibrate(model: nn.Module, names: list[str], batches: list[tuple], max_samples: int) -> dict[str, ActivationRange]:
    """Run `batches` (tuples of forward arguments) through the float model until `max_samples` rows have
    gone through, recording the input range of each named module."""
    modules = dict(model.named_modules())
    ranges = {name: ActivationRange() for name in names}
    handles = [
        modules[name].register_forward_pre_hook(lambda _module, args, r=ranges[name]: r.observe(args[0])) for name in names
    ]
    seen = 0
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                if not isinstance(batch, tuple) or not batch or not isinstance(batch[0], torch.Tensor):
                    raise ValueError(f"calibration[{index}]: expected a tuple of input tensors, got {type(batch).__name__}")
                model(*batch)
                seen += int(batch[0].shape[0]) if batch[0].dim() else 1
                if seen >= max_samples:
                    break
    finally:
        for handle in handles:
            handle.remove()
    unreached = [name for name, r in ranges.items() if r.low > r.high]
    if unreached:
        raise ValueError(f"calibration: the batches never reached {unreached[0]!r}; cannot calibrate it")
    return ranges
