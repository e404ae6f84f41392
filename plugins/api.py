"""The plugin API, version 1: what a plugin is and what the server lends it. Imports protocol only.

Dependency inversion: plugins import this module and protocol/, never server/. The server
implements `PluginContext` and `SessionAccess`; a plugin implements `Plugin`.

A plugin is a class registered under the entry point group "banterbox.plugins" and enabled by
name in the server config (`[plugins] enabled = ["chat"]`). The server constructs it once, with
its settings table (`[plugins.settings.NAME]`, an empty mapping when absent), and calls
`handle` once per client frame of one of its `frame_types`, in a task of its own per frame.

Rules a plugin follows:
- Answer frames carry the request's id. A request ends with a `done` or an `error`;
  `ctx.generate` yields the `done` of a turn, so a plugin that forwards every event it gets
  ends its request properly.
- Refuse a frame by raising `protocol.ProtocolError` (its code and message reach the client
  as an error frame with the request's id) or by calling `ctx.fail`. Any other exception is
  reported to the client as `internal` and logged.
- A client `cancel` of the request cancels the plugin's engine turns (they end with
  `finish_reason: "cancelled"`); when the request has no turn running, its task is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from protocol import (
    ChatMessage,
    Delta,
    Done,
    ErrorCode,
    PluginFrame,
    Priority,
    Sampling,
    ServerFrame,
)

PLUGIN_API_VERSION = 1

# Scopes an API key may hold; a plugin names the one its frames need.
SCOPE_GENERATE = "generate"
SCOPE_MODERATE = "moderate"
SCOPE_ADMIN = "admin"

TurnEvent = Delta | Done


class SessionAccess(Protocol):
    """The calling tenant's sessions. Unknown or foreign ids raise ProtocolError
    (session_not_found)."""

    def transcript(self, session_id: str) -> tuple[ChatMessage, ...]: ...

    def metadata(self, session_id: str) -> Mapping[str, str]: ...

    def append(self, session_id: str, message: ChatMessage) -> None: ...


class PluginContext(Protocol):
    """What the server lends a plugin for one connection."""

    @property
    def tenant(self) -> str: ...

    @property
    def connection_id(self) -> str: ...

    @property
    def sessions(self) -> SessionAccess: ...

    def generate(
        self,
        *,
        request_id: str,
        messages: Sequence[ChatMessage] | None = None,
        prompt: str | None = None,
        session_id: str | None = None,
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        priority: Priority = Priority.INTERACTIVE,
        return_token_ids: bool = False,
    ) -> AsyncIterator[TurnEvent]:
        """One engine turn, exactly as a client `generate` frame would run it (same session
        semantics): `Delta`s numbered from 0 under `request_id`, then one `Done`.
        Refusals (overloaded, prompt_too_long, session_not_found...) raise ProtocolError."""
        ...

    async def send(self, frame: ServerFrame) -> None:
        """Send a frame to this connection's client (deltas, done, plugin events)."""
        ...

    async def fail(self, request_id: str | None, code: ErrorCode, message: str) -> None:
        """Send an error frame; with a request id it ends that request."""
        ...


@runtime_checkable
class Plugin(Protocol):
    """A domain feature behind namespaced frame types ("chat.say")."""

    name: str  # the entry point name, also listed in welcome.capabilities
    api_version: int  # PLUGIN_API_VERSION the plugin was written for
    frame_types: frozenset[str]  # client frame types it handles: "namespace.name"
    scope: str  # the API key scope its frames need, e.g. SCOPE_GENERATE

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None: ...
