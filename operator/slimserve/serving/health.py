"""`grpc.health.v1.Health` on the gRPC port, following the server's readiness and drain.

The servicer is grpcio-health-checking's; this module only drives it: NOT_SERVING while the model loads
and warms up, SERVING once it is ready, NOT_SERVING for good as soon as SIGTERM starts the drain (while
the port still answers, so a probe or a client-side health check sees it before the connection goes).
The overall service "" and the inference service's own name carry the same status.

A `Watch` stream ends once it has sent the drain's NOT_SERVING: left open, it would be an in-flight call
that holds the server's stop for the whole drain timeout. And one client ending its Watch no longer leaves
the other clients' streams of that service deaf (see `_KeptConditions`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _StreamDone(Exception):
    """Raised by `_WatchUntilDrain.write` after the drain's status went out."""


class _WatchUntilDrain:
    """A Watch call's context that ends the stream after it has written a non-serving status in the drain."""

    def __init__(self, context, health: "ServerHealth") -> None:
        self._context = context
        self._health = health

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(response)
        if self._health.draining and response.status != SERVING:
            raise _StreamDone()

    def __getattr__(self, name: str):
        return getattr(self._context, name)


class _KeptConditions(collections.defaultdict):
    """The servicer's condition per watched service, kept for our services when one Watch ends: the
    servicer deletes it then, and every other Watch of that service would wait on it for nothing."""

    def __init__(self, kept: Iterable[str]) -> None:
        super().__init__(asyncio.Condition)
        self._kept = frozenset(kept)

    def __delitem__(self, service: str) -> None:
        if service not in self._kept:
            super().__delitem__(service)


class _DrainAwareServicer(HealthServicer):
    def __init__(self, health: "ServerHealth") -> None:
        super().__init__()
        self._health = health
        self._server_watchers = _KeptConditions(health.services)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context) -> None:
        try:
            await super().Watch(request, _WatchUntilDrain(context, self._health))
        except _StreamDone:
            return


class ServerHealth:
    """The health statuses of one server's services; `add_to(server)` serves them."""

    def __init__(self, services: Iterable[str]) -> None:
        self.services = ("", *services)
        self.draining = False
        self.servicer = _DrainAwareServicer(self)

    def add_to(self, server) -> None:
        """Serve the statuses on `server` (a `grpc_server.GrpcServer`, or anything grpcio's generated
        registration takes)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def starting(self) -> None:
        await self._set(NOT_SERVING)

    async def ready(self) -> None:
        await self._set(SERVING)

    async def drain(self) -> None:
        self.draining = True
        await self.servicer.enter_graceful_shutdown()

    async def _set(self, status: int) -> None:
        for service in self.services:
            await self.servicer.set(service, status)
