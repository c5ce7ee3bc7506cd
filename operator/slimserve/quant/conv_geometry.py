"""The shape of a Conv2d (channels, kernel, stride, padding...) as a JSON-able recipe entry and back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from slimserve.quant.base import spec_bool, spec_int, spec_ints


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        return cls(
            conv.in_channels,
            conv.out_channels,
            tuple(conv.kernel_size),
            tuple(conv.stride),
            padding,
            tuple(conv.dilation),
            conv.groups,
            conv.bias is not None,
        )

    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def conv_kwargs(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d) and ConvGeometry.of(module) == self

    def to_spec(self) -> dict[str, Any]:
        spec = asdict(self)
        for key in ("kernel_size", "stride", "dilation"):
            spec[key] = list(spec[key])
        if not isinstance(self.padding, str):
            spec["padding"] = list(self.padding)
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any], where: str) -> "ConvGeometry":
        padding = spec.get("padding")
        if not (isinstance(padding, str) and padding in ("same", "valid")):
            padding = spec_ints(spec, "padding", where, 2)
        return cls(
            spec_int(spec, "in_channels", where),
            spec_int(spec, "out_channels", where),
            spec_ints(spec, "kernel_size", where, 2),
            spec_ints(spec, "stride", where, 2),
            padding,
            spec_ints(spec, "dilation", where, 2),
            spec_int(spec, "groups", where),
            spec_bool(spec, "bias", where),
        )


class ReplacesConv2d:
    """Shape bookkeeping of a quantized module standing in for an `nn.Conv2d`; its `__init__` takes a
    ConvGeometry. Listed before the QuantizedModule base so these methods win."""

    geometry: ConvGeometry

    def spec(self) -> dict[str, Any]:
        return self.geometry.to_spec()

    @classmethod
    def empty(cls, spec: dict[str, Any], where: str = "module"):
        return cls(ConvGeometry.from_spec(spec, where))

    def float_shape_matches(self, module: nn.Module) -> bool:
        return self.geometry.matches(module)
