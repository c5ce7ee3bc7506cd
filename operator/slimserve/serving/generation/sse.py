"""Server-sent events framing: each event one `data: <json>` line and a blank line."""

from __future__ import annotations

from slimserve.serving.rest_codec import dumps

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"  # the OpenAI stream's last event


def event(document: object) -> bytes:
    return b"data: " + dumps(document) + b"\n\n"
