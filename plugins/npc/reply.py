"""A streamed reply cut to what the player heard, in transcript form. Pure: no wire.

Its pieces, and the marked-up line the transcript keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .markup import Event, Piece, Speech, span_of


@dataclass(frozen=True, kw_only=True)
class HeardReply:
    """The part of a reply the player heard: what the transcript and memory keep."""

    speech: str  # the spoken words, exactly the first heard_chars of the streamed speech
    events: tuple[Event, ...]  # the events at or before the cut, in order
    markup: str  # speech and spans together, the form the next prompt shows the model


def heard(pieces: Sequence[Piece], *, heard_chars: int | None = None) -> HeardReply:
    """The reply cut after HEARD_CHARS characters of speech (None: all of it). An event at
    the cut was reached, so it stays; one after it never happened."""
    limit = (
        heard_chars
        if heard_chars is not None
        else sum(len(p.text) for p in pieces if isinstance(p, Speech))
    )
    speech: list[str] = []
    events: list[Event] = []
    markup: list[str] = []
    num_chars = 0
    for piece in pieces:
        if isinstance(piece, Speech):
            if num_chars >= limit:
                break
            text = piece.text[: limit - num_chars]
            num_chars += len(text)
            speech.append(text)
            markup.append(text)
        elif piece.offset <= limit:
            events.append(piece)
            markup.append(_spaced(markup, span_of(piece)))
    return HeardReply(speech="".join(speech), events=tuple(events), markup=_join(markup))


def _spaced(markup: Sequence[str], span: str) -> str:
    """A span set off by a space from the word before it, as the model writes it."""
    before = "".join(markup)
    return span if not before or before.endswith(" ") else " " + span


def _join(parts: Sequence[str]) -> str:
    """Parts joined with a space after each span followed by a word (the splitter took it)."""
    text = ""
    for part in parts:
        if text.endswith("]") and (part[:1].isalnum() or part[:1] == "["):
            text += " "
        text += part
    return text.strip()
