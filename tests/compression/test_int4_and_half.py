"""int4-weight-only on torch's packed-int4 kernels and fp16 / bf16 models: numerics against a float
reference, the device-neutral layout (Linears and embedding tables), artifact round trips, MiniLM, the
budget search's relaxations, and the precision a served model reports."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.budget import run_within_budget
from slimserve.compression.errors import BudgetExceeded
from slimserve.compression.quantize_step import sensitive_layers_in_float
from slimserve.compression.quantize import apply_quantization
from slimserve.models.minilm import MiniLMConfig, MiniLMFeedForward, encode, load_tokenizer
from slimserve.quant import optimize_for_inference, quantization_state, restore_quantization
from slimserve.quant.half import native_on
from slimserve.compression import compress
from slimserve.models import load_servable
from slimserve.quant.embedding import Int4Embedding, Int8Embedding
from slimserve.quant.int4_kernels import CPU_INT4_MAX_ROWS, int4_matmul
from slimserve.quant.int4_weight_only import (
    GeluInt4Linear,
    Int4WeightOnlyLinear,
    dequantize_int4_grouped,
    quantize_int4_grouped,
)
from slimserve.quant.int8_dynamic import GeluInt8Linear, Int8DynamicLinear

SENTENCES = [
    "The operator reconciles each CompressionJob into a batch Job.",
    "Packed int4 weights take an eighth of the bytes of float ones.",
    "A cat sat on the warm windowsill all afternoon.",
    "How do I reset my password?",
]


class TinyEncoder(nn.Module):
    """Embedding + three Linears, mean-pooled; `head` (out 8) fits no int4 kernel and stays float."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(self.embed(ids))))).mean(dim=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.float(), b.float()).min())


def round_trip(model: nn.Module, skeleton: nn.Module, tmp_path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Save as an artifact stores it (safetensors + JSON recipe) and restore onto `skeleton`."""
    tensors, recipe = quantization_state(model)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    restored = restore_quantization(skeleton, json.loads((tmp_path / "recipe.json").read_text()), load_file(str(tmp_path / "model.safetensors")))
    return restored, tensors


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("shape", [(1, 3), (2, 5)], ids=["int4-kernel", "int8-copy"])  # rows <= / > CPU_INT4_MAX_ROWS
def test_int4_linear_matches_dequantize_then_matmul(group_size, shape):
    torch.manual_seed(group_size)
    linear = nn.Linear(512, 96)
    module = Int4WeightOnlyLinear.from_float(linear, group_size)
    x = torch.randn(*shape, 512)
    reference = nn.functional.linear(x, module.dequantized_weight(), linear.bias.detach())
    with torch.inference_mode():
        out = module(x)
        if shape[0] * shape[1] <= CPU_INT4_MAX_ROWS:  # really the packed-int4 kernel
            kernel = int4_matmul(x.reshape(-1, 512), module.kernel_weight, group_size, module.kernel_scale_offset)
            assert torch.equal(out, (kernel.float() + linear.bias.detach()).reshape(out.shape))
    assert out.shape == (*shape, 96) and out.dtype == torch.float32
    # bf16 activations: within a few bf16 steps of the output's scale, and the same direction
    assert (out - reference).abs().max() <= 0.02 * reference.abs().max()
    assert cosine(out.reshape(-1, 96), reference.reshape(-1, 96)) > 0.9999
    assert cosine(out.reshape(-1, 96), linear(x).detach().reshape(-1, 96)) > 0.99  # and close to the float layer
    # above CPU_INT4_MAX_ROWS rows: the int4 weight requantized to int8 per channel, made at load, never saved
    assert module.many_rows_weight.dtype == torch.int8 and module.many_rows_weight.shape == (96, 512)
    assert not any(name.startswith("many_rows") for name in module.state_dict())


def test_neutral_layout_is_two_nibbles_per_byte_with_per_group_scale_and_zero():
    weight = torch.arange(32, dtype=torch.float32).repeat(16, 1)  # one group of 0..31 per row
    packed, scale, zero = quantize_int4_grouped(weight, 32)
    assert (packed.dtype, scale.dtype, zero.dtype) == (torch.uint8, torch.bfloat16, torch.uint8)
    assert packed.shape == (16, 16) and scale.shape == zero.shape == (16, 1)
    values = torch.round(weight[0] / scale[0].float()).to(torch.uint8)  # zero point 0: the group is >= 0
    assert int(zero[0]) == 0
    assert packed[0, 0] == values[0] | (values[1] << 4) and packed[0, 5] == values[10] | (values[11] << 4)
    restored = dequantize_int4_grouped(packed, scale, zero, torch.float32)
    assert (restored - weight).abs().max() <= scale.float().max() / 2 + 1e-6


def test_int4_artifact_round_trip_gives_the_same_outputs_and_stores_no_device_packing(tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    ids = torch.randint(0, 100, (6, 9))
    with torch.inference_mode():
        reference = model(ids)
    quantized = apply_quantization(copy.deepcopy(model), QuantizeConfig(method="int4-weight-only", group_size=32), calibration=None)
    assert type(quantized.up) is Int4WeightOnlyLinear and type(quantized.head) is nn.Linear
    assert type(quantized.embed) is Int4Embedding and quantized.embed.group_size == 32
    restored, tensors = round_trip(quantized, TinyEncoder().eval(), tmp_path)
    assert not any("kernel" in name or "many_rows" in name for name in tensors)  # the device's copies are made at load
    assert tensors["up.weight_uint4x2"].shape == (128, 32)
    assert tensors["embed.weight_uint4x2"].shape == (100, 32) and tensors["embed.weight_scale"].shape == (100, 2)
    assert type(restored.embed) is Int4Embedding and torch.equal(restored.embed.weight_zero, quantized.embed.weight_zero)
    with torch.inference_mode():
        out = quantized(ids)
        assert torch.equal(restored(ids), out)
    assert cosine(out, reference) > 0.99
    compiled = optimize_for_inference(restored, (ids,))  # the kernels compile (fake kernels, freezing)
    assert cosine(compiled(ids), out) > 0.9999


def test_int8_layers_of_int4_and_their_errors():
    model = apply_quantization(TinyEncoder().eval(), QuantizeConfig(method="int4-weight-only", int8_layers=["down"]), calibration=None)
    assert type(model.up) is Int4WeightOnlyLinear and type(model.down) is Int8DynamicLinear
    assert model.up.group_size == 64  # 256 and 128 do not divide its 64 inputs
    assert type(model.embed) is Int4Embedding and model.embed.group_size == 64
    table_int8 = apply_quantization(TinyEncoder().eval(), QuantizeConfig(method="int4-weight-only", int8_layers=["embed"]), calibration=None)
    assert type(table_int8.embed) is Int8Embedding and type(table_int8.up) is Int4WeightOnlyLinear
    with pytest.raises(ValueError, match="int8Layers: 'head' is not a Linear or Embedding this config quantizes"):
        apply_quantization(TinyEncoder().eval(), QuantizeConfig(method="int4-weight-only", int8_layers=["head"]), calibration=None)
    with pytest.raises(ValueError, match="groupSize: only int4-weight-only"):
        QuantizeConfig(method="int8-dynamic", group_size=64)
    with pytest.raises(ValueError, match="no int4 kernel"):
        Int4WeightOnlyLinear(64, 8, True, 32)


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_embedding_dequantizes_the_rows_looked_up(group_size):
    torch.manual_seed(group_size)
    embedding = nn.Embedding(300, 256)
    table = Int4Embedding.from_float(embedding, group_size)
    assert (table.weight_uint4x2.dtype, table.weight_scale.dtype, table.weight_zero.dtype) == (torch.uint8, torch.bfloat16, torch.uint8)
    assert table.weight_uint4x2.shape == (300, 128) and table.weight_scale.shape == (300, 256 // group_size)
    packed, scale, zero = quantize_int4_grouped(embedding.weight, group_size)  # the Linears' layout, row by row
    assert torch.equal(table.weight_uint4x2, packed) and torch.equal(table.weight_scale, scale) and torch.equal(table.weight_zero, zero)
    ids = torch.tensor([[0, 299, 7], [7, 7, 150]])
    with torch.inference_mode():
        out = table(ids)
    assert out.shape == (2, 3, 256) and out.dtype == torch.float32
    assert torch.equal(out, table.dequantized_weight()[ids])
    assert cosine(out.reshape(-1, 256), embedding(ids).detach().reshape(-1, 256)) > (0.995 if group_size == 32 else 0.99)
    with pytest.raises(ValueError, match="must be even and divide embedding_dim 256"):
        Int4Embedding(300, 256, 96)


def test_the_search_ranks_tables_with_the_linears_and_labels_name_their_precision():
    from slimserve.compression.budget import describe
    from slimserve.compression.quantize import quantizable_layers

    assert quantizable_layers(TinyEncoder(), "int4-weight-only") == ["embed", "up", "down"]  # what the search ranks
    config = QuantizeConfig(method="int4-weight-only", int8_layers=["embed"])
    model = apply_quantization(TinyEncoder().eval(), config, calibration=None)
    assert describe(config, model) == "int4-weight-only, 1 layer(s) int8 (embed), 0 layer(s) float, tables int8"
    assert describe(config.model_copy(update={"int8_layers": None}), apply_quantization(TinyEncoder().eval(), QuantizeConfig(
        method="int4-weight-only"), calibration=None)).endswith("0 layer(s) float, tables int4")


def test_minilm_int4_stays_close_to_fp32(minilm_model):
    model, tokenizer = minilm_model.model, load_tokenizer(minilm_model.assets)
    quantized = apply_quantization(copy.deepcopy(model), QuantizeConfig(method="int4-weight-only", group_size=32), calibration=None)
    reference = encode(model, tokenizer, SENTENCES)
    cosines = (encode(quantized, tokenizer, SENTENCES) * reference).sum(axis=1)
    # int4 with no layer in int8: the budget search moves the most sensitive ones up (benchmarks/compression_minilm.py)
    assert cosines.mean() > 0.97, cosines


@pytest.mark.parametrize("tokens", [CPU_INT4_MAX_ROWS, 16], ids=["int4-kernel", "int8-copy"])
def test_minilm_feed_forward_fuses_gelu_into_an_int4_output_on_its_int8_copy(tokens):
    torch.manual_seed(0)
    ffn = MiniLMFeedForward(MiniLMConfig(), 1536).eval()
    ffn.output = Int4WeightOnlyLinear.from_float(ffn.output, 32)
    hidden = torch.randn(1, tokens, 384)
    with torch.inference_mode():
        unfused = ffn(hidden)
        ffn.fuse_for_inference()
        assert type(ffn.gelu_output) is GeluInt4Linear
        fused = ffn(hidden)
        pre_activation = ffn.intermediate(hidden)
        # On the copy the int4 layer computes what SlimServe int8's fused layer does with the same int8 weight.
        int8 = Int8DynamicLinear(1536, 384, bias=True)
        int8.weight_int8, int8.weight_scale, int8.bias = ffn.output.many_rows_weight, ffn.output.many_rows_scale, ffn.output.bias
        int8_fused = ffn.norm(hidden + GeluInt8Linear(int8)(pre_activation))
    if tokens > CPU_INT4_MAX_ROWS:
        torch.testing.assert_close(fused, int8_fused, rtol=1e-5, atol=1e-5)
        assert not torch.equal(fused, unfused)  # GELU's scale comes from the pre-activation's bound
        assert cosine(fused[0], unfused[0]) > 0.999
    else:  # the int4 kernel's calls apply GELU first, as unfused
        assert torch.equal(fused, unfused)


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_half_precision_round_trip_is_half_the_size_and_exact(method, tmp_path):
    torch.manual_seed(1)
    model = TinyEncoder().eval()
    ids = torch.randint(0, 100, (6, 9))
    with torch.inference_mode():
        reference = model(ids)
    half = apply_quantization(copy.deepcopy(model), QuantizeConfig(method=method, keep_float=["head"]), calibration=None)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[method]
    assert half.up.weight.dtype == dtype and half.head.weight.dtype == torch.float32
    restored, tensors = round_trip(half, TinyEncoder().eval(), tmp_path)
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    head_bytes = sum(t.numel() * 4 for t in model.head.state_dict().values())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == (float_bytes - head_bytes) / 2 + head_bytes
    with torch.inference_mode():
        out = half(ids)
        assert out.dtype == torch.float32 and torch.equal(restored(ids), out)
    assert cosine(out, reference) > 0.999
    served = optimize_for_inference(restored, (ids,))
    # served in the half dtype where this CPU has it natively, else cast up to fp32 (the same weights)
    assert served.compute_dtype == (dtype if native_on(dtype, torch.device("cpu")) else torch.float32)
    assert cosine(served(ids), out) > 0.999


def test_a_served_half_model_reports_the_precision_it_computes_in(tmp_path, make_spec, sink):
    spec = make_spec(tmp_path / "out", model="builtin://digits-mlp", steps=[{"quantize": {"method": "fp16"}}])
    servable = load_servable(compress(spec, [sink]).artifact.uri)
    # fp16 weights; computed in fp16 only where this CPU has it natively, else cast up to fp32 when compiled
    assert servable.info.precision == ("fp16" if native_on(torch.float16, torch.device("cpu")) else "fp32")


def test_int4_budget_search_tries_finer_groups_first(mlp_context):
    original, context = mlp_context
    context.baseline_metric = 2.0  # nothing can reach it: every candidate is tried, then the step fails
    try:
        with pytest.raises(BudgetExceeded) as info:
            run_within_budget(original, QuantizeConfig(method="int4-weight-only"), context)
    finally:
        context.baseline_metric = context.task.score(original.eager())
    tried = str(info.value).split("tried: ")[1].split("; ")
    labels = [entry.split(" -> ")[0] for entry in tried]
    # Its one int4 layer has 64 inputs: groups of 256, 128 and 64 are the same model, tried once. That layer
    # alone (the 10-class head fits no kernel) leaves nothing to rank into int8Layers.
    assert labels == ["int4-weight-only, 0 layer(s) float", "int4-weight-only, groups of 32, 0 layer(s) float"]


def test_int4_search_moves_the_most_sensitive_layers_to_int8(wide_mlp_context):
    original, context = wide_mlp_context
    config = QuantizeConfig(method="int4-weight-only", group_size=32, keep_float=["features.0"])
    with pytest.raises(StopIteration):  # one int4 layer left: nothing to rank
        next(sensitive_layers_in_float(original, config, context))
    candidates = list(sensitive_layers_in_float(original, config.model_copy(update={"keep_float": None}), context))
    assert len(candidates) == 1  # two int4 layers: the worse one in int8 (both would be int8-dynamic)
    (first,) = candidates
    assert first.int8_layers in (["features.0"], ["features.2"]) and first.keep_float is None and first.group_size == 32
    model = apply_quantization(copy.deepcopy(original.model), first, calibration=None)
    assert type(model.get_submodule(first.int8_layers[0])) is Int8DynamicLinear


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_int4_on_cuda_matches_the_cpu_kernel_and_the_reference():
    torch.manual_seed(3)
    linear = nn.Linear(1024, 256)
    module = Int4WeightOnlyLinear.from_float(linear, 128)
    x = torch.randn(8, 1024)
    with torch.inference_mode():
        on_cpu = module(x)
        on_gpu = module.to("cuda")(x.cuda()).cpu()
    reference = nn.functional.linear(x, module.cpu().dequantized_weight(), linear.bias.detach())
    assert cosine(on_gpu, reference) > 0.9999 and cosine(on_gpu, on_cpu) > 0.9999
