"""Who may call the inference endpoints: API keys, or Kubernetes tokens (`kube_auth`), checked per request.

Off unless a mode is configured. With one on, every REST route and gRPC / gRPC-Web method asks `Auth.check`
before it reads the request, except what probes and Prometheus call: REST `/v2/health/live`,
`/v2/health/ready` and `/metrics`, gRPC `ServerLive`, `ServerReady` and `grpc.health.v1.Health`.

A credential comes as `Authorization: Bearer CREDENTIAL` (gRPC: `authorization` metadata) or, for API keys,
`X-API-Key: KEY` (gRPC: `x-api-key`). Failures are `Unauthenticated` (401 / UNAUTHENTICATED: missing,
malformed or invalid), `PermissionDenied` (403 / PERMISSION_DENIED) or `AuthUnavailable` (503 / UNAVAILABLE:
the Kubernetes API did not answer), counted in `slimserve_auth_failures_total{protocol, reason}`. Nothing
here logs a credential: a key is only hashed, a token only sent to the API server.

API keys: a directory (the mounted Secret) with one file per key, named after the key, holding
`sha256:<64 hex digits>`, the SHA-256 of the key. A request's key is hashed and compared with every entry by
`hmac.compare_digest` (constant time, and all entries each time, so the time says nothing of which one
matched). The directory is read again when the Secret's volume changes, so a removed entry is revoked
within `RELOAD_INTERVAL_S` plus the kubelet's sync.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter

from slimserve.api.workload import AUTH_API_KEYS, AUTH_KUBERNETES
from slimserve.serving.auth_options import AuthConfig, AuthSetupError
from slimserve.serving.errors import AuthUnavailable, PermissionDenied, Unauthenticated
from slimserve.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "authorization"
API_KEY_HEADER = "x-api-key"
API_KEY_ENTRY = re.compile(r"sha256:([0-9a-f]{64})")
RELOAD_INTERVAL_S = 10.0
# A Secret volume keeps its files in a timestamped folder behind this link, swapped on every update.
SECRET_VOLUME_DATA = "..data"
FAILURE_REASONS = ("missing", "malformed", "invalid", "forbidden", "unavailable")


class Checker(Protocol):
    accepts_api_key_header: bool

    async def caller(self, credential: str) -> str:
        """The caller's name when `credential` may call this server; raises Unauthenticated, PermissionDenied
        or AuthUnavailable otherwise."""


class Auth:
    """A server's check of its callers: reads the credential, asks the checker, counts each failure."""

    def __init__(self, checker: Checker, metrics: ServerMetrics) -> None:
        self.checker = checker
        self.failures = Counter(
            "slimserve_auth_failures", "Requests refused by authentication or authorization, by reason.",
            ("protocol", "reason"), registry=metrics.registry,
        )

    async def check(self, protocol: str, authorization: str | None, api_key: str | None) -> str:
        """The caller's name; raises the failure (a ServingError) after counting it."""
        try:
            credential = presented_credential(authorization, api_key if self.checker.accepts_api_key_header else None)
            return await self.checker.caller(credential)
        except (Unauthenticated, PermissionDenied, AuthUnavailable) as failure:
            self.failures.labels(protocol, failure.reason).inc()
            raise


def presented_credential(authorization: str | None, api_key: str | None) -> str:
    """The bearer credential of an `Authorization` header, else the `X-API-Key` value; 401 when neither is usable."""
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <credential>'", "malformed")
        return value.strip()
    if api_key is not None:
        if not api_key.strip():
            raise Unauthenticated("the X-API-Key header is empty", "malformed")
        return api_key.strip()
    raise Unauthenticated("this service needs a credential: send 'Authorization: Bearer <credential>'", "missing")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_api_keys(directory: str | Path) -> dict[str, bytes]:
    """Key name -> SHA-256 digest of every entry in `directory`; AuthSetupError naming the entry at fault."""
    folder = Path(directory)
    if not folder.is_dir():
        raise AuthSetupError(f"API keys: {folder} is not a directory (is the Secret mounted?)")
    digests = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():  # the Secret volume's own links and folders
            continue
        text = entry.read_text(errors="replace").strip()
        match = API_KEY_ENTRY.fullmatch(text.lower())
        if match is None:
            raise AuthSetupError(f"API key entry {entry.name!r}: {_entry_problem(text)}; "
                              "write sha256:<64 hex digits>, the SHA-256 of the key")
        digests[entry.name] = bytes.fromhex(match.group(1))
    if not digests:
        raise AuthSetupError(f"API keys: no entries in {folder}: the Secret is missing or has no keys")
    return digests


def _entry_problem(text: str) -> str:
    if not text.lower().startswith("sha256:"):
        return "does not start with sha256:"
    digits = text[len("sha256:"):]
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        return "the digest is not hexadecimal"
    return f"the digest has {len(digits)} hex digits, not 64"


class ApiKeyChecker:
    """Checks a key against the hashed entries of a directory, read again when the directory changes."""

    accepts_api_key_header = True

    def __init__(self, directory: str | Path, reload_interval_s: float = RELOAD_INTERVAL_S) -> None:
        self.directory = Path(directory)
        self.reload_interval_s = reload_interval_s
        self.digests = read_api_keys(self.directory)
        self._version = self._volume_version()
        self._next_look = time.monotonic() + reload_interval_s

    async def caller(self, credential: str) -> str:
        if time.monotonic() >= self._next_look:
            self._reload_if_changed()
        digest = key_digest(credential)
        found = None
        for name, expected in self.digests.items():
            if hmac.compare_digest(expected, digest) and found is None:
                found = name
        if found is None:
            raise Unauthenticated("the API key is not valid", "invalid")
        return found

    def _volume_version(self) -> tuple:
        try:
            data = os.stat(self.directory / SECRET_VOLUME_DATA)
            return data.st_ino, data.st_mtime_ns
        except OSError:  # not a Secret volume (a plain directory): its own time stamp
            return (os.stat(self.directory).st_mtime_ns,)

    def _reload_if_changed(self) -> None:
        self._next_look = time.monotonic() + self.reload_interval_s
        try:
            version = self._volume_version()
            if version == self._version:
                return
            self.digests, self._version = read_api_keys(self.directory), version
            log.info("API keys reloaded: %d entries", len(self.digests))
        except (OSError, AuthSetupError) as error:
            log.error("API keys not reloaded, the previous %d entries stay in force: %s", len(self.digests), error)


def build_auth(config: AuthConfig, metrics: ServerMetrics) -> Auth | None:
    """The server's check for `config`; None when auth is off. Raises AuthSetupError when it cannot start."""
    if config.mode == AUTH_API_KEYS:
        return Auth(ApiKeyChecker(config.api_keys_dir), metrics)
    if config.mode == AUTH_KUBERNETES:
        from slimserve.serving.kube_auth import KubernetesChecker

        return Auth(KubernetesChecker.from_config(config, metrics), metrics)
    return None
