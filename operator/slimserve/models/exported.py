"""`torch.export` programs (`.pt2`) as models: loaded with `torch.export.load` (no pickle), used as modules."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from torch import nn

from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.digest import sha256_file


class ProgramError(ValueError):
    """A .pt2 file that cannot be loaded or is not a single-input classifier."""


def load_program_module(path: Path) -> nn.Module:
    """The program's module (a GraphModule with the program's parameters)."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a corrupt archive
        raise ProgramError(f"{path.name} is not a loadable torch.export program: {' '.join(str(exc).split())[:300]}") from None
    return program.module()


def classifier_shape(module: nn.Module) -> tuple[int, int]:
    """(features, classes) of a program taking one FP32 [B, F] tensor and returning [B, C]."""
    graph = getattr(module, "graph", None)
    placeholders = [node for node in graph.nodes if node.op == "placeholder"] if graph is not None else []
    user_inputs = [node for node in placeholders if not node.name.startswith(("p_", "b_", "c_"))]
    if len(user_inputs) != 1:
        raise ProgramError(f"expected a program with one input tensor, found {len(user_inputs)}")
    value = user_inputs[0].meta.get("val")
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int) or value.dtype != torch.float32:
        raise ProgramError(f"expected an FP32 input of shape [batch, features], found {getattr(value, 'dtype', '?')} {list(shape or [])}")
    features = int(shape[1])
    with torch.inference_mode():
        out = module(torch.zeros(2, features))
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        raise ProgramError("expected the program to return one [batch, classes] tensor of logits")
    return features, int(out.shape[1])


def program_assets(path: Path) -> Path:
    """A cache folder holding the program as `program.pt2`, keyed by its content (what artifacts copy)."""
    from slimserve.models.families import PROGRAM_FILE

    folder = cache_dir("programs", sha256_file(path)[:24])
    target = folder / PROGRAM_FILE
    if not target.is_file():
        staging = folder / f".{PROGRAM_FILE}.{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        shutil.copyfile(path, staging)
        staging.replace(target)
    return folder
