"""Which task judges a model, on which data: the family's metric and the spec's dataset, or the built-in one.

Classifiers get labelled rows (.npz, or the builtin digits), embedding models sentences (.txt, or the builtin
sentences), decoders text (.txt, or the built-in text tiny-lm was trained and held out on).
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from slimserve.artifacts.storage import resolve_uri
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.perplexity_task import WINDOW, PerplexityTask, cut_windows
from slimserve.compression.tasks import ClassificationTask, EmbeddingTask, Task

if TYPE_CHECKING:
    from slimserve.api.compression_job import EvaluationSpec
    from slimserve.api.storage import S3Spec
    from slimserve.models.loading import LoadedModel

SPLIT_SEED = 1234
MAX_TEXT_BYTES = 1 << 20  # of a text read and tokenized: more tokens than a perplexity task's windows take
BUILTIN_TEXT = "builtin://tiny-lm-text"


def build_task(
    loaded: "LoadedModel", evaluation: "EvaluationSpec", s3: "S3Spec | None" = None,
    device: torch.device = torch.device("cpu"),
) -> Task:
    """The task of a model: its family's metric and the spec's dataset (or the builtin one), its batches on
    `device`, where the model is."""
    from slimserve.models.families import eager_forward

    metric = loaded.family.metric
    if evaluation.metric not in ("auto", metric):
        raise SpecDoesNotFit(
            f"evaluation.metric: {loaded.family.name} models are measured by {metric}, not {evaluation.metric}"
        )
    uri = evaluation.dataset.uri if evaluation.dataset else None
    if evaluation.max_relative_increase is not None and metric != "perplexity":
        raise SpecDoesNotFit(
            f"evaluation.maxRelativeIncrease: only for perplexity; {loaded.family.name} models are measured by "
            f"{metric}, whose budget is evaluation.maxDrop"
        )
    if metric == "perplexity":
        return _perplexity_task(loaded, uri, s3, device)
    if metric == "accuracy":
        return ClassificationTask(*_labelled_rows(uri, loaded.family.name, s3), device=device)
    train, held_out = _sentences(uri, s3)
    from slimserve.models.minilm import load_tokenizer

    return EmbeddingTask(load_tokenizer(loaded.assets), train, held_out, eager_forward(loaded.model), device=device)


def _labelled_rows(uri: str | None, family: str, s3) -> tuple[np.ndarray, ...]:
    if uri is None or uri == "builtin://digits":
        if uri is None and not family.startswith("digits-"):
            raise SpecDoesNotFit("evaluation.dataset: required for this model (no builtin dataset)", reason="MissingDataset")
        from slimserve.models.digits import digits_data

        data = digits_data()
        return data.x_train, data.y_train, data.x_test, data.y_test
    path = _dataset_path(uri, s3, ".npz")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays.files):
                return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
            x, y = arrays["x"], arrays["y"]
    except KeyError as exc:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri} lacks array {exc.args[0]}; expected x and y", reason="InvalidDataset") from None
    except (OSError, ValueError) as exc:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri} is not a readable .npz: {exc}", reason="InvalidDataset") from None
    if len(x) != len(y) or len(x) < 10:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri}: x and y need the same length, at least 10 rows", reason="InvalidDataset")
    held_out = np.random.default_rng(SPLIT_SEED).permutation(len(x)) < max(1, len(x) // 5)
    return x[~held_out], y[~held_out], x[held_out], y[held_out]


def _sentences(uri: str | None, s3) -> tuple[list[str], list[str]]:
    from slimserve.data import builtin_sentences

    if uri is None or uri == "builtin://sentences":
        return list(builtin_sentences("train")), list(builtin_sentences("eval"))
    path = _dataset_path(uri, s3, ".txt")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri} is not a UTF-8 text file: {exc}", reason="InvalidDataset") from None
    if len(lines) < 10:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri} has {len(lines)} sentences, need at least 10", reason="InvalidDataset")
    # Every fifth sentence is held out; the rest calibrates and trains.
    return [s for i, s in enumerate(lines) if i % 5], lines[::5]


def _dataset_path(uri: str, s3, suffix: str) -> Path:
    if uri.startswith("builtin://"):
        raise SpecDoesNotFit(f"evaluation.dataset.uri: unknown builtin dataset {uri!r}; known: builtin://digits, builtin://sentences, builtin://tiny-lm-text")
    try:
        path = resolve_uri(uri, s3)
    except Exception as exc:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {exc}", reason="MissingDataset") from None
    if path.is_dir() or path.suffix != suffix:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri}: expected a {suffix} file for this model", reason="InvalidDataset")
    return path


def _perplexity_task(loaded: "LoadedModel", uri: str | None, s3: "S3Spec | None", device: torch.device) -> PerplexityTask:
    """The task of a decoder: the dataset's text (a UTF-8 .txt file), or the built-in held-out text."""
    from slimserve.models.decoder import Tokenizer

    tokenizer = Tokenizer.from_directory(loaded.assets)
    window = min(WINDOW, loaded.model.config.max_position_embeddings)

    def tokens(text: str) -> list[int]:
        return tokenizer.encode(text[:MAX_TEXT_BYTES], add_special_tokens=False)

    if uri is None or uri == BUILTIN_TEXT:
        from slimserve.models.decoder.directory import builtin_text

        train = cut_windows(tokens(builtin_text("train")), window, BUILTIN_TEXT, 1)
        return PerplexityTask(train, cut_windows(tokens(builtin_text("heldout")), window, BUILTIN_TEXT, 1), device)
    return PerplexityTask.of_text(tokens(_read_text(uri, s3)), window, device, uri)


def _read_text(uri: str, s3: "S3Spec | None") -> str:
    """At most MAX_TEXT_BYTES of a dataset's text file, cut at a whole character."""
    path = _dataset_path(uri, s3, ".txt")
    try:
        with path.open("rb") as file:
            head = file.read(MAX_TEXT_BYTES)
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecDoesNotFit(f"evaluation.dataset.uri: {uri} is not a UTF-8 text file: {exc}", reason="InvalidDataset") from None
