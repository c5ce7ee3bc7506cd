"""Decoders load from every storage scheme, through the compression engine's loader, and back from their
SlimServe artifacts (with their tokenizer and template), served by the plain OIP infer call."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from slimserve.models.decoder import load_decoder

IDS = torch.tensor([[5, 9, 14, 3, 77, 41, 8, 20]])


def reference_logits(hf_decoders, kind: str) -> torch.Tensor:
    with torch.inference_mode():
        return hf_decoders[kind][1](IDS).logits


def logits_of(loaded) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(IDS)


def test_decoder_loads_from_pvc_and_s3(hf_decoders, s3_env, tmp_path, monkeypatch):
    from slimserve.api.compression_job import S3Spec

    source = hf_decoders["qwen2"][0]
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path / "pvc"))
    shutil.copytree(source, tmp_path / "pvc" / "claim" / "models" / "qwen2")
    client = s3_env.client()
    for path in source.iterdir():
        client.upload_file(str(path), s3_env.bucket, f"decoders/qwen2/{path.name}")

    expected = reference_logits(hf_decoders, "qwen2")
    for uri, s3 in (("pvc://claim/models/qwen2", None), (f"s3://{s3_env.bucket}/decoders/qwen2", S3Spec(endpoint=s3_env.endpoint))):
        loaded = load_decoder(uri, s3=s3)
        torch.testing.assert_close(logits_of(loaded), expected, atol=2e-5, rtol=1e-4)
        assert loaded.source == uri and loaded.tokenizer.chat_template is not None


def test_decoder_artifact_round_trip_and_infer(hf_decoders, tmp_path):
    from slimserve.artifacts import save_artifact
    from slimserve.models import load_servable
    from slimserve.models.loading import load_model

    loaded = load_model(f"file://{hf_decoders['llama-tied'][0]}")
    assert loaded.family.name == "decoder"
    uri = f"file://{tmp_path / 'artifact'}"
    save_artifact(
        uri, family="decoder", recipe=loaded.recipe, tensors=loaded.model.state_dict(),
        extra_files=loaded.family.asset_files(loaded.assets), source=loaded.source,
    )
    rebuilt = load_decoder(uri)
    torch.testing.assert_close(logits_of(rebuilt), reference_logits(hf_decoders, "llama-tied"), atol=2e-5, rtol=1e-4)
    assert rebuilt.eos_token_ids == [2] and "assistant:" in rebuilt.tokenizer.apply_chat_template([{"role": "user", "content": "w3"}])

    servable = load_servable(uri)
    assert [t.name for t in servable.info.inputs] == ["text_input"]
    completion = servable.predict({"text_input": np.array([b"w7 w30 w31"], dtype=object)})["text_output"][0].decode()
    prompt = rebuilt.tokenizer.encode("w7 w30 w31")
    with torch.inference_mode():
        generated = hf_decoders["llama-tied"][1].generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert completion and completion == rebuilt.tokenizer.decode(generated[0, len(prompt):].tolist())
    with pytest.raises(ValueError, match="text_input: a prompt of 70 tokens does not fit the context of 64"):
        servable.predict({"text_input": np.array([" ".join(["w4"] * 70).encode()], dtype=object)})


def test_sharded_checkpoints_load_and_their_index_stays_in_the_directory(hf_decoders, tmp_path):
    import json

    from slimserve.models.errors import ModelLoadError
    from tests.decoder.conftest import save_word_tokenizer

    directory = tmp_path / "sharded"
    hf_decoders["gpt2"][1].save_pretrained(directory, max_shard_size="40KB")
    save_word_tokenizer(directory)
    index = directory / "model.safetensors.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    torch.testing.assert_close(logits_of(load_decoder(directory)), reference_logits(hf_decoders, "gpt2"), atol=2e-5, rtol=1e-4)

    (tmp_path / "outside.safetensors").write_bytes((directory / sorted(directory.glob("*.safetensors"))[0].name).read_bytes())
    (directory / index.name).write_text(json.dumps({"weight_map": {"transformer.wte.weight": "../outside.safetensors"}}))
    with pytest.raises(ModelLoadError, match=r"names '\.\./outside\.safetensors', which is not a file beside it"):
        load_decoder(directory)
