"""Fixtures of the compression engine's tests: small specs, the builtin models, a place for artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from slimserve.api.compression_job import CompressionJobSpec


# One thread: these tests train small models, and on a busy two-core machine a second OpenMP thread
# mostly waits for the first (evaluation specs below ask for one thread too).
TEST_THREADS = 1


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def digits_cnn():
    from slimserve.models.loading import load_builtin

    return load_builtin("builtin://digits-cnn")


@pytest.fixture(scope="session")
def digits_mlp():
    from slimserve.models.loading import load_builtin

    return load_builtin("builtin://digits-mlp")


@pytest.fixture(scope="session")
def minilm_model():
    from slimserve.models.loading import load_builtin

    return load_builtin("builtin://minilm-l6")


def job_spec(output: Path, model: str = "builtin://digits-cnn", steps: list[dict] | None = None, **extra: Any) -> CompressionJobSpec:
    """A CompressionJobSpec from camelCase JSON, writing to `output`."""
    extra.setdefault("evaluation", {})
    extra["evaluation"].setdefault("threads", TEST_THREADS)
    return CompressionJobSpec.model_validate(
        {"model": {"uri": model}, "steps": steps or [{"prune": {"amount": 0.5}}], "output": {"uri": f"file://{output}"}, **extra}
    )


@pytest.fixture
def make_spec():
    """`make_spec(output_dir, model=..., steps=[...], evaluation={...})` -> CompressionJobSpec."""
    return job_spec


class RecordingSink:
    """Keeps every event a compression run sends."""

    def __init__(self):
        self.events: list[Any] = []
        self.results: list[Any] = []
        self.errors: list[tuple[str, str]] = []

    def progress(self, event):
        self.events.append(event)

    def result(self, result):
        self.results.append(result)

    def error(self, reason, message):
        self.errors.append((reason, message))


@pytest.fixture
def sink():
    return RecordingSink()


def step_context(loaded, max_drop: float = 1.0):
    """(original state, StepContext) for calling step transforms directly."""
    from slimserve.api.compression_job import EvaluationSpec
    from slimserve.compression.progress import Reporter
    from slimserve.compression.state import ModelState, StepContext
    from slimserve.compression.task_data import build_task

    task = build_task(loaded, EvaluationSpec())
    original = ModelState.of_float(loaded.model, loaded.family, loaded.assets)
    context = StepContext(
        task, Reporter([], 1), threads=TEST_THREADS, max_drop=max_drop, baseline_metric=task.score(original.eager()), original=original
    )
    return original, context


@pytest.fixture(scope="session")
def cnn_context(digits_cnn):
    return step_context(digits_cnn)


@pytest.fixture(scope="session")
def mlp_context(digits_mlp):
    return step_context(digits_mlp)


@pytest.fixture(scope="session")
def wide_mlp_context(digits_mlp):
    """A digits MLP with two hidden Linears (untrained), both of a shape the int4 kernels take."""
    import dataclasses

    return step_context(dataclasses.replace(digits_mlp, model=digits_mlp.family.build({"hidden": [128, 64]}, None)))


@pytest.fixture(scope="session")
def minilm_context(minilm_model):
    return step_context(minilm_model)
