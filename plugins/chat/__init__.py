"""The built-in `chat` plugin: "chat.say" runs one chat turn over a session. Imports plugins.api
and protocol only.

Client frame `chat.say`: `id`, `text` (the user's line, required), `session_id` (optional: an
open session whose transcript the turn continues), `max_tokens` (optional int). Answer: the
turn's `delta` frames and its `done`, exactly like `generate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from plugins.api import SCOPE_GENERATE, BasePlugin, GenerateSpec, PluginContext
from protocol import ChatMessage, PluginFrame, Role
from protocol.payload import PayloadReader, identifier, integer, string

_MAX_TEXT_CHARS = 262_144  # the core's max_string_chars default


class ChatPlugin(BasePlugin):
    name = "chat"
    frame_types = frozenset({"chat.say"})
    scopes = MappingProxyType({"chat.say": SCOPE_GENERATE})

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        settings = settings or {}
        max_tokens = settings.get("max_tokens", 128)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"chat.max_tokens must be an int >= 1, got {max_tokens!r}")
        self.default_max_tokens = max_tokens  # when chat.say leaves max_tokens out

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        read = PayloadReader(frame)
        text = read.required("text", string(max_chars=_MAX_TEXT_CHARS, non_empty=True))
        session_id = read.optional("session_id", identifier(max_chars=128))
        max_tokens = read.optional("max_tokens", integer(lo=1, hi=8192))
        spec = GenerateSpec(
            request_id=read.request_id,
            messages=(ChatMessage(role=Role.USER, content=text),),
            session_id=session_id,
            max_tokens=max_tokens or self.default_max_tokens,
        )
        async for event in ctx.generate(spec):
            await ctx.send(event)
