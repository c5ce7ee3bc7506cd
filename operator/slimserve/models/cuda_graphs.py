"""CUDA graphs for serving: a forward recorded once per input shape and replayed, without launching its
kernels one by one from Python. Off by default (`--cuda-graphs`): `benchmarks/gpu.py` measures whether it
pays off for a model.

Shapes are bucketed so that the batches the batcher forms need few graphs: the batch dimension is padded
up to a power of two (repeating the last row; rows are independent at inference, the extra ones are
dropped), and the sequence dimension of integer inputs (token ids, attention masks) up to a multiple of
`SEQUENCE_STEP` with zeros (the padding token, masked out). A graph is recorded on the first batch of its
bucket and replayed for every later one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[..., torch.Tensor]
SEQUENCE_STEP = 32
Shape = tuple[tuple[int, ...], ...]


def bucket_shape(inputs: tuple[torch.Tensor, ...]) -> Shape:
    """The padded shape of each input: batch up to a power of two, integer sequences to SEQUENCE_STEP."""
    shapes = []
    for tensor in inputs:
        shape = list(tensor.shape)
        shape[0] = 1 << (shape[0] - 1).bit_length()
        if not tensor.dtype.is_floating_point and tensor.dim() >= 2:
            shape[1] = -(-shape[1] // SEQUENCE_STEP) * SEQUENCE_STEP
        shapes.append(tuple(shape))
    return tuple(shapes)


def pad_to(tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`tensor` padded to `shape`: rows repeat the last one, integer sequence positions are zeros."""
    if tuple(tensor.shape) == shape:
        return tensor
    if tensor.dim() >= 2 and not tensor.dtype.is_floating_point and shape[1] != tensor.shape[1]:
        zeros = tensor.new_zeros(tensor.shape[0], shape[1] - tensor.shape[1], *tensor.shape[2:])
        tensor = torch.cat((tensor, zeros), dim=1)
    if shape[0] != tensor.shape[0]:
        tensor = torch.cat((tensor, tensor[-1:].expand(shape[0] - tensor.shape[0], *tensor.shape[1:])))
    return tensor


class _Recorded:
    def __init__(self, graph: "torch.cuda.CUDAGraph", inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        self.graph = graph
        self.inputs = inputs
        self.output = output


class CudaGraphForward:
    """`forward` (device tensors in, device tensor out) replayed from one CUDA graph per shape bucket."""

    def __init__(self, forward: Forward, device: torch.device) -> None:
        self.forward = forward
        self.device = device
        self._graphs: dict[Shape, _Recorded] = {}
        self._pool = None  # one memory pool shared by every graph

    @property
    def recorded(self) -> int:
        return len(self._graphs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = int(inputs[0].shape[0])
        shape = bucket_shape(inputs)
        padded = tuple(pad_to(t, s) for t, s in zip(inputs, shape, strict=True))
        recorded = self._graphs.get(shape) or self._record(shape, padded)
        for static, tensor in zip(recorded.inputs, padded, strict=True):
            static.copy_(tensor)
        recorded.graph.replay()
        return recorded.output[:rows].clone()

    def _record(self, shape: Shape, inputs: tuple[torch.Tensor, ...]) -> _Recorded:
        static = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation (cuBLAS handles, autotuning) stays out of the graph
                self.forward(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            output = self.forward(*static)
        self._pool = graph.pool()
        self._graphs[shape] = _Recorded(graph, static, output)
        return self._graphs[shape]
