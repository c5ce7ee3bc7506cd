"""Task data and metrics: what a model is trained, calibrated and judged on.

A classifier is judged by accuracy on held-out labelled rows; an embedding model by the mean cosine
similarity of its embeddings to the original model's on held-out sentences; a decoder by perplexity
(`perplexity_task`). Which task a model gets, on which data: `task_data.build_task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F


if TYPE_CHECKING:
    from slimserve.api.compression_job import EvaluationSpec

Forward = Callable[..., torch.Tensor]
EVAL_BATCH = 64
MAX_BATCH_TOKENS = 8192  # rows x padded length of a text batch: bounds every forward's activations


def as_inference(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Copies made under inference mode, like the tensors a server builds: a compiled model sees the same
    kind of tensor it will serve (other kinds fail its guards and recompile it)."""
    with torch.inference_mode():
        return tuple(t.clone() for t in inputs)


@dataclass
class Batch:
    inputs: tuple[torch.Tensor, ...]
    index: torch.Tensor  # positions in the split, to look up precomputed teacher outputs
    labels: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(tuple(t.to(device) for t in self.inputs), self.index, labels)


class Task(ABC):
    """Batches come on `device`, the device the model runs on: training, calibration, evaluation and speed
    figures all take them there; the data itself stays in host memory."""

    metric_name: str
    device: torch.device = torch.device("cpu")
    higher_is_better = True
    budget_field = "evaluation.maxDrop"  # the spec field `budget` reads

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches of the 'train' or 'eval' split on the task's device; shuffled when a generator is given."""
        for batch in self.host_batches(split, batch_size, generator):
            yield batch.to(self.device)

    @abstractmethod
    def host_batches(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """`batches` in host memory."""

    @abstractmethod
    def split_size(self, split: str) -> int: ...

    @abstractmethod
    def score(self, forward: Forward, limit: int | None = None) -> float:
        """The task metric on the held-out split (its first `limit` samples): 0..1 and higher is better, unless
        `higher_is_better` is False (perplexity)."""

    def degradation(self, baseline: float, metric: float) -> float:
        """How much worse `metric` is than `baseline`, in the unit of the budget: the drop."""
        return baseline - metric

    def budget(self, evaluation: "EvaluationSpec") -> float:
        """The largest `degradation` the spec allows."""
        return evaluation.max_drop

    def tokens_per_second(self, models: list[torch.nn.Module], threads: int) -> list[float] | None:
        """Generation speed of each model, measured side by side, for tasks of generative models (else None)."""
        return None

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: Batch, teacher: torch.Tensor | None, temperature: float, alpha: float) -> torch.Tensor:
        """Training loss: against labels and/or the teacher's outputs for the same samples."""

    def original_score(self, forward: Forward) -> float:
        """The metric of the original model (what the budget is measured from)."""
        return self.score(forward)

    def outputs(self, forward: Forward, split: str, limit: int | None = None) -> torch.Tensor:
        """Model outputs over a split, in order (no autograd)."""
        chunks, seen = [], 0
        # Plain tensors under no_grad, as a compiled model is warmed up with (`optimize_for_inference`): an
        # inference-mode tensor fails its guards and compiles a second graph with its own frozen weights.
        with torch.no_grad():
            for batch in self.batches(split, EVAL_BATCH):
                chunks.append(forward(*batch.inputs).float())
                seen += len(batch.index)
                if limit is not None and seen >= limit:
                    break
        out = torch.cat(chunks)
        return out[:limit] if limit is not None else out

    def calibration(self, samples: int, batch_size: int = 32) -> list[tuple[torch.Tensor, ...]]:
        """Input batches of the training split for calibrating activation ranges."""
        result, seen = [], 0
        for batch in self.batches("train", batch_size):
            result.append(batch.inputs)
            seen += len(batch.index)
            if seen >= samples:
                break
        return result

    def sample_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The first `batch_size` held-out samples as one batch (for latency and throughput)."""
        return next(iter(self.batches("eval", batch_size))).inputs


class ClassificationTask(Task):
    metric_name = "accuracy"

    def __init__(
        self, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
        device: torch.device = torch.device("cpu"),
    ):
        self.device = device
        self._x = {"train": torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
                   "eval": torch.from_numpy(np.ascontiguousarray(x_eval, dtype=np.float32))}
        self._y = {"train": torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
                   "eval": torch.from_numpy(np.asarray(y_eval, dtype=np.int64))}

    def split_size(self, split: str) -> int:
        return len(self._y[split])

    def host_batches(self, split, batch_size, generator=None):
        count = self.split_size(split)
        order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            yield Batch((self._x[split][index],), index, self._y[split][index])

    def score(self, forward, limit=None):
        logits = self.outputs(forward, "eval", limit)
        labels = self._y["eval"][: len(logits)].to(logits.device)
        return float((logits.argmax(dim=1) == labels).float().mean())

    def loss(self, output, batch, teacher, temperature, alpha):
        hard = F.cross_entropy(output, batch.labels)
        if teacher is None or alpha == 0.0:
            return hard
        # Hinton et al.: soft targets at temperature T, scaled by T^2 to keep gradient magnitudes comparable.
        soft = F.kl_div(
            F.log_softmax(output / temperature, dim=1), F.softmax(teacher / temperature, dim=1), reduction="batchmean"
        ) * temperature**2
        return alpha * soft + (1.0 - alpha) * hard


class EmbeddingTask(Task):
    """Sentences, tokenized per batch; the reference is the original model's embeddings of the held-out split."""

    metric_name = "cosine"

    def __init__(
        self, tokenizer, train: list[str], evaluation: list[str], original: Forward,
        device: torch.device = torch.device("cpu"),
    ):
        from slimserve.models.minilm import tokenize

        self.device = device
        self._tokenize = tokenize
        self._tokenizer = tokenizer
        self._texts = {"train": list(train), "eval": list(evaluation)}
        self.reference = self.outputs(original, "eval")

    def split_size(self, split: str) -> int:
        return len(self._texts[split])

    def host_batches(self, split, batch_size, generator=None):
        texts = self._texts[split]
        order = torch.randperm(len(texts), generator=generator) if generator is not None else torch.arange(len(texts))
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            input_ids, attention_mask = self._tokenize(self._tokenizer, [texts[i] for i in index.tolist()])
            # Long texts make fewer rows per batch: activations grow with rows x tokens, not with rows alone.
            rows = max(1, MAX_BATCH_TOKENS // input_ids.shape[1])
            for first in range(0, len(index), rows):
                part = slice(first, first + rows)
                yield Batch((input_ids[part], attention_mask[part]), index[part])

    def score(self, forward, limit=None):
        embeddings = self.outputs(forward, "eval", limit)
        return float(F.cosine_similarity(embeddings, self.reference[: len(embeddings)], dim=1).mean())

    def original_score(self, forward):
        return 1.0  # the reference embeddings are the original model's own

    def loss(self, output, batch, teacher, temperature, alpha):
        if teacher is None:
            raise ValueError("embedding models train against the teacher's embeddings")
        return (1.0 - F.cosine_similarity(output, teacher, dim=1)).mean()
