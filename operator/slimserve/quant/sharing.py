"""Copies of a module's structure that share its weights' memory instead of duplicating it."""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def copy_sharing_weights(model: M) -> M:
    """A deep copy of `model` whose parameters and buffers are new tensor objects over the same storage.

    Swapping a submodule, re-registering or casting a parameter (`module.half()`) in the copy leaves the
    original as it was; writing into a tensor in place would change both, so the copy is for transforms
    that build new modules (quantization, fusion, compiling), not for training. A model of memory-mapped
    weights stays mapped: nothing is read or copied here."""
    memo: dict[int, object] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) in memo:
            continue
        shared = tensor.detach()
        memo[id(tensor)] = nn.Parameter(shared, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else shared
    return copy.deepcopy(model, memo)
