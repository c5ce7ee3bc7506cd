"""The compression and server pods' security context and log format come from the operator's configuration; the
defaults leave both pod templates exactly as they were."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slimserve.controller.builders import model_service
from slimserve.controller.builders.compression_job import build_job
from slimserve.controller.config import OperatorConfig
from tests.operator.conftest import TEST_OPERATOR_CONFIG
from tests.operator.test_builders_compression_job import make_spec
from tests.operator.test_builders_model_service import MODEL, OWNER, spec

HARDENED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}}
PLATFORM_IDS = {"runAsUser": None, "runAsGroup": None, "fsGroup": None}


def configured(**settings) -> OperatorConfig:
    return OperatorConfig.model_validate({**TEST_OPERATOR_CONFIG, **settings})


def pods(config: OperatorConfig) -> dict[str, dict]:
    """The pod spec of a compression Job and of a server Deployment built with `config`."""
    job = build_job(name="digits", namespace="team-a", generation=1, spec=make_spec(), config=config)
    service_spec = spec()
    children = model_service.desired_children(
        OWNER, service_spec, MODEL, config.node_pool(service_spec.node_pool), config, keda_installed=False)
    (deployment,) = [m for m in children.apply if m["kind"] == "Deployment"]
    return {"compressor": job["spec"]["template"]["spec"], "server": deployment["spec"]["template"]["spec"]}


def env_of(pod: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}


def test_defaults_are_the_hardened_context_and_no_log_format_variable():
    for pod in pods(OperatorConfig.model_validate(TEST_OPERATOR_CONFIG)).values():
        assert pod["securityContext"] == HARDENED
        assert "SLIMSERVE_LOG_FORMAT" not in env_of(pod)


def test_the_platform_may_assign_the_ids():
    for pod in pods(configured(podSecurityContext=PLATFORM_IDS)).values():
        assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_other_fields_pass_through():
    context = {"fsGroupChangePolicy": "OnRootMismatch", "seLinuxOptions": {"level": "s0:c1,c2"},
               "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/slimserve.json"}}
    for pod in pods(configured(podSecurityContext=context)).values():
        assert pod["securityContext"] == {**HARDENED, **context}


def test_json_logs_are_set_on_both_pods():
    for pod in pods(configured(logFormat="json")).values():
        assert env_of(pod)["SLIMSERVE_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("settings", [
    {"podSecurityContext": {"runAsNonRoot": False}},
    {"podSecurityContext": {"runAsUser": 0}},
    {"podSecurityContext": {"privileged": True}},
    {"logFormat": "logfmt"},
], ids=["root-allowed", "root-uid", "unknown-field", "log-format"])
def test_unsafe_or_unknown_settings_are_refused(settings):
    with pytest.raises(ValidationError):
        configured(**settings)
