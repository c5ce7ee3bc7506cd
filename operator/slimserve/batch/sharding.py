"""Which records shard i of N scores, computed from the input listing alone, so every pod agrees unasked.

Several files: contiguous runs of the sorted files, whole (shard i takes files [i*k/N, (i+1)*k/N)), so the
parts in index order hold the records in input order; a shard left without a file writes an empty part.
One file: N record ranges of it, [i*n/N, (i+1)*n/N); a file without records is an error (a prefix may hold
empty files beside others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slimserve.batch.datasets import DataFile
from slimserve.batch.errors import DatasetError


@dataclass(frozen=True)
class FileRange:
    file: DataFile
    start: int
    stop: int  # not included

    @property
    def records(self) -> int:
        return self.stop - self.start


def shard_ranges(files: list[DataFile], index: int, total: int, count: Callable[[DataFile], int]) -> list[FileRange]:
    """The ranges shard `index` of `total` scores; `count(file)` is asked only for the files it needs."""
    if not 0 <= index < total:
        raise ValueError(f"shard index {index} is outside 0..{total - 1}")
    if len(files) == 1:
        (file,) = files
        records = count(file)
        if records == 0:
            raise DatasetError(f"spec.input.uri: {file.name} holds no records")
        return [FileRange(file, index * records // total, (index + 1) * records // total)]
    first, last = index * len(files) // total, (index + 1) * len(files) // total
    return [FileRange(file, 0, count(file)) for file in files[first:last]]
