"""From a dataset's columns to a model's inputs: which column feeds which input, and one batch as the arrays
`Servable.predict` takes. A record the model cannot take is named by its file and line or row."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slimserve.batch.datasets import RecordBatch
from slimserve.batch.errors import DatasetError, RecordError
from slimserve.models.servable import Servable, TensorSpec


def map_columns(
    inputs: Sequence[TensorSpec], fields: Mapping[str, str] | None, available: list[str] | None, file: str
) -> dict[str, str]:
    """Model input name -> column. `fields` maps inputs to columns; an input it leaves out reads the column of
    its own name, and a one-input model reads a one-column file (an `.npy`) whatever the column is called.
    `available` is None when each record names its own keys (JSON Lines): the reader checks them."""
    names = [spec.name for spec in inputs]
    for name in fields or {}:
        if name not in names:
            raise DatasetError(f"spec.input.fields: {name!r} is not an input of the model (its inputs: {', '.join(names)})")
    if not fields and len(names) == 1 and available is not None and len(available) == 1:
        return {names[0]: available[0]}
    mapping = {name: (fields or {}).get(name, name) for name in names}
    if available is not None:
        for name, column in mapping.items():
            if column not in available:
                field = f"spec.input.fields.{name}" if name in (fields or {}) else "spec.input.fields"
                raise DatasetError(
                    f"{field}: {file} has no column {column!r} for the model's input {name!r} "
                    f"(its columns: {', '.join(available)})"
                )
    return mapping


def check_id_column(id_field: str | None, available: list[str] | None, file: str) -> None:
    if id_field and available is not None and id_field not in available:
        raise DatasetError(f"spec.input.idField: {file} has no column {id_field!r} (its columns: {', '.join(available)})")


def model_inputs(inputs: Sequence[TensorSpec], mapping: Mapping[str, str], batch: RecordBatch) -> dict[str, np.ndarray]:
    """The batch's columns as the model's input arrays; RecordError naming the first record at fault."""
    return {spec.name: _tensor(spec, mapping[spec.name], batch) for spec in inputs}


def predict(servable: Servable, arrays: dict[str, np.ndarray], batch: RecordBatch) -> dict[str, np.ndarray]:
    """`servable.predict`; when the model refuses the batch, the first record it refuses alone is named."""
    try:
        return servable.predict(arrays)
    except ValueError as exc:
        for index in range(len(batch)):
            try:
                servable.predict({name: array[index : index + 1] for name, array in arrays.items()})
            except ValueError as single:
                raise RecordError(batch.where(index), str(single)) from None
        raise RecordError(f"{batch.where(0)} to {batch.where(len(batch) - 1)}", str(exc)) from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy type of an Open Inference Protocol numeric datatype: FP32 -> float32, INT64 -> int64, BOOL."""
    if datatype == "BOOL":
        return np.dtype(bool)
    match = re.fullmatch(r"(FP|INT|UINT)(8|16|32|64)", datatype)
    if match is None:
        raise DatasetError(f"the model's datatype {datatype!r} cannot be read from a dataset")
    return np.dtype({"FP": "float", "INT": "int", "UINT": "uint"}[match[1]] + match[2])


def _tensor(spec: TensorSpec, column: str, batch: RecordBatch) -> np.ndarray:
    values = batch.columns[column]
    what = f"column {column!r} (the model's input {spec.name!r})"
    if spec.datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        for index, value in enumerate(values):
            array[index] = _text(value, lambda problem: RecordError(batch.where(index), f"{what}: {problem}"))
        return array
    dtype = numpy_dtype(spec.datatype)
    for index, value in enumerate(values if not isinstance(values, np.ndarray) else ()):
        problem = _row_problem(spec, value)
        if problem:
            raise RecordError(batch.where(index), f"{what}: {problem}")
    array = np.asarray(values)
    problem = _kind_problem(spec, array) or _shape_problem(spec, array.shape[1:])
    if problem:  # a NumPy file: every row has the array's type and shape
        raise RecordError(batch.where(0), f"{what}: {problem}")
    return array.astype(dtype, copy=False)


def _text(value: Any, error) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise error(f"expected text, got {_describe(value)}")


def _row_problem(spec: TensorSpec, value: Any) -> str | None:
    try:
        array = np.asarray(value)
    except ValueError:
        return "a ragged nested list"
    return _kind_problem(spec, array, value) or _shape_problem(spec, array.shape)


def _kind_problem(spec: TensorSpec, array: np.ndarray, value: Any = None) -> str | None:
    accepted = "b" if spec.datatype == "BOOL" else "biuf"
    if array.size and array.dtype.kind not in accepted:
        return f"expected numbers for {spec.datatype}, got {_describe(array if value is None else value)}"
    return None


def _shape_problem(spec: TensorSpec, shape: tuple[int, ...]) -> str | None:
    expected = spec.shape[1:]
    if len(shape) != len(expected) or any(want not in (-1, got) for want, got in zip(expected, shape)):
        return f"expected shape {list(expected)} per record, got {list(shape)}"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    if isinstance(value, list):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a list of {', '.join(kinds) or 'nothing'}"
    return f"{type(value).__name__} {value!r:.40}"
