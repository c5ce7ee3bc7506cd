"""The `kubernetes` auth mode: a caller's bearer token checked by the Kubernetes API, as kube-rbac-proxy does.

1. TokenReview: is the token valid (for the configured audiences), and whose is it?
2. LocalSubjectAccessReview in the ModelService's namespace: may that user `verb` the ModelService
   (`modelservices[/subresource]` NAME, group slimserve.io)? Namespaced, so the pod's RoleBinding can grant it.

Answers are cached per token (by its SHA-256, never the token itself) in a bounded LRU: allowed for
`ALLOWED_TTL_S`, refused for the shorter `REFUSED_TTL_S`, so a right granted or a token fixed is seen soon.
Concurrent requests with the same uncached token share one review. Every API call is bounded by the review
timeout; an API server that does not answer, or refuses the reviews themselves, is a 503 (AuthUnavailable),
never cached and never a 401. `slimserve_auth_reviews_total{kind, outcome}` counts the calls sent.

Outside a cluster (tests, `slimserve run`) the API server is the one `KUBECONFIG` names.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3
from cachetools import TLRUCache
from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from slimserve.api import GROUP
from slimserve.serving.auth_options import AuthConfig, AuthSetupError
from slimserve.serving.errors import AuthUnavailable, PermissionDenied, Unauthenticated
from slimserve.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

RESOURCE = "modelservices"
ALLOWED_TTL_S = 30.0
REFUSED_TTL_S = 5.0
CACHE_ENTRIES = 4096
REVIEW_THREADS = 4


@dataclass(frozen=True)
class Decision:
    """A review's answer: `caller` when the token is valid; allowed, or why not."""

    caller: str | None
    allowed: bool
    reason: str = ""

    def expires(self, now: float) -> float:
        return now + (ALLOWED_TTL_S if self.allowed else REFUSED_TTL_S)


class KubernetesChecker:
    accepts_api_key_header = False  # a token comes as a bearer credential only

    def __init__(self, api: client.ApiClient, settings: AuthConfig, metrics: ServerMetrics) -> None:
        self.api = api
        self.settings = settings
        self.reviews = Counter(
            "slimserve_auth_reviews", "TokenReviews and LocalSubjectAccessReviews sent to the Kubernetes API.",
            ("kind", "outcome"), registry=metrics.registry,
        )
        self._cache: TLRUCache = TLRUCache(CACHE_ENTRIES, ttu=lambda _key, decision, now: decision.expires(now))
        self._pending: dict[bytes, asyncio.Future] = {}
        self._threads = ThreadPoolExecutor(REVIEW_THREADS, thread_name_prefix="slimserve-auth-review")

    @classmethod
    def from_config(cls, settings: AuthConfig, metrics: ServerMetrics) -> "KubernetesChecker":
        configuration = client.Configuration()
        try:
            if os.environ.get("KUBECONFIG"):
                kube_config.load_kube_config(client_configuration=configuration)
            else:
                kube_config.load_incluster_config(client_configuration=configuration)
        except kube_config.ConfigException as error:
            raise AuthSetupError(f"auth mode kubernetes: no Kubernetes API to ask: {error} (in a pod, its "
                                 "ServiceAccount token must be mounted; elsewhere, set KUBECONFIG)") from None
        configuration.retries = 0  # the request's own deadline decides, not urllib3's retries
        return cls(client.ApiClient(configuration), settings, metrics)

    async def caller(self, credential: str) -> str:
        key = hashlib.sha256(credential.encode()).digest()
        decision = self._cache.get(key)
        if decision is None:
            decision = await self._decide(key, credential)
        if decision.caller is None:
            raise Unauthenticated(f"the token is not valid{decision.reason}", "invalid")
        if not decision.allowed:
            raise PermissionDenied(f"{decision.caller} may not {self._right()}{decision.reason}")
        return decision.caller

    async def _decide(self, key: bytes, token: str) -> Decision:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(self._threads, self.review, token)
            self._pending[key] = pending
            try:
                decision = await asyncio.shield(pending)  # a caller that goes away leaves it to the others
            finally:
                del self._pending[key]
            self._cache[key] = decision
            return decision
        return await asyncio.shield(pending)

    def review(self, token: str) -> Decision:
        """Both reviews, on a worker thread; AuthUnavailable when the API server does not give an answer."""
        settings = self.settings
        token_review = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=list(settings.audiences) or None)
        )
        answer = self._call("TokenReview", client.AuthenticationV1Api(self.api).create_token_review, token_review)
        status = answer.status
        if not status or not status.authenticated or status.user is None:
            return Decision(None, False, f": {status.error}" if status and status.error else "")
        user = status.user
        access_review = client.V1LocalSubjectAccessReview(
            metadata=client.V1ObjectMeta(namespace=settings.namespace),
            spec=client.V1SubjectAccessReviewSpec(
                user=user.username, groups=user.groups, uid=user.uid, extra=user.extra,
                resource_attributes=client.V1ResourceAttributes(
                    group=GROUP, resource=RESOURCE, subresource=settings.subresource or None,
                    namespace=settings.namespace, name=settings.resource_name, verb=settings.verb,
                ),
            ),
        )
        answer = self._call(
            "LocalSubjectAccessReview",
            client.AuthorizationV1Api(self.api).create_namespaced_local_subject_access_review,
            settings.namespace, access_review,
        )
        allowed = bool(answer.status and answer.status.allowed)
        reason = f": {answer.status.reason}" if answer.status and answer.status.reason and not allowed else ""
        return Decision(user.username, allowed, reason)

    def _call(self, kind: str, create, *args):
        try:
            answer = create(*args, _request_timeout=self.settings.review_timeout_s)
        except ApiException as error:
            self.reviews.labels(kind, "error").inc()
            log.error("%s refused by the Kubernetes API (%s %s): does this pod's ServiceAccount have the right "
                      "to create it?", kind, error.status, error.reason)
            raise AuthUnavailable(f"the credential could not be checked: the Kubernetes API refused the {kind} "
                                  f"({error.status})") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            self.reviews.labels(kind, "error").inc()
            log.warning("%s: no answer from the Kubernetes API: %s", kind, error)
            raise AuthUnavailable("the credential could not be checked: the Kubernetes API did not answer") from None
        self.reviews.labels(kind, "answered").inc()
        return answer

    def _right(self) -> str:
        resource = RESOURCE + (f"/{self.settings.subresource}" if self.settings.subresource else "")
        return f"{self.settings.verb} {resource} {self.settings.namespace}/{self.settings.resource_name}"
