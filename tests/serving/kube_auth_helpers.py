"""ServiceAccounts and RBAC on the test API server for the `kubernetes` auth mode (its tests and benchmark)."""

from __future__ import annotations

import json

from kubernetes import client

RBAC = "rbac.authorization.k8s.io"


def apply_documents(control_plane, *documents: dict) -> None:
    control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in documents))


def service_account_token(control_plane, namespace: str, account: str) -> str:
    """A TokenRequest token of a new ServiceAccount `account`."""
    with control_plane.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": account}))
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        return core.create_namespaced_service_account_token(account, namespace, request).status.token


def _rbac(kind: str, name: str, namespace: str | None, **body) -> dict:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": metadata, **body}


def _binding(kind: str, name: str, namespace: str | None, role_kind: str, role: str, account: str, account_ns: str):
    return _rbac(kind, name, namespace, roleRef={"apiGroup": RBAC, "kind": role_kind, "name": role},
                 subjects=[{"kind": "ServiceAccount", "name": account, "namespace": account_ns}])


def allow_get(control_plane, namespace: str, account: str, service: str) -> None:
    """`account` may get ModelService `service` (a Role and RoleBinding, as a platform team would grant it)."""
    rules = [{"apiGroups": ["slimserve.io"], "resources": ["modelservices"], "resourceNames": [service],
              "verbs": ["get"]}]
    apply_documents(control_plane, _rbac("Role", f"{account}-get-{service}", namespace, rules=rules),
                    _binding("RoleBinding", f"{account}-get-{service}", namespace, "Role", f"{account}-get-{service}",
                             account, namespace))


def token_review_binding(namespace: str) -> str:
    return f"{namespace}-token-review"


def allow_token_reviews(control_plane, namespace: str, account: str) -> None:
    """TokenReviews for `account`, as the chart's ClusterRoleBinding grants them (no namespaced Role can);
    `token_review_binding` is left to delete."""
    apply_documents(control_plane, _token_review_binding(namespace, account))


def _token_review_binding(namespace: str, account: str) -> dict:
    return _binding("ClusterRoleBinding", token_review_binding(namespace), None, "ClusterRole",
                    "system:auth-delegator", account, namespace)


def grant_reviews(control_plane, namespace: str, account: str) -> None:
    """What a server in the kubernetes mode is granted: TokenReviews (the chart's ClusterRoleBinding) and
    LocalSubjectAccessReviews in its namespace (the operator's Role); `token_review_binding` is left to delete."""
    rules = [{"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}]
    apply_documents(
        control_plane,
        _token_review_binding(namespace, account),
        _rbac("Role", f"{account}-access-review", namespace, rules=rules),
        _binding("RoleBinding", f"{account}-access-review", namespace, "Role", f"{account}-access-review", account,
                 namespace),
    )


def auth_namespace(control_plane, prefix: str):
    """A namespace for a test module (a fixture's generator): deleted after it with its TokenReview grant."""
    name = control_plane.create_namespace(prefix)
    yield name
    control_plane.kubectl("delete", "clusterrolebinding", token_review_binding(name), "--ignore-not-found", check=False)
    control_plane.delete_namespace(name)


def caller_tokens(control_plane, namespace: str, service: str) -> dict[str, str]:
    """Tokens of a caller ("reader") with `get` on ModelService `service` and of one ("stranger") without."""
    tokens = {account: service_account_token(control_plane, namespace, account) for account in ("reader", "stranger")}
    allow_get(control_plane, namespace, "reader", service)
    return tokens
