"""SlimServe's DecoderLM against transformers itself: the same logits and the same greedy tokens."""

from __future__ import annotations

import pytest
import torch

from slimserve.models.decoder import load_decoder
from tests.decoder.conftest import KINDS


def greedy(loaded, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy tokens through the cache path: prefill, then one decode step per token."""
    model = loaded.model
    model.new_cache(max_slots=2, max_len=64)
    with torch.inference_mode():
        logits = model.prefill(prompt, slot=1)
        tokens = [int(logits.argmax())]
        for position in range(len(prompt), len(prompt) + new_tokens - 1):
            step = model.decode(torch.tensor(tokens[-1:]), torch.tensor([1]), torch.tensor([position]))
            tokens.append(int(step[0].argmax()))
    return tokens


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_greedy_tokens_match_transformers(hf_decoders, kind):
    directory, reference = hf_decoders[kind]
    loaded = load_decoder(f"file://{directory}")
    ids = torch.randint(3, 96, (2, 14), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = reference(ids).logits
        actual = loaded.model(ids)
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4)

    prompt = ids[0, :6]
    with torch.inference_mode():
        generated = reference.generate(prompt[None], max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert greedy(loaded, prompt, 16) == generated[0, 6:].tolist()
