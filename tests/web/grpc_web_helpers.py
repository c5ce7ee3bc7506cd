"""A raw gRPC-Web call over http.client, for tests that send exact bytes and read exact answers.

Frames are built and parsed here by hand (not with the server's own framing module), so a shared mistake
cannot hide; the reference client runtime is exercised separately through Node.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from urllib.parse import unquote

from tests.serving.serving_helpers import request

SERVICE_PATH = "/inference.GRPCInferenceService/"
BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


def frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


@dataclass
class GrpcWebAnswer:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def status(self) -> int:
        """grpc-status from the trailer frame, or from the headers of a trailers-only answer."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def message(self) -> str:
        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))


def parse_body(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    messages, trailers, position = [], {}, 0
    while position < len(body):
        flags, length = struct.unpack_from(">BI", body, position)
        payload = body[position + 5 : position + 5 + length]
        assert len(payload) == length, "truncated frame in the answer"
        if flags & 0x80:
            for line in payload.decode("ascii").split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
        position += 5 + length
    return messages, trailers


def call(
    address: str,
    method: str,
    body: bytes,
    content_type: str = BINARY,
    headers: dict[str, str] | None = None,
    http_method: str = "POST",
) -> GrpcWebAnswer:
    """Send `body` as is (already framed, and base64 for the text format) to METHOD; parse the answer."""
    sent = {"content-type": content_type, "x-grpc-web": "1", **(headers or {})}
    status, answer_headers, payload = request(address, http_method, SERVICE_PATH + method, body, sent)
    if answer_headers.get("content-type", "").startswith(TEXT):
        payload = base64.b64decode(payload)
    messages, trailers = parse_body(payload) if status == 200 else ([], {})
    return GrpcWebAnswer(status, answer_headers, messages, trailers)


def unary(address: str, method: str, message, response_type, text: bool = False):
    """A well-formed call of a protobuf message; returns (answer, decoded response or None)."""
    body = frame(message.SerializeToString())
    answer = call(address, method, base64.b64encode(body) if text else body, TEXT if text else BINARY)
    decoded = response_type.FromString(answer.messages[0]) if answer.messages else None
    return answer, decoded
