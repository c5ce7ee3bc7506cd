"""Checks of one batch of inputs against a model's signature; errors name the tensor (the server maps them to 400)."""

from __future__ import annotations

import numpy as np


def input_array(inputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    if not isinstance(inputs, dict):
        raise ValueError(f"inputs: expected a dict of arrays by tensor name, got {type(inputs).__name__}")
    if name not in inputs:
        raise ValueError(f"input '{name}': missing (got {sorted(inputs)})")
    array = np.asarray(inputs[name])
    if array.ndim == 0 or array.shape[0] < 1:
        raise ValueError(f"input '{name}': expected a batch of at least one row, got shape {list(array.shape)}")
    return array


def float_rows(inputs: dict[str, np.ndarray], name: str, width: int) -> np.ndarray:
    """A float32 [B, width] batch with finite values."""
    array = input_array(inputs, name)
    if array.dtype.kind != "f":
        raise ValueError(f"input '{name}': expected FP32 data, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"input '{name}': expected shape [-1, {width}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"input '{name}': contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def text_rows(inputs: dict[str, np.ndarray], name: str) -> list[str]:
    """A [B] batch of UTF-8 byte strings (str accepted too) as Python strings."""
    array = input_array(inputs, name)
    if array.ndim != 1:
        raise ValueError(f"input '{name}': expected shape [-1], got {list(array.shape)}")
    texts = []
    for index, item in enumerate(array.tolist()):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, (bytes, bytearray)):
            try:
                texts.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"input '{name}': element {index} is not valid UTF-8") from None
        else:
            raise ValueError(f"input '{name}': expected BYTES elements, element {index} is {type(item).__name__}")
    return texts
