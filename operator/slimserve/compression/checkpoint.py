"""Checkpoints of a compression run: each finished step's model, next to the output, so that a run that is
killed (an evicted or preempted pod) continues after the last finished step instead of starting over.

A checkpoint is a hidden directory beside the artifact's (`.NAME.checkpoint/`): one safetensors file per
finished step (the model as the step left it: float weights, or the quantized tensors with their JSON
recipe) and `checkpoint.json`, which lists the steps with each file's sha256 and names the run it belongs
to: a digest of the spec's model, steps and evaluation, and the CompressionJob's generation. Nothing is
unpickled. A checkpoint of another spec or generation, one that does not parse, or a file whose digest does
not match is ignored (and replaced as the run goes on). The artifact, once written, makes the checkpoint
obsolete: it is removed. Outputs on S3 are not checkpointed (the pod's disk does not outlive the pod).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from slimserve.api.compression_job import CompressionJobSpec
from slimserve.artifacts.artifact import write_weights
from slimserve.artifacts.digest import sha256_file
from slimserve.artifacts.errors import StorageError
from slimserve.artifacts.sparse import unpack_sparse
from slimserve.artifacts.storage import delete_prefix, get_object, local_path, parse_storage_uri, put_object
from slimserve.compression.state import Candidate, ModelState

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

log = logging.getLogger(__name__)

INDEX_NAME = "checkpoint.json"
FORMAT = "slimserve-checkpoint/v1"
_MASK_PREFIX = "__masks__."  # unstructured-pruning masks ride in the step's file under this prefix
_MAX_INDEX_BYTES = 16 << 20  # checkpoint.json lists steps and candidates: kilobytes


def run_key(spec: CompressionJobSpec, generation: int | None) -> str:
    """What a checkpoint must match to be resumed: the spec's model, steps and evaluation, and the generation."""
    relevant = spec.model_dump(mode="json", by_alias=True, include={"model", "steps", "evaluation"})
    text = json.dumps({"spec": relevant, "generation": generation}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def checkpoint_name(output_uri: str) -> str:
    """`.NAME.checkpoint`: the checkpoint's folder (or S3 prefix) beside the artifact's."""
    parsed = parse_storage_uri(output_uri)
    name = (local_path(output_uri).name if parsed.scheme != "s3" else parsed.path.rstrip("/").rpartition("/")[2])
    return f".{name or 'artifact'}.checkpoint"


def checkpoint_dir(output_uri: str) -> Path:
    """`.NAME.checkpoint/` beside a local output."""
    return local_path(output_uri).parent / checkpoint_name(output_uri)


class LocalStore:
    """A checkpoint in a folder beside a file:// or pvc:// output; files are written in place."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __str__(self) -> str:
        return str(self.directory)

    def scratch(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory

    def commit(self, staged: Path, name: str) -> None:
        staged.replace(self.directory / name)

    def fetch(self, name: str, max_bytes: int) -> Path | None:
        path = self.directory / name
        return path if path.is_file() else None

    def done_with(self, path: Path) -> None:
        pass  # the checkpoint's own file

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class S3Store:
    """A checkpoint under an S3 prefix beside an s3:// output, written and read through a scratch folder."""

    def __init__(self, uri: str, s3: "S3Spec | None"):
        self.uri, self.s3 = uri.rstrip("/"), s3
        self._scratch: Path | None = None

    def __str__(self) -> str:
        return self.uri

    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="slimserve-checkpoint-"))
        return self._scratch

    def commit(self, staged: Path, name: str) -> None:
        put_object(staged, f"{self.uri}/{name}", self.s3)
        staged.unlink()  # the pod's disk keeps no copy of what is uploaded

    def fetch(self, name: str, max_bytes: int) -> Path | None:
        destination = self.scratch() / name
        return destination if get_object(f"{self.uri}/{name}", destination, max_bytes, self.s3) else None

    def done_with(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def remove(self) -> None:
        delete_prefix(self.uri, self.s3)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def checkpoint_store(output_uri: str, s3: "S3Spec | None" = None) -> LocalStore | S3Store:
    """Where the checkpoint of a run writing `output_uri` lives: beside it, on the same storage."""
    parsed = parse_storage_uri(output_uri)
    if parsed.scheme != "s3":
        return LocalStore(checkpoint_dir(output_uri))
    parent = parsed.path.rstrip("/").rpartition("/")[0]
    return S3Store("/".join(filter(None, [f"s3://{parsed.authority}", parent, checkpoint_name(output_uri)])), s3)


@dataclass
class FinishedStep:
    """A step as the run kept it: what the final measurement and the report need of it."""

    label: str
    state: ModelState
    metric: float
    note: str


@dataclass
class Resumed:
    steps: list[FinishedStep]
    candidates: list[Candidate]
    within_budget: bool

    @property
    def resumed_from(self) -> str:
        last = len(self.steps) - 1
        return f"spec.steps[{last}] {self.steps[last].label}"


class Checkpoints:
    """Writes a run's checkpoint step by step, and reads back one it may resume."""

    def __init__(self, store: LocalStore | S3Store, key: str):
        self.store = store
        self.key = key
        self._entries: list[dict[str, Any]] = []

    def save(self, index: int, step: FinishedStep, candidates: list[Candidate], within_budget: bool) -> None:
        """Record step `index` as finished; the index is replaced last, so a kill leaves the previous one whole."""
        scratch = self.store.scratch()
        if index == 0 or len(self._entries) != index:
            self._entries = self._entries[:index]
        name = f"step-{index}.safetensors"
        weights = scratch / f".{name}.partial"
        tensors, quantization = step.state.tensors()
        encoding = write_weights(weights, {**tensors, **{_MASK_PREFIX + k: v for k, v in step.state.masks.items()}})
        self._entries.append({
            "label": step.label, "metric": step.metric, "note": step.note, "family": step.state.family.name,
            "recipe": step.state.recipe, "parameters": step.state.parameters,
            "quantizationConfig": step.state.quantization.to_json() if step.state.quantization else None,
            "quantization": quantization, "tensorEncoding": encoding,
            "file": name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
        })
        try:
            self.store.commit(weights, name)
        except StorageError as exc:  # a checkpoint saves time on a restart; the run goes on without this one
            log.warning("step %d not checkpointed: %s", index, exc)
            return
        index_json = {
            "format": FORMAT, "key": self.key, "steps": self._entries, "withinBudget": within_budget,
            "candidates": [c.as_json() for c in candidates],
        }
        staging = scratch / f".{INDEX_NAME}.partial"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(index_json, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            self.store.commit(staging, INDEX_NAME)
        except StorageError as exc:
            log.warning("step %d not checkpointed: %s", index, exc)

    def resume(self, original: ModelState, steps_total: int) -> Resumed | None:
        """The finished steps of a checkpoint of this run, or None (no checkpoint, or one to ignore: logged)."""
        try:
            index_file = self.store.fetch(INDEX_NAME, _MAX_INDEX_BYTES)
            if index_file is None:
                return None
            index = json.loads(index_file.read_text(encoding="utf-8"))
            self.store.done_with(index_file)
            if index.get("format") != FORMAT or index.get("key") != self.key:
                log.warning("checkpoint %s belongs to another spec or generation: starting over", self.store)
                return None
            entries = index["steps"][:steps_total]
            finished = [self._restore(entry, original) for entry in entries]
            candidates = [_candidate(c) for c in index.get("candidates", [])]
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError, StorageError) as exc:
            log.warning("checkpoint %s cannot be resumed (%s): starting over", self.store, exc)
            return None
        if not finished:
            return None
        self._entries = entries
        return Resumed(finished, candidates, bool(index.get("withinBudget", True)))

    def remove(self) -> None:
        self.store.remove()

    def _restore(self, entry: dict[str, Any], original: ModelState) -> FinishedStep:
        from slimserve.api.steps import QuantizeConfig
        from slimserve.models.families import family_named
        from slimserve.quant.base import set_training

        name = Path(entry["file"]).name  # a name, never a path: the files lie beside their index
        weights = self.store.fetch(name, int(entry["bytes"]))
        if weights is None:
            raise ValueError(f"{name}: listed in {INDEX_NAME} but missing")
        try:
            if sha256_file(weights) != entry["sha256"]:
                raise ValueError(f"{name}: sha256 does not match {INDEX_NAME}")
            stored = unpack_sparse(load_file(str(weights)), entry.get("tensorEncoding") or {})
        finally:
            self.store.done_with(weights)
        masks = {k.removeprefix(_MASK_PREFIX): v for k, v in stored.items() if k.startswith(_MASK_PREFIX)}
        tensors = {k: v for k, v in stored.items() if not k.startswith(_MASK_PREFIX)}
        family = family_named(entry["family"])
        model = family.build(entry["recipe"], original.assets)
        config = entry.get("quantizationConfig")
        if config is not None:
            from slimserve.quant import restore_quantization

            model = restore_quantization(model, entry["quantization"], tensors)
        else:
            model.load_state_dict(tensors, strict=True)
        state = ModelState(
            set_training(model, False), family, entry["recipe"], int(entry["parameters"]), original.assets,
            quantization=QuantizeConfig.model_validate(config) if config is not None else None, masks=masks,
        )
        return FinishedStep(entry["label"], state, float(entry["metric"]), entry["note"])


def _candidate(data: dict[str, Any]) -> Candidate:
    """A candidate tried before the checkpoint, for the report (its speed, if it had one, is not kept)."""
    return Candidate(
        step=data["step"], label=data["label"], metric=float(data["metric"]), size_bytes=int(data["sizeBytes"]),
        parameters=int(data["parameters"]), accepted=bool(data.get("accepted")),
    )
