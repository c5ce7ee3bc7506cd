"""Tensor payloads <-> numpy arrays, for every encoding the protocol allows.

Shared by both protocols: a JSON `data` list and gRPC typed `contents` are *sequences*; the REST binary
extension and gRPC `raw_*_contents` are *raw* little-endian bytes (BYTES elements each prefixed by a
4-byte little-endian length). Every error names the tensor (`what`, e.g. "input 'text'").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from slimserve.serving.errors import InvalidInput

# OIP datatype -> numpy dtype, little-endian as the protocol's raw form requires. BF16 has no numpy type.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})

# numpy kinds a sequence may hold for each datatype ('b' bool, 'i'/'u' integers, 'f' float).
_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "biuf", "FP32": "biuf", "FP64": "biuf"}
_INTEGER_KINDS = "biu"
_LENGTH_PREFIX = struct.Struct("<I")


def numpy_dtype(datatype: str, what: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        known = ", ".join(NUMPY_DTYPES)
        raise InvalidInput(f"{what}: datatype {datatype!r} is not supported (one of {known})") from None


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def decode_sequence(values: object, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A JSON `data` list (flat or nested) or gRPC typed contents -> array of `shape`."""
    dtype = numpy_dtype(datatype, what)
    if not isinstance(values, (list, tuple, Sequence)) or isinstance(values, (str, bytes)):
        raise InvalidInput(f"{what}: data must be an array, got {type(values).__name__}")
    if datatype == "BYTES":
        flat = _flatten_bytes(values, what)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            parsed = np.asarray(values)
        except ValueError:
            raise InvalidInput(f"{what}: data is a ragged nested array") from None
        kind = parsed.dtype.kind
        if parsed.size and kind not in _ACCEPTED_KINDS.get(datatype, _INTEGER_KINDS):
            found = {"U": "strings", "S": "strings", "O": "mixed values", "f": "non-integer numbers"}.get(kind, kind)
            raise InvalidInput(f"{what}: data holds {found}, which a {datatype} tensor cannot take")
        if kind in "iu" and dtype.kind in "iu" and parsed.size:
            limits = np.iinfo(dtype)
            if parsed.min() < limits.min or parsed.max() > limits.max:
                raise InvalidInput(f"{what}: a value is out of the range of {datatype}")
        array = parsed.astype(dtype, copy=False).reshape(-1) if parsed.size else np.empty(0, dtype)
    _check_count(array.size, shape, what)
    return array.reshape(shape)


def _flatten_bytes(values: Sequence, what: str) -> list[bytes]:
    flat: list[bytes] = []
    stack = [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, bytes):
                flat.append(item)
            elif isinstance(item, str):
                flat.append(item.encode("utf-8"))
            elif isinstance(item, (list, tuple)):
                stack.append(iter(item))
                break
            else:
                raise InvalidInput(f"{what}: BYTES data must hold strings, got {type(item).__name__}")
        else:
            stack.pop()
    return flat


def decode_raw(buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Raw little-endian bytes -> writable array of `shape`, checking the length exactly."""
    dtype = numpy_dtype(datatype, what)
    count = element_count(shape)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = _split_length_prefixed(memoryview(buffer), count, what)
        return array.reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"{what}: raw contents hold {len(buffer)} bytes but shape {list(shape)} of {datatype} needs {expected}"
        )
    # A copy into a bytearray keeps the array writable (torch.from_numpy warns on read-only memory).
    return np.frombuffer(bytearray(buffer), dtype=dtype).reshape(shape)


def _split_length_prefixed(view: memoryview, count: int, what: str) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"{what}: raw BYTES contents end inside an element's 4-byte length")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"{what}: raw BYTES element {len(items)} claims {length} bytes past the end")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    _check_count(len(items), None, what, expected=count)
    return items


def _check_count(found: int, shape: tuple[int, ...] | None, what: str, expected: int | None = None) -> None:
    expected = element_count(shape) if expected is None else expected
    if found != expected:
        shape_text = f"shape {list(shape)}" if shape is not None else "its shape"
        raise InvalidInput(f"{what}: {shape_text} needs {expected} elements, data has {found}")


def check_finite(array: np.ndarray, datatype: str, what: str) -> None:
    if datatype in FLOAT_DATATYPES and not np.isfinite(array).all():
        raise InvalidInput(f"{what}: contains NaN or infinity")


def encode_raw(array: np.ndarray, datatype: str) -> bytes:
    """Array -> raw little-endian bytes (BYTES: length-prefixed elements)."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH_PREFIX.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def json_data(array: np.ndarray, datatype: str, what: str) -> np.ndarray | list:
    """Array -> the flat `data` of a JSON tensor (numpy arrays go straight to orjson)."""
    if datatype == "BYTES":
        try:
            return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(f"{what}: holds non-UTF-8 bytes; request it with binary_data") from None
    return np.ascontiguousarray(array.reshape(-1), dtype=NUMPY_DTYPES[datatype].newbyteorder("="))


def as_datatype(array: np.ndarray, datatype: str) -> np.ndarray:
    """The model's output in the datatype its signature declares."""
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES" or array.dtype == dtype:
        return array
    return array.astype(dtype)
