"""Which browser-facing extras a server turns on, from `slimserve serve` flags or SLIMSERVE_* variables.

Light on purpose: the CLI imports it while building its parser (the API models load only to check origins).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

ENV_GRPC_WEB = "SLIMSERVE_GRPC_WEB"
ENV_PLAYGROUND = "SLIMSERVE_PLAYGROUND"
ENV_CORS_ORIGINS = "SLIMSERVE_CORS_ORIGINS"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class WebOptions:
    grpc_web: bool = False
    playground: bool = False  # the page speaks gRPC-Web, so it turns gRPC-Web on too
    cors_origins: tuple[str, ...] = ()  # "*" allows any origin; empty: CORS closed

    @property
    def serves_grpc_web(self) -> bool:
        return self.grpc_web or self.playground

    @classmethod
    def of(cls, protocols) -> "WebOptions":
        """The options a ModelService's `spec.protocols` (a ProtocolsSpec) asks for."""
        return cls(protocols.grpc_web, protocols.playground, tuple(protocols.cors_origins))

    def flags(self) -> list[str]:
        """The `slimserve serve` flags that give these options."""
        flags = (["--grpc-web"] if self.grpc_web else []) + (["--playground"] if self.playground else [])
        return flags + [arg for origin in self.cors_origins for arg in ("--cors-origin", origin)]


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `web_options` reads; one left unset falls back to its environment variable."""
    group = parser.add_argument_group("browsers")
    group.add_argument("--grpc-web", action=argparse.BooleanOptionalAction, default=None,
                       help=f"answer gRPC-Web on the HTTP port [env {ENV_GRPC_WEB}; default off]")
    group.add_argument("--playground", action=argparse.BooleanOptionalAction, default=None,
                       help=f"serve the model playground page at / (turns gRPC-Web on) [env {ENV_PLAYGROUND}; default off]")
    group.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="let pages from ORIGIN (e.g. https://app.example.com, or *) call the HTTP port; "
                            f"repeatable [env {ENV_CORS_ORIGINS}, comma-separated; default none: CORS closed]")


def web_options(args: argparse.Namespace | None = None, environ: Mapping[str, str] = os.environ) -> WebOptions:
    """Options from parsed flags, else the environment. Raises ValueError naming the flag or variable at fault."""
    grpc_web = getattr(args, "grpc_web", None)
    playground = getattr(args, "playground", None)
    origins = getattr(args, "cors_origin", None)
    return WebOptions(
        grpc_web=_env_bool(environ, ENV_GRPC_WEB) if grpc_web is None else grpc_web,
        playground=_env_bool(environ, ENV_PLAYGROUND) if playground is None else playground,
        cors_origins=(parse_origins(environ.get(ENV_CORS_ORIGINS, ""), ENV_CORS_ORIGINS) if origins is None
                      else parse_origins(origins, "--cors-origin")),
    )


def parse_origins(value: str | list[str] | tuple[str, ...], field: str = "--cors-origin") -> tuple[str, ...]:
    """Origins from a comma-separated string or a list of them; raises ValueError naming `field` and the entry.

    Accepts what a ModelService's spec.protocols.corsOrigins accepts (one pattern for both).
    """
    from slimserve.api.model_service import CORS_ORIGIN_PATTERN

    items = value.split(",") if isinstance(value, str) else [part for entry in value for part in entry.split(",")]
    origins: list[str] = []
    for raw in items:
        origin = raw.strip()
        if not origin:
            continue
        if not re.match(CORS_ORIGIN_PATTERN, origin):
            hint = " (an origin has no path: drop the trailing '/')" if origin.endswith("/") else ""
            raise ValueError(f"{field}: {origin!r} is not an origin such as https://app.example.com or *{hint}")
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _env_bool(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}: {environ[name]!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
