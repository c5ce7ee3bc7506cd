"""A part's records, batch by batch, into a local file: `{"id": ..., "<output>": [...]}` per input record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimserve.batch.errors import DatasetError

OUTPUT_FORMATS = ("jsonl", "parquet")


class JsonLinesWriter:
    def __init__(self, path: Path, output_names: Sequence[str]):
        self._stream = path.open("w", encoding="utf-8")
        self._names = list(output_names)
        self.records = 0

    def write(self, ids: Sequence[Any], outputs: dict[str, np.ndarray]) -> None:
        columns = {name: outputs[name].tolist() for name in self._names}
        for row, record_id in enumerate(ids):
            record = {"id": record_id, **{name: values[row] for name, values in columns.items()}}
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.records += len(ids)

    def close(self) -> None:
        self._stream.flush()
        _sync(self._stream.fileno())
        self._stream.close()


class ParquetWriter:
    """Arrays of one value per record as Parquet columns: a vector per record a fixed-size list column."""

    def __init__(self, path: Path, output_names: Sequence[str]):
        self._path = path
        self._names = list(output_names)
        self._writer = None
        self.records = 0

    def write(self, ids: Sequence[Any], outputs: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.table({"id": pa.array(list(ids)), **{name: _column(outputs[name]) for name in self._names}})
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._path, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise DatasetError(f"spec.input.idField: its values cannot make one Parquet column (mixed types?): {exc}") from None
        self.records += len(ids)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:  # an empty part: the columns without rows
            schema = pa.schema([("id", pa.null()), *[(name, pa.null()) for name in self._names]])
            self._writer = pq.ParquetWriter(self._path, schema)
        self._writer.close()
        with self._path.open("rb+") as stream:
            _sync(stream.fileno())


def _column(array: np.ndarray):
    import pyarrow as pa

    if array.ndim == 1:
        return pa.array(array)
    flat = np.ascontiguousarray(array).reshape(len(array), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _sync(fileno: int) -> None:
    import os

    os.fsync(fileno)  # on disk before the rename publishes it: a node lost then leaves no empty part


def part_writer(output_format: str, path: Path, output_names: Sequence[str]):
    return ParquetWriter(path, output_names) if output_format == "parquet" else JsonLinesWriter(path, output_names)
