"""Quantizers are found by the class of the method's config (as torchao's quantize_ does), not by its name."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

from slimserve.api.steps import QuantizeConfig, QuantizeMethod
from slimserve.compression.quantize import apply_quantization, configs, needs_calibration, quantizable_layers, registry
from slimserve.compression.quantize.configs import (
    CONFIG_CLASSES,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    QuantizationConfig,
    config_of,
)
from slimserve.compression.quantize.registry import quantizer_for, register_quantizer
from slimserve.quant import quantization_state


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.conv = nn.Conv2d(1, 2, 3)
        self.hidden = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(self.embed(ids)))).mean(dim=1)


def test_every_crd_method_has_one_config_class_with_a_quantizer():
    assert set(CONFIG_CLASSES) == set(get_args(QuantizeMethod))
    for method, config_class in CONFIG_CLASSES.items():
        assert config_class.method == method
        assert quantizer_for(config_class).replaces  # registered, and replaces something


def test_requirements_come_from_the_quantizer():
    casting = {method for method, config_class in CONFIG_CLASSES.items() if quantizer_for(config_class).cast_model}
    assert casting == {"fp16", "bf16"}
    calibrating = {method for method in CONFIG_CLASSES if needs_calibration(QuantizeConfig(method=method))}
    assert calibrating == {"int8-static"}


def test_a_step_spec_becomes_its_methods_config():
    spec = QuantizeConfig(method="int8-static", calibration_samples=7, keep_float=["classifier"])
    assert config_of(spec) == Int8StaticConfig(keep_float=("classifier",), calibration_samples=7)
    assert config_of(QuantizeConfig(method="int8-dynamic")) == Int8DynamicConfig()
    assert config_of(QuantizeConfig(method="int8-weight-only")) == Int8WeightOnlyConfig()
    assert config_of(QuantizeConfig(method="int4-weight-only", keep_float=["a"])) == Int4WeightOnlyConfig(keep_float=("a",))
    assert config_of(QuantizeConfig(method="int4-weight-only", group_size=64, int8_layers=["b"])) == Int4WeightOnlyConfig(
        group_size=64, int8_layers=("b",)
    )
    assert config_of(Int8DynamicConfig()) == Int8DynamicConfig()


def test_a_methods_config_quantizes_as_its_step_spec_does():
    torch.manual_seed(0)
    by_spec = apply_quantization(
        TinyNet(), QuantizeConfig(method="int8-dynamic", keep_float=["classifier"]), calibration=None
    )
    torch.manual_seed(0)
    by_config = apply_quantization(TinyNet(), Int8DynamicConfig(keep_float=("classifier",)), calibration=None)
    (spec_tensors, spec_recipe), (config_tensors, config_recipe) = quantization_state(by_spec), quantization_state(by_config)
    assert spec_recipe == config_recipe
    assert set(spec_recipe["modules"]) == {"embed", "hidden"}
    assert all(torch.equal(spec_tensors[name], config_tensors[name]) for name in spec_tensors)


class HalfLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.half()).float()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test methods without leaving them behind."""
    monkeypatch.setattr(configs, "CONFIG_CLASSES", dict(configs.CONFIG_CLASSES))
    monkeypatch.setattr(registry, "_QUANTIZERS", dict(registry._QUANTIZERS))


def test_a_new_method_is_a_config_class_and_a_registered_quantizer(scratch_registry):
    class HalfConfig(QuantizationConfig):
        method = "test-half"

    converted = []

    @register_quantizer(HalfConfig, replaces=(nn.Linear,))
    def half(model, config, names, calibration):
        def convert(name, module):
            converted.append(name)
            return HalfLinear(module)

        return convert

    model = TinyNet()
    assert quantizable_layers(model, "test-half") == ["hidden", "classifier"]
    apply_quantization(model, HalfConfig(keep_float=("classifier",)), calibration=None)
    assert converted == ["hidden"]
    assert type(model.hidden) is HalfLinear and type(model.classifier) is nn.Linear
    assert not needs_calibration(HalfConfig())


def test_one_config_class_per_method_and_one_quantizer_per_class(scratch_registry):
    with pytest.raises(TypeError, match="int8-dynamic"):

        class AnotherDynamic(QuantizationConfig):
            method = "int8-dynamic"

    with pytest.raises(ValueError, match="Int8DynamicConfig"):
        register_quantizer(Int8DynamicConfig, replaces=(nn.Linear,))(lambda *args: None)

    class Unregistered(QuantizationConfig):
        method = "test-unregistered"

    with pytest.raises(LookupError, match="Unregistered"):
        apply_quantization(TinyNet(), Unregistered(), calibration=None)
