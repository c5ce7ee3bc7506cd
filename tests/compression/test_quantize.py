"""Quantization on small models: accuracy per method, safetensors round trip, keep_float, errors, real int8 storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from torch import nn

from slimserve.api.steps import QuantizeConfig
from slimserve.compression.quantize import apply_quantization, quantizable_layers
from slimserve.quant import optimize_for_inference, quantization_state, restore_quantization
from slimserve.quant.int4_weight_only import Int4WeightOnlyLinear

CPU_METHODS = ["int8-dynamic", "int8-static", "int8-weight-only"]
MAX_ACCURACY_DROP = 0.02  # the stated tolerance: at most 2 points of digits accuracy lost to int8


class TinyDigitsNet(nn.Module):
    """Three convs on the 8x8 digit, then a classifier: covers Conv2d (static, weight-only) and Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.hidden = nn.Linear(16 * 4 * 4, 32)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.reshape(-1, 1, 8, 8) / 16.0)
        return self.classifier(torch.relu(self.hidden(x.flatten(1))))


class TinyTextNet(nn.Module):
    """Embedding + Linear, mean-pooled: the int8-dynamic shape of an encoder, in miniature."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.proj = nn.Linear(32, 48)
        self.out = nn.Linear(48, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.proj(self.embed(ids)))).mean(dim=1)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


@pytest.fixture(scope="module")
def trained_state(digits):
    """A TinyDigitsNet trained for a few seconds (full-batch Adam), ~95 % held-out accuracy."""
    torch.manual_seed(0)
    x_train, y_train, _, _ = digits
    model = TinyDigitsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(120):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh_net(state: dict) -> TinyDigitsNet:
    model = TinyDigitsNet().eval()
    model.load_state_dict(state)
    return model


def accuracy(model, x, y) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


def quantize(model: nn.Module, method: str, x: torch.Tensor, **options) -> nn.Module:
    calibration = [(x[i : i + 64],) for i in range(0, 256, 64)]
    return apply_quantization(model, QuantizeConfig(method=method, **options), calibration=calibration)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_method_keeps_digits_accuracy(method, digits, trained_state):
    x_train, _, x_test, y_test = digits
    baseline = accuracy(fresh_net(trained_state), x_test, y_test)
    assert baseline > 0.9  # the float model really learned the task
    quantized = quantize(fresh_net(trained_state), method, x_train)
    assert accuracy(quantized, x_test, y_test) >= baseline - MAX_ACCURACY_DROP


@pytest.mark.parametrize("method", CPU_METHODS)
def test_round_trip_through_safetensors_is_exact(method, digits, trained_state, tmp_path):
    x_train, _, x_test, _ = digits
    quantized = quantize(fresh_net(trained_state), method, x_train)
    tensors, recipe = quantization_state(quantized)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))

    restored = restore_quantization(
        TinyDigitsNet().eval(), json.loads((tmp_path / "recipe.json").read_text()), load_file(str(tmp_path / "model.safetensors"))
    )
    with torch.inference_mode():
        assert torch.equal(restored(x_test), quantized(x_test))
    assert set(recipe["modules"]) == set(quantizable_layers(TinyDigitsNet(), method))


def test_quantized_modules_store_int8(digits, trained_state):
    x_train = digits[0]
    float_bytes = sum(t.numel() * t.element_size() for t in fresh_net(trained_state).state_dict().values())
    tensors, _ = quantization_state(quantize(fresh_net(trained_state), "int8-dynamic", x_train))
    assert tensors["hidden.weight_int8"].dtype == torch.int8
    assert "hidden.weight" not in tensors
    quantized_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    # int8-dynamic quantizes the two Linear layers (most of the bytes); the convs stay float.
    linear_params = 16 * 4 * 4 * 32 + 32 * 10
    assert float_bytes - quantized_bytes >= 3 * linear_params - 64 * 4  # 4 -> 1 byte per weight, minus the scales

    text = TinyTextNet().eval()
    text_float = sum(t.numel() * t.element_size() for t in text.state_dict().values())
    text_tensors, recipe = quantization_state(quantize(text, "int8-dynamic", torch.zeros(8, 4, dtype=torch.long)))
    assert recipe["modules"]["embed"]["kind"] == "int8-embedding"
    assert sum(t.numel() * t.element_size() for t in text_tensors.values()) < 0.4 * text_float


def test_text_model_int8_dynamic_is_close_and_round_trips(tmp_path):
    torch.manual_seed(1)
    model = TinyTextNet().eval()
    ids = torch.randint(0, 100, (16, 12))
    with torch.inference_mode():
        reference = model(ids)
    quantized = quantize(model, "int8-dynamic", ids)
    with torch.inference_mode():
        out = quantized(ids)
    assert torch.nn.functional.cosine_similarity(out, reference).min() > 0.99
    tensors, recipe = quantization_state(quantized)
    save_file(tensors, str(tmp_path / "t.safetensors"))
    restored = restore_quantization(TinyTextNet().eval(), recipe, load_file(str(tmp_path / "t.safetensors")))
    with torch.inference_mode():
        assert torch.equal(restored(ids), out)


def test_keep_float_is_honoured(digits, trained_state):
    x_train = digits[0]
    model = quantize(fresh_net(trained_state), "int8-static", x_train, keep_float=["classifier", "features"])
    assert type(model.classifier) is nn.Linear
    assert all(type(m) in (nn.Conv2d, nn.ReLU) for m in model.features)  # a parent keeps its whole subtree
    assert type(model.hidden).__name__ == "Int8StaticLinear"
    _, recipe = quantization_state(model)
    assert list(recipe["modules"]) == ["hidden"]


def test_bad_config_names_the_field_and_leaves_the_model_untouched(digits, trained_state):
    x_train = digits[0]
    model = fresh_net(trained_state)
    with pytest.raises(ValueError, match=r"keepFloat\[1\].*'nope'"):
        quantize(model, "int8-dynamic", x_train, keep_float=["classifier", "nope"])
    with pytest.raises(ValueError, match="calibration"):
        apply_quantization(model, QuantizeConfig(method="int8-static"), calibration=None)
    assert all(type(m) is not nn.Module and "Int8" not in type(m).__name__ for m in model.modules())


def test_a_layer_no_int4_kernel_fits_stays_float(digits, trained_state):
    model = quantize(fresh_net(trained_state), "int4-weight-only", digits[0])
    assert type(model.hidden) is Int4WeightOnlyLinear and model.hidden.group_size == 256
    assert type(model.classifier) is nn.Linear  # 10 outputs: the kernels pack 16 at a time


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r, t: r["modules"]["hidden"].update(kind="int3-magic"), "unknown quantized module kind 'int3-magic'"),
        (lambda r, t: r["modules"].update(ghost=r["modules"]["hidden"]), "no module named 'ghost'"),
        (lambda r, t: r["modules"]["hidden"].update(out_features=99), r"cannot replace Linear"),
        (lambda r, t: r["modules"]["hidden"].update(in_features="x"), r"in_features: expected an integer"),
        (lambda r, t: t.update({"hidden.weight_int8": t["hidden.weight_int8"].float()}), r"hidden.weight_int8.*torch.int8"),
        (lambda r, t: t.pop("classifier.bias"), r"missing \['classifier.bias'\]"),
        (lambda r, t: r.update(version=7), "recipe.version"),
    ],
)
def test_restore_rejects_bad_input_naming_it(mutate, message, digits, trained_state):
    tensors, recipe = quantization_state(quantize(fresh_net(trained_state), "int8-dynamic", digits[0]))
    recipe = json.loads(json.dumps(recipe))
    mutate(recipe, tensors)
    with pytest.raises(ValueError, match=message):
        restore_quantization(TinyDigitsNet().eval(), recipe, tensors)


def test_quantizable_layers_by_method():
    model = TinyDigitsNet()
    assert quantizable_layers(model, "int8-dynamic") == ["hidden", "classifier"]
    assert quantizable_layers(model, "int8-static") == ["features.0", "features.2", "features.4", "hidden", "classifier"]
    assert quantizable_layers(model) == quantizable_layers(model, "int8-weight-only")
    with pytest.raises(ValueError, match="method"):
        quantizable_layers(model, "int2")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8-dynamic", "int8-static"])
def test_optimized_forward_matches_eager_for_any_batch(method, digits, trained_state):
    x_train, _, x_test, _ = digits
    quantized = quantize(fresh_net(trained_state), method, x_train)
    forward = optimize_for_inference(quantized, (x_test[:16],))
    assert forward.compile_seconds > 0 and forward.single_graph
    with torch.inference_mode():
        for batch in (1, 3, 16, 37):  # dynamic graphs pad 1 to 2; bucketed (static) ones pad up to a power of two
            expected = quantized(x_test[:batch])
            got = forward(x_test[:batch])
            assert got.shape == expected.shape
            # same int8 arithmetic; float rescale and accumulation order may differ slightly
            np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-2, rtol=1e-3)
            assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))


def test_static_graphs_pad_a_batch_up_to_its_power_of_two_and_a_single_row_not_at_all():
    from slimserve.quant.optimize import _bucket

    assert [_bucket(batch) for batch in (1, 2, 3, 16, 17, 37, 64)] == [1, 2, 4, 16, 32, 64, 64]


def test_inference_fusions_compute_the_same_outputs():
    from slimserve.quant.fuse import concat_output_channels
    from slimserve.quant.int8_dynamic import GeluInt8Linear, Int8DynamicLinear

    torch.manual_seed(3)
    x = torch.randn(2, 7, 32)
    projections = [Int8DynamicLinear.from_float(nn.Linear(32, n)) for n in (16, 16, 24)]
    fused = concat_output_channels(projections)
    assert torch.equal(fused(x), torch.cat([p(x) for p in projections], dim=-1))  # int32 sums are exact
    floats = [nn.Linear(32, 8), nn.Linear(32, 8)]
    torch.testing.assert_close(concat_output_channels(floats)(x), torch.cat([m(x) for m in floats], dim=-1))
    assert concat_output_channels([nn.Linear(32, 8), nn.Linear(16, 8)]) is None

    output = Int8DynamicLinear.from_float(nn.Linear(32, 10))
    pre_activation = torch.randn(4, 5, 32) * 3
    exact_scale = output(nn.functional.gelu(pre_activation))
    bounded_scale = GeluInt8Linear(output)(pre_activation)
    # a slightly coarser int8 grid for GELU's output, not a different function
    assert nn.functional.cosine_similarity(bounded_scale.flatten(1), exact_scale.flatten(1)).min() > 0.999
    float_reference = nn.functional.linear(nn.functional.gelu(pre_activation), output.weight_int8.float() * output.weight_scale[:, None], output.bias)
    assert nn.functional.cosine_similarity(bounded_scale.flatten(1), float_reference.flatten(1)).min() > 0.999


def test_int8_products_are_exact_on_this_cpu_and_on_the_float_path():
    """int8_matmul (whichever path this CPU takes) and the float path of CPUs without an int8 dot product give
    the exact integers, compared with an int64 product: oneDNN's AVX2 kernels, which saturate pair sums of
    full-range operands in int16, are the reason those CPUs take the float path."""
    from slimserve.quant.kernels import int8_matmul, int8_matmul_in_float

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (33, 384), dtype=torch.int8, generator=generator)
    weight = torch.randint(-127, 128, (96, 384), dtype=torch.int8, generator=generator)
    extreme = torch.full((2, 384), 127, dtype=torch.int8)  # the largest sums a row can make
    x, weight = torch.cat([x, extreme, -extreme]), torch.cat([weight, extreme[:1]])
    exact = (x.long() @ weight.long().t()).int()
    for product in (int8_matmul_in_float(x, weight), int8_matmul(x, weight)):
        assert product.dtype == torch.int32
        assert torch.equal(product, exact)


def test_int8_static_weights_leave_room_for_int16_pair_sums():
    """oneDNN's int8 kernels on x86 CPUs without VNNI add u8 x s8 products in pairs in int16 with saturation:
    activations at the top of their grid against the largest weights must come out of the compiled model as
    they do eagerly (full 8-bit weights give 2 * 255 * 127, beyond int16)."""
    from slimserve.compression.quantize.calibration import ActivationRange
    from slimserve.quant.int8_static import UINT8_MAX, WEIGHT_QUANT_MAX, Int8StaticConv2d, Int8StaticLinear

    calibrated = ActivationRange()
    calibrated.observe(torch.tensor([0.0, 1.0]))
    assert calibrated.uint8_params() == (pytest.approx(1 / UINT8_MAX), 0)
    conv, linear = nn.Conv2d(4, 8, 3), nn.Linear(8 * 6 * 6, 5)
    with torch.no_grad():
        for layer in (conv, linear):
            layer.weight.fill_(1.0)  # every weight at the top of the int8 grid after per-channel quantizing
            layer.bias.zero_()
    model = nn.Sequential(
        Int8StaticConv2d.from_float(conv, calibrated.uint8_params()),
        nn.Flatten(),
        Int8StaticLinear.from_float(linear, (conv.weight.numel() // 8 / UINT8_MAX, 0)),
    ).eval()
    assert {int(layer.weight_int8.max()) for layer in (model[0], model[2])} == {WEIGHT_QUANT_MAX}
    x = torch.ones(2, 4, 8, 8)  # the top of the input grid everywhere
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(expected, torch.full_like(expected, 36.0 * 8 * 6 * 6))
        forward = optimize_for_inference(model, (x,))
        assert forward.single_graph
        for batch in (1, 2):
            torch.testing.assert_close(forward(x[:batch]), expected[:batch], rtol=1e-3, atol=0.0)


def test_int8_static_weights_leave_room_for_int16_pair_sums_on_avx2_kernels():
    """The same check with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA), the kernels that saturate, whatever
    CPU runs the suite."""
    check = f"{__file__}::test_int8_static_weights_leave_room_for_int16_pair_sums"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", check],
        env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
