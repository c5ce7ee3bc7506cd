"""CORS for the HTTP port (REST and gRPC-Web): closed unless origins are configured.

Closed means no `Access-Control-Allow-Origin` on any answer and no preflight answered, so a page from
another origin cannot call the model; the playground is served from the same origin and needs no CORS.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware

from slimserve.serving.web.grpc_web import ASGIApp

# What a gRPC-Web client must be able to read from a cross-origin answer.
EXPOSED_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
PREFLIGHT_MAX_AGE_S = 600


def with_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """`app` answering CORS for `origins` (preflights included); `app` itself when none are allowed."""
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],  # echo what the preflight asks for: gRPC-Web adds x-grpc-web, x-user-agent, ...
        expose_headers=list(EXPOSED_HEADERS),
        max_age=PREFLIGHT_MAX_AGE_S,
    )
