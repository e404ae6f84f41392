"""Loads plugins from entry points and implements plugins.api for them. No WebSocket code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from plugins.api import PLUGIN_API_VERSION, Plugin, TurnEvent
from protocol import (
    ChatMessage,
    ErrorCode,
    ErrorFrame,
    Priority,
    ProtocolError,
    Sampling,
    ServerFrame,
)
from protocol.messages import RESERVED_NAMESPACES
from protocol.validate import is_plugin_type

from .sessions import SessionStore
from .turns import TurnSpec

if TYPE_CHECKING:
    from .connection import Connection

ENTRY_POINT_GROUP = "banterbox.plugins"


class PluginLoadError(RuntimeError):
    """An enabled plugin that is missing, of another API version, or clashing."""


class PluginRegistry:
    """The enabled plugins, indexed by the frame types they handle."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        by_type: dict[str, Plugin] = {}
        for plugin in plugins:
            if plugin.api_version != PLUGIN_API_VERSION:
                raise PluginLoadError(
                    f"plugin {plugin.name!r} speaks plugin API {plugin.api_version}, "
                    f"this server {PLUGIN_API_VERSION}"
                )
            for frame_type in plugin.frame_types:
                namespace = frame_type.partition(".")[0]
                if not is_plugin_type(frame_type) or namespace in RESERVED_NAMESPACES:
                    raise PluginLoadError(f"plugin {plugin.name!r}: bad frame type {frame_type!r}")
                if frame_type in by_type:
                    raise PluginLoadError(
                        f"frame type {frame_type!r} claimed by {by_type[frame_type].name!r} "
                        f"and {plugin.name!r}"
                    )
                by_type[frame_type] = plugin
        self.plugins = tuple(plugins)
        self.by_type: Mapping[str, Plugin] = by_type
        self.frame_types = frozenset(by_type)

    @property
    def capabilities(self) -> tuple[str, ...]:
        return (*sorted(p.name for p in self.plugins), *sorted(self.frame_types))


def load_plugins(
    names: Sequence[str], settings: Mapping[str, Mapping[str, object]]
) -> PluginRegistry:
    """Instantiate each enabled plugin's entry point with its settings table."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    plugins: list[Plugin] = []
    for name in names:
        if name not in found:
            known = ", ".join(sorted(found)) or "none (is the project installed?)"
            raise PluginLoadError(f"plugin {name!r} not found; installed: {known}")
        plugin = found[name].load()(settings.get(name, {}))
        if not isinstance(plugin, Plugin):
            raise PluginLoadError(f"plugin {name!r} does not implement plugins.api.Plugin")
        plugins.append(plugin)
    return PluginRegistry(plugins)


class TenantSessions:
    """plugins.api.SessionAccess over one tenant's sessions."""

    def __init__(self, store: SessionStore, tenant: str) -> None:
        self._store = store
        self._tenant = tenant

    def transcript(self, session_id: str) -> tuple[ChatMessage, ...]:
        return tuple(self._store.get(self._tenant, session_id).messages)

    def metadata(self, session_id: str) -> Mapping[str, str]:
        return self._store.get(self._tenant, session_id).metadata

    def append(self, session_id: str, message: ChatMessage) -> None:
        self._store.get(self._tenant, session_id).messages.append(message)


class ConnectionContext:
    """plugins.api.PluginContext for one connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def tenant(self) -> str:
        return self._connection.tenant

    @property
    def connection_id(self) -> str:
        return self._connection.connection_id

    @property
    def sessions(self) -> TenantSessions:
        return TenantSessions(self._connection.app.sessions, self._connection.tenant)

    async def generate(
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
        inflight = self._connection.inflight.get(request_id)
        if inflight is None:
            raise ValueError(f"generate: {request_id!r} is not a request in flight here")
        spec = TurnSpec(
            request_id=request_id,
            messages=tuple(messages) if messages is not None else None,
            prompt=prompt,
            session_id=session_id,
            sampling=sampling,
            max_tokens=max_tokens,
            stop=tuple(stop),
            priority=priority,
            return_token_ids=return_token_ids,
            received_at=inflight.received_at,
        )
        turn = self._connection.start_turn(spec)
        inflight.turns.append(turn)
        try:
            async with aclosing(turn.events()) as events:
                async for event in events:
                    yield event
        finally:
            inflight.turns.remove(turn)

    async def send(self, frame: ServerFrame) -> None:
        await self._connection.send_for(frame)

    async def fail(self, request_id: str | None, code: ErrorCode, message: str) -> None:
        error = ProtocolError(code, message, request_id=request_id)
        await self._connection.send_for(ErrorFrame.from_error(error))
