"""npc payload readers and answer frames. Pure: protocol types only, no plugin context."""

from __future__ import annotations

from collections.abc import Mapping

from protocol import ErrorCode, PluginFrame, ProtocolError
from protocol.payload import NestedReader, PayloadReader, identifier, string

from .markup import Action, Emotion, Event
from .memory import Memory

MAX_ID_CHARS = 64  # npc, player and scene ids
MAX_SESSION_ID_CHARS = 200
MAX_LINE_CHARS = 2000  # a player line, a narration


def read_id(read: PayloadReader | NestedReader, name: str) -> str:
    return read.required(name, identifier(max_chars=MAX_ID_CHARS))


def read_line(read: PayloadReader, name: str = "text") -> str:
    return read.required(name, string(max_chars=MAX_LINE_CHARS, non_empty=True))


def read_session_id(read: PayloadReader) -> str | None:
    return read.optional("session_id", identifier(max_chars=MAX_SESSION_ID_CHARS))


def invalid(request_id: str, field: str, message: str) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_FIELD, f"{field}: {message}", request_id=request_id, field=field
    )


def event_frame(
    event: Event, request_id: str | None, extra: Mapping[str, object] | None = None
) -> PluginFrame:
    """npc.emotion {emotion, intensity, offset} or npc.action {name, args, offset}."""
    payload: dict[str, object] = dict(extra or {})
    if isinstance(event, Emotion):
        payload |= {"emotion": event.name, "intensity": event.intensity, "offset": event.offset}
        return PluginFrame(type="npc.emotion", request_id=request_id, payload=payload)
    assert isinstance(event, Action)
    payload |= {"name": event.name, "args": dict(event.args), "offset": event.offset}
    return PluginFrame(type="npc.action", request_id=request_id, payload=payload)


def memory_payload(memory: Memory | None) -> dict[str, object] | None:
    if memory is None:
        return None
    return {
        "facts": list(memory.facts),
        "trust": memory.trust,
        "affinity": memory.affinity,
        "num_sessions": memory.num_sessions,
        "notes": memory.notes,
    }


def frame(frame_type: str, request_id: str | None, **payload: object) -> PluginFrame:
    return PluginFrame(type=frame_type, request_id=request_id, payload=payload)
