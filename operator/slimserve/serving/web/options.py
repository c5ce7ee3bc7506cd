"""Which browser-facing extras a server turns on, from `slimserve serve` flags or SLIMSERVE_* variables.

Light on purpose: the CLI imports it while building its parser.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from slimserve.api import workload
from slimserve.api.workload import DEFAULTS, ServerEnv

WEB_FIELDS = ("grpc_web", "playground", "cors_origins")
ENV_GRPC_WEB = ServerEnv.variable("grpc_web").name
ENV_PLAYGROUND = ServerEnv.variable("playground").name
ENV_CORS_ORIGINS = ServerEnv.variable("cors_origins").name


@dataclass(frozen=True)
class WebOptions:
    grpc_web: bool = DEFAULTS.grpc_web
    playground: bool = DEFAULTS.playground  # the page speaks gRPC-Web, so it turns gRPC-Web on too
    cors_origins: tuple[str, ...] = DEFAULTS.cors_origins  # "*" allows any origin; empty: CORS closed

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
    flags = {name: getattr(args, name, None) for name in ("grpc_web", "playground")}
    flags["cors_origins"] = None if getattr(args, "cors_origin", None) is None else parse_origins(args.cors_origin)
    unset = [name for name in WEB_FIELDS if flags[name] is None]
    env = ServerEnv.from_env(environ, only=unset)
    return WebOptions(**{name: env.or_default(name) if flags[name] is None else flags[name] for name in WEB_FIELDS})


def parse_origins(value: str | Iterable[str], field: str = "--cors-origin") -> tuple[str, ...]:
    """Origins from a comma-separated string or a list of them; raises ValueError naming `field` and the entry.

    Accepts what a ModelService's spec.protocols.corsOrigins accepts (one pattern for both).
    """
    try:
        return workload.parse_origins(value)
    except ValueError as error:
        raise ValueError(f"{field}: {error}") from None
