"""`Int8DynamicLinear`: int8 weights per output channel, int8 activations per token, int32 accumulation.

Why our own module rather than torchao's `Int8DynamicActivationInt8WeightConfig` or PT2E:
- the artifact must be pickle-free: this module's state is three plain tensors (int8 weight, float32
  scales, float32 bias), saved as safetensors and reloaded into a fresh module, where torchao's quantized
  weights are tensor subclasses that serialize through pickle;
- the math is the fast one on the CPUs we serve on (2-core AVX512-VNNI, no AMX): per-token activation
  scales (outliers of one token do not crush the others: MiniLM stays closer to fp32 than with the
  per-tensor scales of eager `quantize_dynamic` and ONNX Runtime), `torch._int_mm` (oneDNN's VNNI GEMM,
  uint8 x int8, see `kernels.int8_matmul`), and under torch.compile the quantization fuses into the kernel
  that produces the activation (LayerNorm, GELU) and the rescale into the next one;
- owning the module lets inference fusions (`fuse.py`, `GeluInt8Linear`) change the graph without
  changing the artifact. benchmarks/compression_minilm.py measures it against torchao, ONNX Runtime and
  eager `quantize_dynamic` side by side.

Compiled, inductor's x86 "smooth quant" pattern (torchao's X86InductorQuantizer passes, which
`optimize_for_inference` registers) rewrites `_int_mm -> * x_scale -> * w_scale` to oneDNN's
`qlinear_pointwise` with the weight prepacked once: with uint8 inputs that is faster than `_int_mm`.
With signed int8 inputs the same call runs a reference kernel orders of magnitude slower on a VNNI CPU,
so the signed path multiplies by one combined scale, which the pattern does not match. The figures are in
docs/performance.md.
"""

from __future__ import annotations


import torch
from torch import nn

from slimserve.quant.base import QuantizedModule, ReplacesLinear
from slimserve.quant.kernels import (
    INT8_MAX,
    UNSIGNED_ACTIVATIONS,
    int8_matmul,
    int8_per_token,
    symmetric_int8_per_row,
)


class Int8DynamicLinear(ReplacesLinear, QuantizedModule):
    kind = "int8-dynamic-linear"

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8DynamicLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        module.weight_int8, module.weight_scale = symmetric_int8_per_row(linear.weight)
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_int8, x_scale = int8_per_token(x.reshape(-1, self.in_features).float())
        return self.project(x_int8, x_scale).reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def project(self, x_int8: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        """The float output [M, out] of already-quantized inputs (int8 [M, in], scale [M, 1])."""
        accumulated = int8_matmul(x_int8, self.weight_int8).float()
        if UNSIGNED_ACTIVATIONS:
            # uint8 x int8: let inductor's x86 pattern lower this to oneDNN's qlinear (weights prepacked once)
            out = accumulated * x_scale * self.weight_scale
        else:
            out = accumulated * (x_scale * self.weight_scale)  # keep signed inputs away from that pattern
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# GELU's negative lobe never goes below this (its minimum, at x ~ -0.75, is -0.16997).
GELU_NEGATIVE_BOUND = 0.17


class GeluInt8Linear(nn.Module):
    """`linear(gelu(x))` for an Int8DynamicLinear, the per-token scale bounded from the pre-activation.

    |GELU(x)| <= max(rowmax(x), 0.17): GELU(x) <= x for x > 0 and its negative lobe stays above -0.17. So
    the scale needs only the row max of x, and GELU's erf runs once per element instead of twice (once for
    the row's absolute max, again to quantize); measured, that is the costliest elementwise kernel of a
    compiled MiniLM. The bound is at most a few percent coarser than the exact max for the large
    pre-activations that set FFN scales (GELU(2) = 0.977 * 2). Built by inference fusion
    (MiniLMFeedForward); the artifact keeps the plain Int8DynamicLinear.
    """

    def __init__(self, linear: Int8DynamicLinear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_int8, scale = gelu_int8_per_token(x.reshape(-1, self.linear.in_features).float())
        return self.linear.project(x_int8, scale).reshape(*x.shape[:-1], self.linear.out_features).to(x.dtype)


def gelu_int8_per_token(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU of fp32 rows [M, K] as int8 [M, K] and scale [M, 1], the scale bounded from the pre-activation."""
    scale = rows.amax(dim=1, keepdim=True).clamp(min=GELU_NEGATIVE_BOUND) / INT8_MAX
    return torch.round(torch.nn.functional.gelu(rows) / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale
