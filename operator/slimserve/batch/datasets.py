"""The datasets a BatchInference scores: JSON Lines, Parquet and NumPy `.npy`/`.npz`, one file or every file
under a prefix, on file://, pvc:// or s3://.

Reading streams: JSON Lines line by line, Parquet by record batches of the row groups a range touches, `.npy`
memory-mapped, `.npz` members from the zip stream; no dataset is held whole in memory. Nothing is unpickled:
an array of Python objects is refused from its header, before numpy reads it (`allow_pickle=False` besides).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from slimserve.api.batch_inference import INPUT_FORMAT_EXTENSIONS, InputFormat, input_format_of
from slimserve.api.uri import S3
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.paths import contained_path
from slimserve.artifacts.storage import local_path, parse_storage_uri, resolve_uri, s3_client
from slimserve.batch.errors import DatasetError, RecordError

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

FORMATS = get_args(InputFormat)


@dataclass(frozen=True)
class DataFile:
    uri: str  # this one file
    name: str  # its path under the input prefix (its own name for a single-file input): messages and ids
    format: str

    def fetch(self, s3: "S3Spec | None" = None) -> Path:
        """A local path of the file: itself for file:// and pvc://, a download into the cache for s3://."""
        return resolve_uri(self.uri, s3)


@dataclass
class RecordBatch:
    """Consecutive records of one file, column by column."""

    file: str
    rows: range  # the records' numbers in their file, from 0
    columns: dict[str, Sequence[Any]]  # one value per record, by column (a list, or an array for NumPy files)
    lines: list[int] | None = None  # JSON Lines: each record's line, from 1

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        """`texts.jsonl line 12` or `digits.npy row 11`: where record `index` of the batch is."""
        if self.lines is not None:
            return f"{self.file} line {self.lines[index]}"
        return f"{self.file} row {self.rows[index]}"


def list_dataset(uri: str, data_format: str | None = None, s3: "S3Spec | None" = None) -> list[DataFile]:
    """The files of `uri` in the order every shard agrees on (their paths, sorted); DatasetError when none.

    A prefix (a URI ending in `/`, or a directory) takes every file below it but hidden ones (`.name`,
    `_name`, e.g. `_SUCCESS`); a file whose format is neither given nor told by its extension is an error,
    never silently left out.
    """
    try:
        if parse_storage_uri(uri).scheme == S3:
            named = _s3_files(uri, s3)
        else:
            named = _local_files(uri)
    except StorageError as exc:
        raise DatasetError(f"spec.input.uri: {exc}", reason=exc.reason) from None
    files = [DataFile(file_uri, name, _format_of(name, data_format)) for name, file_uri in sorted(named.items())]
    if not files:
        raise DatasetError(f"spec.input.uri: {uri} holds no data files")
    return files


def _local_files(uri: str) -> dict[str, str]:
    root = local_path(uri)
    if not root.exists():
        raise DatasetError(f"spec.input.uri: {uri}: no such file or directory ({root})", reason="NotFound")
    if root.is_file():
        return {root.name: uri}
    base = uri.rstrip("/")
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if _hidden(relative) or not path.is_file():
            continue
        contained_path(root, relative, what=f"{uri!r}: file")  # a symlink may not lead out of the prefix
        files[relative] = f"{base}/{relative}"
    return files


def _s3_files(uri: str, s3: "S3Spec | None") -> dict[str, str]:
    parsed = parse_storage_uri(uri)
    if not uri.endswith("/"):
        return {parsed.path.rpartition("/")[2]: uri}
    client = s3_client(s3)
    files = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=parsed.authority, Prefix=parsed.path):
            for item in page.get("Contents", []):
                relative = item["Key"][len(parsed.path):]
                if relative and not relative.endswith("/") and not _hidden(relative):
                    files[relative] = f"s3://{parsed.authority}/{item['Key']}"
    except Exception as exc:  # botocore raises many types; all mean the same to the user
        raise StorageError(f"{uri!r}: cannot list the prefix: {exc}") from None
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _format_of(name: str, data_format: str | None) -> str:
    if data_format:
        return data_format
    found = input_format_of(name)
    if found is None:
        raise DatasetError(
            f"spec.input: cannot tell the format of {name!r} from its extension; "
            f"set spec.input.format ({', '.join(FORMATS)}) or use {', '.join(INPUT_FORMAT_EXTENSIONS)}"
        )
    return found


# ---- reading -------------------------------------------------------------------------------------------


def column_names(path: Path, file: DataFile) -> list[str] | None:
    """The columns every record of the file has; None for JSON Lines, whose keys each record names itself."""
    if file.format == "parquet":
        return list(_parquet(path, file).schema_arrow.names)
    if file.format == "npy":
        _npy_header(path, file)
        return [Path(file.name).stem]
    if file.format == "npz":
        return list(_npz_headers(path, file))
    return None


def count_records(path: Path, file: DataFile) -> int:
    """How many records the file holds (JSON Lines: its lines that are not blank)."""
    if file.format == "jsonl":
        with path.open("rb") as stream:
            return sum(1 for line in stream if line.strip())
    if file.format == "parquet":
        return _parquet(path, file).metadata.num_rows
    if file.format == "npy":
        return _npy_header(path, file)[0][0]
    counts = {name: header[0][0] for name, header in _npz_headers(path, file).items()}
    if len(set(counts.values())) > 1:
        raise DatasetError(f"{file.name}: its arrays differ in length ({counts}); each holds one value per record")
    return next(iter(counts.values()), 0)


def read_batches(
    path: Path, file: DataFile, columns: Sequence[str], start: int, stop: int, batch_size: int
) -> Iterator[RecordBatch]:
    """Records `start` to `stop` (not included) of the file, `batch_size` at a time, only the given columns."""
    readers = {"jsonl": _jsonl_batches, "parquet": _parquet_batches, "npy": _npy_batches, "npz": _npz_batches}
    yield from readers[file.format](path, file, list(columns), start, stop, batch_size)


def _jsonl_batches(path, file, columns, start, stop, batch_size) -> Iterator[RecordBatch]:
    values: dict[str, list[Any]] = {name: [] for name in columns}
    lines: list[int] = []
    first = record = start
    with path.open("rb") as stream:
        index = -1
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            index += 1
            if index < start:
                continue
            if index >= stop:
                break
            record = _json_record(line, f"{file.name} line {line_number}")
            for name in columns:
                if name not in record:
                    keys = ", ".join(sorted(record)) or "none"
                    raise RecordError(f"{file.name} line {line_number}", f"no key {name!r} (its keys: {keys})")
                values[name].append(record[name])
            lines.append(line_number)
            if len(lines) == batch_size:
                yield RecordBatch(file.name, range(first, index + 1), values, lines)
                values, lines, first = {name: [] for name in columns}, [], index + 1
    if lines:
        yield RecordBatch(file.name, range(first, first + len(lines)), values, lines)


def _json_record(line: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        raise RecordError(where, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RecordError(where, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise RecordError(where, f"expected a JSON object, got {type(record).__name__}")
    return record


def _parquet(path: Path, file: DataFile):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DatasetError(f"{file.name}: not a readable Parquet file (truncated or corrupt?): {exc}") from None


def _parquet_batches(path, file, columns, start, stop, batch_size) -> Iterator[RecordBatch]:
    import pyarrow

    parquet = _parquet(path, file)
    groups, offset, row = [], 0, None
    for group in range(parquet.num_row_groups):  # only the row groups that hold part of the range
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            groups.append(group)
            row = offset if row is None else row
        offset += rows
    row = row or 0
    # Re-cut to `batch_size`: row groups do not end where batches do, and every format yields the same batches.
    pending, first = [], max(start, row)
    try:
        for chunk in parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns):
            low, high = max(start, row), min(stop, row + chunk.num_rows)
            if low < high:
                pending.append(chunk.slice(low - row, high - low))
            row += chunk.num_rows
            table = pyarrow.Table.from_batches(pending, schema=chunk.schema)
            while table.num_rows >= batch_size:
                yield _parquet_batch(file, table.slice(0, batch_size), first, columns)
                table, first = table.slice(batch_size), first + batch_size
            pending = table.to_batches()
        if pending and sum(batch.num_rows for batch in pending):
            yield _parquet_batch(file, pyarrow.Table.from_batches(pending), first, columns)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DatasetError(f"{file.name}: unreadable after row {row} (truncated or corrupt?): {exc}") from None


def _parquet_batch(file: DataFile, table, first: int, columns: list[str]) -> RecordBatch:
    return RecordBatch(file.name, range(first, first + table.num_rows), {name: table.column(name).to_pylist() for name in columns})


# NumPy: the header says the dtype before anything is loaded, so an array of objects (which only pickle can
# restore) is refused without reading it.
_Header = tuple[tuple[int, ...], bool, np.dtype]


def _read_header(stream, where: str) -> _Header:
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(stream)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{where}: not a NumPy array file: {exc}") from None
    if dtype.hasobject:
        raise DatasetError(
            f"{where}: holds Python objects, which only pickle can load and SlimServe never unpickles; "
            "save numbers or fixed-width strings instead"
        )
    if not shape:
        raise DatasetError(f"{where}: a single value, not one row per record")
    return shape, fortran_order, dtype


def _npy_header(path: Path, file: DataFile) -> _Header:
    with path.open("rb") as stream:
        return _read_header(stream, file.name)


def _npy_batches(path, file, columns, start, stop, batch_size) -> Iterator[RecordBatch]:
    _npy_header(path, file)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{file.name}: cannot read the array (truncated?): {exc}") from None
    (name,) = columns
    for low in range(start, stop, batch_size):
        high = min(stop, low + batch_size)
        yield RecordBatch(file.name, range(low, high), {name: np.array(array[low:high])})


def _npz_headers(path: Path, file: DataFile) -> dict[str, _Header]:
    with _npz(path, file) as archive:
        headers = {}
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as stream:
                    headers[member.removesuffix(".npy")] = _read_header(stream, f"{file.name} array {member}")
        return headers


def _npz(path: Path, file: DataFile) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{file.name}: not a readable .npz file (truncated or corrupt?): {exc}") from None


def _npz_batches(path, file, columns, start, stop, batch_size) -> Iterator[RecordBatch]:
    with _npz(path, file) as archive:
        streams = [_MemberRows(archive, name, file.name, start) for name in columns]
        try:
            for low in range(start, stop, batch_size):
                high = min(stop, low + batch_size)
                yield RecordBatch(file.name, range(low, high), {s.name: s.read(high - low) for s in streams})
        finally:
            for stream in streams:
                stream.close()


class _MemberRows:
    """Rows of one array of an .npz, read from the zip stream (a Fortran-ordered array is read whole)."""

    def __init__(self, archive: zipfile.ZipFile, name: str, file_name: str, start: int):
        self.name, self.where = name, f"{file_name} array {name}"
        try:
            self._stream = archive.open(f"{name}.npy")
        except KeyError:
            raise DatasetError(f"{self.where}: no such array") from None
        shape, fortran_order, self._dtype = _read_header(self._stream, self.where)
        self._row_shape = shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self._dtype.itemsize
        self._whole = None
        if fortran_order:
            self._stream.seek(0)
            self._whole = np.lib.format.read_array(self._stream, allow_pickle=False)[start:]
        elif start:
            self._stream.seek(self._stream.tell() + start * self._row_bytes)

    def read(self, rows: int) -> np.ndarray:
        if self._whole is not None:
            taken, self._whole = self._whole[:rows], self._whole[rows:]
            return np.ascontiguousarray(taken)
        data = self._stream.read(rows * self._row_bytes)
        if len(data) != rows * self._row_bytes:
            raise DatasetError(f"{self.where}: ends early (truncated?)")
        return np.frombuffer(data, dtype=self._dtype).reshape((rows, *self._row_shape)).copy()

    def close(self) -> None:
        self._stream.close()
