"""Half precision: a model's weights and compute in fp16 or bf16, its interface unchanged.

`cast_to_half(model, "bf16", keep_float)` casts every floating parameter and buffer, except those of the
`keep_float` modules, and hooks the boundaries: floating inputs are cast to the half dtype on the way in
(to fp32 at a kept module), floating outputs back to fp32 on the way out, so callers still pass and get fp32
(numpy has no bf16). What was cast is recorded on the model (`half_precision_of`) for the recipe, and
`restore_quantization` casts a fresh skeleton the same way before loading the 16-bit tensors.

Which devices compute in which half natively (`native_on`): CUDA both (bf16 from compute capability 8.0);
a CPU bf16 where oneDNN has native bf16 (AVX512-BF16 or AMX) and fp16 where it has AVX512-FP16 or AMX-FP16.
Elsewhere `serving_copy` casts the served copy up to fp32: the artifact stays 16-bit, the answers are the
16-bit weights' exactly, and a CPU without the instructions does not emulate them at many times the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_map

HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_MARK = "_slimserve_half_precision"


@dataclass(frozen=True)
class HalfPrecision:
    """What `cast_to_half` did: the dtype's name (fp16, bf16) and the modules left in fp32."""

    dtype_name: str
    keep_float: tuple[str, ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        return HALF_DTYPES[self.dtype_name]

    def to_recipe(self) -> dict:
        return {"dtype": self.dtype_name, "keep_float": list(self.keep_float)}

    @classmethod
    def from_recipe(cls, entry: object, where: str) -> "HalfPrecision":
        if not isinstance(entry, dict) or entry.get("dtype") not in HALF_DTYPES:
            raise ValueError(f"{where}.dtype: expected one of {list(HALF_DTYPES)}, got {entry!r}")
        keep = entry.get("keep_float", [])
        if not isinstance(keep, list) or not all(isinstance(name, str) for name in keep):
            raise ValueError(f"{where}.keep_float: expected a list of module names, got {keep!r}")
        return cls(entry["dtype"], tuple(keep))


class _Compute:
    """The dtype a half model computes in, shared by its boundary hooks (and copied with the model)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _CastFloats:
    """A forward (pre-)hook casting the floating tensors passing through to `to.dtype`."""

    def __init__(self, to: _Compute):
        self.to = to

    def _cast(self, value):
        return value.to(self.to.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def __call__(self, _module: nn.Module, args, output=None):
        return tree_map(self._cast, args if output is None else output)


def cast_to_half(model: nn.Module, half: HalfPrecision) -> nn.Module:
    """Cast `model` in place as `half` says (see the module docstring) and return it."""
    if half_precision_of(model) is not None:
        raise ValueError(f"the model is already in {half_precision_of(model).dtype_name}")
    kept = [model.get_submodule(name) for name in half.keep_float]
    compute, fp32 = _Compute(half.dtype), _Compute(torch.float32)
    model.to(half.dtype)
    for module in kept:
        module.float()
        module.register_forward_pre_hook(_CastFloats(fp32))
        module.register_forward_hook(_CastFloats(compute))
    model.register_forward_pre_hook(_CastFloats(compute))
    model.register_forward_hook(_CastFloats(fp32))
    setattr(model, _MARK, (half, compute))
    return model


def half_precision_of(model: nn.Module) -> HalfPrecision | None:
    marked = getattr(model, _MARK, None)
    return marked[0] if marked else None


def native_on(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `device` computes in `dtype` with its own instructions."""
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def serving_copy(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.dtype | None]:
    """`(model, its compute dtype)` for serving on `device` (None: not a half model, returned as it is).
    A half model whose half `device` lacks natively is cast up to fp32, in place: pass a copy."""
    marked = getattr(model, _MARK, None)
    if marked is None:
        return model, None
    half, compute = marked
    if native_on(half.dtype, device):
        return model, half.dtype
    compute.dtype = torch.float32
    return model.float(), torch.float32
