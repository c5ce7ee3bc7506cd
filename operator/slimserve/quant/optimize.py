"""Compile a (quantized) model once for serving: inductor with freezing, any batch and sequence size.

Freezing turns the weights into constants, so inductor folds what depends only on them and fuses each
int8 activation quantization into the kernel producing the activation. Freezing is an inductor config read
when a graph compiles (`torch.compile(options=...)` does not reach it), so every call runs under
`config.patch(freezing=True)`: a recompile, if one happens, is frozen too.

Shapes:
- by default one graph serves every size: dimension 0 of every input is marked dynamic, and every
  dimension of integer inputs (token ids, attention masks); float inputs such as images keep their other
  dimensions static. Dynamo specializes sizes of 1, so a batch of one is padded to two.
- models with int8-static modules, and programs quantized through pt2e (their graph calls the
  `quantized_decomposed` ops), compile per batch bucket (powers of two; the batch is padded up to its
  bucket): oneDNN's prepacked int8 conv has no symbolic-shape (fake) kernel in this torch. Their graphs are
  static, so a single request is its own bucket rather than paying for a padded second row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch._inductor.config as inductor_config
from torch import nn

from slimserve.quant.base import set_training
from slimserve.quant.fuse import apply_inference_fusions
from slimserve.quant.sharing import copy_sharing_weights
from slimserve.quant.half import serving_copy
from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear
from slimserve.quant.int8_dynamic import Int8DynamicLinear
from slimserve.quant.int8_static import _Int8Static

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64


class OptimizedForward:
    """`forward(*inputs)` of a compiled model, run without autograd; `compile_seconds` is the warm-up cost."""

    def __init__(self, model: nn.Module, compiled: Callable, *, bucketed: bool, compute_dtype: torch.dtype | None = None):
        self.model = model
        self.bucketed = bucketed
        self.compute_dtype = compute_dtype  # a half model's: its own where the device has it natively, else fp32
        self.compile_seconds = 0.0
        self.single_graph = True  # False when the model only compiled with graph breaks
        self._compiled = compiled

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = _batch_size(inputs)
        target = _bucket(batch) if self.bucketed else max(batch, 2)
        # Inputs reach the graph as the plain tensors it was compiled on, also from inside a caller's inference_mode
        # (a padded row, a tensor made there): an inference tensor fails the graph's guards, and the second graph
        # compiled for it holds a second frozen copy of the weights.
        if target != batch or any(_is_inference(t) for t in inputs):
            with torch.inference_mode(False):
                inputs = tuple(_pad_batch(t, target) if target != batch else _plain(t) for t in inputs)
        with torch.inference_mode(), inductor_config.patch(freezing=True):
            out = self._compiled(*inputs)
        return out[:batch] if target != batch else out

    def warm_up(self, inputs: tuple) -> None:
        start = time.perf_counter()
        self(*inputs)
        half = max(2, _batch_size(inputs) // 2)
        self(*(t[:half] if _batched(t) else t for t in inputs))  # a second batch size
        self.compile_seconds = time.perf_counter() - start


def optimize_for_inference(model: nn.Module, example_inputs: tuple) -> OptimizedForward:
    """Compile `model` for serving and warm it up; `model` itself is left as it was (fusions apply to a copy)."""
    model = set_training(copy_sharing_weights(model), False)  # fusions and casts build new tensors: no second copy of the weights
    model, compute_dtype = serving_copy(model, _device_of(model))
    if compute_dtype is not None:
        log.info("%s computes in %s on %s", type(model).__name__, compute_dtype, _device_of(model))
    apply_inference_fusions(model)
    # Each optimized model (and, bucketed, each batch bucket) is one more entry on the same forward code
    # object; past the limit dynamo would silently run it eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    bucketed = any(isinstance(m, _Int8Static) for m in model.modules()) or _calls_quantized_ops(model)
    if bucketed or any(isinstance(m, (Int8DynamicLinear, Int4WeightOnlyLinear)) for m in model.modules()):
        # Registers torchao's x86 inductor passes that lower quantize/dequantize + conv/linear and
        # uint8 `_int_mm` + rescale to oneDNN int8 kernels with prepacked weights (int4 on a CPU runs
        # calls of many rows on an int8 copy: int4_kernels.CPU_MANY_ROWS).
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs)
    if _batch_size(inputs) < 2:
        raise ValueError("example_inputs: need a batch of at least 2 rows")
    if not bucketed:
        for tensor in inputs:
            for dim in _dynamic_dims(tensor) if isinstance(tensor, torch.Tensor) else ():
                torch._dynamo.mark_dynamic(tensor, dim)
    dynamic = False if bucketed else None
    # One graph or none: a graph break silently splits the model into pieces run from Python (measured
    # 2x slower for MiniLM), so breaks are errors first; a model that needs them still compiles, with a warning.
    forward = OptimizedForward(model, torch.compile(model, dynamic=dynamic, fullgraph=True), bucketed=bucketed, compute_dtype=compute_dtype)
    try:
        forward.warm_up(inputs)
    except torch._dynamo.exc.Unsupported as exc:
        log.warning("%s does not compile as one graph (%s); compiling it with graph breaks", type(model).__name__, exc)
        forward = OptimizedForward(model, torch.compile(model, dynamic=dynamic), bucketed=bucketed, compute_dtype=compute_dtype)
        forward.warm_up(inputs)
        forward.single_graph = False
    log.info("compiled %s for inference in %.1f s", type(model).__name__, forward.compile_seconds)
    return forward


def _calls_quantized_ops(model: nn.Module) -> bool:
    """Whether `model` is a graph in PT2E's reference representation (a program quantized by convert_pt2e)."""
    graph = getattr(model, "graph", None)
    return graph is not None and any(
        node.op == "call_function" and getattr(node.target, "namespace", None) == "quantized_decomposed" for node in graph.nodes
    )


def _device_of(model: nn.Module) -> torch.device:
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


def _batched(tensor: object) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dim() > 0


def _batch_size(inputs: tuple) -> int:
    sizes = {t.shape[0] for t in inputs if _batched(t)}
    if len(sizes) != 1:
        raise ValueError(f"inputs: expected tensors sharing one batch size (dimension 0), got sizes {sorted(sizes)}")
    return sizes.pop()


def _bucket(batch: int) -> int:
    return 1 << (batch - 1).bit_length()


def _is_inference(tensor: object) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.is_inference()


def _plain(tensor: object) -> object:
    return tensor.clone() if _is_inference(tensor) else tensor


def _pad_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Repeat the last row up to `size` rows (rows are independent at inference; the extra ones are dropped)."""
    if not _batched(tensor):
        return tensor
    extra = tensor[-1:].expand(size - tensor.shape[0], *tensor.shape[1:])
    return torch.cat((tensor, extra))


def _dynamic_dims(tensor: torch.Tensor) -> list[int]:
    dims = range(tensor.dim()) if not tensor.dtype.is_floating_point else range(min(1, tensor.dim()))
    return [dim for dim in dims if tensor.shape[dim] > 1]
