"""A sequence's text as its tokens arrive. The tokenizer's incremental decoder releases only complete
characters; here, text that could be the start of a stop sequence is held back until it is known not to be
one, and a stop sequence ends the text without being part of it."""

from __future__ import annotations

from collections.abc import Callable

Step = Callable[[int], str]  # the next token's text ("" while a character is incomplete)


class TextStream:
    def __init__(self, step: Step, stop: tuple[str, ...] = ()) -> None:
        self._step = step
        self._stop = stop
        self._text = ""  # all text decoded so far
        self._released = 0  # characters of _text handed out
        self.stopped = False

    def add(self, token: int) -> str:
        """Append one token; returns the text now safe to release ("" when nothing is)."""
        piece = self._step(token)
        if not piece:
            return ""
        self._text += piece
        for stop in self._stop:
            at = self._text.find(stop, max(0, self._released - len(stop) + 1))
            if at != -1:
                self.stopped = True
                return self._release(at)
        return self._release(len(self._text) - self._held_back())

    def finish(self) -> str:
        """The text still held back once the sequence ended for another reason than a stop sequence."""
        return "" if self.stopped else self._release(len(self._text))

    def _held_back(self) -> int:
        """Length of the longest unreleased end of the text that is a proper prefix of a stop sequence."""
        text, longest = self._text, 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text) - self._released), longest, -1):
                if stop.startswith(text[len(text) - size:]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        if end <= self._released:
            return ""
        piece = self._text[self._released:end]
        self._released = end
        return piece
