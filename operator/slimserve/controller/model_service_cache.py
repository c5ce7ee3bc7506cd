"""Whether the shared download cache a ModelService's pods would mount exists: spec.modelCache's claim, or the
claim its node pool names (`nodePools.<pool>.modelCache` of the operator's configuration).

Checked before the server pods are rolled, as the Secrets are: pods mounting a claim that does not exist stay
Pending, and would replace pods that serve. A missing claim (or one being deleted) is a condition on the
ModelService and nothing is applied; the pass is retried with back-off, so a claim created later is picked up.
Only the claim's metadata is read, by name (`get` on persistentvolumeclaims; no list, no watch).
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slimserve.api.model_service import ModelServiceSpec
from slimserve.controller import kube
from slimserve.controller.builders.model_service import model_cache_claim
from slimserve.controller.config import NodePool
from slimserve.controller.model_service_secrets import read_refusal
from slimserve.controller.model_service_status import MODEL_CACHE_CLAIM_MISSING, Refusal


def cache_field(spec: ModelServiceSpec) -> str:
    """Where the claim's name comes from, as the message names it."""
    if spec.model_cache:
        return "spec.modelCache.claimName"
    return f"the modelCache of node pool {spec.node_pool!r} (operator configuration)"


def model_cache_refusal(api: client.ApiClient, namespace: str, spec: ModelServiceSpec, pool: NodePool) -> Refusal | None:
    """Why the pods must not be rolled with their download cache's claim, or None (also when they mount none)."""
    claim = model_cache_claim(spec, pool)
    if claim is None:
        return None
    what = f"reading PersistentVolumeClaim {namespace}/{claim}"
    try:
        found = kube.read_metadata(api, "v1", "PersistentVolumeClaim", namespace, claim)
    except ApiException as exc:
        return read_refusal(exc, what)
    if found is None:
        state = "does not exist"
    elif (found.get("metadata") or {}).get("deletionTimestamp"):
        state = "is being deleted"
    else:
        return None
    return Refusal(MODEL_CACHE_CLAIM_MISSING,
                   f"{cache_field(spec)}: PersistentVolumeClaim {claim!r} {state} in namespace {namespace!r}; waiting "
                   "for it (a ReadWriteMany claim the replicas share their downloads through)")
