"""GPTQ: the runtime's int4 / int8 weight-only modules with error-compensated codes, closer than rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimserve.compression.gptq import collect_hessians, gptq_int4_linear, gptq_int8_linear
from slimserve.quant import quantization_state, restore_quantization
from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear
from slimserve.quant.int8_weight_only import Int8WeightOnlyLinear


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy two-core machine a second one mostly waits for the first."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _correlated_inputs(mixing: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """Inputs whose features are correlated, as a layer's activations are (GPTQ exploits exactly that)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 16, mixing.shape[0], generator=generator) @ mixing


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_layer_outputs_are_closer_to_float_than_rounding_on_held_out_inputs(bits):
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    mixing = torch.randn(256, 256) / 16
    model = nn.Sequential(linear)
    hessians = collect_hessians(model, ["0"], [(_correlated_inputs(mixing, 32, seed=1),)])

    if bits == 4:
        gptq, rtn = gptq_int4_linear(linear, hessians["0"], 64), Int4WeightOnlyLinear.from_float(linear, 64)
    else:
        gptq, rtn = gptq_int8_linear(linear, hessians["0"]), Int8WeightOnlyLinear.from_float(linear)

    assert type(gptq) is type(rtn)  # the same runtime module and artifact layout
    assert {k: v.dtype for k, v in gptq.state_dict().items()} == {k: v.dtype for k, v in rtn.state_dict().items()}
    held_out = _correlated_inputs(mixing, 16, seed=2)
    with torch.inference_mode():
        reference = linear(held_out)
        gptq_error = float((gptq(held_out).float() - reference).pow(2).mean())
        rtn_error = float((rtn(held_out).float() - reference).pow(2).mean())
    assert gptq_error < 0.8 * rtn_error


def test_gptq_module_saves_and_restores_like_any_quantized_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    inputs = torch.randn(8, 64)
    hessians = collect_hessians(model, ["0"], [(inputs,)])
    model[0] = gptq_int4_linear(model[0], hessians["0"], 32)
    tensors, recipe = quantization_state(model)

    restored = restore_quantization(nn.Sequential(nn.Linear(64, 32)), recipe, tensors)
    with torch.inference_mode():
        torch.testing.assert_close(restored(inputs), model(inputs))


def test_calibration_that_never_reaches_a_layer_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="never reached '1'"):
        collect_hessians(model, ["1"], [])


def test_quantize_step_algorithm_gptq_calibrates_and_changes_only_the_codes():
    import copy

    from pydantic import ValidationError

    from slimserve.api.steps import QuantizeConfig
    from slimserve.compression.quantize import apply_quantization, needs_calibration

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    spec = QuantizeConfig(method="int4-weight-only", algorithm="gptq", group_size=32)
    assert needs_calibration(spec) and not needs_calibration(QuantizeConfig(method="int4-weight-only"))
    with pytest.raises(ValueError, match="calibration"):
        apply_quantization(copy.deepcopy(model), spec, calibration=None)

    gptq = apply_quantization(copy.deepcopy(model), spec, calibration=[(torch.randn(64, 64) @ torch.randn(64, 64),)])
    rtn = apply_quantization(copy.deepcopy(model), QuantizeConfig(method="int4-weight-only", group_size=32), calibration=None)
    for index in (0, 2):
        assert type(gptq[index]) is type(rtn[index]) is Int4WeightOnlyLinear
        assert not torch.equal(gptq[index].weight_uint4x2, rtn[index].weight_uint4x2)
    with pytest.raises(ValidationError, match="gptq is for int8-weight-only and int4-weight-only"):
        QuantizeConfig(method="int8-dynamic", algorithm="gptq")


def _self_sampled_decoder(seed: int):
    """A random decoder and text it wrote itself (sampled at temperature 0.7): it knows this text far better
    than chance (perplexity about 30 over 256 tokens), so what quantization costs it shows in the perplexity."""
    from slimserve.models.decoder import DecoderConfig, DecoderLM

    torch.manual_seed(seed)
    config = DecoderConfig(vocab_size=256, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                           intermediate_size=256, max_position_embeddings=64)
    model = DecoderLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.15)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (48, 1), generator=generator)
    with torch.inference_mode():
        for _ in range(63):
            probabilities = torch.softmax(model(ids)[:, -1] / 0.7, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator)], dim=1)
    return model, ids


def test_gptq_perplexity_is_below_round_to_nearest_on_held_out_text():
    import copy

    from slimserve.api.steps import QuantizeConfig
    from slimserve.compression.perplexity_task import PerplexityTask
    from slimserve.compression.quantize import apply_quantization
    from slimserve.models.families import eager_forward

    model, ids = _self_sampled_decoder(seed=1)
    task = PerplexityTask(ids[:40], ids[40:])  # GPTQ calibrates on the first 40 sequences, both are judged on the rest
    fp32 = task.score(eager_forward(model))

    def perplexity(algorithm: str) -> float:
        step = QuantizeConfig(method="int4-weight-only", group_size=128, algorithm=algorithm)
        calibration = task.calibration(40) if algorithm == "gptq" else None
        return task.score(eager_forward(apply_quantization(copy.deepcopy(model), step, calibration=calibration)))

    rtn, gptq = perplexity("rtn"), perplexity("gptq")
    assert fp32 < 40 and rtn > fp32
    assert gptq < rtn - 0.2 * (rtn - fp32), (fp32, rtn, gptq)  # GPTQ saves at least a fifth of what rounding costs
