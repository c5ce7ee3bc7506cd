"""DecoderLM's cache path: batched decode steps for sequences in any slots at any positions, slot reuse,
the cache's size, and the loader's refusals."""

from __future__ import annotations

import pytest
import torch

from slimserve.models.decoder import DecoderConfig, DecoderLM, load_decoder
from slimserve.models.decoder.model import PromptChunk
from slimserve.models.errors import ModelLoadError


def small_model(**overrides) -> DecoderLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=40, max_position_embeddings=32)
    return DecoderLM(DecoderConfig(**{**fields, **overrides})).eval()


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 3}, {"model_type": "gpt2", "num_kv_heads": 4, "hidden_act": "gelu_new"}])
def test_batched_decode_of_sequences_at_different_positions_matches_forward(overrides):
    model = small_model(**overrides)
    cache = model.new_cache(max_slots=3, max_len=16)
    long, short = torch.randint(0, 50, (9,)), torch.randint(0, 50, (4,))
    with torch.inference_mode():
        # a stale sequence in slot 0 first: a reused slot must not leak its old keys
        model.prefill(torch.randint(0, 50, (12,)), slot=0)
        model.prefill(long[:7], slot=2)
        model.prefill(short[:2], slot=0)
        steps = [model.decode(torch.stack([long[7 + i], short[2 + i]]), torch.tensor([2, 0]), torch.tensor([7 + i, 2 + i])) for i in range(2)]
        expected_long, expected_short = model(long[None])[0], model(short[None])[0]
    for i, step in enumerate(steps):
        torch.testing.assert_close(step[0], expected_long[7 + i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step[1], expected_short[2 + i], atol=1e-5, rtol=1e-4)
    kv_heads = model.config.num_kv_heads
    assert cache.bytes_per_token() == 2 * 2 * kv_heads * 8 * 4  # layers x (k, v) x kv heads x head_dim x fp32


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 3}, {"model_type": "gpt2", "num_kv_heads": 4, "hidden_act": "gelu_new"}])
def test_one_step_decodes_and_prefills_prompts_in_chunks_as_forward_does(overrides):
    model = small_model(**overrides)
    model.new_cache(max_slots=3, max_len=16)
    running, chunked, whole = torch.randint(0, 50, (6,)), torch.randint(0, 50, (11,)), torch.randint(0, 50, (5,))
    with torch.inference_mode():
        model.prefill(torch.randint(0, 50, (14,)), slot=1)  # stale keys under the chunked prompt's later chunks
        model.prefill(running[:4], slot=0)
        first = model.step(running[4:5], torch.tensor([0]), torch.tensor([4]),
                           [PromptChunk(chunked[:4], slot=1), PromptChunk(whole, slot=2)])
        # the chunked prompt goes on from position 4 in two chunks, beside a decode step each time
        second = model.step(running[5:6], torch.tensor([0]), torch.tensor([5]), [PromptChunk(chunked[4:9], 1, start=4)])
        third = model.step(whole[:0], whole[:0], whole[:0], [PromptChunk(chunked[9:], 1, start=9)])
        expected = [model(t[None])[0] for t in (running, chunked, whole)]
    assert first.shape[0] == 3 and second.shape[0] == 2 and third.shape[0] == 1
    for got, want in [(first[0], expected[0][4]), (first[1], expected[1][3]), (first[2], expected[2][4]),
                      (second[0], expected[0][5]), (second[1], expected[1][8]), (third[0], expected[1][10])]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_sequence_moved_to_a_freed_lower_slot_decodes_as_before_in_a_compact_batch():
    model = small_model()
    cache = model.new_cache(max_slots=3, max_len=16)
    long, short = torch.randint(0, 50, (9,)), torch.randint(0, 50, (4,))
    with torch.inference_mode():
        assert [cache.acquire() for _ in range(3)] == [0, 1, 2]
        model.prefill(short[:2], slot=0)
        model.prefill(torch.randint(0, 50, (12,)), slot=1)  # leaves: its stale keys stay in slot 1
        model.prefill(long[:7], slot=2)
        cache.release(1)
        cache.move(2, 1, 7)
        assert cache.acquire() == 2  # the moved sequence's old slot is free again
        # slots 0..1 in order: the step reads the cache's first two slots as they are
        steps = [model.decode(torch.stack([short[2 + i], long[7 + i]]), torch.tensor([0, 1]), torch.tensor([2 + i, 7 + i])) for i in range(2)]
        expected_long, expected_short = model(long[None])[0], model(short[None])[0]
    for i, step in enumerate(steps):
        torch.testing.assert_close(step[0], expected_short[2 + i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(step[1], expected_long[7 + i], atol=1e-5, rtol=1e-4)


def test_cache_hands_out_each_slot_once_and_refuses_what_does_not_fit():
    model = small_model()
    cache = model.new_cache(max_slots=2, max_len=8, dtype=torch.float16)
    assert cache.capacity_tokens == 16 and cache.keys[0].dtype == torch.float16
    first, second = cache.acquire(), cache.acquire()
    assert {first, second} == {0, 1} and cache.acquire() is None
    cache.release(first)
    assert cache.acquire() == first
    with pytest.raises(ValueError, match="not in use"):
        cache.release(7)
    with pytest.raises(ValueError, match="must be in use"):
        cache.move(first, second, 4)  # the target is taken
    with pytest.raises(ValueError, match="do not fit"):
        model.prefill(torch.zeros(9, dtype=torch.long), slot=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.new_cache(max_slots=1, max_len=33)


def test_pickled_weights_and_unknown_model_types_are_refused(hf_decoders, tmp_path):
    import json
    import shutil

    directory = tmp_path / "pickled"
    shutil.copytree(hf_decoders["llama-gqa"][0], directory)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
        load_decoder(f"file://{directory}")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    with pytest.raises(ModelLoadError, match="model.uri: .*model_type: 'falcon' is not a supported decoder"):
        load_decoder(str(directory))
    from slimserve.models.loading import load_model

    with pytest.raises(ModelLoadError, match="model_type: 'falcon' is not a supported decoder"):  # not "only BERT"
        load_model(f"file://{directory}")


def test_sliding_window_perplexity_scores_every_token_once_with_enough_context():
    import math

    import torch.nn.functional as F

    from slimserve.models.decoder import perplexity

    # each layer's attention reaches 2 tokens back, two layers 4: windows of 8 every 3 tokens give each scored
    # token (at least 5 tokens of context) all the context it uses
    model = small_model(sliding_window=3)
    ids = torch.randint(0, 50, (29,), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = math.exp(F.cross_entropy(model(ids[None])[0, :-1], ids[1:]).item())
    assert perplexity(model, ids, window=32) == pytest.approx(full, rel=1e-5)
    assert perplexity(model, ids, window=8, stride=3, batch_size=3) == pytest.approx(full, rel=1e-5)
    # a window shorter than the attention's reach loses context: a different (here: any other) value
    assert perplexity(model, ids, window=2, stride=1) != pytest.approx(full, rel=1e-3)
    with pytest.raises(ValueError, match="stride must be at least 1 and below the window"):
        perplexity(model, ids, window=4, stride=4)


def test_half_precision_model_keeps_rope_frequencies_in_fp32():
    model = small_model(max_position_embeddings=512)
    positions = torch.arange(500)[None]
    cos, sin = model._rope(positions, torch.float32)
    model.to(torch.bfloat16)  # a cast rounds every floating buffer: the frequencies must not be one
    half_cos, half_sin = model._rope(positions, torch.float32)
    assert torch.equal(half_cos, cos) and torch.equal(half_sin, sin)


def _forward_logits(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the whole sequence through `forward` (no cache)."""
    with torch.inference_mode():
        return model(ids[None])[0]


def _decoded(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    """The last token's logits through the cache path (prefill, then a decode step)."""
    model.new_cache(max_slots=1, max_len=16)
    with torch.inference_mode():
        model.prefill(ids[:-1], slot=0)
        return model.decode(ids[-1:], torch.tensor([0]), torch.tensor([len(ids) - 1]))[0]


def test_a_decode_step_agrees_with_the_forward_for_pruned_and_quantized_projections():
    from slimserve.compression.decoder_surgery import keep_groups, keep_neurons
    from slimserve.models.decoder.model import config_of
    from slimserve.quant.int8_weight_only import Int8WeightOnlyLinear

    model = small_model()
    ids = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(_decoded(model, ids), _forward_logits(model, ids)[-1], atol=1e-5, rtol=1e-4)
    for layer in model.layers:  # heads (a kv group) and neurons pruned: smaller Linears
        keep_groups(layer.self_attn, torch.tensor([1]))
        keep_neurons(layer.mlp, torch.arange(0, 40, 2))
    config_of(model)
    torch.testing.assert_close(_decoded(model, ids), _forward_logits(model, ids)[-1], atol=1e-5, rtol=1e-4)
    attention = model.layers[0].self_attn
    attention.k_proj = Int8WeightOnlyLinear.from_float(attention.k_proj)  # one projection quantized
    torch.testing.assert_close(_decoded(model, ids), _forward_logits(model, ids)[-1], atol=1e-5, rtol=1e-4)
