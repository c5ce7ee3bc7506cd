"""HTTP/2 for the gRPC port: a server-side session that turns bytes into request events and responses into
bytes, with no I/O of its own (the port's asyncio protocol in `grpc_server` owns the socket).

Two implementations of one interface (`session.ServerSession`):
- `nghttp2_session`: libnghttp2, the C library behind curl, Apache httpd and Node.js, through `ctypes`
  (`nghttp2_lib`). Used wherever the library is installed (Debian: `libnghttp2-14`; the server image carries
  it): framing, HPACK, flow control and the RFC's checks of a peer's frames and headers run in C.
- `h2_session`: the python-hyper `h2` library, pure Python; the fallback where libnghttp2 is missing.

`resolve_backend(name)` turns a choice of `BACKENDS` (the server's `--grpc-http2`; "auto" included) into the
backend this machine runs, once per server; `open_session(settings, backend)` makes a session of it per
connection, and `describe(backend)` names it for a log line.
"""

from __future__ import annotations

from slimserve.api.workload import GRPC_HTTP2_BACKENDS as BACKENDS
from slimserve.serving.http2 import nghttp2_lib
from slimserve.serving.http2.h2_session import H2Session
from slimserve.serving.http2.nghttp2_session import NgHttp2Session
from slimserve.serving.http2.session import ServerSession, SessionSettings


def resolve_backend(name: str) -> str:
    """The backend `name` means here: "auto" is libnghttp2 where it loads, else h2. A name outside `BACKENDS`,
    or nghttp2 where the library is missing, is a ValueError."""
    if name not in BACKENDS:
        raise ValueError(f"grpc_http2: {name!r} is not one of {', '.join(BACKENDS)}")
    installed = nghttp2_lib.load() is not None
    if name == "auto":
        return "nghttp2" if installed else "h2"
    if name == "nghttp2" and not installed:
        raise ValueError("grpc_http2: nghttp2 asked for, but libnghttp2 is not installed (Debian: libnghttp2-14)")
    return name


def describe(backend: str) -> str:
    """The backend as a log line names it: "libnghttp2 1.52.0", or "h2 (pure Python...)"."""
    if backend == "nghttp2":
        return f"libnghttp2 {nghttp2_lib.version()}"
    if nghttp2_lib.load() is None:
        return "h2 (pure Python; libnghttp2 not found: install libnghttp2-14 for the C one)"
    return "h2 (pure Python)"


def open_session(settings: SessionSettings, backend: str) -> ServerSession:
    """A session of a resolved backend ("nghttp2" or "h2", from `resolve_backend`) with the connection preface
    (SETTINGS, the connection window) queued to send."""
    return NgHttp2Session(settings) if backend == "nghttp2" else H2Session(settings)


__all__ = ["BACKENDS", "ServerSession", "SessionSettings", "describe", "nghttp2_lib", "open_session",
           "resolve_backend"]
