"""The probe port: health and /metrics in plain HTTP, and nothing else.

With TLS requiring client certificates the kubelet's probes (which present none) and a Prometheus without one
cannot reach the HTTP port; this port answers them without exposing inference or model metadata.
"""

from __future__ import annotations

from collections.abc import Callable

from slimserve.serving.rest import ASGIApp

PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_NOT_HERE = b'{"error":"the probe port answers only /v2/health/live, /v2/health/ready and /metrics"}'


def probes_only(app: ASGIApp) -> ASGIApp:
    """`app` restricted to PROBE_PATHS; anything else is 404."""

    async def probes(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_NOT_HERE)).encode())]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": _NOT_HERE})

    return probes
