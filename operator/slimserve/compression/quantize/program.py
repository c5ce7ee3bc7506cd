"""int8-static of `torch.export` programs through PyTorch's own export path: `prepare_pt2e` / `convert_pt2e` with
torchao's x86 Inductor quantizer (u8 activations per tensor, s8 weights per channel, BatchNorm folded into the
convolution before it), calibrated on task data.

The result is the program's graph in the reference representation (`quantized_decomposed` quantize/dequantize
ops around float convolutions and linears, int8 weights as constants), exported again with a dynamic batch
(`ExportedProgramFamily.assets_of`) and served compiled, where the inductor passes lower those patterns to
oneDNN's int8 `qconv` / `qlinear` as they do for SlimServe's own int8-static modules.
"""

from __future__ import annotations

import copy

import torch
from torch import fx

from slimserve.compression.quantize.configs import Int8StaticConfig

# Weighted ops whose weight's owner names the layer (keepFloat, the budget search's sensitivity ranking).
_WEIGHTED_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def program_layers(program: fx.GraphModule) -> list[str]:
    """Names of the program's convolutions and linears (their weights' owners), in graph order."""
    names = []
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in _WEIGHTED_OPS and node.args[1].op == "get_attr":
            names.append(node.args[1].target.rpartition(".")[0])
    return list(dict.fromkeys(names))


def int8_static_program(program: fx.GraphModule, config: Int8StaticConfig, calibration: list[tuple]) -> fx.GraphModule:
    """The program quantized int8-static, `config.keep_float` layers left float; `program` is left as it was."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    for name in config.keep_float:
        quantizer.set_module_name_qconfig(name, None)
    graph = _one_partition_per_call(_copy(program))
    prepared = prepare_pt2e(graph, quantizer)
    _calibrate(prepared, calibration, config.calibration_samples)
    return _drop_unused_state(convert_pt2e(prepared))


def _copy(program: fx.GraphModule) -> fx.GraphModule:
    # prepare_pt2e folds BatchNorm into the weights in place: the float program must stay as it was.
    return copy.deepcopy(program)


def _one_partition_per_call(program: fx.GraphModule) -> fx.GraphModule:
    """Each call of a module its own partition. A non-strict export names every call of a module after it (a
    ResNet block's one ReLU, called twice), and the quantizer would take both calls for one pattern with two
    outputs; the calls' own keys (`block.relu@1`) tell them apart."""
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (name, kind) = next(reversed(stack.items()))
        _, at, call = key.rpartition("@")
        if at and call.isdigit():
            stack[key] = (f"{name}@{call}", kind)
    return program


def _calibrate(prepared: fx.GraphModule, calibration: list[tuple], max_samples: int) -> None:
    if not calibration:
        raise ValueError("calibration: int8-static needs calibration batches (tuples of model inputs)")
    seen = 0
    with torch.no_grad():
        for index, batch in enumerate(calibration):
            if not isinstance(batch, tuple) or not batch or not all(isinstance(t, torch.Tensor) for t in batch):
                raise ValueError(f"calibration[{index}]: expected a tuple of input tensors, got {type(batch).__name__}")
            try:
                prepared(*batch)
            except Exception as exc:  # a program's guards raise many types for inputs it was not exported for
                shapes = ", ".join(str(list(t.shape)) for t in batch)
                detail = " ".join(str(exc).split())[:200]
                raise ValueError(f"calibration[{index}]: the program refuses inputs of shape {shapes}: {detail}") from None
            seen += int(batch[0].shape[0])
            if seen >= max_samples:
                break


def _drop_unused_state(converted: fx.GraphModule) -> fx.GraphModule:
    """convert_pt2e leaves the float weights it quantized on the module, unused: keep only what the graph reads."""
    used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in [*converted.named_parameters(), *converted.named_buffers()]:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, attribute)
    return converted
