"""Structured pruning of `torch.export` programs: their graphs given layer modules Torch-Pruning can see.

A program's module (`ExportedProgram.module()`) computes with ATen ops on parameters held by plain containers:
`aten.conv2d(x, self.block.conv.weight, ...)`, with no `nn.Conv2d` anywhere. Torch-Pruning's dependency graph
finds layers by their module types (it hooks `nn.Conv2d`, `nn.Linear`, `nn.BatchNorm2d` calls to map autograd's
nodes back to them), so on a program it finds nothing to prune. `with_layer_modules` turns each such op back into
a call of the layer module it came from, holding the same parameters at the same names; Torch-Pruning then traces
the graph like any model (residual sums included), and the pruned graph is exported again with its dynamic batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx, nn

_aten = torch.ops.aten


def with_layer_modules(program: fx.GraphModule) -> fx.GraphModule:
    """`program` (changed in place) with its convolutions, linears and batch norms as calls of layer modules."""
    for node in list(program.graph.nodes):
        build = _LAYERS.get(node.target) if node.op == "call_function" else None
        weight = node.args[1] if build and len(node.args) > 1 else None
        if weight is None or not isinstance(weight, fx.Node) or weight.op != "get_attr":
            continue
        owner = weight.target.rpartition(".")[0]
        if not owner or isinstance(program.get_submodule(owner), (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue  # a layer called twice keeps its first module; its second call stays an op
        layer = build(program.get_submodule(owner), node)
        if layer is None:
            continue
        _replace_submodule(program, owner, layer)
        with program.graph.inserting_before(node):
            call = program.graph.call_module(owner, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        program.graph.erase_node(node)
    program.graph.eliminate_dead_code()
    program.recompile()
    return program


def output_layer(program: fx.GraphModule) -> nn.Module | None:
    """The last Linear the graph calls: the logits, which pruning leaves whole."""
    calls = [node.target for node in program.graph.nodes if node.op == "call_module"]
    linears = [program.get_submodule(name) for name in calls if isinstance(program.get_submodule(name), nn.Linear)]
    return linears[-1] if linears else None


def _constants(node: fx.Node, first: int) -> list | None:
    """The node's arguments from `first` on, or None when one is computed in the graph (not a layer setting)."""
    rest = list(node.args[first:])
    return None if any(isinstance(value, fx.Node) for value in rest) else rest


def _conv2d(params: nn.Module, node: fx.Node) -> nn.Module | None:
    settings = _constants(node, 3)
    if settings is None:
        return None
    stride, padding, dilation, groups = (settings + [1, 0, 1, 1][len(settings):])[:4]
    weight = params.weight
    bias = getattr(params, "bias", None)
    if isinstance(padding, str):
        return None
    out_channels, per_group, kh, kw = weight.shape
    layer = nn.Conv2d(per_group * groups, out_channels, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=bias is not None, device="meta")
    return _holding(layer, params, ("weight", "bias"))


def _linear(params: nn.Module, node: fx.Node) -> nn.Module | None:
    bias = getattr(params, "bias", None)
    out_features, in_features = params.weight.shape
    return _holding(nn.Linear(in_features, out_features, bias=bias is not None, device="meta"), params, ("weight", "bias"))


def _batch_norm(params: nn.Module, node: fx.Node) -> nn.Module | None:
    settings = _constants(node, 5)
    if settings is None or not isinstance(node.args[3], fx.Node) or settings[0] is not False:
        return None  # a batch norm in training mode, or without running statistics, is not a fixed layer
    momentum, eps = settings[1], settings[2]
    layer = nn.BatchNorm2d(params.weight.shape[0], eps=eps, momentum=momentum, device="meta").eval()
    return _holding(layer, params, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))


def _holding(layer: nn.Module, params: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """`layer` holding `params`' tensors of these names (the program's own objects, not copies)."""
    for name in names:
        value = getattr(params, name, None)
        if value is None:
            continue
        if name in layer._parameters:
            layer._parameters[name] = value
        else:
            layer._buffers[name] = value
    return layer


def _replace_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    previous = getattr(parent, name)
    for child_name, child in previous.named_children():  # a layer's parameter holder has no children, but keep any
        module.add_module(child_name, child)
    setattr(parent, name, module)


_LAYERS: dict[object, Callable[[nn.Module, fx.Node], nn.Module | None]] = {
    _aten.conv2d.default: _conv2d,
    _aten.linear.default: _linear,
    _aten.batch_norm.default: _batch_norm,
}
