"""Model families: how to build a skeleton from a recipe, read a recipe back, and serve the model.

A family is what an artifact's manifest names (`family`); the recipe is its architecture config after
pruning or distillation. Everything family-specific that loading and serving need lives here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimserve.models import digits
from slimserve.models.asset_names import PROGRAM_FILE, TOKENIZER_FILE
from slimserve.models.servable import ModelInfo, Servable, TensorSpec
from slimserve.models.torch_servables import ClassifierServable, EmbeddingServable, Forward
from slimserve.quant.base import set_training


class ModelFamily(ABC):
    name: str
    metric: str  # "accuracy" (classifiers), "cosine" (embedding models) or "perplexity" (decoders)
    # The server runs the model's own modules (a decoder's prefill and decode steps), never a compiled forward:
    # the compression engine scores its candidates that way too.
    served_eager: bool = False

    @abstractmethod
    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        """A freshly initialised fp32 skeleton of this shape, in eval mode (`assets`: the artifact's files)."""

    @abstractmethod
    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        """The recipe of a (pruned, distilled) model, read from its modules' actual shapes."""

    @abstractmethod
    def signature(self, recipe: dict[str, Any]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Open Inference Protocol inputs and outputs."""

    @abstractmethod
    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        """Wrap a forward callable; `assets` is the directory holding extra files (e.g. the tokenizer)."""

    def asset_files(self, assets: Path | None) -> dict[str, bytes]:
        """Extra files an artifact of this family carries (read from `assets`)."""
        return {}

    def precision(self, model: nn.Module) -> str | None:
        """What the model computes in where its structure says so and no quantization recipe does (a quantized
        program); None: `models.device.precision` reads it from the recipe and the weights."""
        return None

    def restructured(self, model: nn.Module, assets: Path | None) -> tuple[nn.Module, Path | None]:
        """(model, assets) after a step changed the model's structure (pruned channels, quantized): as they are,
        except where the assets are the structure (a program)."""
        return model, assets

    @abstractmethod
    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        """A representative batch of model inputs (for tracing, compiling and warming up)."""

    def info(self, recipe: dict[str, Any], *, name: str, version: str, digest: str = "") -> ModelInfo:
        inputs, outputs = self.signature(recipe)
        return ModelInfo(name=name, version=version, digest=digest, inputs=inputs, outputs=outputs)


class DigitsFamily(ModelFamily):
    metric = "accuracy"

    def __init__(self, name: str, builder, reader):
        self.name = name
        self._builder = builder
        self._reader = reader

    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        try:
            return self._builder(recipe).eval()
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.name} recipe {recipe}: {exc}") from None

    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        return self._reader(model)

    def signature(self, recipe: dict[str, Any]):
        classes = int(recipe.get("num_classes", digits.NUM_CLASSES))
        return (
            (TensorSpec("input", "FP32", (-1, digits.NUM_FEATURES)),),
            (TensorSpec("logits", "FP32", (-1, classes)), TensorSpec("label", "INT64", (-1,))),
        )

    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        return ClassifierServable(forward, info)

    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        rows = digits.digits_data().x_test
        return (torch.from_numpy(rows[:batch_size].repeat(-(-batch_size // len(rows)), axis=0)[:batch_size]),)


class MiniLMFamily(ModelFamily):
    """BERT-style sentence encoders (MiniLM-L6 and Hugging Face BERT directories) in `slimserve.models.minilm`."""

    name = "minilm"
    metric = "cosine"

    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        from slimserve.models.minilm import MiniLMConfig, build_minilm

        return build_minilm(MiniLMConfig.from_json(recipe))

    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        from slimserve.models.minilm import MiniLMConfig

        layers = model.layers
        config = MiniLMConfig(
            vocab_size=model.embeddings.word_embeddings.num_embeddings,
            hidden_size=model.embeddings.word_embeddings.embedding_dim,
            num_layers=len(layers),
            head_dim=model.config.head_dim,
            num_heads=[layer.attention.num_heads for layer in layers],
            intermediate_sizes=[layer.ffn.intermediate.out_features for layer in layers],
            max_positions=model.embeddings.position_embeddings.num_embeddings,
            type_vocab_size=model.embeddings.token_type_embeddings.num_embeddings,
            layer_norm_eps=model.config.layer_norm_eps,
        )
        model.config = config  # keep the module's own record in step with its pruned shapes
        return asdict(config)

    def signature(self, recipe: dict[str, Any]):
        return (
            (TensorSpec("text", "BYTES", (-1,)),),
            (TensorSpec("embedding", "FP32", (-1, int(recipe.get("hidden_size", 384)))),),
        )

    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        from slimserve.models.minilm import load_tokenizer

        return EmbeddingServable(forward, info, load_tokenizer(assets))

    def asset_files(self, assets: Path | None) -> dict[str, bytes]:
        from slimserve.models.minilm import SENTENCE_TRANSFORMERS_CONFIG, minilm_files_dir, sentence_config_file

        directory = assets or minilm_files_dir()
        files = {TOKENIZER_FILE: (directory / TOKENIZER_FILE).read_bytes()}
        # The served model truncates where the source model does (the artifact has no config.json to say).
        length_file = sentence_config_file(directory)
        return files if length_file is None else {**files, SENTENCE_TRANSFORMERS_CONFIG: length_file}

    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        from slimserve.data import builtin_sentences
        from slimserve.models.minilm import load_tokenizer, tokenize

        sentences = builtin_sentences("train")
        return tokenize(load_tokenizer(assets), [sentences[i % len(sentences)] for i in range(batch_size)])


class ExportedProgramFamily(ModelFamily):
    """A user's `torch.export` classifier (`.pt2`): FP32 inputs of any rank with a dynamic batch, [-1, C] logits.

    The program is the architecture: artifacts carry it as `program.pt2` and load their weights into it. The
    recipe of a program taking one [batch, features] tensor is `num_features`; of any other, its `inputs`.
    """

    name = "torch-export"
    metric = "accuracy"

    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        from slimserve.models.exported import load_program_module

        if assets is None:
            raise ValueError("torch-export models are rebuilt from their program.pt2, which is missing")
        return load_program_module(assets / PROGRAM_FILE)

    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        from slimserve.models.exported import classifier_signature

        inputs, classes = classifier_signature(model)
        if len(inputs) == 1 and len(inputs[0][1]) == 2 and inputs[0][1][1] != -1:
            return {"num_features": inputs[0][1][1], "num_classes": classes, "program": PROGRAM_FILE}
        return {"inputs": [{"name": name, "shape": shape} for name, shape in inputs], "num_classes": classes, "program": PROGRAM_FILE}

    def signature(self, recipe: dict[str, Any]):
        from slimserve.models.vision import classifier_outputs

        if "inputs" in recipe:
            inputs = tuple(TensorSpec(item["name"], "FP32", tuple(item["shape"])) for item in recipe["inputs"])
        else:
            inputs = (TensorSpec("input", "FP32", (-1, int(recipe["num_features"]))),)
        return inputs, classifier_outputs(int(recipe["num_classes"]))

    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        from slimserve.models.vision import TensorClassifierServable

        return TensorClassifierServable(forward, info)

    def asset_files(self, assets: Path | None) -> dict[str, bytes]:
        return {PROGRAM_FILE: (assets / PROGRAM_FILE).read_bytes()} if assets else {}

    def precision(self, model: nn.Module) -> str | None:
        from slimserve.models.exported import program_precision

        return program_precision(model)

    def restructured(self, model: nn.Module, assets: Path | None) -> tuple[nn.Module, Path | None]:
        """The changed module exported again (dynamic batch) as the program its artifact carries, and that
        program loaded back: later steps, measurements and the server all run the same program."""
        from slimserve.models.exported import export_program, saved_program_assets

        assets = saved_program_assets(export_program(model, self._random_inputs(self.recipe_of(model), 2)))
        return set_training(self.build({}, assets), False), assets

    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        return self._random_inputs(self.recipe_of(self.build({}, assets)), batch_size)

    def _random_inputs(self, recipe: dict[str, Any], batch_size: int) -> tuple[torch.Tensor, ...]:
        inputs, _ = self.signature(recipe)
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.rand(batch_size, *(1 if d == -1 else d for d in spec.shape[1:]), generator=generator) for spec in inputs)


class VisionFamily(ModelFamily):
    """torchvision image classifiers (`slimserve.models.vision`) with the user's weights; the recipe names the
    architecture, input size, every layer's width and the preprocessing of encoded images, if declared."""

    name = "torchvision"
    metric = "accuracy"

    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        from slimserve.models.vision import build_vision

        return build_vision(recipe)

    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        from slimserve.models.vision import vision_recipe

        return vision_recipe(model)

    def signature(self, recipe: dict[str, Any]):
        from slimserve.models.vision import vision_signature

        return vision_signature(recipe)

    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        from slimserve.models.vision import ImageClassifierServable, Preprocessing, TensorClassifierServable

        if info.inputs[0].datatype != "BYTES":
            return TensorClassifierServable(forward, info)
        recipe = self._saved_recipe(assets)
        return ImageClassifierServable(forward, info, Preprocessing.from_recipe(recipe["preprocessing"], recipe["input_size"]))

    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        return (torch.rand(batch_size, *self._saved_recipe(assets)["input_size"], generator=torch.Generator().manual_seed(0)),)

    @staticmethod
    def _saved_recipe(assets: Path | None) -> dict[str, Any]:
        """The recipe an artifact's manifest holds, or the vision.json of a user's directory."""
        import json

        from slimserve.models.vision import CONFIG_FILE

        if assets is None:
            raise ValueError("torchvision models are rebuilt from their artifact's manifest, which is missing")
        manifest = assets / "manifest.json"
        return json.loads(manifest.read_text())["recipe"] if manifest.is_file() else json.loads((assets / CONFIG_FILE).read_text())


class DecoderFamily(ModelFamily):
    """Decoder language models (`slimserve.models.decoder`): the recipe is the `DecoderConfig`, the artifact
    carries the tokenizer, its config with the chat template and the generation config."""

    name = "decoder"
    metric = "perplexity"
    served_eager = True

    def build(self, recipe: dict[str, Any], assets: Path | None = None) -> nn.Module:
        from slimserve.models.decoder.config import DecoderConfig
        from slimserve.models.decoder.model import DecoderLM

        try:
            return DecoderLM(DecoderConfig.from_recipe(recipe)).eval()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"decoder recipe: {exc}") from None

    def recipe_of(self, model: nn.Module) -> dict[str, Any]:
        from slimserve.models.decoder.model import config_of

        return config_of(model).to_recipe()

    def signature(self, recipe: dict[str, Any]):
        return (TensorSpec("text_input", "BYTES", (-1,)),), (TensorSpec("text_output", "BYTES", (-1,)),)

    def servable(self, forward: Forward, info: ModelInfo, assets: Path | None) -> Servable:
        from slimserve.models.decoder.config import DecoderConfig
        from slimserve.models.decoder.directory import generation_eos_ids, tiny_lm_dir
        from slimserve.models.decoder.servable import CompletionServable
        from slimserve.models.decoder.tokenizer import Tokenizer

        directory = assets or tiny_lm_dir()
        tokenizer = Tokenizer.from_directory(directory)
        config = DecoderConfig.from_recipe(self._recipe_file(directory))
        return CompletionServable(forward, info, tokenizer, generation_eos_ids(directory, config, tokenizer), config.max_position_embeddings)

    def asset_files(self, assets: Path | None) -> dict[str, bytes]:
        from slimserve.models.decoder.directory import tiny_lm_dir
        from slimserve.models.decoder.tokenizer import TOKENIZER_FILES

        directory = assets or tiny_lm_dir()
        return {name: (directory / name).read_bytes() for name in TOKENIZER_FILES if (directory / name).is_file()}

    def example_inputs(self, assets: Path | None, batch_size: int = 32) -> tuple[torch.Tensor, ...]:
        from slimserve.models.decoder.directory import builtin_text, tiny_lm_dir
        from slimserve.models.decoder.tokenizer import Tokenizer

        ids = Tokenizer.from_directory(assets or tiny_lm_dir()).encode(builtin_text("heldout"))
        need = batch_size * 32
        return (torch.tensor((ids * -(-need // len(ids)))[:need]).view(batch_size, 32),)

    @staticmethod
    def _recipe_file(directory: Path) -> dict[str, Any]:
        """The config an artifact's manifest or a Hugging Face directory's config.json holds."""
        import json

        from slimserve.models.decoder.config import DecoderConfig

        manifest = directory / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())["recipe"]
        return DecoderConfig.from_hf(json.loads((directory / "config.json").read_text())).to_recipe()


def _digits_resnet_builder(recipe: dict[str, Any]) -> nn.Module:
    from slimserve.models.digits_resnet import build_resnet  # torchvision is imported when the model is used

    return build_resnet(recipe)


def _digits_resnet_reader(model: nn.Module) -> dict[str, Any]:
    from slimserve.models.digits_resnet import resnet_recipe

    return resnet_recipe(model)


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        DigitsFamily("digits-cnn", digits.build_cnn, digits.cnn_recipe),
        DigitsFamily("digits-mlp", digits.build_mlp, digits.mlp_recipe),
        DigitsFamily("digits-resnet", _digits_resnet_builder, _digits_resnet_reader),
        MiniLMFamily(),
        ExportedProgramFamily(),
        VisionFamily(),
        DecoderFamily(),
    )
}


def family_named(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def eager_forward(model: nn.Module) -> Forward:
    """The module itself, in eval mode, run without autograd."""
    set_training(model, False)

    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs)

    return forward
