"""A decoder as the server holds it: what tells a decoder's URI apart, its Servable face (metadata; OIP
infer refused with a pointer to generate), and the engine built for it once it is loaded."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.serving.generation.engine import GenerationEngine, plan_cache
from slimserve.serving.generation.options import GenerationOptions
from slimserve.serving.metrics import GenerationMetrics

log = logging.getLogger(__name__)

TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"  # the generate extension's names


def serves_decoder(uri: str) -> bool:
    """Whether `uri` names a decoder: builtin://tiny-lm, or a local Hugging Face decoder directory or decoder
    artifact (s3:// artifacts are told apart once fetched, by the loader)."""
    from slimserve.api.model_service import BUILTIN_DECODERS
    from slimserve.api.uri import LOCAL_SCHEMES
    from slimserve.artifacts import SlimServeError
    from slimserve.artifacts.storage import local_path, parse_storage_uri
    from slimserve.models.decoder import MODEL_TYPES
    from slimserve.models.loading import BUILTIN_SCHEME

    if uri.startswith(BUILTIN_SCHEME):
        return uri in BUILTIN_DECODERS  # the one list the operator checks spec.generation against
    try:
        if parse_storage_uri(uri).scheme not in LOCAL_SCHEMES:
            return False
        path = local_path(uri)
    except (ValueError, SlimServeError):
        return False
    manifest, config = path / "manifest.json", path / "config.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("family") == "decoder"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in MODEL_TYPES


@dataclass
class DecoderServable:
    """A loaded decoder (`models.decoder.LoadedDecoder`) on its device."""

    info: ModelInfo
    decoder: object
    context_length: int = 0  # what a sequence may hold as served (the engine's plan); 0: the model's own

    @property
    def parameters(self) -> dict:
        """What model metadata adds: a decoder, its context as served, where to generate."""
        return {"task": "text-generation", "context_length": self.context_length or self.decoder.max_length,
                "generate": ["/v1/completions", "/v1/chat/completions", f"/v2/models/{self.info.name}/generate"]}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError(refusal(self.info.name))


def refusal(name: str) -> str:
    return (f"model {name!r} is a decoder: generate text with POST /v2/models/{name}/generate (or "
            "/generate_stream), or the OpenAI-compatible /v1/completions and /v1/chat/completions")


def decoder_loader(device: str, expected_digest: str | None = None, allow_outside_budget: bool = False):
    """A ServedModel loader: the decoder of a URI on the device the policy picks (`models.device`); an
    artifact is verified and allowed first (`models.servable_artifact`)."""

    def load(uri: str) -> DecoderServable:
        from slimserve.models.decoder import load_decoder
        from slimserve.models.device import precision, resolve_device
        from slimserve.models.loading import BUILTIN_SCHEME

        target = resolve_device(device)
        version = "builtin" if uri.startswith(BUILTIN_SCHEME) else _artifact_version(uri, expected_digest,
                                                                                      allow_outside_budget)
        loaded = load_decoder(uri)
        loaded.model.to(target)
        signature = (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),), (TensorSpec(TEXT_OUTPUT, "BYTES", (-1,)),)
        info = ModelInfo(loaded.name, version, inputs=signature[0], outputs=signature[1], device=str(target),
                         precision=precision(loaded.model, getattr(loaded, "quantization", None)))
        return DecoderServable(info, loaded)

    return load


def _artifact_version(uri: str, expected_digest: str | None, allow_outside_budget: bool) -> str:
    """An artifact's version (its digest's first 12 hex digits, as other models'), once verified and allowed;
    "1" for a Hugging Face directory."""
    from slimserve.artifacts import ArtifactError
    from slimserve.artifacts.storage import local_path
    from slimserve.models import servable_artifact

    if not (local_path(uri) / "manifest.json").is_file():
        if expected_digest:
            raise ArtifactError(f"{uri}: not an artifact, so it has no digest to pin ({expected_digest})")
        return "1"
    artifact = servable_artifact(uri, expected_digest=expected_digest, allow_outside_budget=allow_outside_budget)
    return artifact.digest.removeprefix("sha256:")[:12]


def start_engine(servable: DecoderServable, options: GenerationOptions, metrics: GenerationMetrics) -> GenerationEngine:
    """The KV cache sized to the options' bound, the worker thread started, one short generation run."""
    import torch

    loaded = servable.decoder
    model = loaded.model
    device = next(model.parameters()).device
    per_token = model.new_cache(1, 1).bytes_per_token()
    plan = plan_cache(per_token, options.context(loaded.max_length), options.max_sequences, options.kv_cache_bytes)
    engine = GenerationEngine(model, loaded.tokenizer, loaded.eos_token_ids, plan, metrics, options.max_waiting,
                              options.queue_timeout_s, device)
    servable.context_length = plan.max_len
    log.info("KV cache: %d sequences of %d tokens, %.1f MiB", plan.slots, plan.max_len, plan.bytes / 2**20)
    with torch.inference_mode():  # warm-up: a prefill and a decode step, before the first request pays them
        model.prefill(torch.tensor([0, 1], device=device), 0)
        model.decode(torch.tensor([2], device=device), torch.tensor([0], device=device), torch.tensor([2], device=device))
    engine.start()
    return engine
