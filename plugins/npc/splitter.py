"""A reply's text stream split into speech and typed events. Pure: no wire, no context.

Knows the markup and cards, never the wire or the plugin context.

The splitter is fed the model's text in whatever chunks it comes (a span may be cut
anywhere); it hands speech on as soon as it cannot be the start of a span, and an event the
moment its span closes. Spans the card does not allow (possible only when the engine ran
without the grammar) are dropped and counted, never spoken.
"""

from __future__ import annotations

from .cards import Card
from .markup import Piece, Speech, parse_span


class MarkupSplitter:
    """One reply's stream: feed() chunks, then finish(); each returns the pieces now known."""

    def __init__(self, card: Card, *, max_span_chars: int = 256) -> None:
        self._card = card
        self._max_span_chars = max_span_chars  # an unclosed `[` longer than this is dropped
        self._span: str | None = None  # the open span's text so far, from its `[`
        self._last_char = ""  # the last speech character handed on ("" before any)
        # "a [span] b" would be heard with two spaces: skip the one after the span.
        self._skip_space = False
        self.num_speech_chars = 0  # speech so far: the offset of the next event
        self.num_dropped = 0  # spans that were not valid events of the card

    def feed(self, chunk: str) -> list[Piece]:
        pieces: list[Piece] = []
        speech: list[str] = []
        for char in chunk:
            if self._span is not None:
                self._span += char
                if char == "]":
                    self._flush(speech, pieces)
                    self._close_span(pieces)
                elif char == "[":  # the open one was debris; this one may be a span
                    self._drop_span()
                    self._span = "["
                elif len(self._span) > self._max_span_chars:
                    self._drop_span()
            elif char == "[":
                self._span = "["
            elif char == "]":
                self.num_dropped += 1  # a stray closer: markup debris, not speech
            elif not (self._skip_space and char == " "):
                self._skip_space = False
                speech.append(char)
                self._last_char = char
                self.num_speech_chars += 1
        self._flush(speech, pieces)
        return pieces

    def finish(self) -> None:
        """The end of the reply: a span still open never closed and is dropped."""
        if self._span is not None:
            self._drop_span()

    def _close_span(self, pieces: list[Piece]) -> None:
        assert self._span is not None
        event = parse_span(self._card, self._span, offset=self.num_speech_chars)
        if event is None:
            self._drop_span()
            return
        self._span = None
        self._skip_space = self._last_char in ("", " ")
        pieces.append(event)

    def _drop_span(self) -> None:
        self._span = None
        self._skip_space = self._last_char in ("", " ")
        self.num_dropped += 1

    @staticmethod
    def _flush(speech: list[str], pieces: list[Piece]) -> None:
        if speech:
            pieces.append(Speech(text="".join(speech)))
            speech.clear()
