"""Where models run: one device policy for the compressor and the server.

`auto` runs on the first GPU the process sees, else on the CPU; `cpu`, `cuda` and `cuda:N` are asked for
explicitly. A GPU asked for but not usable is an error saying why (torch without CUDA, no driver,
`CUDA_VISIBLE_DEVICES` empty, an index the process does not see), never a quiet fallback to the CPU: a pod
of a GPU pool that cannot see its GPU fails instead of serving on the node's CPU.

Artifacts stay device-independent: they are written from CPU copies (`host_tensors`) and loaded on the CPU,
then moved to the device once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimserve.api.workload import parse_device
from slimserve.artifacts import SlimServeError

Forward = Callable[..., torch.Tensor]
CPU = torch.device("cpu")
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


class DeviceUnavailable(SlimServeError):
    """The device asked for cannot be used by this process; the message says why."""

    reason = "DeviceUnavailable"


@dataclass(frozen=True)
class CudaProbe:
    """What this process can tell about its GPUs, read once, before choosing a device."""

    built: bool  # torch was built with CUDA
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES as set (None: unset)
    device_count: int
    error: str | None = None  # why CUDA could not start (no driver...), when it could not

    @classmethod
    def of_this_process(cls, environ: Mapping[str, str] = os.environ) -> "CudaProbe":
        visible = environ.get(VISIBLE_DEVICES)
        if torch.version.cuda is None:
            return cls(built=False, visible_devices=visible, device_count=0)
        if torch.cuda.is_available():
            return cls(built=True, visible_devices=visible, device_count=torch.cuda.device_count())
        try:
            torch.cuda.init()  # raises with CUDA's own reason ("Found no NVIDIA driver on your system...")
        except (RuntimeError, AssertionError) as exc:
            return cls(built=True, visible_devices=visible, device_count=0, error=" ".join(str(exc).split()))
        return cls(built=True, visible_devices=visible, device_count=torch.cuda.device_count())


def resolve_device(name: str, probe: CudaProbe | None = None) -> torch.device:
    """The torch device of a policy name (auto, cpu, cuda, cuda:N); DeviceUnavailable saying why a GPU
    asked for cannot be used."""
    try:
        wanted = parse_device(name)
    except ValueError as exc:
        raise DeviceUnavailable(str(exc)) from None
    if wanted == "cpu":
        return CPU
    probe = probe or CudaProbe.of_this_process()
    if wanted == "auto":
        return torch.device("cuda", 0) if probe.device_count > 0 else CPU
    index = int(wanted.partition(":")[2] or 0)
    problem = _why_not(probe, index)
    if problem is not None:
        raise DeviceUnavailable(f"device {wanted}: {problem}")
    return torch.device("cuda", index)


def _why_not(probe: CudaProbe, index: int) -> str | None:
    if not probe.built:
        return "this torch was built without CUDA (a CPU-only build); run the CUDA image on GPU pools"
    if probe.visible_devices is not None and probe.visible_devices.strip() in ("", "-1"):
        return (f"{VISIBLE_DEVICES} is {probe.visible_devices!r}, so the process sees no GPU "
                "(did the pod get its GPU? check its nvidia.com/gpu limit and the device plugin)")
    if probe.device_count == 0:
        return f"no usable GPU: {probe.error or 'CUDA reports none'} (is the NVIDIA driver installed on the node?)"
    if index >= probe.device_count:
        return f"index {index} is out of range: the process sees {probe.device_count} GPU(s), cuda:0 to cuda:{probe.device_count - 1}"
    return None


def device_label(device: torch.device) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H200)`: what logs show."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


def model_device(model: nn.Module) -> torch.device:
    """Where a model's weights are (its first parameter or buffer; the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return CPU


_FLOAT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The embedding tables of quantized encoders: not the method's mark.
_EMBEDDING_KINDS = ("int8-embedding", "int4-embedding")


def precision(model: nn.Module, quantization: Mapping[str, Any] | None = None, compute_dtype: torch.dtype | None = None) -> str:
    """What a model computes in: the quantized kinds of its recipe (`int8-dynamic`), else `compute_dtype` where
    serving chose one (a half model cast up to fp32 on a device without that half), else its float dtype."""
    kinds = {str(entry.get("kind", "")) for entry in ((quantization or {}).get("modules") or {}).values()}
    methods = sorted({kind.rsplit("-", 1)[0] for kind in kinds if kind and kind not in _EMBEDDING_KINDS})
    if methods or kinds:
        return "+".join(methods) or "+".join(sorted(kinds))
    if compute_dtype is not None:
        return _float_name(compute_dtype)
    dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
    return "+".join(sorted(_float_name(dtype) for dtype in dtypes)) or "fp32"


def _float_name(dtype: torch.dtype) -> str:
    return _FLOAT_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def to_device(inputs: Iterable[Any], device: torch.device) -> tuple[Any, ...]:
    """The tensors of `inputs` on `device` (other values as they are)."""
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)


def host_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of `tensors`, what an artifact stores: it then loads on any device."""
    copies = {}
    for name, tensor in tensors.items():
        if tensor.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device: it has a shape but no values to save")
        copies[name] = tensor.detach().cpu()
    return copies


class DeviceForward:
    """A forward on `device` called with CPU tensors: inputs go in through pinned host buffers (copied
    without blocking), the output comes back to the CPU. Calls do not overlap (a lock keeps it so), which
    lets each call reuse the pinned buffers of the one before: its output copy waited for its input copies."""

    def __init__(self, forward: Forward, device: torch.device) -> None:
        self.forward = forward
        self.device = device
        self._pinned: dict[int, torch.Tensor] = {}  # input position -> flat pinned buffer, grown as needed
        self._lock = threading.Lock()

    def __call__(self, *inputs: Any) -> torch.Tensor:
        with self._lock:
            on_device = tuple(self._copy_in(position, t) for position, t in enumerate(inputs))
            return self.forward(*on_device).cpu()

    def _copy_in(self, position: int, tensor: Any) -> Any:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return tensor.to(self.device) if isinstance(tensor, torch.Tensor) else tensor
        buffer = self._pinned.get(position)
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
            buffer = torch.empty(max(tensor.numel(), 1), dtype=tensor.dtype, pin_memory=True)
            self._pinned[position] = buffer
        staged = buffer[: tensor.numel()].view(tensor.shape)
        staged.copy_(tensor)
        return staged.to(self.device, non_blocking=True)


def on_device(forward: Forward, device: torch.device) -> Forward:
    """`forward` taking and returning CPU tensors while it runs on `device` (itself on the CPU)."""
    return forward if device.type == "cpu" else DeviceForward(forward, device)


def gpu_memory_bytes(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) bytes of the CUDA caching allocator on `device`."""
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
