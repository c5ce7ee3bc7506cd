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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from slimserve.api.compression_job import CompressionJobSpec
from slimserve.artifacts.artifact import write_weights
from slimserve.artifacts.digest import sha256_file
from slimserve.artifacts.sparse import unpack_sparse
from slimserve.artifacts.storage import local_path, split_uri
from slimserve.compression.state import Candidate, ModelState

log = logging.getLogger(__name__)

INDEX_NAME = "checkpoint.json"
FORMAT = "slimserve-checkpoint/v1"
_MASK_PREFIX = "__masks__."  # unstructured-pruning masks ride in the step's file under this prefix


def run_key(spec: CompressionJobSpec, generation: int | None) -> str:
    """What a checkpoint must match to be resumed: the spec's model, steps and evaluation, and the generation."""
    relevant = spec.model_dump(mode="json", by_alias=True, include={"model", "steps", "evaluation"})
    text = json.dumps({"spec": relevant, "generation": generation}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def checkpoint_dir(output_uri: str) -> Path | None:
    """`.NAME.checkpoint/` beside a local output, None for S3 outputs."""
    if split_uri(output_uri)[0] == "s3":
        return None
    target = local_path(output_uri)
    return target.parent / f".{target.name}.checkpoint"


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

    def __init__(self, directory: Path | None, key: str):
        self.directory = directory
        self.key = key
        self._entries: list[dict[str, Any]] = []

    def save(self, index: int, step: FinishedStep, candidates: list[Candidate], within_budget: bool) -> Path | None:
        """Record step `index` as finished; the index is replaced last, so a kill leaves the previous one whole."""
        if self.directory is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        if index == 0 or len(self._entries) != index:
            self._entries = self._entries[:index]
        weights = self.directory / f"step-{index}.safetensors"
        tensors, quantization = step.state.tensors()
        encoding = write_weights(weights, {**tensors, **{_MASK_PREFIX + k: v for k, v in step.state.masks.items()}})
        self._entries.append({
            "label": step.label, "metric": step.metric, "note": step.note, "family": step.state.family.name,
            "recipe": step.state.recipe, "parameters": step.state.parameters,
            "quantizationConfig": step.state.quantization.to_json() if step.state.quantization else None,
            "quantization": quantization, "tensorEncoding": encoding,
            "file": weights.name, "sha256": sha256_file(weights),
        })
        index_json = {
            "format": FORMAT, "key": self.key, "steps": self._entries, "withinBudget": within_budget,
            "candidates": [c.as_json() for c in candidates],
        }
        staging = self.directory / f".{INDEX_NAME}.partial"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(index_json, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        staging.replace(self.directory / INDEX_NAME)
        return weights

    def resume(self, original: ModelState, steps_total: int) -> Resumed | None:
        """The finished steps of a checkpoint of this run, or None (no checkpoint, or one to ignore: logged)."""
        if self.directory is None or not (self.directory / INDEX_NAME).is_file():
            return None
        try:
            index = json.loads((self.directory / INDEX_NAME).read_text(encoding="utf-8"))
            if index.get("format") != FORMAT or index.get("key") != self.key:
                log.warning("checkpoint %s belongs to another spec or generation: starting over", self.directory)
                return None
            entries = index["steps"][:steps_total]
            finished = [self._restore(entry, original) for entry in entries]
            candidates = [_candidate(c) for c in index.get("candidates", [])]
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError) as exc:
            log.warning("checkpoint %s cannot be resumed (%s): starting over", self.directory, exc)
            return None
        if not finished:
            return None
        self._entries = entries
        return Resumed(finished, candidates, bool(index.get("withinBudget", True)))

    def remove(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _restore(self, entry: dict[str, Any], original: ModelState) -> FinishedStep:
        from slimserve.api.steps import QuantizeConfig
        from slimserve.models.families import family_named
        from slimserve.quant.base import set_training

        weights = self.directory / Path(entry["file"]).name
        if sha256_file(weights) != entry["sha256"]:
            raise ValueError(f"{weights.name}: sha256 does not match {INDEX_NAME}")
        stored = unpack_sparse(load_file(str(weights)), entry.get("tensorEncoding") or {})
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
