"""Why a batch run stops: each error names what is at fault (a field, a file and line or row, an output prefix)."""

from __future__ import annotations

from slimserve.artifacts.errors import SlimServeError


class DatasetError(SlimServeError):
    """The input cannot be read as a dataset: no files, an unknown format, a truncated or unsafe file."""

    reason = "InvalidDataset"


class RecordError(SlimServeError):
    """One record the model cannot take; the message starts with its file and line (JSON Lines) or row."""

    reason = "MalformedRecord"

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where


class OutputConflict(SlimServeError):
    """The output prefix holds another run's results and spec.output.overwrite is false."""

    reason = "OutputExists"
