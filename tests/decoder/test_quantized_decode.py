"""The weight-only int8 Linear's CPU kernel path (a decode step's few rows) against dequantize-then-matmul."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimserve.quant.int8_weight_only import CPU_INT8_KERNEL_MAX_ROWS, Int8WeightOnlyLinear, int8_weight_only_matmul


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("rows", [1, CPU_INT8_KERNEL_MAX_ROWS, CPU_INT8_KERNEL_MAX_ROWS + 1], ids=["decode", "most-kernel-rows", "dense"])
def test_int8_weight_only_linear_matches_dequantize_then_matmul(rows):
    torch.manual_seed(rows)
    linear = nn.Linear(256, 96)
    module = Int8WeightOnlyLinear.from_float(linear)
    x = torch.randn(rows, 1, 256)
    reference = nn.functional.linear(x, module.weight(torch.float32), linear.bias.detach())
    with torch.inference_mode():
        out = module(x)
        kernel = (int8_weight_only_matmul(x.reshape(rows, 256), module.weight_int8, module.weight_scale).float()
                  + linear.bias.detach()).reshape(out.shape)
    assert out.shape == (rows, 1, 96) and out.dtype == torch.float32
    if rows <= CPU_INT8_KERNEL_MAX_ROWS:  # really the int8 kernel, in bf16: within a few bf16 steps
        assert torch.equal(out, kernel)
        assert (out - reference).abs().max() <= 0.02 * reference.abs().max()
        assert cosine(out, reference) > 0.9999
    else:
        assert torch.equal(out, reference)
