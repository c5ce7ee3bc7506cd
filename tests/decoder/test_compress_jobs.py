"""A decoder's CompressionJob: int4 GPTQ with perplexity and tokens per second in the status; grouped-query
groups, neurons and layers pruned, recovery by distillation, a distilled student; the perplexity budget
enforced by the search; artifacts the server's loader rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimserve.api.compression_job import CompressionJobSpec
from slimserve.compression import compress
from slimserve.compression.perplexity_task import PerplexityTask
from slimserve.models.decoder import load_decoder
from slimserve.models.families import eager_forward

VOCAB = 64


@pytest.fixture(scope="module")
def self_taught(tmp_path_factory) -> tuple[Path, Path]:
    """(a random 4-layer Llama directory, a text file it sampled itself): it knows its own text far better than
    chance, so what pruning costs it shows in the perplexity."""
    from safetensors.torch import save_file

    from slimserve.models.decoder import DecoderConfig, DecoderLM
    from tests.decoder.conftest import save_word_tokenizer

    hf_config = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                 "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "hidden_act": "silu"}
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the compressions below ask for one thread too; two mostly wait on each other here
    model = DecoderLM(DecoderConfig.from_hf(hf_config)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    generator = torch.Generator().manual_seed(0)
    tokens, slots = torch.randint(3, VOCAB, (40,), generator=generator), torch.arange(40)
    sampled = [tokens]
    model.new_cache(40, 128)
    with torch.inference_mode():
        logits = torch.stack([model.prefill(tokens[slot : slot + 1], slot) for slot in range(40)])
        for position in range(1, 128):
            probabilities = torch.softmax(logits[:, 3:] / 0.7, dim=-1)  # words only, no special tokens
            sampled.append(3 + torch.multinomial(probabilities, 1, generator=generator)[:, 0])
            logits = model.decode(sampled[-1], slots, torch.full((40,), position))
    ids = torch.stack(sampled, dim=1)
    directory = tmp_path_factory.mktemp("llama")
    (directory / "config.json").write_text(json.dumps(hf_config))
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, directory / "model.safetensors")
    save_word_tokenizer(directory)
    text = directory / "text.txt"
    text.write_text(" ".join(f"w{i}" for i in ids.reshape(-1).tolist()))
    return directory, text


def _compress(directory: Path, text: Path, output: Path, step: dict, max_relative_increase: float):
    return compress(CompressionJobSpec.model_validate({
        "model": {"uri": f"file://{directory}"},
        "steps": [step],
        "evaluation": {"metric": "perplexity", "maxRelativeIncrease": max_relative_increase, "threads": 1,
                       "dataset": {"uri": f"file://{text}"}},
        "output": {"uri": f"file://{output}"},
    }), [])


def test_int4_gptq_job_reports_perplexity_and_tokens_per_second_and_its_artifact_rebuilds(self_taught, tmp_path):
    directory, text = self_taught
    output = tmp_path / "out"
    step = {"quantize": {"method": "int4-weight-only", "algorithm": "gptq", "calibrationSamples": 16}}
    outcome = _compress(directory, text, output, step, max_relative_increase=10.0)

    baseline, compressed = outcome.metrics.baseline, outcome.metrics.compressed
    assert baseline.metric_name == compressed.metric_name == "perplexity"
    assert baseline.tokens_per_second > 0 and compressed.tokens_per_second > 0
    assert compressed.size_bytes < baseline.size_bytes / 3
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["family"] == "decoder" and manifest["recipe"]["num_kv_heads"] == 2
    kinds = {name: entry["kind"] for name, entry in manifest["quantization"]["modules"].items()}
    # the embedding table and the output head are quantized too, each as its own module
    assert kinds["embed_tokens"].endswith("-embedding") and "lm_head" in kinds
    assert kinds["layers.0.self_attn.q_proj"] == "int4-weight-only-linear"
    assert (output / "tokenizer.json").is_file()
    # the server's loader rebuilds the model the job scored: the same perplexity on the same held-out windows
    served = load_decoder(f"file://{output}")
    task = PerplexityTask.of_text(served.tokenizer.encode(text.read_text(), add_special_tokens=False), 128)
    assert task.score(eager_forward(served.model)) == pytest.approx(compressed.metric, rel=1e-5)


def test_structured_pruning_with_recovery_shrinks_groups_and_neurons_and_the_artifact_rebuilds(self_taught, tmp_path):
    directory, text = self_taught
    outcome = _compress(directory, text, tmp_path / "out", {"prune": {"amount": 0.5, "finetuneEpochs": 1}}, max_relative_increase=10.0)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert (recipe["num_kv_heads"], recipe["num_heads"], recipe["intermediate_size"], recipe["num_layers"]) == (1, 2, 64, 4)
    compressed = outcome.metrics.compressed
    assert compressed.parameters < outcome.metrics.baseline.parameters
    served = load_decoder(f"file://{tmp_path / 'out'}")
    assert (served.model.config.num_kv_heads, served.model.layers[0].mlp.up_proj.out_features) == (1, 64)
    assert served.model.new_cache(1, 8).keys[0].shape[1] == 1  # the server's KV cache follows the pruned heads


def test_depth_pruning_keeps_to_the_perplexity_budget(self_taught, tmp_path):
    directory, text = self_taught
    outcome = _compress(directory, text, tmp_path / "out", {"prune": {"method": "depth", "amount": 0.5}}, max_relative_increase=0.02)

    baseline, compressed = outcome.metrics.baseline.metric, outcome.metrics.compressed.metric
    assert compressed <= baseline * 1.02 + 1e-6
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tried = [c for c in report["candidates"] if c["step"] == "prune/depth"]
    # half the layers cost more than 2%: the search rejected that and went on to gentler amounts
    assert tried[0]["label"] == "amount 0.5" and not tried[0]["accepted"] and tried[0]["metric"] > baseline * 1.02
    assert tried[-1]["accepted"]
    kept_layers = json.loads((tmp_path / "out" / "manifest.json").read_text())["recipe"]["num_layers"]
    assert kept_layers > 2


def test_distilled_student_keeps_fewer_layers_narrowed_and_the_artifact_rebuilds_it(self_taught, tmp_path):
    directory, text = self_taught
    spec = CompressionJobSpec.model_validate({
        "model": {"uri": f"file://{directory}"},
        "steps": [{"distill": {"student": {"numLayers": 2, "widthMultiplier": 0.5}, "epochs": 2, "batchSize": 8}}],
        "evaluation": {"metric": "perplexity", "maxRelativeIncrease": 10.0, "threads": 1, "dataset": {"uri": f"file://{text}"}},
        "output": {"uri": f"file://{tmp_path / 'out'}"},
    })
    outcome = compress(spec, [])

    recipe = json.loads((tmp_path / "out" / "manifest.json").read_text())["recipe"]
    assert (recipe["num_layers"], recipe["num_kv_heads"], recipe["intermediate_size"]) == (2, 1, 64)
    assert outcome.metrics.compressed.parameters < outcome.metrics.baseline.parameters / 2
    assert load_decoder(f"file://{tmp_path / 'out'}").model.config.num_layers == 2
