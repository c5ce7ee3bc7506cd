"""A compiled candidate is scored and timed on the graph it was compiled with: a second graph (an input of
another tensor kind fails the first one's guards) would hold a second frozen copy of its weights."""

from __future__ import annotations

import torch

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.measure import measure_speeds
from slimserve.compression.quantize import apply_quantization
from slimserve.compression.tasks import EmbeddingTask
from slimserve.data import builtin_sentences
from slimserve.models.families import eager_forward
from slimserve.models.minilm import MiniLMConfig, build_minilm, load_tokenizer, tokenize
from slimserve.quant import optimize_for_inference


def test_scoring_and_timing_a_compiled_candidate_never_recompiles_it():
    torch.manual_seed(0)
    config = MiniLMConfig(hidden_size=128, num_layers=1, head_dim=32, num_heads=[4], intermediate_sizes=[256])
    model = build_minilm(config).eval()
    tokenizer = load_tokenizer()
    sentences = list(builtin_sentences("eval"))
    task = EmbeddingTask(tokenizer, sentences[:8], sentences[:70], eager_forward(model))  # 64 rows, then 6
    quantized = apply_quantization(model, QuantizeConfig(method="int8-dynamic"), calibration=None)
    served = optimize_for_inference(quantized, tokenize(tokenizer, sentences[:32]))  # as a candidate is compiled
    with torch._dynamo.config.patch(error_on_recompile=True):
        score = task.score(served)
        speeds = measure_speeds([served], task, threads=1, budget_s=0.01)  # batch 1 (padded to 2) and 32
    assert 0.9 < score < 1.0 and speeds[0].latency_ms.median > 0
