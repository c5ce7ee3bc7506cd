"""One shard of a BatchInference, start to end: what a pod of its Indexed Job runs (`slimserve batch`).

check the output prefix -> skip a part that verifies -> list and split the input -> load the model -> score in
batches into a staging file -> publish the part, then its sidecar -> write the manifest when every part is there.

The model is loaded by the server's own code (`slimserve.models.load_servable`): the same servables, no HTTP.
A record the model cannot take fails the shard naming its file and line or row; what was published stays,
and the shard's unfinished records are never published as a part.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.api.batch_inference import ManifestRef, PartRef, ShardProgress
from slimserve.batch.datasets import DataFile, RecordBatch, column_names, count_records, list_dataset, read_batches
from slimserve.batch.inputs import check_id_column, map_columns, model_inputs, predict
from slimserve.batch.output import (
    OutputPrefix,
    check_prefix,
    file_digest,
    finished_part,
    part_name,
    sidecar,
    sidecar_name,
    canonical_json,
    write_manifest_if_complete,
)
from slimserve.batch.sharding import FileRange, shard_ranges
from slimserve.batch.writers import part_writer

if TYPE_CHECKING:
    from slimserve.api.batch_inference import BatchInferenceSpec
    from slimserve.batch.progress import ShardReporter
    from slimserve.models.servable import Servable


Emit = Callable[[dict[str, Any]], None]  # one event of the shard's JSON-lines log


def local_run_id(spec_text: str, shards: int) -> str:
    """The run id of a run without a cluster: the same spec split the same way is the same run (it resumes)."""
    return f"local/{hashlib.sha256(spec_text.encode()).hexdigest()[:16]}/{shards}"


def cluster_run_id(namespace: str, name: str, uid: str, generation: int | None) -> str:
    return f"{namespace}/{name}/{uid}/{generation}"


@dataclass
class Shard:
    spec: "BatchInferenceSpec"
    index: int
    shards: int
    run_id: str
    artifact_digest: str | None = None  # pins the model's artifact (a CompressionJob's)
    batch_size: int | None = None  # overrides spec.batchSize (benchmarks)
    records_done: int = 0  # so far: what a failure reports
    records_total: int | None = None
    _fetched: dict[str, Path] = field(default_factory=dict)

    def fetch(self, file: DataFile) -> Path:
        if file.uri not in self._fetched:
            self._fetched[file.uri] = file.fetch(self.spec.s3)
        return self._fetched[file.uri]


@dataclass
class ShardOutcome:
    state: str  # Succeeded or Skipped
    records: int
    part: PartRef
    manifest: ManifestRef | None

    def entry(self) -> ShardProgress:
        return ShardProgress(generation=0, state=self.state, records_done=self.records, records_total=self.records,
                             part=self.part, manifest=self.manifest)


def run_shard(shard: Shard, emit: Emit, reporter: "ShardReporter | None" = None) -> ShardOutcome:
    """Score one shard and publish its part; raises a SlimServeError (RecordError, DatasetError, ...) on failure."""
    spec = shard.spec
    prefix = OutputPrefix(spec.output.uri, spec.s3)
    check_prefix(prefix, shard.run_id, spec.output.overwrite)
    done = finished_part(prefix, shard.index, shard.run_id)
    if done is not None:
        emit({"event": "skipped", "shard": shard.index, "part": prefix.uri_of(done["part"]), "records": done["records"]})
        return _outcome(prefix, shard, "Skipped", done)

    files = list_dataset(spec.input.uri, spec.input.format, spec.s3)
    ranges = shard_ranges(files, shard.index, shard.shards, lambda file: count_records(shard.fetch(file), file))
    total = shard.records_total = sum(piece.records for piece in ranges)
    emit({"event": "started", "shard": shard.index, "recordsTotal": total, "runId": shard.run_id})

    from slimserve.models import load_servable

    servable = load_servable(
        spec.model.uri, s3=spec.s3, expected_digest=shard.artifact_digest,
        allow_outside_budget=spec.model.allow_outside_budget,
    )
    emit({"event": "scoring", "shard": shard.index, "model": servable.info.name, "time": time.time()})
    name = part_name(shard.index, spec.output.format)
    prefix.discard_staging(name)
    staged = prefix.staging(name)
    throttle = _Throttle()
    try:
        writer = part_writer(spec.output.format, staged, [output.name for output in servable.info.outputs])
        try:
            for piece in ranges:
                for batch, outputs in _scored(shard, servable, piece):
                    writer.write(_ids(batch, spec.input.id_field, single_file=len(files) == 1), outputs)
                    shard.records_done = writer.records
                    if throttle.due():
                        emit({"event": "progress", "shard": shard.index, "recordsDone": writer.records, "recordsTotal": total})
                    if reporter is not None:
                        reporter.running(writer.records, total)
        finally:
            writer.close()
        digest = file_digest(staged)
        records = writer.records
        prefix.publish(staged, name)
    finally:
        staged.unlink(missing_ok=True)
    model = {"uri": spec.model.uri or "", "digest": servable.info.digest}
    written = sidecar(shard.run_id, shard.index, name, records, digest, model)
    prefix.write(sidecar_name(shard.index), canonical_json(written))
    emit({"event": "part", "shard": shard.index, "part": prefix.uri_of(name), "records": records, "sha256": digest,
          "time": time.time()})
    return _outcome(prefix, shard, "Succeeded", written)


def _outcome(prefix: OutputPrefix, shard: Shard, state: str, written: dict[str, Any]) -> ShardOutcome:
    manifest = write_manifest_if_complete(prefix, shard.run_id, shard.shards)
    part = PartRef(uri=prefix.uri_of(written["part"]), digest=written["sha256"], records=written["records"])
    found = ManifestRef(uri=manifest.uri, digest=manifest.digest) if manifest else None
    return ShardOutcome(state, written["records"], part, found)


def _scored(shard: Shard, servable: "Servable", piece: FileRange):
    """(batch, the model's outputs) of a file range, in order."""
    spec = shard.spec
    path = shard.fetch(piece.file)
    available = column_names(path, piece.file)
    mapping = map_columns(servable.info.inputs, spec.input.fields, available, piece.file.name)
    check_id_column(spec.input.id_field, available, piece.file.name)
    columns = sorted({*mapping.values(), *([spec.input.id_field] if spec.input.id_field else [])})
    batch_size = shard.batch_size or spec.batch_size
    for batch in read_batches(path, piece.file, columns, piece.start, piece.stop, batch_size):
        yield batch, predict(servable, model_inputs(servable.info.inputs, mapping, batch), batch)


def _ids(batch: RecordBatch, id_field: str | None, *, single_file: bool) -> list[Any]:
    """Each record's id: its idField, else its row in the file (`NAME:ROW` when the input has several files)."""
    if id_field:
        values = batch.columns[id_field]
        return values.tolist() if hasattr(values, "tolist") else list(values)
    return list(batch.rows) if single_file else [f"{batch.file}:{row}" for row in batch.rows]


class _Throttle:
    """The first event at once, then at most one a second."""

    def __init__(self, interval: float = 1.0):
        self.interval, self._last = interval, None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


def json_lines(stream) -> Emit:
    def emit(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        stream.flush()

    return emit
