"""TLS on every port of the server (REST, gRPC-Web and gRPC), from one directory laid out as a
kubernetes.io/tls Secret (`tls.crt`, `tls.key`, and `ca.crt` for client certificates), reloaded in place.

A mounted Secret is rotated by the kubelet swapping its `..data` symlink to a new directory, so the files'
resolved paths, inodes and mtimes change at once. `CertificateReloader.watch` polls them every few seconds;
on a change it builds a whole new SSL context from the new files (which fails on an unreadable file or a key
that does not match its certificate) and only then puts it in service:

each port's listening context (HTTP/1.1 for REST and gRPC-Web, HTTP/2 for gRPC: their ALPN differs) has an SNI
callback, run at every handshake, that hands the connection the current context. Loading a new pair into the
listening context in place could leave it holding the new certificate with the old key when the key fails,
and could never drop a CA taken out of `ca.crt`.

A bad new pair keeps the old one in service, logs an error and counts `slimserve_tls_reloads_total{result=
"failed"}`; connections already open keep the certificate they shook hands with.

Client certificates: `require` refuses a handshake without a certificate the CA signed, on both ports;
`optional` verifies a certificate the client presents, and lets a client without one in.

Light at import: the CLI reads the flags while building its parser.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimserve.api.workload import (
    DEFAULTS,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_CLIENT_AUTH_MODES,
    TLS_KEY_FILE,
    ServerEnv,
    parse_client_auth,
    parse_port,
)

log = logging.getLogger(__name__)

ENV_TLS_DIR = ServerEnv.variable("tls_dir").name
ENV_CLIENT_AUTH = ServerEnv.variable("tls_client_auth").name
ENV_PROBE_PORT = ServerEnv.variable("probe_port").name
RELOAD_INTERVAL_S = 2.0
_HTTP1, _HTTP2 = "http/1.1", "h2"
_ALPN = (_HTTP1, _HTTP2)
_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}


class TlsError(ValueError):
    """The TLS files cannot be served: missing, unreadable, or a key that does not match its certificate."""


@dataclass(frozen=True)
class TlsOptions:
    directory: str | None = None  # None: plain text
    client_auth: str = DEFAULTS.tls_client_auth

    def __post_init__(self) -> None:
        if self.client_auth not in TLS_CLIENT_AUTH_MODES:
            raise ValueError(f"tls client auth: {self.client_auth!r} is not one of {', '.join(TLS_CLIENT_AUTH_MODES)}")
        if self.client_auth != "none" and not self.directory:
            raise ValueError(f"--tls-client-auth {self.client_auth} needs --tls-dir")

    @property
    def enabled(self) -> bool:
        return bool(self.directory)

    @property
    def verifies_clients(self) -> bool:
        return self.client_auth != "none"

    def path(self, name: str) -> Path:
        return Path(self.directory or "") / name


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `tls_options` reads; one left unset falls back to its environment variable."""
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls-dir", default=None, metavar="DIR",
                       help=f"serve REST, gRPC-Web and gRPC over TLS with DIR/{TLS_CERT_FILE} and DIR/{TLS_KEY_FILE} "
                            f"(a kubernetes.io/tls Secret's layout), reloaded when they change [env {ENV_TLS_DIR}; "
                            "default: plain text]")
    group.add_argument("--tls-client-auth", type=parse_client_auth, default=None, metavar="MODE",
                       help=f"client certificates signed by DIR/{TLS_CA_FILE}: none, optional (verified when "
                            f"presented, HTTP port) or require [env {ENV_CLIENT_AUTH}; default none]")
    group.add_argument("--probe-port", type=parse_port, default=None, metavar="PORT",
                       help="also answer /v2/health/live, /v2/health/ready and /metrics, and nothing else, in plain "
                            f"HTTP on PORT: for kubelet probes when clients must present certificates "
                            f"[env {ENV_PROBE_PORT}; default off]")


def tls_options(args: argparse.Namespace | None = None, environ: Mapping[str, str] = os.environ) -> TlsOptions:
    """Options from parsed flags, else the environment. Raises ValueError naming the flag or variable at fault."""
    directory = getattr(args, "tls_dir", None)
    client_auth = getattr(args, "tls_client_auth", None)
    env = ServerEnv.from_env(environ, only=[name for name, flag in (("tls_dir", directory),
                                                                    ("tls_client_auth", client_auth)) if flag is None])
    return TlsOptions(directory or env.tls_dir, client_auth or env.or_default("tls_client_auth"))


def probe_port(args: argparse.Namespace | None = None, environ: Mapping[str, str] = os.environ) -> int | None:
    flag = getattr(args, "probe_port", None)
    return flag if flag is not None else ServerEnv.from_env(environ, only=["probe_port"]).probe_port


# ---- the files and the contexts made of them ----------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """One reading of the directory: resolved paths (a rotation never rewrites a file in place) and bytes."""

    cert: Path
    key: Path
    ca: Path | None

    def pem(self, path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()


class CertificateReloader:
    """The server's TLS contexts, kept current with the files in `options.directory`."""

    def __init__(self, options: TlsOptions, registry=None) -> None:
        from prometheus_client import Counter

        self.options = options
        self.reloads = Counter("slimserve_tls_reloads", "TLS certificate reloads by result (ok, failed).",
                               ("result",), registry=registry)
        self._fingerprint = self._stat()
        pair = self._resolve()
        self._current = {alpn: self._ssl_context(pair, alpn) for alpn in _ALPN}
        # The listening contexts: each handshake switches to the current one (see the module docstring).
        self.listening_context = self._listening_context(pair, _HTTP1)
        self.grpc_listening_context = self._listening_context(pair, _HTTP2)
        log.info("TLS on: %s (client certificates: %s)", options.directory, options.client_auth)

    def _listening_context(self, pair: _Pair, alpn: str) -> ssl.SSLContext:
        context = self._ssl_context(pair, alpn)

        def select(connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
            connection.context = self._current[alpn]

        context.sni_callback = select
        return context

    # ---- reading and checking the files ----

    def _names(self) -> list[str]:
        return [TLS_CERT_FILE, TLS_KEY_FILE] + ([TLS_CA_FILE] if self.options.verifies_clients else [])

    def _stat(self) -> tuple:
        """What changes when the kubelet swaps the files: each one's resolved path, inode, size and mtime."""
        marks = []
        for name in self._names():
            path = self.options.path(name)
            try:
                info = path.stat()
            except OSError:
                marks.append((name, None))
                continue
            marks.append((os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(marks)

    def _resolve(self) -> _Pair:
        paths = {}
        for name in self._names():
            path = self.options.path(name)
            if not path.is_file():
                raise TlsError(f"TLS: {path} is missing (the Secret needs the key {name})")
            paths[name] = Path(os.path.realpath(path))
        return _Pair(paths[TLS_CERT_FILE], paths[TLS_KEY_FILE], paths.get(TLS_CA_FILE))

    def _ssl_context(self, pair: _Pair, alpn: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([alpn])
        try:
            context.load_cert_chain(pair.cert, pair.key)
        except (OSError, ssl.SSLError) as error:
            raise TlsError(f"TLS: cannot use {pair.cert} with {pair.key}: {_reason(error)}") from None
        context.verify_mode = _VERIFY_MODES[self.options.client_auth]
        if pair.ca is not None:
            try:
                context.load_verify_locations(cafile=pair.ca)
            except (OSError, ssl.SSLError) as error:
                raise TlsError(f"TLS: cannot read the client CA {pair.ca}: {_reason(error)}") from None
        return context

    # ---- reloading ----

    def check(self) -> bool | None:
        """Reload when the files changed: True when the new pair is in service, False when it was refused
        (the old one stays), None when nothing changed."""
        fingerprint = self._stat()
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint  # a bad pair is reported once, not at every poll
        try:
            pair = self._resolve()
            contexts = {alpn: self._ssl_context(pair, alpn) for alpn in _ALPN}
        except (TlsError, OSError) as error:
            self.reloads.labels("failed").inc()
            log.error("TLS certificate not reloaded, still serving the previous one: %s", error)
            return False
        self._current = contexts
        self.reloads.labels("ok").inc()
        log.info("TLS certificate reloaded from %s", pair.cert)
        return True

    async def watch(self, interval_s: float = RELOAD_INTERVAL_S) -> None:
        """Poll the files until cancelled (on the event loop: a few stat calls per poll)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - whatever happens, the server keeps its certificate and runs
                self.reloads.labels("failed").inc()
                log.exception("TLS certificate check failed")


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return {"KEY_VALUES_MISMATCH": "the key does not match the certificate"}.get(error.reason, str(error))
    return str(error)
