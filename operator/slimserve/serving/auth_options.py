"""How a server checks its callers, from `slimserve serve` flags or SLIMSERVE_AUTH_* variables.

Light on purpose: the CLI imports it while building its parser (the checks themselves are in `auth`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from slimserve.api.workload import AUTH_API_KEYS, AUTH_KUBERNETES, AUTH_MODES, DEFAULTS, PREFIX, ServerEnv


class AuthSetupError(ValueError):
    """Auth cannot start: unusable API keys (the message names the entry at fault) or no Kubernetes API."""


@dataclass(frozen=True)
class AuthConfig:
    mode: str = DEFAULTS.auth_mode  # none, apiKeys or kubernetes
    api_keys_dir: str | None = None  # apiKeys: the mounted Secret, one sha256:<hex> file per key
    namespace: str | None = None  # kubernetes: the ModelService on which a caller needs ...
    resource_name: str | None = None
    verb: str = DEFAULTS.auth_verb  # ... this verb (on modelservices[/subresource])
    subresource: str = ""
    audiences: tuple[str, ...] = ()  # kubernetes: a token must be for one of these (empty: the API server's)
    review_timeout_s: float = DEFAULTS.auth_review_timeout_s  # each call to the API server

    def __post_init__(self) -> None:
        if self.mode not in AUTH_MODES:
            raise ValueError(f"--auth-mode: {self.mode!r} is not one of {', '.join(AUTH_MODES)}")
        if self.mode == AUTH_API_KEYS and not self.api_keys_dir:
            raise ValueError("--auth-mode apiKeys needs --auth-api-keys-dir (the mounted Secret of key hashes)")
        if self.mode == AUTH_KUBERNETES and not (self.namespace and self.resource_name):
            raise ValueError("--auth-mode kubernetes needs --auth-namespace and --auth-resource-name "
                             "(the ModelService a caller needs a right on)")
        if self.review_timeout_s <= 0:
            raise ValueError(f"--auth-review-timeout-s: invalid value {self.review_timeout_s!r}")


# AuthConfig field -> ServerEnv field (and flag: --auth-<field>, dashes for underscores).
_ENV_FIELDS = {field.name: f"auth_{field.name}" for field in fields(AuthConfig)}


def _flag(name: str) -> str:
    return "--" + _ENV_FIELDS[name].replace("_", "-")


_HELP = {
    "mode": f"who may call: none, {AUTH_API_KEYS} (Authorization: Bearer KEY or X-API-Key) or {AUTH_KUBERNETES} "
            "(a bearer token, TokenReview + LocalSubjectAccessReview); health and /metrics stay open",
    "api_keys_dir": "apiKeys: directory with one file per key holding sha256:<64 hex digits> (a mounted Secret)",
    "namespace": "kubernetes: namespace of the ModelService a caller needs a right on",
    "resource_name": "kubernetes: name of that ModelService",
    "verb": "kubernetes: the verb a caller needs on it",
    "subresource": "kubernetes: the subresource of modelservices the verb is checked on (default: none)",
    "audiences": "kubernetes: comma-separated audiences a token must be for (default: the API server's)",
    "review_timeout_s": "kubernetes: longest wait for each call to the API server (then 503)",
}


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `auth_config` reads; one left unset falls back to its environment variable."""
    group = parser.add_argument_group("authentication")
    for name, env_field in _ENV_FIELDS.items():
        variable = ServerEnv.variable(env_field)
        group.add_argument(_flag(name), dest=env_field, type=variable.parse, default=None,
                           metavar=variable.name.removeprefix(PREFIX), help=f"{_HELP[name]} [env {variable.name}]")


def auth_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] = os.environ) -> AuthConfig:
    """Settings from parsed flags, else the environment. Raises ValueError naming the flag or variable at fault."""
    flags = {name: getattr(args, env_field, None) for name, env_field in _ENV_FIELDS.items()}
    env = ServerEnv.from_env(environ, only=[_ENV_FIELDS[name] for name, value in flags.items() if value is None])
    values = {name: value if value is not None else getattr(env, _ENV_FIELDS[name], None)
              for name, value in flags.items()}
    return AuthConfig(**{name: value for name, value in values.items() if value is not None})
