"""MiniLM: same embeddings as sentence-transformers, config round trip, padding and pruned shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimserve.models.minilm import (
    MiniLMConfig,
    build_minilm,
    encode,
    load_minilm,
    load_tokenizer,
    max_sequence_length,
    minilm_files_dir,
    tokenize,
)

TEXTS = [
    "The operator reconciles a CompressionJob into a Kubernetes Job.",
    "A quick brown fox jumps over the lazy dog.",
    "short",
    "Quantized int8 weights take a quarter of the memory of float32 ones, and the matrix products run faster.",
]
# Longer than 128 tokens (164), and longer than the model's 256 (over 300): where truncation matters.
PARAGRAPH = (
    "Structured pruning removes whole channels, attention heads and feed-forward neurons, so the remaining "
    "matrices are smaller and every matrix product runs on less data. After pruning, a short recovery "
    "fine-tune lets the surviving weights take over the work of the removed ones; the accuracy budget then "
    "decides whether the result is kept or a gentler amount is tried. Quantization stores each weight in "
    "eight bits with a per-channel scale, and activations are quantized per token on the fly, which keeps "
    "the error small for sentence encoders whose activations vary a lot between tokens. The served model "
    "is compiled once, with freezing and dynamic shapes, so a new batch size or sentence length does not "
    "trigger a recompilation while requests are waiting in the queue of the dynamic batcher. "
)
LONG_TEXTS = [PARAGRAPH, PARAGRAPH + PARAGRAPH.upper()]


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(2)
    return load_minilm()


@pytest.mark.slow
def test_matches_sentence_transformers(minilm, monkeypatch):
    import sentence_transformers  # a test dependency: this comparison never skips

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the reference is the shipped package's directory, not the hub
    reference = sentence_transformers.SentenceTransformer(str(minilm_files_dir()), device="cpu")
    assert reference.max_seq_length == max_sequence_length(minilm_files_dir()) == 256
    texts = TEXTS + LONG_TEXTS
    expected = reference.encode(texts, convert_to_numpy=True, batch_size=4)
    model, tokenizer = minilm
    lengths = [sum(e.attention_mask) for e in tokenizer.encode_batch(LONG_TEXTS)]
    assert 128 < lengths[0] < 256 and lengths[1] == 256  # the second is truncated, as the reference does
    ours = encode(model, tokenizer, texts)
    assert ours.shape == (len(texts), 384)
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
    assert input_ids.shape == (2, 256)  # all-MiniLM-L6-v2's max_seq_length
    assert attention_mask[1].sum() == 3  # [CLS] hi [SEP]
    small_ids, _ = tokenize(tokenizer, ["hi", "hello there"])
    assert small_ids.shape[1] == 4  # padded to the longest of this batch, not to a fixed length
    with pytest.raises(ValueError, match="texts"):
        tokenize(tokenizer, [])


def _model_dir(tmp_path, **files: dict):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "tokenizer.json").write_bytes((minilm_files_dir() / "tokenizer.json").read_bytes())
    for name, content in files.items():
        (directory / f"{name}.json").write_text(json.dumps(content))
    return directory


@pytest.mark.parametrize(
    "files, expected",
    [
        # sentence-transformers' length first, capped by the position table
        ({"sentence_bert_config": {"max_seq_length": 200}, "config": {"max_position_embeddings": 512}}, 200),
        ({"sentence_bert_config": {"max_seq_length": 1024}, "config": {"max_position_embeddings": 512}}, 512),
        # then the tokenizer's own limit (transformers' "no limit" sentinel is not one)
        ({"tokenizer_config": {"model_max_length": 384}, "config": {"max_position_embeddings": 512}}, 384),
        ({"tokenizer_config": {"model_max_length": 1e30}, "config": {"max_position_embeddings": 512}}, 128),
    ],
)
def test_max_sequence_length_comes_from_the_model_files(tmp_path, files, expected):
    # The copied tokenizer.json truncates at 128: the last fallback before the position table.
    directory = _model_dir(tmp_path, **files)
    assert max_sequence_length(directory) == expected
    input_ids, _ = tokenize(load_tokenizer(directory), [PARAGRAPH * 4])
    assert input_ids.shape == (1, expected)


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
