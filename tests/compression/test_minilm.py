"""MiniLM: same embeddings as sentence-transformers, config round trip, padding and pruned shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimserve.models.minilm import (
    MAX_TOKENS,
    MiniLMConfig,
    build_minilm,
    encode,
    load_minilm,
    minilm_files_dir,
    tokenize,
)

TEXTS = [
    "The operator reconciles a CompressionJob into a Kubernetes Job.",
    "A quick brown fox jumps over the lazy dog.",
    "short",
    "Quantized int8 weights take a quarter of the memory of float32 ones, and the matrix products run faster.",
]


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(2)
    return load_minilm()


@pytest.mark.slow
def test_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_files_dir()), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    model, tokenizer = minilm
    ours = encode(model, tokenizer, TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_embeddings_are_unit_norm_and_padding_invariant(minilm):
    model, tokenizer = minilm
    batched = encode(model, tokenizer, TEXTS, batch_size=4)
    one_by_one = encode(model, tokenizer, TEXTS, batch_size=1)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # "short" is padded to the longest text in the batch; the mask must make that padding invisible.
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # Different sentences give clearly different embeddings.
    assert float(batched[0] @ batched[2]) < 0.9


def test_tokenizer_truncates_and_pads_per_batch(minilm):
    _, tokenizer = minilm
    input_ids, attention_mask = tokenize(tokenizer, ["word " * 500, "hi"])
    assert input_ids.shape == (2, MAX_TOKENS)
    assert attention_mask[1].sum() == 3  # [CLS] hi [SEP]
    small_ids, _ = tokenize(tokenizer, ["hi", "hello there"])
    assert small_ids.shape[1] == 4  # padded to the longest of this batch, not to a fixed length
    with pytest.raises(ValueError, match="texts"):
        tokenize(tokenizer, [])


def test_config_round_trips_and_rejects_bad_fields():
    config = MiniLMConfig(num_layers=2, num_heads=[12, 5], intermediate_sizes=[1536, 700])
    again = MiniLMConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(ValueError, match="num_heads"):
        MiniLMConfig(num_layers=2, num_heads=[12], intermediate_sizes=[1536, 1536])
    with pytest.raises(ValueError, match="intermediate_sizes"):
        MiniLMConfig(num_layers=1, num_heads=[1], intermediate_sizes=[0])
    with pytest.raises(ValueError, match="bogus"):
        MiniLMConfig.from_json('{"bogus": 1}')


def test_pruned_skeleton_has_per_layer_shapes():
    config = MiniLMConfig(vocab_size=100, num_layers=2, num_heads=[3, 7], intermediate_sizes=[64, 16], max_positions=32)
    model = build_minilm(config)
    assert model.layers[0].attention.query.out_features == 3 * 32
    assert model.layers[1].attention.output.in_features == 7 * 32
    assert model.layers[1].ffn.intermediate.out_features == 16
    input_ids = torch.randint(0, 100, (3, 10))
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    with torch.inference_mode():
        out = model(input_ids, attention_mask)
    assert out.shape == (3, 384)
    assert torch.isfinite(out).all()
