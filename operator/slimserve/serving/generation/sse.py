"""Server-sent events framing: each event one `data: <json>` line and a blank line."""

from __future__ import annotations

from collections.abc import Callable

from slimserve.serving.rest_codec import dumps

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"  # the OpenAI stream's last event

_SLOT = "\x00text\x00"  # a string no document of a stream holds otherwise


def event(document: object) -> bytes:
    return b"data: " + dumps(document) + b"\n\n"


def text_events(document: Callable[[str], object]) -> Callable[[str], bytes]:
    """The event of `document(text)` for any text, encoded as `event` would but only the text each time: the
    document around it is encoded once (a stream sends one event per token, all alike but for the text)."""
    slot, whole = dumps(_SLOT), event(document(_SLOT))
    if whole.count(slot) != 1:
        raise ValueError("the document must hold the text exactly once")
    before, _, after = whole.partition(slot)
    return lambda text: before + dumps(text) + after
