"""Security contexts and the log format as values, rendered by the real Helm CLI."""

from __future__ import annotations

import pytest
import yaml

from slimserve.controller.config import OperatorConfig
from tests.helm.chart import CHART, helm, kube_version, one, operator_config, operator_container, render
from tests.helm.chart import template as helm_template

# What the chart rendered before these were values: the defaults must stay exactly this.
POD_DEFAULT = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_DEFAULT = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
                     "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
                     "seccompProfile": {"type": "RuntimeDefault"}}
# OpenShift's restricted SCC assigns the ids from the namespace's range.
PLATFORM_IDS = {"operator": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
                             "securityContext": {"runAsUser": None, "runAsGroup": None}}}


def _contexts(objects: list[dict]) -> tuple[dict, dict]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    return pod, operator_container(objects)["securityContext"]


def test_defaults_are_the_hardened_contexts_of_before():
    assert _contexts(render()) == (POD_DEFAULT, CONTAINER_DEFAULT)


def test_the_platform_may_choose_the_ids_while_root_stays_refused():
    pod, container = _contexts(render(PLATFORM_IDS))
    assert pod == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container == {k: v for k, v in CONTAINER_DEFAULT.items() if k not in ("runAsUser", "runAsGroup")}


def test_null_on_the_command_line_unsets_the_id():
    """The form values.yaml documents: --set ...runAsUser=null."""
    pod, container = _contexts(render(None, "--set", "operator.podSecurityContext.runAsUser=null",
                                      "--set", "operator.securityContext.runAsUser=null"))
    assert "runAsUser" not in pod and "runAsUser" not in container
    assert pod["runAsNonRoot"] is True and pod["runAsGroup"] == 65532


def test_other_fields_are_passed_through():
    pod, container = _contexts(render({"operator": {
        "podSecurityContext": {"fsGroupChangePolicy": "OnRootMismatch", "seLinuxOptions": {"level": "s0:c123,c456"}},
        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/slimserve.json"}}}}))
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch" and pod["seLinuxOptions"] == {"level": "s0:c123,c456"}
    assert container["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/slimserve.json"}
    assert container["capabilities"] == {"drop": ["ALL"]}  # the rest of the defaults stays


@pytest.mark.parametrize("values,field", [
    ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
    ({"operator": {"podSecurityContext": {"runAsNonRoot": None}}}, "runAsNonRoot"),
    ({"operator": {"podSecurityContext": {"runAsUser": 0}}}, "runAsUser"),
    ({"operator": {"podSecurityContext": {"runAsUsr": 1000}}}, "runAsUsr"),
    ({"operator": {"securityContext": {"privileged": True}}}, "privileged"),
    ({"operator": {"securityContext": {"allowPrivilegeEscalation": True}}}, "allowPrivilegeEscalation"),
    ({"operator": {"securityContext": {"seccompProfile": {"type": "Default"}}}}, "type"),
    ({"logging": {"format": "logfmt"}}, "format"),
], ids=["nonroot-false", "nonroot-unset", "root-uid", "misspelt", "privileged", "escalation", "seccomp", "format"])
def test_unsafe_or_unknown_values_are_rejected(values, field):
    out = helm_template(values, check=False)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert field in out.stderr, out.stderr


def test_log_format_reaches_the_operator():
    assert "--log-format=text" in operator_container(render())["args"]
    assert "--log-format=json" in operator_container(render({"logging": {"format": "json"}}))["args"]


def test_lint_strict_is_clean_with_every_new_value_set(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**PLATFORM_IDS, "crds": {"enabled": True, "keep": False},
                                    "logging": {"format": "json"}}))
    out = helm("lint", "--strict", str(CHART), "--values", str(path), "--kube-version", kube_version())
    assert "0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


# ---- the compression and server pods, through the operator's configuration -------------------------------


def test_workload_settings_reach_the_operators_configuration():
    config = OperatorConfig.model_validate(operator_config(render()))
    assert config.pod_security_context.to_manifest() == POD_DEFAULT and config.log_format == "text"
    ids = {"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}}
    config = OperatorConfig.model_validate(operator_config(render({"workloads": ids, "logging": {"format": "json"}})))
    assert config.pod_security_context.to_manifest() == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert config.log_format == "json"


def test_a_workload_id_unset_on_the_command_line_is_unset_in_the_configuration():
    objects = render(None, "--set", "workloads.podSecurityContext.runAsUser=null")
    context = OperatorConfig.model_validate(operator_config(objects)).pod_security_context.to_manifest()
    assert "runAsUser" not in context and context["runAsGroup"] == 65532


def test_workload_pods_may_not_run_as_root():
    out = helm_template({"workloads": {"podSecurityContext": {"runAsNonRoot": False}}}, check=False)
    assert out.returncode != 0 and "runAsNonRoot" in out.stderr
