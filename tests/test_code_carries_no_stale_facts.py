"""What the code says stays true: no measured figures in docstrings (they age; docs/performance.md keeps them
beside the benchmark that reproduces them), no configuration or parameters that nothing reads."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from slimserve.api.steps import DistillConfig, PruneConfig, QuantizeConfig, StepConfigBase
from slimserve.compression.quantize import apply_quantization

SOURCE = Path(__file__).resolve().parents[1] / "operator" / "slimserve"
# A number with a unit of time or rate, or a speed-up: the marks of a benchmark result.
MEASURED = re.compile(r"\d\s*(ms|us|µs|req/s|requests/s)\b|\d(\.\d+)?x (faster|slower|KServe)|\d\s*% faster", re.I)


def docstrings(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield getattr(node, "lineno", 1), text


def test_docstrings_hold_no_benchmark_figures():
    found = [
        f"{path.relative_to(SOURCE)}:{line}: {match.group(0)!r}"
        for path in sorted(SOURCE.rglob("*.py"))
        for line, text in docstrings(path)
        for match in MEASURED.finditer(text)
    ]
    assert not found, "measured figures belong in docs/performance.md: " + "; ".join(found)


def test_the_figures_moved_out_of_docstrings_are_in_the_docs():
    performance = (SOURCE.parents[1] / "docs" / "performance.md").read_text()
    for figure in ("2773 vs 1373 req/s", "2085 req/s batched, 3873 not", "0.997 cosine", "~15 % faster"):
        assert figure in performance


def test_a_step_config_carries_its_kind_and_nothing_unread():
    for config in (StepConfigBase, PruneConfig, QuantizeConfig, DistillConfig):
        assert set(config.__class_vars__) == {"step_kind"}, config.__class_vars__
    assert {PruneConfig.step_kind, QuantizeConfig.step_kind, DistillConfig.step_kind} == {"prune", "quantize", "distill"}


def test_quantization_takes_no_example_inputs():
    # The module swap traces nothing; callers no longer build inputs for it.
    assert list(inspect.signature(apply_quantization).parameters) == ["model", "config", "calibration"]


def test_every_setting_of_the_operator_is_read():
    from slimserve.controller.config import NodePool, OperatorConfig

    code = "\n".join(p.read_text() for p in (SOURCE / "controller").rglob("*.py") if p.name != "config.py")
    unread = [
        f"{model.__name__}.{name}"
        for model in (OperatorConfig, NodePool)
        for name in model.model_fields
        if not re.search(rf"\.{name}\b", code)
    ]
    assert not unread, f"settings nothing reads (drop them, and their chart values): {unread}"
