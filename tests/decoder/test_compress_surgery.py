"""Structured pruning of decoders: grouped-query groups, MLP neurons and layers removed, the config rebuilds it."""

from __future__ import annotations

import torch

from slimserve.compression import decoder_surgery
from slimserve.models.decoder import DecoderConfig, DecoderLM


def _decoder(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    fields = dict(vocab_size=64, hidden_size=64, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=16, intermediate_size=128, max_position_embeddings=32)
    return DecoderLM(DecoderConfig(**{**fields, **overrides})).eval()


def _rebuilt(model: DecoderLM) -> DecoderLM:
    """A fresh DecoderLM from the pruned model's recipe, with its weights: what the server builds from an artifact."""
    rebuilt = DecoderLM(DecoderConfig.from_recipe(model.config.to_recipe())).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt


def test_width_pruning_removes_whole_kv_groups_and_neurons_and_the_recipe_rebuilds_it():
    model = _decoder()
    ids = torch.randint(0, 64, (2, 12))
    group_heads = {
        index: layer.self_attn.q_proj.weight.detach().reshape(4, 2 * 16, 64).clone() for index, layer in enumerate(model.layers)
    }
    scores = decoder_surgery.group_scores(model, decoder_surgery.magnitude)

    decoder_surgery.prune_width(model, 0.5, decoder_surgery.magnitude)

    config = model.config
    assert (config.num_kv_heads, config.num_heads, config.intermediate_size) == (2, 4, 64)  # two query heads per group kept
    for index, layer in enumerate(model.layers):
        attention = layer.self_attn
        assert (attention.num_kv_heads, attention.num_heads) == (2, 4)
        assert attention.k_proj.out_features == attention.v_proj.out_features == 2 * 16
        assert attention.q_proj.out_features == attention.o_proj.in_features == 4 * 16
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 64
        # the kept groups are the two of highest score, each with both of its query heads, in order
        kept = torch.topk(scores[index], 2).indices.sort().values
        assert torch.equal(attention.q_proj.weight.reshape(2, 32, 64), group_heads[index][kept])
    logits = model(ids)
    assert logits.shape == (2, 12, 64)
    rebuilt = _rebuilt(model)
    assert torch.equal(rebuilt(ids), logits)
    # the KV cache follows the new head count: prefill and decode agree with the full forward
    cache = rebuilt.new_cache(1, 12)
    assert cache.keys[0].shape[1] == 2
    torch.testing.assert_close(rebuilt.prefill(ids[0], 0, cache), logits[0, -1], rtol=1e-4, atol=1e-4)


def test_depth_pruning_removes_the_layers_that_change_their_input_least():
    model = _decoder(num_layers=4)
    with torch.no_grad():  # layers 1 and 2 add nothing to the residual stream: their influence is zero
        for index in (1, 2):
            model.layers[index].self_attn.o_proj.weight.zero_()
            model.layers[index].mlp.down_proj.weight.zero_()
    ids = torch.randint(0, 64, (2, 12))
    before = model(ids)

    influence = decoder_surgery.block_influence(model, [(ids,)])
    removed = decoder_surgery.prune_depth(model, 0.5, influence)

    assert removed == [1, 2]
    assert model.config.num_layers == len(model.layers) == 2
    torch.testing.assert_close(model(ids), before)  # the removed layers did nothing
    torch.testing.assert_close(_rebuilt(model)(ids), before)


def test_mlp_widths_stay_multiples_the_int4_kernels_take():
    assert decoder_surgery.kept_width(1024, 0.3) == 704
    assert decoder_surgery.kept_width(128, 0.9) == 32  # at least one multiple
    assert decoder_surgery.kept_width(48, 0.5) == 24  # too narrow for the multiple: exact
