"""Decoders on the device the policy picks: the model's logits and greedy tokens on a GPU are the CPU's, and
`slimserve serve --device cuda` streams the same greedy completion to the OpenAI client. The CPU cases run
everywhere, the same code as the GPU ones; tests marked `gpu` run where CUDA is (skip elsewhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import ServerProcess, request  # noqa: E402

from slimserve.serving.generation.decoder import decoder_loader  # noqa: E402

PROMPT = "def read_lines(path):\n    "
NEW_TOKENS = 16


def greedy(model: torch.nn.Module, prompt: list[int], new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """The prompt's last logits and `new_tokens` greedy tokens, through the server's prefill and decode."""
    device = next(model.parameters()).device
    cache = model.new_cache(1, len(prompt) + new_tokens)
    with torch.inference_mode():
        logits = model.prefill(torch.tensor(prompt, device=device), 0, cache)
        tokens = [int(logits.argmax())]
        for step in range(new_tokens - 1):
            position = torch.tensor([len(prompt) + step], device=device)
            step_logits = model.decode(torch.tensor([tokens[-1]], device=device), torch.zeros(1, dtype=torch.long, device=device),
                                       position, cache)
            tokens.append(int(step_logits.argmax(dim=-1)))
    return logits.float().cpu(), tokens


@pytest.fixture(scope="module")
def on_the_cpu():
    servable = decoder_loader("cpu")("builtin://tiny-lm")
    prompt = servable.decoder.tokenizer.encode(PROMPT)
    return prompt, *greedy(servable.decoder.model, prompt, NEW_TOKENS)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tiny_lm_on_a_device_gives_the_cpus_logits_and_tokens(device, on_the_cpu):
    prompt, logits, tokens = on_the_cpu
    servable = decoder_loader(device)("builtin://tiny-lm")
    assert servable.info.device == str(torch.device(device, 0) if device == "cuda" else torch.device(device))
    assert next(servable.decoder.model.parameters()).device.type == device
    their_logits, their_tokens = greedy(servable.decoder.model, prompt, NEW_TOKENS)
    torch.testing.assert_close(their_logits, logits, atol=2e-3, rtol=2e-3)
    assert their_tokens == tokens


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_decoder_server_on_a_device_streams_the_cpus_greedy_completion(device, tmp_path, on_the_cpu):
    from openai import OpenAI

    _, _, tokens = on_the_cpu
    server = ServerProcess("builtin://tiny-lm", tmp_path, "--device", device).start()
    try:
        status, _, body = request(server.http_url, "GET", "/v2/models/tiny-lm")
        assert status == 200
        assert json.loads(body)["parameters"]["device"] == ("cuda:0" if device == "cuda" else "cpu")
        client = OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0)
        chunks = list(client.completions.create(model="tiny-lm", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0,
                                                stream=True))
        text = "".join(chunk.choices[0].text for chunk in chunks)
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        expected = decoder_loader("cpu")("builtin://tiny-lm").decoder.tokenizer.decode(tokens)
        assert text and expected.startswith(text)  # the same greedy tokens (fewer if it met a stop token)
    finally:
        server.stop()
