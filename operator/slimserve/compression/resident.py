"""What a compression keeps resident: the pages of memory-mapped weights it is not using, and freed heap.

A model loaded from safetensors is memory-mapped: the weights are the file's pages, faulted in as a forward
reads them. Once read they stay in the process's resident set until the process unmaps them, although the
kernel keeps them in its page cache anyway. Between the steps that read the fp32 weights (scoring the
original, quantizing it, the final side-by-side measurement) nothing uses them, so their pages are
released (`madvise(MADV_DONTNEED)`): a later read faults them in again from the page cache, unchanged.

Only clean mappings of a file are released: a private mapping that was written to (copy-on-write pages,
`Anonymous` in /proc/self/smaps) would lose the writes, so it is left as it is. Elsewhere than Linux
nothing is released.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

MADV_DONTNEED = 4  # from <sys/mman.h>, the same on every Linux architecture
SMAPS = "/proc/self/smaps"
_HEADER = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    path: str
    resident_bytes: int
    anonymous_bytes: int  # private pages written to: the mapping no longer matches its file

    def overlaps(self, start: int, end: int) -> bool:
        return start < self.end and self.start < end


def file_mappings(smaps: str = SMAPS) -> list[Mapping]:
    """This process's mappings of regular files, with their resident and copy-on-write bytes."""
    mappings: list[Mapping] = []
    try:
        with open(smaps) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return mappings
    header: list[str] | None = None
    fields: dict[str, int] = {}

    def finish() -> None:
        if header is not None and len(header) >= 6 and header[5].startswith("/") and header[4] != "0":
            start, end = (int(address, 16) for address in header[0].split("-"))
            mappings.append(Mapping(start, end, " ".join(header[5:]), fields.get("Rss", 0), fields.get("Anonymous", 0)))

    for line in lines:
        if _HEADER.match(line):  # "start-end perms offset dev inode [path]", then its "Field: N kB" lines
            finish()
            header, fields = line.split(), {}
        elif line.endswith(" kB"):
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0]) * 1024
    finish()
    return mappings


def _storages(tensors: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    ranges = []
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.device.type == "cpu" and storage.nbytes():
            ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    return ranges


def release_mapped_weights(model: nn.Module) -> int:
    """Release the resident pages of the file mappings `model`'s parameters and buffers live in (clean ones
    only); bytes released. The weights stay valid: the next read faults them in from the page cache."""
    storages = _storages((*model.parameters(), *model.buffers()))
    if not storages:
        return 0
    libc = _libc()
    if libc is None:
        return 0
    released = 0
    for mapping in file_mappings():
        if mapping.anonymous_bytes or not mapping.resident_bytes:
            continue
        if any(mapping.overlaps(start, end) for start, end in storages):
            if libc.madvise(ctypes.c_void_p(mapping.start), ctypes.c_size_t(mapping.end - mapping.start), MADV_DONTNEED) == 0:
                released += mapping.resident_bytes
    return released


def map_from_scratch_file(model: nn.Module) -> nn.Module:
    """Move `model`'s parameters and buffers into a scratch safetensors file and map them back from it (the
    same values; tied tensors still share one copy), so that `release_mapped_weights` can drop the pages of those a
    compiled copy does not read (it keeps its own prepacked constants). Buffers left out of the state dict
    move too: a module's device packing and its copies for other kernels (int4-weight-only's) are the
    largest part of a served form. The file is unlinked at once: its pages live as long as the mapping.
    Returns `model`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    # Every (module, kind, name) slot, tied ones included; assigned directly rather than by load_state_dict,
    # whose hooks may rebuild derived buffers in anonymous memory.
    slots = [
        (module, kind, name, tensor)
        for module in model.modules()
        for kind, tensors in (("parameter", module._parameters), ("buffer", module._buffers))
        for name, tensor in tensors.items()
        if tensor is not None and tensor.numel()
    ]
    if any(tensor.device.type != "cpu" for *_, tensor in slots):
        return model  # device memory: nothing resident to release
    stored_as: list[str] = []  # per slot, the key its tensor is stored under (its own, or a tied one's)
    first_view: dict[tuple, str] = {}
    to_store: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for index, (*_, tensor) in enumerate(slots):
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
                tensor.dtype)
        key = first_view.setdefault(view, str(index))
        stored_as.append(key)
        if key == str(index):  # safetensors stores no two tensors over one storage: other views are copied
            shared = view[0] in storages or not tensor.is_contiguous()
            to_store[key] = tensor.detach().clone(memory_format=torch.contiguous_format) if shared else tensor.detach()
            storages.add(view[0])
    with tempfile.NamedTemporaryFile(prefix="slimserve-candidate-", suffix=".safetensors") as scratch:
        save_file(to_store, scratch.name)
        del to_store
        with safe_open(scratch.name, framework="pt") as stored:
            mapped = {key: stored.get_tensor(key) for key in stored.keys()}
    parameters: dict[str, nn.Parameter] = {}  # one Parameter per stored tensor: tied ones stay one object
    for (module, kind, name, tensor), key in zip(slots, stored_as):
        if kind == "parameter":
            module._parameters[name] = parameters.setdefault(key, nn.Parameter(mapped[key], requires_grad=tensor.requires_grad))
        else:
            module._buffers[name] = mapped[key]
    return model


def trim_heap() -> bool:
    """Give the heap's free memory back to the system (glibc's malloc_trim): what the compiler and the
    evaluation freed stays resident in malloc's arenas otherwise. False where there is no glibc."""
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:
        return False


def _libc() -> ctypes.CDLL | None:
    if not os.path.exists(SMAPS):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc
