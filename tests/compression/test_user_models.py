"""Users' own models: a Hugging Face BERT directory and a torch.export program (.pt2), from file:// and pvc://."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slimserve.artifacts import SlimServeError
from slimserve.compression import compress
from slimserve.compression.errors import SpecDoesNotFit
from slimserve.models import load_servable
from slimserve.models.digits import digits_data
from slimserve.models.loading import transformers_family
from slimserve.models.minilm import MiniLMConfig, _hf_key, build_minilm, minilm_files_dir


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny random BERT encoder saved as Hugging Face does (BertModel keys under a `bert.` prefix)."""
    torch.manual_seed(0)
    config = MiniLMConfig(hidden_size=64, num_layers=2, head_dim=32, num_heads=[2, 2], intermediate_sizes=[128, 128], max_positions=128)
    model = build_minilm(config)
    directory = tmp_path / "claim" / "tiny-bert"
    directory.mkdir(parents=True)
    save_file({"bert." + _hf_key(name): t.contiguous() for name, t in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    }))
    shutil.copy(minilm_files_dir() / "tokenizer.json", directory / "tokenizer.json")
    return directory


def test_transformers_directory_on_a_pvc_is_pruned_and_served(bert_dir, tmp_path, monkeypatch, make_spec, sink):
    monkeypatch.setenv("SLIMSERVE_PVC_ROOT", str(tmp_path))
    spec = make_spec(tmp_path / "out", model="pvc://claim/tiny-bert", steps=[{"prune": {"amount": 0.5}}], evaluation={"maxDrop": 1.0})
    outcome = compress(spec, [sink])
    assert outcome.metrics.baseline.metric_name == "cosine"
    assert outcome.metrics.compressed.parameters < outcome.metrics.baseline.parameters
    servable = load_servable(outcome.artifact.uri)
    embedding = servable.predict({"text": np.array([b"hello there", b"general kenobi"], dtype=object)})["embedding"]
    assert embedding.shape == (2, 64)


def test_served_transformers_model_truncates_where_its_sentence_transformers_config_says(
    bert_dir, tmp_path, make_spec, sink
):
    (bert_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    spec = make_spec(tmp_path / "out", model=f"file://{bert_dir}", steps=[{"prune": {"amount": 0.5}}], evaluation={"maxDrop": 1.0})
    servable = load_servable(compress(spec, [sink]).artifact.uri)

    def embed(words: int, tail: str) -> np.ndarray:
        text = " ".join(f"w{i}" for i in range(words)) + tail  # "w12" is a few word pieces
        return servable.predict({"text": np.array([text.encode()], dtype=object)})["embedding"][0]

    # Past 48 tokens (of 82) the text is cut (the tokenizer.json alone would cut at 128) ...
    np.testing.assert_array_equal(embed(40, ""), embed(40, " and a tail that comes too late"))
    # ... and not before.
    assert not np.allclose(embed(8, ""), embed(8, " and a tail that still counts"))


def test_transformers_directory_of_an_unsupported_family_is_refused_naming_what_is(bert_dir, tmp_path, make_spec, sink):
    config = json.loads((bert_dir / "config.json").read_text())
    (bert_dir / "config.json").write_text(json.dumps({**config, "model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(SlimServeError, match="'t5' model; supported: BERT-style encoders and the decoders gpt2, llama"):
        compress(make_spec(tmp_path / "out", model=f"file://{bert_dir}"), [sink])


@pytest.mark.parametrize(("config", "family"), [
    ({"model_type": "bert", "architectures": ["BertLMHeadModel"]}, "BERT-style encoders"),
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "the decoders gpt2, llama, mistral, qwen2"),
    ({"architectures": ["BertModel"]}, "BERT-style encoders"),  # no model_type: the architecture tells
    ({"architectures": ["LlamaForCausalLM"]}, "the decoders gpt2, llama, mistral, qwen2"),
    ({"model_type": "t5", "architectures": ["T5Model"]}, None),
])
def test_a_transformers_directorys_family_is_its_model_type_else_its_architecture(config, family):
    found = transformers_family(config)
    assert (found and found.description) == family


@pytest.fixture
def program_file(tmp_path, digits_mlp):
    path = tmp_path / "mlp.pt2"
    program = torch.export.export(digits_mlp.model, (torch.zeros(4, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def test_exported_program_is_pruned_unstructured_and_served(program_file, tmp_path, make_spec, sink):
    spec = make_spec(
        tmp_path / "out", model=f"file://{program_file}", steps=[{"prune": {"method": "unstructured", "amount": 0.6}}],
        evaluation={"dataset": {"uri": "builtin://digits"}, "maxDrop": 0.05},
    )
    outcome = compress(spec, [sink])
    assert outcome.metrics.size_ratio > 1.5
    servable = load_servable(outcome.artifact.uri)
    data = digits_data()
    assert (servable.predict({"input": data.x_test})["label"] == data.y_test).mean() > 0.9


def test_exported_program_cannot_be_distilled(program_file, tmp_path, make_spec, sink):
    common = {"model": f"file://{program_file}", "evaluation": {"dataset": {"uri": "builtin://digits"}}}
    with pytest.raises(SpecDoesNotFit, match="no architecture to derive a student"):
        compress(make_spec(tmp_path / "b", steps=[{"distill": {"student": {"widthMultiplier": 0.5}}}], **common), [sink])
    with pytest.raises(SpecDoesNotFit, match="evaluation.dataset: required"):
        compress(make_spec(tmp_path / "c", model=f"file://{program_file}"), [sink])


def test_corrupt_program_is_refused(tmp_path, make_spec, sink):
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SlimServeError, match="not a loadable torch.export program"):
        compress(make_spec(tmp_path / "out", model=f"file://{broken}", evaluation={"dataset": {"uri": "builtin://digits"}}), [sink])
