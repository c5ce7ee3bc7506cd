"""The quantize step wired into the pipeline: artifacts of quantized models rebuild and serve, and the budget
search keeps the layers most sensitive to quantization in float."""

from __future__ import annotations

import numpy as np
import pytest

from slimserve.api.steps import QuantizeConfig
from slimserve.artifacts import load_artifact
from slimserve.compression import compress
from slimserve.compression.budget import run_within_budget
from slimserve.compression.errors import BudgetExceeded, SpecDoesNotFit
from slimserve.compression.quantize_step import rank_by_sensitivity
from slimserve.compression.registry import apply_step
from slimserve.models import load_servable
from slimserve.models.digits import digits_data


@pytest.mark.slow
def test_quantized_mlp_artifact_is_smaller_and_serves_the_same_labels(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"quantize": {"method": "int8-dynamic"}}])
    outcome = compress(spec, [sink])
    artifact = load_artifact(outcome.artifact.uri)
    assert artifact.manifest.quantization is not None
    assert outcome.metrics.size_ratio > 3.0
    data = digits_data()
    quantized = load_servable(outcome.artifact.uri).predict({"input": data.x_test})["label"]
    original = load_servable("builtin://digits-mlp").predict({"input": data.x_test})["label"]
    assert (quantized == original).mean() > 0.97
    assert outcome.metrics.compressed.metric == pytest.approx((quantized == data.y_test).mean(), abs=1e-6)


def test_sensitivity_ranks_every_layer_and_search_keeps_the_worst_in_float(mlp_context):
    original, context = mlp_context
    config = QuantizeConfig(method="int8-dynamic")
    ranked = rank_by_sensitivity(original, config, context, ["features.0", "classifier"])
    assert sorted(ranked) == ["classifier", "features.0"]
    context.baseline_metric = 2.0  # nothing can reach it: every candidate is tried, then the step fails
    try:
        with pytest.raises(BudgetExceeded) as info:
            run_within_budget(original, config, context)
    finally:
        context.baseline_metric = context.task.score(original.eager())
    message = str(info.value)
    assert "int8-dynamic, 0 layer(s) float" in message
    assert f"int8-dynamic, 1 layer(s) float ({ranked[0]})" in message


def test_unknown_keep_float_module_is_refused(mlp_context):
    original, context = mlp_context
    context.where = "spec.steps[0].quantize"
    with pytest.raises(SpecDoesNotFit, match=r"spec.steps\[0\].quantize.keepFloat: no module named 'fc9'"):
        apply_step(original, QuantizeConfig(method="int8-dynamic", keep_float=["fc9"]), context)


@pytest.mark.slow
def test_pruned_int8_static_cnn_is_ten_times_smaller(tmp_path, make_spec, sink):
    # 10 fine-tuning epochs, for a margin: after 5 the pruned CNN sits 0.0084 under its baseline, one test
    # sample (1/360) from the 0.01 budget, and a sample more or less moves with the CPU's float kernels.
    steps = [{"prune": {"amount": 0.5, "finetuneEpochs": 10}}, {"quantize": {"method": "int8-static"}}]
    outcome = compress(make_spec(tmp_path / "out", steps=steps), [sink])
    assert outcome.metrics.size_ratio >= 10.0
    assert outcome.metrics.accuracy_delta >= -0.01
    data = digits_data()
    labels = load_servable(outcome.artifact.uri).predict({"input": data.x_test})["label"]
    assert (labels == data.y_test).mean() >= outcome.metrics.baseline.metric - 0.01


@pytest.mark.slow
def test_minilm_int8_dynamic_artifact_serves_close_embeddings(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", model="builtin://minilm-l6", steps=[{"quantize": {"method": "int8-dynamic"}}])
    outcome = compress(spec, [sink])
    assert outcome.metrics.size_ratio >= 3.5
    assert outcome.metrics.compressed.metric >= 0.99
    texts = np.array([b"Where is the nearest train station?", b"def f(x): return x * 2"], dtype=object)
    quantized = load_servable(outcome.artifact.uri).predict({"text": texts})["embedding"]
    original = load_servable("builtin://minilm-l6").predict({"text": texts})["embedding"]
    assert (quantized * original).sum(axis=1).min() > 0.98
