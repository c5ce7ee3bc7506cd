"""A CompressionJob of a decoder: perplexity as the budget's metric, tokens per second in the status, and an
artifact that rebuilds the same quantized DecoderLM."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from slimserve.api.compression_job import CompressionJobSpec
from slimserve.compression import compress
from slimserve.compression.perplexity_task import PerplexityTask
from slimserve.models.decoder import load_decoder
from slimserve.models.families import eager_forward
from tests.decoder.conftest import save_word_tokenizer


@pytest.fixture(scope="module")
def llama_directory(tmp_path_factory) -> Path:
    """A small random Llama with grouped-query attention and widths the int4 kernels take, and its tokenizer."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    directory = tmp_path_factory.mktemp("llama")
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    save_word_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(" ".join(f"w{rng.randrange(3, 40)}" for _ in range(4000)))
    return path


def test_int4_gptq_job_reports_perplexity_and_tokens_per_second_and_its_artifact_rebuilds(llama_directory, text_file, tmp_path):
    output = tmp_path / "artifact"
    spec = CompressionJobSpec.model_validate({
        "model": {"uri": f"file://{llama_directory}"},
        "steps": [{"quantize": {"method": "int4-weight-only", "algorithm": "gptq", "calibrationSamples": 16}}],
        "evaluation": {"metric": "perplexity", "maxRelativeIncrease": 0.02, "threads": 1, "dataset": {"uri": f"file://{text_file}"}},
        "output": {"uri": f"file://{output}"},
    })
    outcome = compress(spec, [])

    metrics = outcome.metrics
    baseline, compressed = metrics.baseline, metrics.compressed
    assert baseline.metric_name == compressed.metric_name == "perplexity"
    assert compressed.metric <= baseline.metric * 1.02 + 1e-6  # the budget: a relative increase
    assert baseline.tokens_per_second > 0 and compressed.tokens_per_second > 0
    assert compressed.size_bytes < baseline.size_bytes / 3

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["family"] == "decoder" and manifest["recipe"]["num_kv_heads"] == 2
    kinds = {name: entry["kind"] for name, entry in manifest["quantization"]["modules"].items()}
    # the embedding table and the output head are quantized too, each as its own module
    assert kinds["embed_tokens"].endswith("-embedding") and "lm_head" in kinds
    assert kinds["layers.0.self_attn.q_proj"] == "int4-weight-only-linear"
    assert (output / "tokenizer.json").is_file()

    # the server's loader rebuilds the model the job scored: the same perplexity on the same held-out windows
    served = load_decoder(f"file://{output}")
    ids = served.tokenizer.encode(text_file.read_text(), add_special_tokens=False)
    task = PerplexityTask.of_text(ids, 128)
    assert task.score(eager_forward(served.model)) == pytest.approx(compressed.metric, rel=1e-5)
