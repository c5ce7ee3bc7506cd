"""A stream's per-token events encoded from a template are byte for byte the events of their whole documents."""

from __future__ import annotations

import pytest

from slimserve.serving.generation import sse

TEXTS = ["w1", "", " two words", 'quote " and \\ backslash', "line\nbreak\ttab", "é ü 中文 🙂", "\x00\x1f\x7f", "</script>"]


def completion_chunk(text: str) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}


@pytest.mark.parametrize("text", TEXTS)
def test_a_text_event_is_the_event_of_its_document(text):
    assert sse.text_events(completion_chunk)(text) == sse.event(completion_chunk(text))


def test_a_document_must_hold_the_text_once():
    with pytest.raises(ValueError):
        sse.text_events(lambda text: {"a": text, "b": text})
    with pytest.raises(ValueError):
        sse.text_events(lambda text: {"a": "constant"})
