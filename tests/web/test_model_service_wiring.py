"""spec.protocols of a ModelService reaches the server: the Deployment's env is what `slimserve serve` reads."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from slimserve.api.model_service import ModelServiceSpec
from slimserve.cli import serve as serve_cli
from slimserve.controller.builders import model_service as builder
from slimserve.controller.config import OperatorConfig
from slimserve.serving.web.options import WebOptions, add_web_arguments, web_options

from tests.operator.conftest import TEST_OPERATOR_CONFIG

CONFIG = OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)
OWNER = builder.Owner(name="digits", namespace="team-a", uid="0b7c-uid")
MODEL = builder.ArtifactToServe("builtin://digits-mlp", "")


def server_env(protocols: dict | None) -> dict[str, str]:
    document = {"model": {"uri": MODEL.uri}}
    if protocols is not None:
        document["protocols"] = protocols
    spec = ModelServiceSpec.from_json(document)
    manifest = builder.build_deployment(OWNER, spec, MODEL, CONFIG.node_pool(spec.node_pool), CONFIG, replicas=1)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def options_the_server_reads(env: dict[str, str]) -> WebOptions:
    """Parse `slimserve serve` (no flags) the way the pod runs it, with the container's env."""
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers(), environ=env)
    args = parser.parse_args(["serve", "--artifact", env["SLIMSERVE_ARTIFACT"]])
    return web_options(args, env)


def test_a_model_service_without_protocols_serves_no_browser_extras():
    env = server_env(None)
    assert options_the_server_reads(env) == WebOptions(grpc_web=False, playground=False, cors_origins=())
    assert env["SLIMSERVE_CORS_ORIGINS"] == ""


@pytest.mark.parametrize(
    ("protocols", "expected"),
    [
        ({"grpcWeb": True}, WebOptions(grpc_web=True)),
        ({"playground": True}, WebOptions(playground=True)),
        (
            {"grpcWeb": True, "corsOrigins": ["https://app.example.com", "http://localhost:3000"]},
            WebOptions(grpc_web=True, cors_origins=("https://app.example.com", "http://localhost:3000")),
        ),
        ({"corsOrigins": ["*"]}, WebOptions(cors_origins=("*",))),
    ],
)
def test_spec_protocols_become_the_servers_web_options(protocols, expected):
    options = options_the_server_reads(server_env(protocols))
    assert options == expected
    assert options.serves_grpc_web == (protocols.get("grpcWeb", False) or protocols.get("playground", False))


@pytest.mark.parametrize("protocols", [{}, {"grpcWeb": True}, {"playground": True, "corsOrigins": ["https://a.test", "*"]}])
def test_slimserve_run_passes_the_same_options_as_flags(protocols):
    """`slimserve run` starts the server with flags, the operator with env: both must give the same options."""
    spec = ModelServiceSpec.from_json({"model": {"uri": MODEL.uri}, "protocols": protocols})
    parser = argparse.ArgumentParser()
    add_web_arguments(parser)
    from_flags = web_options(parser.parse_args(WebOptions.of(spec.protocols).flags()), environ={})
    assert from_flags == options_the_server_reads(server_env(protocols))
    assert from_flags.cors_origins == tuple(protocols.get("corsOrigins", ()))


@pytest.mark.parametrize("origin", ["https://app.example.com/", "app.example.com", "ftp://files.example.com", ""])
def test_a_cors_origin_that_is_not_an_origin_is_refused_by_the_spec(origin):
    with pytest.raises(ValidationError) as error:
        ModelServiceSpec.from_json({"model": {"uri": MODEL.uri}, "protocols": {"corsOrigins": [origin]}})
    assert "corsOrigins" in str(error.value)


def test_the_crd_carries_the_same_origin_rule():
    from slimserve.api.crd import all_crds

    (crd,) = [c for c in all_crds() if c["spec"]["names"]["kind"] == "ModelService"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    origins = schema["properties"]["spec"]["properties"]["protocols"]["properties"]["corsOrigins"]
    from slimserve.api.model_service import CORS_ORIGIN_PATTERN

    assert origins["items"]["pattern"] == CORS_ORIGIN_PATTERN
    assert origins["default"] == []
