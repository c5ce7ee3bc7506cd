"""HTTP/2 for the gRPC port: a server-side session that turns bytes into request events and responses into
bytes, with no I/O of its own (the port's asyncio protocol in `grpc_server` owns the socket).

Two implementations of one interface (`session.ServerSession`):
- `nghttp2_session`: libnghttp2, the C library behind curl, Apache httpd and Node.js, through `ctypes`
  (`nghttp2_lib`). Used wherever the library is installed (Debian: `libnghttp2-14`; the server image carries
  it): framing, HPACK, flow control and the RFC's checks of a peer's frames and headers run in C.
- `h2_session`: the python-hyper `h2` library, pure Python; the fallback where libnghttp2 is missing.

`open_session(settings, backend)` makes one; `BACKENDS` lists the choices (the server's `--grpc-http2`),
`default_backend()` says which "auto" picks here and `describe(backend)` names it for a log line.
"""

from __future__ import annotations

from slimserve.api.workload import GRPC_HTTP2_BACKENDS as BACKENDS
from slimserve.serving.http2 import nghttp2_lib
from slimserve.serving.http2.h2_session import H2Session
from slimserve.serving.http2.nghttp2_session import NgHttp2Session
from slimserve.serving.http2.session import ServerSession, SessionSettings


def default_backend() -> str:
    """What "auto" picks: libnghttp2 where it loads, else h2."""
    return "nghttp2" if nghttp2_lib.load() is not None else "h2"


def describe(backend: str) -> str:
    """The backend as a log line names it: "libnghttp2 1.52.0", or "h2 (pure Python...)"."""
    if backend == "nghttp2":
        return f"libnghttp2 {nghttp2_lib.version()}"
    if nghttp2_lib.load() is None:
        return "h2 (pure Python; libnghttp2 not found: install libnghttp2-14 for the C one)"
    return "h2 (pure Python)"


def open_session(settings: SessionSettings, backend: str = "auto") -> ServerSession:
    """A server session with the connection preface (SETTINGS, the connection window) queued to send."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown HTTP/2 backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = default_backend()
    return NgHttp2Session(settings) if backend == "nghttp2" else H2Session(settings)


__all__ = ["BACKENDS", "ServerSession", "SessionSettings", "default_backend", "describe", "nghttp2_lib",
           "open_session"]
