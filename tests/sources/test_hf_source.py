"""hf:// sources through huggingface_hub against a local server speaking the Hub's HTTP API (HF_ENDPOINT):
safetensors only, the token sent as a bearer token, clear errors naming the URI."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from slimserve.artifacts import StorageError
from slimserve.artifacts.storage import resolve_uri
from slimserve.models.loading import load_builtin, load_model
from slimserve.models.minilm import minilm_files_dir


@pytest.fixture
def hub(mirror, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return mirror


def test_a_hub_repository_loads_through_the_endpoint_with_the_token(hub, download_cache):
    files = minilm_files_dir()
    hub.hf_repos["sentence-transformers/all-MiniLM-L6-v2"] = {
        name: (files / name).read_bytes() for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
    } | {"pytorch_model.bin": b"a pickle that must never be fetched"}
    loaded = load_model("hf://sentence-transformers/all-MiniLM-L6-v2@main")
    reference = load_builtin("builtin://minilm-l6")
    ids = torch.tensor([[101, 7592, 2088, 102]])
    assert torch.allclose(loaded.model(ids, torch.ones_like(ids)), reference.model(ids, torch.ones_like(ids)), atol=1e-6)
    fetched = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert fetched and not any(path.endswith(".bin") for path in fetched)
    assert all(headers.get("authorization") == "Bearer hf_test_token" for _, _, headers in hub.requests)


def test_a_repository_of_pickled_weights_is_refused(hub, download_cache):
    hub.hf_repos["org/pickled"] = {"config.json": b"{}", "pytorch_model.bin": b"pickle"}
    with pytest.raises(StorageError, match="'hf://org/pickled': the repository has no .safetensors weights") as raised:
        resolve_uri("hf://org/pickled")
    assert raised.value.reason == "UnsafeModel"
    assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)


def test_an_unknown_repository_is_a_clear_error(hub, download_cache):
    hub.hf_repos["org/other"] = {"model.safetensors": save({"w": torch.ones(1)})}
    with pytest.raises(StorageError, match="'hf://org/missing@v2': RepositoryNotFoundError") as raised:
        resolve_uri("hf://org/missing@v2")
    assert raised.value.reason == "NotFound"
