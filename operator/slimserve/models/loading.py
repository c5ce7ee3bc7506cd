"""Loading models: the builtin demos, user models (Hugging Face directories of the families in
`TRANSFORMERS_FAMILIES`, torch.export programs, torchvision classifiers), and SlimServe artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from torch import nn

from slimserve.artifacts import Artifact
from slimserve.artifacts.storage import resolve_uri
from slimserve.models import digits
from slimserve.models.asset_names import PROGRAM_FILE, TOKENIZER_FILE
from slimserve.models.decoder.config import MODEL_TYPES
from slimserve.models.errors import ModelLoadError
from slimserve.models.families import FAMILIES, ModelFamily, family_named
from slimserve.quant.base import set_training

if TYPE_CHECKING:
    from slimserve.api.storage import S3Spec

BUILTIN_SCHEME = "builtin://"
BUILTIN_MODELS = ("digits-cnn", "digits-mlp", "digits-resnet", "minilm-l6", "tiny-lm")


@dataclass
class LoadedModel:
    """An fp32 model with what is needed to compress, save and serve it."""

    family: ModelFamily
    model: nn.Module
    name: str  # the name servers report, e.g. digits-cnn
    source: str  # the URI it came from
    assets: Path | None = None  # directory of extra files (tokenizer.json) copied into artifacts
    quantization: dict[str, Any] | None = field(default=None)  # set when rebuilt from a quantized artifact

    @property
    def recipe(self) -> dict[str, Any]:
        return self.family.recipe_of(self.model)


def load_builtin(uri: str) -> LoadedModel:
    name = uri.removeprefix(BUILTIN_SCHEME)
    if name == "digits-cnn":
        model = digits.trained_builtin(name, digits.DEFAULT_CNN_RECIPE, digits.build_cnn)
    elif name == "digits-mlp":
        model = digits.trained_builtin(name, digits.DEFAULT_MLP_RECIPE, digits.build_mlp)
    elif name == "digits-resnet":
        from slimserve.models.digits_resnet import build_resnet, default_recipe

        model = digits.trained_builtin(name, default_recipe(), build_resnet)
    elif name == "minilm-l6":
        from slimserve.models.minilm import load_minilm, minilm_files_dir

        model, _ = load_minilm()
        return LoadedModel(FAMILIES["minilm"], model, name, uri, assets=minilm_files_dir())
    elif name == "tiny-lm":
        from slimserve.models.decoder.directory import TINY_LM, tiny_lm_dir

        return load_decoder_directory(tiny_lm_dir(), uri, TINY_LM)
    else:
        raise ModelLoadError(f"model.uri: unknown builtin model {uri!r}; known: {', '.join(BUILTIN_SCHEME + n for n in BUILTIN_MODELS)}")
    return LoadedModel(FAMILIES[name], model.eval(), name, uri)


def load_model(uri: str, model_format: str = "auto", s3: "S3Spec | None" = None) -> LoadedModel:
    """The fp32 model a CompressionJob starts from; clear errors name `model.uri` / `model.format`."""
    if uri.startswith(BUILTIN_SCHEME):
        return load_builtin(uri)
    path = resolve_uri(uri, s3)
    detected = _detect_format(path) if model_format == "auto" else model_format
    if detected == "slimserve":
        from slimserve.artifacts import load_artifact

        loaded = rebuild_artifact(load_artifact(path))
        if loaded.quantization is not None:
            raise ModelLoadError(f"model.uri: {uri} is already quantized; compress its fp32 source instead")
        loaded.source = uri
        return loaded
    if detected == "transformers":
        return load_transformers_directory(path, uri)
    if detected == "torch-export":
        return load_program(path, uri)
    if detected == "torchvision":
        return load_vision(path, uri)
    raise ModelLoadError(
        f"model.uri: cannot tell the format of {uri}; expected a SlimServe artifact (manifest.json), "
        "a Hugging Face directory (config.json + model.safetensors), a torchvision directory (vision.json + "
        "model.safetensors) or a .pt2 file, or set model.format"
    )


def rebuild_artifact(artifact: Artifact) -> LoadedModel:
    """The model of a verified artifact: fp32 weights loaded, or quantized modules restored (not yet optimized)."""
    manifest = artifact.manifest
    try:
        family = family_named(manifest.family)
        skeleton = family.build(manifest.recipe, artifact.path)
    except ValueError as exc:  # a ProgramError says whether the program is unsafe or only invalid
        raise ModelLoadError(f"artifact {artifact.path}: {exc}", reason=getattr(exc, "reason", None)) from None
    tensors = artifact.tensors()
    if manifest.quantization is not None:
        from slimserve.quant import restore_quantization

        model = restore_quantization(skeleton, manifest.quantization, tensors)
    else:
        _load_state(skeleton, tensors, f"artifact {artifact.path}")
        model = skeleton
    name = manifest.source.removeprefix(BUILTIN_SCHEME) if manifest.source.startswith(BUILTIN_SCHEME) else manifest.family
    return LoadedModel(family, set_training(model, False), name, str(artifact.path), assets=artifact.path, quantization=manifest.quantization)


def load_transformers_directory(path: Path, uri: str) -> LoadedModel:
    """A Hugging Face directory (config.json and the weights) of a family in `TRANSFORMERS_FAMILIES`."""
    try:
        hf = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelLoadError(f"model.uri: {uri}/config.json is not valid JSON: {exc}") from None
    family = transformers_family(hf)
    if family is None:
        supported = " and ".join(known.description for known in TRANSFORMERS_FAMILIES)
        raise ModelLoadError(f"model.uri: {uri} is a {hf.get('model_type')!r} model; supported: {supported}")
    return family.load(path, uri)


def load_encoder_directory(path: Path, uri: str) -> LoadedModel:
    """A Hugging Face BERT-style encoder directory: config.json, model.safetensors, tokenizer.json."""
    from slimserve.models.minilm import _config_from_hf, mapped_encoder

    config_path, weights_path = path / "config.json", path / "model.safetensors"
    for required in (config_path, weights_path, path / TOKENIZER_FILE):
        if not required.is_file():
            raise ModelLoadError(f"model.uri: {uri} has no {required.name} (a transformers directory needs config.json, model.safetensors, tokenizer.json)")
    try:
        config = _config_from_hf(config_path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"model.uri: {uri}/config.json: {exc}") from None
    try:
        model = mapped_encoder(config, weights_path)  # memory-mapped: the weights are read as they are used
    except KeyError as exc:
        raise ModelLoadError(f"model.uri: {uri}/model.safetensors lacks tensor {exc.args[0]!r}") from None
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"model.uri: {uri}: {weights_path.name} is corrupt or truncated: {exc}") from None
    except RuntimeError as exc:
        raise ModelLoadError(f"model.uri: {uri}: weights do not match config.json: {' '.join(str(exc).split())[:400]}") from None
    return LoadedModel(FAMILIES["minilm"], model, path.name or "bert", uri, assets=path)


def load_decoder_directory(path: Path, uri: str, name: str | None = None) -> LoadedModel:
    """A Hugging Face decoder directory (gpt2, llama, mistral, qwen2; see slimserve.models.decoder)."""
    from slimserve.models.decoder.directory import load_hf_directory

    name = name or path.name or "decoder"
    decoder = load_hf_directory(path, uri, name)
    return LoadedModel(FAMILIES["decoder"], decoder.model, name, uri, assets=path)


@dataclass(frozen=True)
class TransformersFamily:
    """A family of Hugging Face directories the loader takes."""

    description: str  # how the error for a directory of another family names it
    model_types: tuple[str, ...]  # config.json's model_type
    architecture: str  # part of a class name in config.json's architectures that marks it
    load: Callable[[Path, str], LoadedModel]


TRANSFORMERS_FAMILIES = (
    TransformersFamily("BERT-style encoders", ("bert",), "Bert", load_encoder_directory),
    # "ForCausalLM", not "LMHead": BertLMHeadModel is an encoder the BERT loader takes
    TransformersFamily(f"the decoders {', '.join(MODEL_TYPES)}", MODEL_TYPES, "ForCausalLM", load_decoder_directory),
)


def transformers_family(hf: dict[str, Any]) -> TransformersFamily | None:
    """The family of a config.json: its model_type names it; without a known one, its architectures do."""
    architectures = " ".join(hf.get("architectures") or [])
    by_type = (family for family in TRANSFORMERS_FAMILIES if hf.get("model_type") in family.model_types)
    by_architecture = (family for family in TRANSFORMERS_FAMILIES if family.architecture in architectures)
    return next(by_type, None) or next(by_architecture, None)


def load_program(path: Path, uri: str) -> LoadedModel:
    """A `torch.export` classifier program (.pt2), inspected and loaded without unpickling anything."""
    from slimserve.models.exported import ProgramError, load_program_module, program_assets

    if not path.is_file():
        raise ModelLoadError(f"model.uri: {uri}: expected a .pt2 file")
    try:
        assets = program_assets(path)
        module = load_program_module(assets / PROGRAM_FILE)
        FAMILIES["torch-export"].recipe_of(module)  # checks the signature: FP32 [B, ...] inputs, [B, C] out
    except ProgramError as exc:
        raise ModelLoadError(f"model.uri: {uri}: {exc}", reason=exc.reason) from None
    return LoadedModel(FAMILIES["torch-export"], set_training(module, False), path.stem, uri, assets=assets)


def load_vision(path: Path, uri: str) -> LoadedModel:
    """A torchvision image classifier: vision.json (architecture, num_classes, input_size, preprocessing) and
    model.safetensors with the user's weights (see slimserve.models.vision)."""
    from slimserve.models.vision import load_vision_directory

    try:
        model = load_vision_directory(path, uri)
    except ValueError as exc:
        raise ModelLoadError(f"model.uri: {exc}") from None
    return LoadedModel(FAMILIES["torchvision"], model, model.vision_base["architecture"], uri, assets=path)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: weights do not match the architecture: {' '.join(str(exc).split())[:400]}") from None


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return "slimserve"
        if (path / "config.json").is_file():
            return "transformers"
        if (path / "vision.json").is_file():
            return "torchvision"
    elif path.suffix == ".pt2":
        return "torch-export"
    return "unknown"
