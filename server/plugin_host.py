"""Loads plugins from entry points and implements plugins.api v2 for them. No WebSocket code.

`PluginRegistry` checks what plugins declare; `ServerPluginHost` is one plugin's server-wide
services (store, background tasks, topics, background turns); `ConnectionContext` is what a
plugin gets for a frame on one connection. Connections reach it through the `PluginPeer`
protocol, so this module never imports the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import aclosing
from importlib.metadata import entry_points
from typing import Any, Protocol

from plugins.api import (
    PLUGIN_API_VERSION,
    GenerateSpec,
    ModelError,
    Plugin,
    PluginHost,
    Store,
    TurnEvent,
)
from protocol import ChatMessage, ErrorCode, PluginFrame, ProtocolError, ServerFrame
from protocol.messages import RESERVED_NAMESPACES
from protocol.validate import is_plugin_type

from .config import SCOPES
from .models import ExtraModels
from .plugin_store import PluginStore
from .sessions import SessionStore
from .store import Store as StateStore
from .topics import Subscriber, TopicHub
from .turns import Turn, TurnRunner

ENTRY_POINT_GROUP = "banterbox.plugins"
log = logging.getLogger("banterbox.plugins")


class PluginLoadError(RuntimeError):
    """An enabled plugin that is missing, of another API version, or clashing."""


def _check(plugin: Plugin) -> None:
    if plugin.api_version != PLUGIN_API_VERSION:
        raise PluginLoadError(
            f"plugin {plugin.name!r} speaks plugin API {plugin.api_version}, this server "
            f"{PLUGIN_API_VERSION}: port it (plugins/README.md: GenerateSpec replaces "
            "generate()'s keywords, `scopes` maps each frame type to its scope)"
        )
    for frame_type in plugin.frame_types:
        namespace = frame_type.partition(".")[0]
        if not is_plugin_type(frame_type) or namespace in RESERVED_NAMESPACES:
            raise PluginLoadError(f"plugin {plugin.name!r}: bad frame type {frame_type!r}")
        scope = plugin.scopes.get(frame_type)
        if scope not in SCOPES:
            raise PluginLoadError(
                f"plugin {plugin.name!r}: frame type {frame_type!r} needs a scope, one of "
                f"{', '.join(sorted(SCOPES))} (got {scope!r})"
            )


class PluginRegistry:
    """The enabled plugins, indexed by the frame types they handle."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        by_type: dict[str, Plugin] = {}
        for plugin in plugins:
            _check(plugin)
            for frame_type in plugin.frame_types:
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

    def scope_of(self, frame_type: str) -> str:
        return self.by_type[frame_type].scopes[frame_type]


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


class ServerPluginHost:
    """plugins.api.PluginHost for one plugin: its store, tasks, topics and background turns."""

    def __init__(
        self,
        plugin: str,
        *,
        backend: StateStore,
        topics: TopicHub,
        turns: Callable[[], TurnRunner | None],  # the runner, once the model is loaded
        models: ExtraModels | None = None,  # models served beside the server's, for score
    ) -> None:
        self.plugin = plugin
        self._models = models
        self._backend = backend
        self._topics = topics
        self._turns = turns
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()

    def store(self, tenant: str) -> Store:
        return PluginStore(self._backend, plugin=self.plugin, tenant=tenant)

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(self._guard(work, name), name=f"{self.plugin}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("plugin %s: background task %s failed", self.plugin, name)

    async def stop(self) -> None:
        """Cancel every background task of the plugin and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def emit(self, tenant: str, topic: str, frame: ServerFrame) -> int:
        return await self._topics.emit(tenant, topic, frame)

    def generate(self, tenant: str, spec: GenerateSpec) -> AsyncIterator[TurnEvent]:
        engine_request_id = f"bg/{self.plugin}/{next(self._ids)}"
        return _events(self._runner().start(
            spec, tenant=tenant, engine_request_id=engine_request_id,
            received_at=time.monotonic(),
        ))  # fmt: skip

    def max_prompt_tokens(self) -> int:
        return self._runner().max_prompt_tokens

    async def score(
        self,
        tenant: str,
        *,
        candidates: Sequence[str],
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        system: str | None = None,
        model: str | None = None,
    ) -> list[float]:
        runner = self._runner() if model is None else self._extra().runner(model)
        return await runner.score(
            tenant=tenant, candidates=candidates, prompt=prompt, messages=messages, system=system
        )

    async def load_model(self, path: str) -> str:
        return await self._extra().load(path)

    def _extra(self) -> ExtraModels:
        if self._models is None:
            raise ModelError("this server serves no model beside its own")
        return self._models

    def _runner(self) -> TurnRunner:
        runner = self._turns()
        if runner is None:
            raise ProtocolError(ErrorCode.NOT_READY, "the model is not loaded")
        return runner


async def _events(turn: Turn) -> AsyncIterator[TurnEvent]:
    async with aclosing(turn.events()) as events:
        async for event in events:
            yield event


class PluginPeer(Subscriber, Protocol):
    """What a connection offers the context of a plugin frame."""

    @property
    def tenant(self) -> str: ...

    @property
    def connection_id(self) -> str: ...

    def start_turn(self, spec: GenerateSpec) -> Turn: ...

    def track_turn(self, request_id: str, turn: Turn | None, *, add: bool) -> None: ...

    async def send_for(self, frame: ServerFrame) -> None: ...


class TenantSessions:
    """plugins.api.SessionAccess over one tenant's sessions, through the session store (so a
    fleet replica finds what another one wrote) and durable when each call returns."""

    def __init__(self, store: SessionStore, tenant: str) -> None:
        self._store = store
        self._tenant = tenant

    async def transcript(self, session_id: str) -> tuple[ChatMessage, ...]:
        return tuple((await self._store.find_session(self._tenant, session_id)).messages)

    async def metadata(self, session_id: str) -> Mapping[str, str]:
        return (await self._store.find_session(self._tenant, session_id)).metadata

    async def open(self, session_id: str, metadata: Mapping[str, str] | None = None) -> bool:
        return (await self._store.open_session(self._tenant, session_id, metadata))[1]

    async def close(self, session_id: str) -> None:
        await self._store.close_session(self._tenant, session_id)

    async def append(self, session_id: str, *messages: ChatMessage) -> None:
        await self._store.append_messages(self._tenant, session_id, messages)

    async def truncate(self, session_id: str, num_messages: int) -> None:
        await self._store.truncate_messages(self._tenant, session_id, num_messages)


# A loaded plugin and its host, by a frame type it handles (None: no plugin handles it).
Route = Callable[[str], "tuple[Plugin, ServerPluginHost] | None"]


class _CallPeer:
    """The caller's connection as a called plugin sees it: turns and cancels are the
    caller's request's, what it sends comes back to the caller instead of the client."""

    def __init__(self, peer: PluginPeer) -> None:
        self._peer = peer
        self.frames: list[ServerFrame] = []

    @property
    def tenant(self) -> str:
        return self._peer.tenant

    @property
    def connection_id(self) -> str:
        return self._peer.connection_id

    def start_turn(self, spec: GenerateSpec) -> Turn:
        return self._peer.start_turn(spec)

    def track_turn(self, request_id: str, turn: Turn | None, *, add: bool) -> None:
        self._peer.track_turn(request_id, turn, add=add)

    async def send_for(self, frame: ServerFrame) -> None:
        self.frames.append(frame)

    async def push(self, frame: ServerFrame) -> bool:
        return await self._peer.push(frame)


class ConnectionContext:
    """plugins.api.PluginContext for one connection and one plugin."""

    def __init__(
        self,
        peer: PluginPeer,
        *,
        host: ServerPluginHost,
        sessions: SessionStore,
        topics: TopicHub,
        route: Route | None = None,
        calls: frozenset[str] = frozenset(),  # the plugin's declared `calls`
    ) -> None:
        self._peer = peer
        self._host = host
        self._sessions = sessions
        self._topics = topics
        self._route = route
        self._calls = calls

    @property
    def tenant(self) -> str:
        return self._peer.tenant

    @property
    def connection_id(self) -> str:
        return self._peer.connection_id

    @property
    def sessions(self) -> TenantSessions:
        return TenantSessions(self._sessions, self._peer.tenant)

    @property
    def store(self) -> Store:
        return self._host.store(self._peer.tenant)

    @property
    def host(self) -> PluginHost:
        return self._host

    async def generate(self, spec: GenerateSpec) -> AsyncIterator[TurnEvent]:
        turn = self._peer.start_turn(spec)
        self._peer.track_turn(spec.request_id, turn, add=True)
        try:
            async with aclosing(turn.events()) as events:
                async for event in events:
                    yield event
        finally:
            self._peer.track_turn(spec.request_id, turn, add=False)

    async def score(
        self,
        *,
        candidates: Sequence[str],
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        system: str | None = None,
        model: str | None = None,
    ) -> list[float]:
        return await self._host.score(
            self._peer.tenant, candidates=candidates, prompt=prompt, messages=messages,
            system=system, model=model,
        )  # fmt: skip

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        self._host.spawn(work, name=name)

    def subscribe(self, topic: str) -> None:
        self._topics.subscribe(self._peer.tenant, topic, self._peer)

    def unsubscribe(self, topic: str) -> None:
        self._topics.unsubscribe(self._peer.tenant, topic, self._peer)

    async def emit(self, topic: str, frame: ServerFrame) -> int:
        return await self._topics.emit(self._peer.tenant, topic, frame)

    async def send(self, frame: ServerFrame) -> None:
        await self._peer.send_for(frame)

    def can_call(self, frame_type: str) -> bool:
        return self._target(frame_type) is not None

    async def call(self, frame: PluginFrame) -> tuple[ServerFrame, ...]:
        target = self._target(frame.type)
        if target is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE,
                f"plugin {self._host.plugin!r} cannot call {frame.type!r}: not in its `calls`, "
                "or no loaded plugin handles it",
            )
        plugin, host = target
        peer = _CallPeer(self._peer)
        called = ConnectionContext(
            peer, host=host, sessions=self._sessions, topics=self._topics, route=self._route,
            calls=getattr(plugin, "calls", frozenset()),
        )  # fmt: skip
        await plugin.handle(frame, called)
        return tuple(peer.frames)

    def _target(self, frame_type: str) -> tuple[Plugin, ServerPluginHost] | None:
        if frame_type not in self._calls or self._route is None:
            return None
        return self._route(frame_type)
