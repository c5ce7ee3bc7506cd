"""spec.generation: the ModelService's decoder bounds, checked as the API server and `slimserve run` check them,
written into the server pod's variables, read back by `slimserve serve` as the same GenerationOptions, and
enforced by a real server process (the request limit, the context cap, and a model that is no decoder)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_fixtures import CONTEXT, save_random_llama  # noqa: E402
from serving_helpers import ServerProcess, post_json, request  # noqa: E402

from slimserve.api.model_service import ModelServiceSpec  # noqa: E402
from slimserve.cli import serve  # noqa: E402
from slimserve.controller.builders import model_service as builder  # noqa: E402
from slimserve.controller.config import OperatorConfig  # noqa: E402
from slimserve.serving.generation.options import GenerationOptions  # noqa: E402

LIMITS = {"maxSequences": 8, "kvCacheBytes": 1 << 28, "contextLength": 1024, "maxTokens": 128, "maxWaiting": 16,
          "queueTimeoutSeconds": 12}
SERVED = GenerationOptions(max_sequences=8, kv_cache_bytes=1 << 28, context_length=1024, max_tokens=128,
                           max_waiting=16, queue_timeout_s=12.0)


def served_options(environ: dict[str, str]) -> GenerationOptions:
    """What `slimserve serve` makes of a pod's variables."""
    parser = argparse.ArgumentParser(prog="slimserve")
    serve.register(parser.add_subparsers(dest="command"), environ=environ)
    args = parser.parse_args(["serve"])
    return GenerationOptions(args.kv_cache_bytes, args.max_sequences, args.max_waiting, args.queue_timeout_s,
                             args.context_length, args.max_tokens)


def pod_environ(spec: dict) -> dict[str, str]:
    config = OperatorConfig()
    parsed = ModelServiceSpec.from_json(spec)
    owner = builder.Owner(name="lm", namespace="team-a", uid="uid-1")
    env = builder.server_env(owner, parsed, builder.ArtifactToServe(parsed.model.uri), config.node_pool(parsed.node_pool),
                             config)
    return {entry["name"]: entry["value"] for entry in env if "value" in entry}


def test_the_pods_variables_carry_the_limits_and_the_server_reads_them_back():
    environ = pod_environ({"model": {"uri": "builtin://tiny-lm"}, "generation": LIMITS})
    assert {name: value for name, value in environ.items() if name in GENERATION_VARIABLES} == {
        "SLIMSERVE_MAX_SEQUENCES": "8", "SLIMSERVE_KV_CACHE_BYTES": str(1 << 28), "SLIMSERVE_CONTEXT_LENGTH": "1024",
        "SLIMSERVE_MAX_TOKENS": "128", "SLIMSERVE_MAX_WAITING": "16", "SLIMSERVE_QUEUE_TIMEOUT_S": "12",
    }
    assert served_options(environ) == SERVED


def test_unset_writes_nothing_and_a_partial_block_takes_the_defaults_for_the_rest():
    untouched = pod_environ({"model": {"uri": "builtin://tiny-lm"}})
    assert not GENERATION_VARIABLES & set(untouched)  # existing pods do not roll
    assert served_options(untouched) == GenerationOptions()
    partial = pod_environ({"model": {"uri": "pvc://models/llama"}, "generation": {"maxTokens": 64}})
    assert "SLIMSERVE_CONTEXT_LENGTH" not in partial  # unset: the model's own context
    assert served_options(partial) == GenerationOptions(max_tokens=64)


@pytest.mark.parametrize("spec, message", [
    ({"model": {"uri": "builtin://digits-cnn"}, "generation": {}}, "spec.generation: the model is not a decoder"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"maxTokens": 64, "contextLength": 64}},
     "maxTokens must be below contextLength"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"maxSequences": 0}}, "maxSequences"),
    ({"model": {"uri": "builtin://tiny-lm"}, "generation": {"queueTimeoutSeconds": 0}}, "queueTimeoutSeconds"),
])
def test_limits_no_server_could_use_are_refused_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message):
        ModelServiceSpec.from_json(spec)


GENERATION_VARIABLES = {"SLIMSERVE_MAX_SEQUENCES", "SLIMSERVE_KV_CACHE_BYTES", "SLIMSERVE_CONTEXT_LENGTH",
                        "SLIMSERVE_MAX_TOKENS", "SLIMSERVE_MAX_WAITING", "SLIMSERVE_QUEUE_TIMEOUT_S"}


# ---- a real server process ----------------------------------------------------------------------------------

CAPPED_CONTEXT, MAX_TOKENS = 32, 6


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("decoder") / "capped")


def test_a_server_enforces_its_request_limit_and_context_cap(llama, tmp_path):
    server = ServerProcess(f"file://{llama}", tmp_path, "--context-length", str(CAPPED_CONTEXT),
                           "--max-tokens", str(MAX_TOKENS), "--max-sequences", "2").start()
    try:
        metadata = json.loads(request(server.http_url, "GET", "/v2/models/capped")[2])
        assert metadata["parameters"]["context_length"] == CAPPED_CONTEXT
        path = "/v2/models/capped/generate"
        status, body = post_json(server.http_url, path, {"text_input": "w1 w2", "parameters": {"temperature": 0}})
        assert status == 200 and body["completion_tokens"] == MAX_TOKENS  # none asked for: the limit
        status, body = post_json(server.http_url, path, {"text_input": "w1", "parameters": {"max_tokens": MAX_TOKENS + 1}})
        assert status == 400 and body["error"].startswith("parameters.max_tokens: ") and f"limit of {MAX_TOKENS}" in body["error"]
        status, body = post_json(server.http_url, "/v1/completions",
                                 {"model": "capped", "prompt": "w1 " * CAPPED_CONTEXT, "max_tokens": 1})
        assert status == 400 and body["error"]["param"] == "prompt"
        assert f"holds {CAPPED_CONTEXT} tokens" in body["error"]["message"]  # the cap, not the model's 4096
    finally:
        server.stop()


def run_serve(artifact: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "slimserve.cli.main", "serve", "--artifact", artifact, "--host", "127.0.0.1",
               "--http-port", "0", "--grpc-port", "0", "--torch-threads", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_server_refuses_limits_it_cannot_honour(llama):
    beyond = run_serve(f"file://{llama}", "--context-length", str(CONTEXT + 1))
    assert beyond.returncode == 1
    assert f"context_length: {CONTEXT + 1} tokens asked for, but the model's context is {CONTEXT} tokens" in beyond.stderr
    not_a_decoder = run_serve("builtin://digits-mlp", "--max-sequences", "4")
    assert not_a_decoder.returncode == 1
    assert "are for decoders; model 'digits-mlp' is not one" in not_a_decoder.stderr
