"""Domain errors of the server and, in one table, the HTTP and gRPC status each maps to.

The data plane raises these; the REST and gRPC endpoints only look up `http_status` / `grpc_status`.
Messages are meant for the client: they name the field or tensor at fault.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of the errors a client can cause or see; `str(err)` is the message sent back."""


class InvalidInput(ServingError):
    """The request is malformed or does not fit the model's signature."""


class ModelNotFound(ServingError):
    """No model (or version) of that name is served here."""


class ModelNotReady(ServingError):
    """The model exists but is still loading."""


class ServerNotReady(ServingError):
    """The server is starting or shutting down."""


class PayloadTooLarge(ServingError):
    """The request body is above the configured limit."""


class UnsupportedMediaType(ServingError):
    """The body is in an encoding the server does not read (e.g. a Content-Encoding)."""


class RouteNotFound(ServingError):
    """No endpoint at this path (REST only)."""


class MethodNotAllowed(ServingError):
    """The path exists but not for this HTTP method."""


class InferenceFailed(ServingError):
    """The model raised on input that passed validation: a server-side fault."""


class Overloaded(ServingError):
    """Too many requests are waiting already; `retry_after_s` is the hint sent back (Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(Overloaded):
    """The request waited as long as the server lets one wait, and got no capacity; retry later."""


class Unauthenticated(ServingError):
    """No credential, a malformed one, or one that is not valid. `reason` labels the failure metric."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(ServingError):
    """A valid credential without the right to call this service."""

    reason = "forbidden"


class AuthUnavailable(ServingError):
    """The credential could not be checked (the Kubernetes API did not answer): try again, not a 401."""

    reason = "unavailable"


# The one place protocol status codes are decided.
_STATUS: dict[type[ServingError], tuple[int, grpc.StatusCode]] = {
    InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
    ModelNotReady: (503, grpc.StatusCode.UNAVAILABLE),
    ServerNotReady: (503, grpc.StatusCode.UNAVAILABLE),
    PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    UnsupportedMediaType: (415, grpc.StatusCode.INVALID_ARGUMENT),
    RouteNotFound: (404, grpc.StatusCode.UNIMPLEMENTED),
    MethodNotAllowed: (405, grpc.StatusCode.UNIMPLEMENTED),
    InferenceFailed: (500, grpc.StatusCode.INTERNAL),
    Overloaded: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
    Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
    PermissionDenied: (403, grpc.StatusCode.PERMISSION_DENIED),
    AuthUnavailable: (503, grpc.StatusCode.UNAVAILABLE),
}
_UNEXPECTED = (500, grpc.StatusCode.INTERNAL)


def _status(error: BaseException) -> tuple[int, grpc.StatusCode]:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return _UNEXPECTED


def http_status(error: BaseException) -> int:
    """HTTP status for an error; 500 for anything that is not a ServingError."""
    return _status(error)[0]


def grpc_status(error: BaseException) -> grpc.StatusCode:
    """gRPC status for an error; INTERNAL for anything that is not a ServingError."""
    return _status(error)[1]


def client_message(error: BaseException) -> str:
    """What the client is told: the message of a ServingError, a generic line for anything else."""
    if isinstance(error, ServingError):
        return str(error)
    return f"internal server error ({type(error).__name__})"
