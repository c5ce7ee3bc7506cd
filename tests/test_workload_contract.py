"""The pods' contract (slimserve.api.workload): what the operator writes is what the pods read, every
SLIMSERVE_* variable is declared there and nowhere else, and its defaults are the CRD's, the server's and
the builders'."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from slimserve.api.workload import (
    DEFAULTS,
    PREFIX,
    BatchEnv,
    CompressorEnv,
    EnvError,
    OperatorEnv,
    ServerEnv,
    format_number,
    parse_bool,
)

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "operator" / "slimserve"
CONTRACT = SOURCE / "api" / "workload.py"

SERVER = ServerEnv(
    artifact="s3://models/digits", model_name="digits", model_version="canary", host="127.0.0.1", http_port=8081, grpc_port=9001,
    batching=False, max_batch_size=16, max_latency_ms=2.5, grpc_web=True, playground=False,
    cors_origins=("https://app.example.com", "*"), shutdown_delay_s=5.0, drain_timeout_s=20.0, pvc_root="/data",
    cache="/var/cache/slimserve", download_cache="/var/cache/slimserve-models", home="/tmp",
    artifact_digest="sha256:" + "ab" * 32, metrics_port=9090,
    max_body_bytes=1 << 20, header_timeout_s=0.1, body_timeout_s=1e-3, torch_threads=2, log_level="DEBUG",
    log_format="json", access_log=False, device="cuda:1", cuda_graphs=True, grpc_http2="h2",
    allow_outside_budget=True, service_name="digits", service_namespace="team-a", payload_log_url="http://sink.team-a:8080/events",
    payload_log_mode="request", payload_log_sample_rate=0.25, payload_log_timeout_s=2.0,
    tracing_endpoint="http://otel-collector.observability:4317", tracing_sample_rate=0.1,
    auth_mode="kubernetes", auth_api_keys_dir="/var/run/slimserve/api-keys", auth_namespace="team-a",
    auth_resource_name="digits", auth_verb="create", auth_subresource="infer", auth_audiences=("slimserve", "b"),
    auth_review_timeout_s=2.5, tls_dir="/var/run/slimserve/tls", tls_client_auth="require", probe_port=8081,
    kv_cache_bytes=1 << 30, max_sequences=16, max_waiting=8, queue_timeout_s=12.5, context_length=2048, max_tokens=256,
)
COMPRESSOR = CompressorEnv(
    job_spec='{"model":{"uri":"builtin://digits-cnn"}}', status_target="team-a/digits", job_generation=7,
    pvc_root="/data", cache="/var/cache/slimserve", home="/tmp", termination_log="/tmp/termination-log", debug=True,
    log_format="text", device="cuda",
)
BATCH = BatchEnv(
    batch_spec='{"model":{"uri":"builtin://minilm-l6"}}', status_target="team-a/score", job_generation=3, shards=4,
    artifact_digest="sha256:" + "cd" * 32, pvc_root="/data", cache="/var/cache/slimserve", home="/tmp",
    termination_log="/tmp/termination-log", log_format="json", device="cuda", shard_index=2,
)
OPERATOR = OperatorEnv(config="/etc/slimserve/config.yaml", watch_namespaces=("team-a", "team-b"), peering="slimserve",
                       log_level="info", log_format="json")


def as_environ(entries: list[dict[str, str]]) -> dict[str, str]:
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), names
    return {entry["name"]: entry["value"] for entry in entries}


@pytest.mark.parametrize("env", [SERVER, COMPRESSOR, BATCH, OPERATOR], ids=lambda env: type(env).__name__)
def test_every_field_goes_through_the_environment_and_back(env):
    assert all(getattr(env, field.name) is not None for field in dataclasses.fields(env))  # the whole contract
    entries = env.to_env()
    assert all(isinstance(entry["value"], str) for entry in entries)
    assert type(env).from_env(as_environ(entries)) == env


@pytest.mark.parametrize("env_type", [ServerEnv, CompressorEnv, BatchEnv, OperatorEnv], ids=lambda t: t.__name__)
def test_unset_fields_write_nothing_and_read_back_unset(env_type):
    assert env_type().to_env() == []
    assert env_type.from_env({}) == env_type()
    blank = {variable.name: "" for variable in env_type.VARIABLES.values() if not variable.empty_is_value}
    assert env_type.from_env(blank) == env_type()  # an empty variable is an unset one


def test_debug_is_on_for_any_value_and_off_when_empty():
    assert CompressorEnv.from_env({"SLIMSERVE_DEBUG": "yes please"}).debug is True
    assert not CompressorEnv.from_env(as_environ(CompressorEnv(debug=False).to_env())).debug


def test_no_cors_origins_is_an_empty_value_not_an_unset_one():
    assert as_environ(ServerEnv(cors_origins=()).to_env()) == {"SLIMSERVE_CORS_ORIGINS": ""}
    assert ServerEnv.from_env({"SLIMSERVE_CORS_ORIGINS": ""}).cors_origins == ()


def test_numbers_are_written_as_pod_templates_always_spelled_them():
    # A pod template is compared as written: "20.0" where "20" was would roll every server.
    assert [format_number(value) for value in (5.0, 2.5, 20, 0.0, 1000.0)] == ["5", "2.5", "20", "0", "1000"]
    assert float(format_number(1234567.25)) == 1234567.25


@pytest.mark.parametrize(("text", "value"), [("true", True), (" YES ", True), ("On", True), ("1", True),
                                             ("false", False), ("no", False), ("OFF", False), ("0", False)])
def test_one_way_to_read_a_boolean(text, value):
    assert parse_bool(text) is value
    assert ServerEnv.from_env({"SLIMSERVE_BATCHING": text}).batching is value
    assert ServerEnv.from_env({"SLIMSERVE_PLAYGROUND": text}).playground is value


@pytest.mark.parametrize(("variable", "text"), [
    ("SLIMSERVE_BATCHING", "maybe"), ("SLIMSERVE_GRPC_WEB", "2"), ("SLIMSERVE_HTTP_PORT", "70000"),
    ("SLIMSERVE_MAX_LATENCY_MS", "fast"), ("SLIMSERVE_CORS_ORIGINS", "https://a.test/"),
    ("SLIMSERVE_LOG_FORMAT", "xml"),
])
def test_a_value_that_cannot_be_read_names_its_variable(variable, text):
    with pytest.raises(EnvError, match=f"^{variable}: ") as caught:
        ServerEnv.from_env({variable: text})
    assert caught.value.variable == variable
    with pytest.raises(EnvError, match="SLIMSERVE_JOB_GENERATION: expected a generation number"):
        CompressorEnv.from_env({"SLIMSERVE_JOB_GENERATION": "seven"})


def test_variables_that_two_programs_read_are_one_declaration():
    for name in ("pvc_root", "cache", "home", "log_format"):
        assert ServerEnv.variable(name) is CompressorEnv.variable(name) is BatchEnv.variable(name)
    for name in ("status_target", "job_generation", "termination_log"):
        assert CompressorEnv.variable(name) is BatchEnv.variable(name)
    assert ServerEnv.variable("artifact_digest") is BatchEnv.variable("artifact_digest")
    assert ServerEnv.variable("log_level") is OperatorEnv.variable("log_level")


# ---- every SLIMSERVE_* variable is declared in the contract and nowhere else ---------------------------

# Modules that still spell variables of their own, each with why; the test fails when one no longer does, so
# this list only shrinks.
PENDING: dict[str, str] = {}


def _docstrings(tree: ast.AST) -> set[int]:
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def variable_literals(source: Path) -> dict[str, list[str]]:
    """Module path -> `line: text` of each string literal (docstrings aside) that spells a SLIMSERVE_ name."""
    found: dict[str, list[str]] = {}
    for path in sorted(source.rglob("*.py")):
        if path == CONTRACT:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if PREFIX in node.value:
                    found.setdefault(path.relative_to(source).as_posix(), []).append(f"{node.lineno}: {node.value}")
    return found


def test_no_module_but_the_contract_spells_a_variable_name():
    found = variable_literals(SOURCE)
    assert {path: lines for path, lines in found.items() if path not in PENDING} == {}
    assert [path for path in PENDING if path not in found] == []  # no longer needed: remove it from PENDING


def test_the_scan_sees_names_in_strings_and_f_strings_but_not_in_docstrings(tmp_path):
    package = tmp_path / "slimserve"
    package.mkdir()
    (package / "reads.py").write_text(
        '"""Reads SLIMSERVE_DOCUMENTED."""\n'
        'import os\n'
        'def value():\n'
        '    """SLIMSERVE_ALSO_DOCUMENTED."""\n'
        '    return os.environ.get("SLIMSERVE_HIDDEN"), f"{os.sep}SLIMSERVE_FORMATTED"\n'
    )
    (package / "clean.py").write_text('"""Mentions SLIMSERVE_X in prose only."""\n')
    assert variable_literals(package) == {
        "reads.py": ["5: SLIMSERVE_HIDDEN", "5: SLIMSERVE_FORMATTED"]
    }


# ---- one table of defaults -----------------------------------------------------------------------------


def _crd_spec(plural: str) -> dict:
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.slimserve.io.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_the_crd_defaults_are_the_tables():
    spec = _crd_spec("modelservices")
    batching = spec["batching"]["properties"]
    assert batching["enabled"]["default"] is DEFAULTS.batching
    assert batching["maxBatchSize"]["default"] == DEFAULTS.max_batch_size
    assert batching["maxLatencyMs"]["default"] == DEFAULTS.max_latency_ms
    protocols = spec["protocols"]["properties"]
    assert (protocols["grpcWeb"]["default"], protocols["playground"]["default"]) == (DEFAULTS.grpc_web, DEFAULTS.playground)
    assert tuple(protocols["corsOrigins"]["default"]) == DEFAULTS.cors_origins


def test_the_server_cli_and_config_defaults_are_the_tables():
    from slimserve.cli import serve
    from slimserve.serving.config import ServerConfig

    parser = argparse.ArgumentParser(prog="slimserve")
    serve.register(parser.add_subparsers(dest="command"), environ={})
    args = parser.parse_args(["serve"])
    config = ServerConfig(artifact="builtin://digits-mlp")
    for field in dataclasses.fields(DEFAULTS):
        if field.name == "pvc_root":
            continue  # where pods find claims: read by the storage, not a server setting
        expected = getattr(DEFAULTS, field.name)
        if field.name in ("grpc_web", "playground", "cors_origins"):
            assert getattr(config.web, field.name) == expected, field.name
            continue
        if field.name.startswith("auth_"):  # read with the other auth settings when the server starts
            assert getattr(config.auth, field.name.removeprefix("auth_")) == expected, field.name
            continue
        if field.name == "tls_client_auth":  # read with the TLS directory when the server starts
            assert config.tls.client_auth == expected
            continue
        assert getattr(args, field.name) == expected, field.name
        if hasattr(config, field.name):
            assert getattr(config, field.name) == expected, field.name


def test_serve_help_names_every_variable_of_a_server_setting(capsys):
    from slimserve.cli import serve

    parser = argparse.ArgumentParser(prog="slimserve")
    serve.register(parser.add_subparsers(dest="command"), environ={})
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    not_settings = {"pvc_root", "cache", "download_cache", "home"}  # where files live, set by the operator
    missing = [v.name for f, v in ServerEnv.VARIABLES.items() if f not in not_settings and v.name not in text]
    assert missing == []


def test_a_model_service_pod_gets_the_tables_defaults():
    from slimserve.api.model_service import ModelServiceSpec
    from slimserve.controller.builders import model_service as builder
    from slimserve.controller.config import OperatorConfig

    config = OperatorConfig()
    spec = ModelServiceSpec.from_json({"model": {"uri": "pvc://models/digits"}})
    owner = builder.Owner(name="digits", namespace="team-a", uid="uid-1")
    model = builder.ArtifactToServe(spec.model.uri)
    deployment = builder.build_deployment(owner, spec, model, config.node_pool(spec.node_pool), config, replicas=1)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    served = ServerEnv.from_env(as_environ([e for e in container["env"] if "value" in e]))
    for name in ("host", "http_port", "grpc_port", "batching", "max_batch_size", "max_latency_ms", "grpc_web",
                 "playground", "cors_origins", "drain_timeout_s"):
        assert served.or_default(name) == getattr(DEFAULTS, name), name
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": DEFAULTS.http_port, "grpc": DEFAULTS.grpc_port}


# ---- the builders write the pods' env through the contract, entry for entry as pod templates always had it -


def test_a_server_pods_env_is_written_as_it_always_was():
    from slimserve.api.model_service import ModelServiceSpec
    from slimserve.controller.builders import model_service as builder
    from slimserve.controller.config import OperatorConfig

    config = OperatorConfig()
    spec = ModelServiceSpec.from_json({
        "model": {"uri": "pvc://models/digits"}, "batching": {"maxBatchSize": 8, "maxLatencyMs": 2.5},
        "protocols": {"grpcWeb": True, "corsOrigins": ["https://a.test", "*"]},
    })
    owner = builder.Owner(name="digits", namespace="team-a", uid="uid-1")
    pool = config.node_pool(spec.node_pool)
    env = builder.server_env(owner, spec, builder.ArtifactToServe(spec.model.uri, "sha256:" + "ab" * 32), pool, config)
    assert env == [  # a changed name, value or order would roll every server Deployment on upgrade
        {"name": "SLIMSERVE_ARTIFACT", "value": "pvc://models/digits"},
        {"name": "SLIMSERVE_MODEL_NAME", "value": "digits"},
        {"name": "SLIMSERVE_HOST", "value": "0.0.0.0"},
        {"name": "SLIMSERVE_HTTP_PORT", "value": "8080"},
        {"name": "SLIMSERVE_GRPC_PORT", "value": "9000"},
        {"name": "SLIMSERVE_BATCHING", "value": "true"},
        {"name": "SLIMSERVE_MAX_BATCH_SIZE", "value": "8"},
        {"name": "SLIMSERVE_MAX_LATENCY_MS", "value": "2.5"},
        {"name": "SLIMSERVE_GRPC_WEB", "value": "true"},
        {"name": "SLIMSERVE_PLAYGROUND", "value": "false"},
        {"name": "SLIMSERVE_CORS_ORIGINS", "value": "https://a.test,*"},
        {"name": "SLIMSERVE_SHUTDOWN_DELAY_S", "value": "5"},
        {"name": "SLIMSERVE_DRAIN_TIMEOUT_S", "value": "20"},
        {"name": "SLIMSERVE_PVC_ROOT", "value": "/mnt/pvc"},
        {"name": "SLIMSERVE_CACHE", "value": "/var/cache/slimserve"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "SLIMSERVE_ARTIFACT_DIGEST", "value": "sha256:" + "ab" * 32},
        # Added with the device policy (one roll on upgrade): a CPU pool's pod never takes a GPU it was not given.
        {"name": "SLIMSERVE_DEVICE", "value": "cpu"},
    ]
    no_digest = builder.server_env(owner, spec, builder.ArtifactToServe(spec.model.uri), pool, config)
    assert no_digest == env[:-2] + env[-1:]


def test_a_compression_pods_env_is_written_as_it_always_was():
    from slimserve.api import CompressionJobSpec
    from slimserve.controller.builders.compression_job import build_job
    from slimserve.controller.config import OperatorConfig

    spec = CompressionJobSpec.from_json({
        "model": {"uri": "builtin://digits-cnn"}, "steps": [{"quantize": {"method": "int8-dynamic"}}],
        "output": {"uri": "s3://artifacts/digits"}, "s3": {"credentialsSecret": {"name": "s3-creds"}},
    })
    job = build_job(name="digits", namespace="team-a", generation=3, spec=spec, config=OperatorConfig())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    spec_text = container["env"][0]["value"]
    assert spec_text == json.dumps(spec.to_json(), sort_keys=True, separators=(",", ":"))
    assert container["env"] == [
        {"name": "SLIMSERVE_JOB_SPEC", "value": spec_text},
        {"name": "SLIMSERVE_STATUS_TARGET", "value": "team-a/digits"},
        {"name": "SLIMSERVE_JOB_GENERATION", "value": "3"},
        {"name": "SLIMSERVE_PVC_ROOT", "value": "/mnt/pvc"},
        {"name": "SLIMSERVE_CACHE", "value": "/var/cache/slimserve"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "SLIMSERVE_DEVICE", "value": "cpu"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}},
    ]
    assert CompressorEnv.from_env(as_environ(container["env"][:7])) == CompressorEnv(
        job_spec=spec_text, status_target="team-a/digits", job_generation=3, pvc_root="/mnt/pvc",
        cache="/var/cache/slimserve", home="/tmp", device="cpu")
