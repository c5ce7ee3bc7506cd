"""Puts the browser-facing extras around the REST app, outermost first:
CORS -> gRPC-Web (the gRPC servicer's own method handlers) -> playground page -> REST.
"""

from __future__ import annotations

import grpc

from slimserve.serving.grpc_service import SERVICE_NAME, method_handlers
from slimserve.serving.web.cors import with_cors
from slimserve.serving.web.grpc_web import DEFAULT_MAX_MESSAGE_BYTES, ASGIApp, GrpcWebMiddleware
from slimserve.serving.web.options import WebOptions
from slimserve.serving.web.playground import PlaygroundMiddleware


def wrap_http_app(app: ASGIApp, dataplane, options: WebOptions,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, auth=None) -> ASGIApp:
    """`app` (the REST app over `dataplane`) with what `options` turn on; `app` itself when nothing is.
    `auth` (a `serving.auth.Auth`) checks gRPC-Web calls as it checks gRPC ones."""
    if options.playground:
        model = dataplane.model
        app = PlaygroundMiddleware(app, lambda: model.metadata() if model.loaded else None)
    if options.serves_grpc_web:
        handler = grpc.method_handlers_generic_handler(SERVICE_NAME, method_handlers(dataplane, auth))
        app = GrpcWebMiddleware(app, [handler], max_message_bytes)
    return with_cors(app, options.cors_origins)
