"""spec.auth on the real control plane: the operator grants the server pods what the kubernetes mode needs,
and only while it is on; apiKeys holds the pods back until its Secret exists with a key entry (read from the
Secret's metadata), then mounts it read-only; neither leaves the pods a token they do not use."""

from __future__ import annotations

import base64
import json

import pytest

from slimserve.controller.builders import model_service as builders
from tests.cluster.helpers import apply, condition, exists, get, wait_for
from tests.operator.test_model_service_cluster import model_service, status_of, wait_condition, wait_ready

pytestmark = pytest.mark.cluster

ACCESS_KINDS = ("serviceaccount", "role", "rolebinding")


def pod_spec(cp, namespace: str, name: str) -> dict:
    return get(cp, namespace, "deployment", name)["spec"]["template"]["spec"]


def env_of(spec: dict) -> dict[str, str]:
    return {entry["name"]: entry.get("value") for entry in spec["containers"][0]["env"]}


def api_keys_secret(name: str, **entries: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in entries.items()}}


DIGEST = "sha256:" + "ab" * 32


def can_i(cp, namespace: str, account: str, *request: str) -> bool:
    out = cp.kubectl("auth", "can-i", *request, f"--as=system:serviceaccount:{namespace}:{account}", check=False)
    return out.stdout.strip() == "yes"


def test_kubernetes_mode_gets_its_own_account_and_only_access_reviews(control_plane, operator, namespace):
    cp, name = control_plane, "guarded"
    account = f"{name}-server"
    apply(cp, namespace, model_service(name, auth={"mode": "kubernetes", "kubernetes": {"verb": "create",
                                                                                        "subresource": "infer"}}))
    wait_ready(cp, namespace, name)
    live = get(cp, namespace, "modelservice", name)
    for kind in ACCESS_KINDS:
        obj = get(cp, namespace, kind, account)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == live["metadata"]["uid"], kind
    spec = pod_spec(cp, namespace, name)
    assert spec["serviceAccountName"] == account and spec["automountServiceAccountToken"] is True
    env = env_of(spec)
    assert env["SLIMSERVE_AUTH_MODE"] == "kubernetes"
    assert (env["SLIMSERVE_AUTH_NAMESPACE"], env["SLIMSERVE_AUTH_RESOURCE_NAME"]) == (namespace, name)
    assert (env["SLIMSERVE_AUTH_VERB"], env["SLIMSERVE_AUTH_SUBRESOURCE"]) == ("create", "infer")
    # What the pods may do: ask about callers in their own namespace, and nothing else the operator grants.
    assert can_i(cp, namespace, account, "create", "localsubjectaccessreviews.authorization.k8s.io", "-n", namespace)
    for request in (("create", "localsubjectaccessreviews.authorization.k8s.io", "-n", "default"),
                    ("get", "modelservices.slimserve.io", "-n", namespace), ("get", "secrets", "-n", namespace),
                    ("create", "tokenreviews.authentication.k8s.io")):  # the chart's, per ModelService
        assert not can_i(cp, namespace, account, *request), request

    # The mode off: the grant goes, the pods lose their token.
    apply(cp, namespace, model_service(name))
    wait_for("the auth ServiceAccount, Role and RoleBinding deleted",
             lambda: not any(exists(cp, namespace, kind, account) for kind in ACCESS_KINDS))
    spec = pod_spec(cp, namespace, name)
    assert spec["automountServiceAccountToken"] is False
    assert spec.get("serviceAccountName", "default") == "default"  # unstated: the API server's default
    assert not any(key.startswith("SLIMSERVE_AUTH_") for key in env_of(spec))


def test_api_keys_mount_the_secret_read_only_and_grant_nothing(control_plane, operator, namespace):
    cp, name = control_plane, "keyed"
    apply(cp, namespace, api_keys_secret("digits-keys", alice=DIGEST))
    apply(cp, namespace, model_service(name, auth={"mode": "apiKeys", "apiKeysSecret": {"name": "digits-keys"}}))
    wait_ready(cp, namespace, name)
    spec = pod_spec(cp, namespace, name)
    volume = next(v for v in spec["volumes"] if v["name"] == builders.API_KEYS_VOLUME)
    assert volume["secret"]["secretName"] == "digits-keys"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == builders.API_KEYS_VOLUME)
    assert mount == {"name": builders.API_KEYS_VOLUME, "mountPath": builders.API_KEYS_MOUNT, "readOnly": True}
    env = env_of(spec)
    assert (env["SLIMSERVE_AUTH_MODE"], env["SLIMSERVE_AUTH_API_KEYS_DIR"]) == ("apiKeys", builders.API_KEYS_MOUNT)
    assert spec["automountServiceAccountToken"] is False
    assert not any(exists(cp, namespace, kind, f"{name}-server") for kind in ACCESS_KINDS)


def test_api_keys_without_a_secret_is_refused_naming_the_field(control_plane, crds, namespace):
    out = control_plane.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                                input=json.dumps(model_service("nokeys", auth={"mode": "apiKeys"})))
    assert out.returncode != 0
    assert "spec.auth.apiKeysSecret: mode apiKeys needs the Secret of key hashes" in out.stderr


def test_api_keys_secret_missing_or_without_entries_is_a_condition_until_it_has_one(control_plane, operator, namespace):
    cp, name, secret = control_plane, "keys-later", "later-keys"
    apply(cp, namespace, model_service(name, auth={"mode": "apiKeys", "apiKeysSecret": {"name": secret}}))
    ready = wait_condition(cp, namespace, name, "Ready", "False", "APIKeysSecretMissing")
    assert ready["message"] == (f"spec.auth.apiKeysSecret: Secret '{secret}' does not exist in namespace "
                                f"'{namespace}'; waiting for it")
    assert condition(status_of(cp, namespace, name), "Stalled")["status"] == "False"  # the Secret may yet come
    assert not exists(cp, namespace, "deployment", name)  # no pods that would refuse to start

    apply(cp, namespace, api_keys_secret(secret))  # exists, but no key in it
    ready = wait_condition(cp, namespace, name, "Ready", "False", "APIKeysSecretInvalid")
    assert ready["message"].startswith(f"spec.auth.apiKeysSecret: Secret '{secret}' has no key entries")
    assert not exists(cp, namespace, "deployment", name)

    apply(cp, namespace, api_keys_secret(secret, alice=DIGEST))
    wait_ready(cp, namespace, name)
