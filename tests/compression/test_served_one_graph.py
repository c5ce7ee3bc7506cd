"""A compiled model serves one row and many rows on the graph it was compiled with: a servable calls it inside
`torch.inference_mode()`, and a one-row batch padded there would be an inference tensor, which fails the graph's
guards and compiles a second graph holding a second frozen copy of the weights."""

from __future__ import annotations

import numpy as np
import torch

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.quantize import apply_quantization
from slimserve.models.minilm import MiniLMConfig, build_minilm, load_tokenizer, tokenize
from slimserve.models.torch_servables import EmbeddingServable
from slimserve.quant import optimize_for_inference


def test_a_compiled_servable_answers_one_row_and_many_without_recompiling():
    torch.manual_seed(0)
    config = MiniLMConfig(hidden_size=128, num_layers=1, head_dim=32, num_heads=[4], intermediate_sizes=[256])
    model = build_minilm(config).eval()
    tokenizer = load_tokenizer()
    quantized = apply_quantization(model, QuantizeConfig(method="int8-dynamic"), calibration=None)
    forward = optimize_for_inference(quantized, tokenize(tokenizer, ["a sentence to compile with", "and another"]))

    class Info:  # the servable reads only its input's name
        inputs = [type("Input", (), {"name": "text"})]

    servable = EmbeddingServable(forward, Info, tokenizer)
    with torch._dynamo.config.patch(error_on_recompile=True):
        one = servable.predict({"text": np.array([b"one row"], dtype=object)})["embedding"]
        many = servable.predict({"text": np.array([b"one row", b"and two more", b"rows"], dtype=object)})["embedding"]
        with torch.inference_mode():  # tensors made where the servable calls it, as an image decoder does
            ids, mask = tokenize(tokenizer, ["made in inference mode", "two rows"])
            made_there = forward(ids, mask)
    np.testing.assert_allclose(one[0], many[0], atol=1e-4)
    assert made_there.shape == (2, config.hidden_size)
