"""The decoders' task: perplexity on held-out text (lower is better), next-token training and distillation.

A dataset's text is tokenized once and cut into windows of `WINDOW` tokens, every fifth window held out (the
built-in text comes split in two); each window is scored from its own first token (non-overlapping windows, as the budget compares models on the same
windows, not against published figures). Distillation matches the teacher's next-token distribution at every
position, its logits computed batch by batch (a vocabulary's worth of floats per token is too much to keep).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from slimserve.api.compression_job import DEFAULT_MAX_RELATIVE_INCREASE
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.compression.tasks import EVAL_BATCH, Batch, Forward, Task, as_inference

WINDOW = 128  # tokens per sequence (shorter when the model's context is)
MAX_EVAL_WINDOWS = 64  # bounds every candidate's evaluation: 8k tokens at WINDOW 128
MAX_TRAIN_WINDOWS = 512  # calibration, pruning scores and recovery training
MIN_WINDOWS = 5


class PerplexityTask(Task):
    metric_name = "perplexity"
    higher_is_better = False
    budget_field = "evaluation.maxRelativeIncrease"

    def __init__(self, train: torch.Tensor, evaluation: torch.Tensor, device: torch.device = torch.device("cpu")):
        """`train` and `evaluation`: token-id windows [count, window]."""
        self.device = device
        self._ids = {"train": train[:MAX_TRAIN_WINDOWS], "eval": evaluation[:MAX_EVAL_WINDOWS]}

    @classmethod
    def of_text(cls, token_ids: list[int], window: int, device: torch.device = torch.device("cpu"), source: str = "text") -> "PerplexityTask":
        """Every fifth window of one text held out."""
        windows = cut_windows(token_ids, window, source, MIN_WINDOWS)
        held_out = torch.arange(len(windows)) % 5 == 0
        return cls(windows[~held_out], windows[held_out], device)

    @property
    def window(self) -> int:
        return self._ids["eval"].shape[1]

    def split_size(self, split: str) -> int:
        return len(self._ids[split])

    def host_batches(self, split, batch_size, generator=None):
        count = self.split_size(split)
        order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
        rows = max(1, min(batch_size, 8192 // self.window))  # bounds the logits a batch makes
        for start in range(0, count, rows):
            index = order[start : start + rows]
            yield Batch((self._ids[split][index],), index)

    def score(self, forward: Forward, limit: int | None = None) -> float:
        """Perplexity of the held-out windows (their first `limit`)."""
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in self.batches("eval", EVAL_BATCH):
                (ids,) = as_inference(batch.inputs)
                logits = forward(ids).float()
                total += float(next_token_nll(logits, ids, reduction="sum"))
                count += ids[:, 1:].numel()
                if limit is not None and count >= limit * (self.window - 1):
                    break
        return math.exp(total / count)

    def degradation(self, baseline: float, metric: float) -> float:
        return metric / baseline - 1.0

    def budget(self, evaluation) -> float:
        if evaluation.max_relative_increase is None:
            return DEFAULT_MAX_RELATIVE_INCREASE
        return evaluation.max_relative_increase

    def loss(self, output, batch, teacher, temperature, alpha):
        (ids,) = batch.inputs
        hard = next_token_nll(output, ids)
        if teacher is None or alpha == 0.0:
            return hard
        vocab = output.shape[-1]
        soft = F.kl_div(
            F.log_softmax(output.reshape(-1, vocab) / temperature, dim=1),
            F.log_softmax(teacher.reshape(-1, vocab).float() / temperature, dim=1),
            reduction="batchmean", log_target=True,
        ) * temperature**2
        return alpha * soft + (1.0 - alpha) * hard

    def tokens_per_second(self, models, threads):
        from slimserve.compression.generation_speed import tokens_per_second

        return tokens_per_second(models, self._ids["eval"][0, : self.window // 4], threads=threads)

    def teacher_forward(self, forward: Forward) -> Callable[[Batch], torch.Tensor]:
        """The teacher's logits for a training batch, computed when it is needed."""
        return lambda batch: forward(*as_inference(batch.inputs)).float().clone()  # a plain tensor autograd may keep


def cut_windows(token_ids: list[int], window: int, source: str, least: int) -> torch.Tensor:
    """[count, window] token ids, the text's tail that fills no window dropped; at least `least` windows."""
    count = len(token_ids) // window
    if count < least:
        raise SpecDoesNotFit(
            f"evaluation.dataset.uri: {source} has {len(token_ids)} tokens, need at least {least * window} "
            f"({least} windows of {window})", reason="InvalidDataset",
        )
    return torch.tensor(token_ids[: count * window], dtype=torch.long).reshape(count, window)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each position's logits against the next token."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1), reduction=reduction)
