"""The built-in `chat` plugin: "chat.say" runs one chat turn over a session. Imports plugins.api
and protocol only.

Client frame `chat.say`: `id`, `text` (the user's line, required), `session_id` (optional: an
open session whose transcript the turn continues), `max_tokens` (optional int). Answer: the
turn's `delta` frames and its `done`, exactly like `generate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from plugins.api import PLUGIN_API_VERSION, SCOPE_GENERATE, PluginContext
from protocol import ChatMessage, ErrorCode, PluginFrame, ProtocolError, Role

T = TypeVar("T", str, int)


class ChatPlugin:
    name = "chat"
    api_version = PLUGIN_API_VERSION
    frame_types = frozenset({"chat.say"})
    scope = SCOPE_GENERATE

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        settings = settings or {}
        max_tokens = settings.get("max_tokens", 128)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"chat.max_tokens must be an int >= 1, got {max_tokens!r}")
        self.default_max_tokens = max_tokens  # when chat.say leaves max_tokens out

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        request_id = frame.request_id
        if request_id is None:  # the codec requires ids on client plugin frames
            raise ProtocolError(ErrorCode.INVALID_FIELD, "id: required")
        text = _field(frame, "text", str, required=True) or ""
        session_id = _field(frame, "session_id", str, required=False)
        max_tokens = _field(frame, "max_tokens", int, required=False)
        events = ctx.generate(
            request_id=request_id,
            messages=[ChatMessage(role=Role.USER, content=text)],
            session_id=session_id,
            max_tokens=max_tokens or self.default_max_tokens,
        )
        async for event in events:
            await ctx.send(event)


def _field(frame: PluginFrame, name: str, kind: type[T], *, required: bool) -> T | None:
    value = frame.payload.get(name)
    if value is None:
        if required:
            raise _invalid(frame, f"{name}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _invalid(frame, f"{name}: must be a {kind.__name__}")
    if isinstance(value, str) and not value:
        raise _invalid(frame, f"{name}: must not be empty")
    if isinstance(value, int) and value < 1:
        raise _invalid(frame, f"{name}: must be >= 1")
    return value


def _invalid(frame: PluginFrame, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, message, request_id=frame.request_id)
