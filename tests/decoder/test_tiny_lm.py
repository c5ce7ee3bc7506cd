"""builtin://tiny-lm: the committed files are what its recipe recorded, and it predicts held-out Python
source at least 3x better (perplexity) than a unigram model of its training text."""

from __future__ import annotations

import hashlib
import json
import math

import torch

from slimserve.models.decoder import TINY_LM_URI, builtin_text, load_decoder, perplexity, tiny_lm_dir


def recipe() -> dict:
    return json.loads((tiny_lm_dir() / "recipe.json").read_text())


def test_committed_files_are_the_ones_the_recipe_recorded():
    record = recipe()
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((tiny_lm_dir() / name).read_bytes()).hexdigest() == digest, name
    assert record["heldout_files"] and not set(record["heldout_files"]) & set(record["train_files"])
    assert record["heldout_perplexity"] * 3 <= record["unigram_perplexity"]


def test_held_out_perplexity_is_at_least_3x_below_unigram():
    loaded = load_decoder(TINY_LM_URI)
    ids = loaded.tokenizer.encode(builtin_text("heldout"))[:400]
    counts = torch.tensor(recipe()["unigram_counts"], dtype=torch.float64) + 1  # smoothed as the recipe's baseline
    unigram = math.exp(-(counts / counts.sum()).log()[torch.tensor(ids[1:])].mean().item())
    assert perplexity(loaded.model, ids, window=256) * 3 <= unigram


def test_builtin_tiny_lm_completes_code_and_has_a_chat_template():
    from slimserve.models.loading import load_model

    assert load_model(TINY_LM_URI).family.name == "decoder"
    loaded = load_decoder(TINY_LM_URI)
    eot = loaded.tokenizer.backend.token_to_id("<|endoftext|>")
    assert loaded.eos_token_ids == [eot] and loaded.max_length == loaded.model.config.max_position_embeddings
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "sort a list"}]) == "# user: sort a list\n# assistant:"
    prompt = loaded.tokenizer.encode("import os\nimport sys\n\n\ndef")
    model = loaded.model
    model.new_cache(max_slots=1, max_len=64)
    with torch.inference_mode():
        tokens = [int(model.prefill(torch.tensor(prompt), slot=0).argmax())]
        for position in range(len(prompt), len(prompt) + 11):
            tokens.append(int(model.decode(torch.tensor(tokens[-1:]), torch.tensor([0]), torch.tensor([position]))[0].argmax()))
    completion = loaded.tokenizer.decode(tokens)
    assert "(" in completion  # a function name and its parameters: it writes Python
