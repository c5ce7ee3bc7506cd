"""The gRPC-Web wire format: length-prefixed frames, the trailer frame, and the base64 text variant.

A body is a sequence of frames, each a flags byte (0x00 message, 0x01 compressed message, 0x80 trailers),
a 4-byte big-endian length and that many bytes. `application/grpc-web-text` is the same stream in base64,
where a client may send several independently padded base64 chunks back to back.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

from slimserve.serving.grpc_calls import MalformedCall

HEADER = struct.Struct(">BI")
FLAG_COMPRESSED = 0x01
FLAG_TRAILERS = 0x80

BINARY_CONTENT_TYPES = ("application/grpc-web", "application/grpc-web+proto")
TEXT_CONTENT_TYPES = ("application/grpc-web-text", "application/grpc-web-text+proto")
# A padded base64 chunk ends at its '=' padding; unpadded data may only come last.
_PADDED_CHUNK = re.compile(rb"[A-Za-z0-9+/]*={1,2}")


class FramingError(MalformedCall):
    """The body is not a well-formed gRPC-Web request; the message says what is wrong with it."""


@dataclass(frozen=True)
class WireFormat:
    """How a request's body is encoded, and so how its answer must be."""

    content_type: str  # what the response is sent as
    text: bool  # base64 (grpc-web-text)

    def encode(self, data: bytes) -> bytes:
        return base64.b64encode(data) if self.text else data

    def decode(self, body: bytes) -> bytes:
        return decode_text_body(body) if self.text else body


def wire_format(content_type: str) -> WireFormat | None:
    """The format of a gRPC-Web content type (parameters such as `; charset` ignored), None for anything else."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in BINARY_CONTENT_TYPES:
        return WireFormat("application/grpc-web+proto", text=False)
    if media_type in TEXT_CONTENT_TYPES:
        return WireFormat("application/grpc-web-text+proto", text=True)
    return None


def is_grpc_web(content_type: str) -> bool:
    """True for any `application/grpc-web*` media type, also ones this server does not speak (e.g. +json)."""
    return content_type.split(";", 1)[0].strip().lower().startswith("application/grpc-web")


def decode_text_body(body: bytes) -> bytes:
    """Decode a grpc-web-text body: base64, possibly several padded chunks concatenated."""
    compact = b"".join(body.split())  # line breaks are allowed between chunks
    out = bytearray()
    position = 0
    try:
        while position < len(compact):
            match = _PADDED_CHUNK.match(compact, position)
            end = match.end() if match else len(compact)
            out += base64.b64decode(compact[position:end], validate=True)
            position = end
    except binascii.Error as error:
        raise FramingError(f"grpc-web-text body is not valid base64: {error}") from None
    return bytes(out)


def single_message(body: bytes) -> bytes:
    """The one message of a unary request body; FramingError for anything else."""
    if len(body) < HEADER.size:
        raise FramingError(
            f"truncated frame: the body has {len(body)} bytes, fewer than the {HEADER.size}-byte frame header"
        )
    flags, length = HEADER.unpack_from(body)
    if flags & FLAG_TRAILERS:
        raise FramingError("a request must not carry a trailer frame")
    if flags & FLAG_COMPRESSED:
        raise FramingError("compressed messages are not supported (send grpc-encoding identity)")
    if flags:
        raise FramingError(f"unknown frame flags 0x{flags:02x}")
    available = len(body) - HEADER.size
    if length > available:
        raise FramingError(f"truncated frame: the length prefix says {length} bytes, the body holds {available}")
    if length < available:
        raise FramingError(
            f"the length prefix says {length} bytes but {available} follow: a unary call carries exactly one message"
        )
    return body[HEADER.size :]


def data_frame(message: bytes) -> bytes:
    return HEADER.pack(0, len(message)) + message


def trailer_frame(trailers: list[tuple[str, str]]) -> bytes:
    block = "".join(f"{name.lower()}: {value}\r\n" for name, value in trailers).encode("ascii")
    return HEADER.pack(FLAG_TRAILERS, len(block)) + block
