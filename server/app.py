"""The Banterbox server: one port for WebSockets and HTTP probes, the engine, sessions, plugins.

Lifecycle: `start(load_model)` listens at once (so /healthz answers while the model loads),
loads the model in a thread and starts the engine thread; `/readyz` turns 200 then. `shutdown()`
stops accepting, lets in-flight turns finish for `shutdown_grace_s`, cancels the rest, closes
every connection with 1001 and stops the engine. Never reads argv or the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from plugins.api import Plugin

from . import playground
from .async_engine import AsyncEngine
from .auth import Authenticator, AuthFailureLimiter, bearer_token
from .config import ServerConfig
from .connection import CLOSE_GOING_AWAY, Connection, source_address
from .engine.core import EngineStats
from .engine.llm import LLM
from .metrics import CONTENT_TYPE, ServerMetrics
from .models import ExtraModels
from .plugin_host import ConnectionContext, PluginRegistry, ServerPluginHost, load_plugins
from .sessions import Session, SessionStore
from .store import Store, StoreUnavailable, open_store
from .topics import TopicHub
from .turns import TurnRunner

log = logging.getLogger("banterbox.server")
_DRAIN_POLL_S = 0.02  # how often shutdown looks whether in-flight turns have ended
_CANCEL_WAIT_S = 2.0  # after cancelling, how long the "cancelled" done frames may take


class BanterboxServer:
    def __init__(
        self,
        config: ServerConfig,
        *,
        plugins: PluginRegistry | None = None,
        authenticator: Authenticator | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins or load_plugins(config.plugins.enabled, config.plugins.settings)
        self.authenticator = authenticator or Authenticator(config.auth.keys)
        self.store = store or open_store(
            config.store.resolved_url, sqlite_synchronous=config.store.sqlite_synchronous
        )
        self.sessions = SessionStore(
            store=self.store,
            idle_ttl_s=config.sessions.idle_ttl_s,
            max_per_tenant=config.sessions.max_per_tenant,
            max_per_connection=config.sessions.max_per_connection,
            max_per_address=config.sessions.max_per_address,
            on_end=self._release_session_kv,
        )
        self.auth_failures = AuthFailureLimiter(
            max_failures=config.server.max_auth_failures_per_address,
            window_s=config.server.auth_failure_window_s,
        )
        # Sockets not past hello, by source address; and those past it. Counted apart, so a
        # flood of idle sockets cannot take the places of authenticated clients.
        self._unauthenticated: Counter[str] = Counter()
        self._authenticated: set[Connection] = set()
        self.metrics = ServerMetrics(self._engine_stats)
        self.metrics.sessions.set_function(lambda: len(self.sessions))
        self.llm: LLM | None = None
        self.engine: AsyncEngine | None = None
        self.turns: TurnRunner | None = None
        self.connections: set[Connection] = set()
        self.topics = TopicHub(relay=self.store)  # across replicas on a shared store
        # Models a plugin asks for (a judge), each in an engine of its own with these settings.
        self.models = ExtraModels(
            load=lambda path: LLM.load(path, config.engine.to_engine_config()),
            runner=lambda llm, engine: TurnRunner(
                llm=llm, engine=engine, sessions=self.sessions, metrics=self.metrics,
                settings=config.server,
            ),
        )  # fmt: skip
        # Plugins keep their state in the server's store: durable and shared where it is.
        self._plugin_hosts = {
            plugin.name: ServerPluginHost(
                plugin.name,
                backend=self.store,
                topics=self.topics,
                turns=lambda: self.turns,
                models=self.models,
            )
            for plugin in self.plugins.plugins
        }
        self.shutting_down = False
        self._ws_server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._store_watch: asyncio.Task[None] | None = None
        self._request_ended = asyncio.Event()

    # --- state --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.healthy and not self.shutting_down

    @property
    def model_name(self) -> str:
        return self.llm.info.name if self.llm is not None else ""

    @property
    def port(self) -> int:
        assert self._ws_server is not None, "not started"
        port: int = self._ws_server.sockets[0].getsockname()[1]
        return port

    def wire_limits(self) -> dict[str, int]:
        limits = self.config.limits.to_wire()
        limits["max_inflight_per_connection"] = self.config.server.max_inflight_per_connection
        if self.turns is not None:
            limits["max_prompt_tokens"] = self.turns.max_prompt_tokens
        return limits

    def admit_authenticated(self, connection: Connection) -> bool:
        """Move a connection past hello, if an authenticated place is free."""
        if len(self._authenticated) >= self.config.server.max_connections:
            return False
        self._forget_unauthenticated(connection.address)
        self._authenticated.add(connection)
        return True

    def _forget_unauthenticated(self, address: str) -> None:
        self._unauthenticated[address] -= 1
        if self._unauthenticated[address] <= 0:
            del self._unauthenticated[address]

    def notify_request_end(self) -> None:
        self._request_ended.set()

    def _release_session_kv(self, session: Session) -> None:
        """A session closed or expired: its KV is unpinned (one lifetime for both), and the
        plugins hear of it (an NPC writes its memory of the player)."""
        if self.engine is not None:
            self.engine.release_session(session.engine_session_id)
        for plugin in self.plugins.plugins:
            hook = plugin.on_session_closed(session.tenant, session.session_id)
            self._plugin_hosts[plugin.name].spawn(hook, name="on_session_closed")

    def plugin_context(self, connection: Connection, plugin: Plugin) -> ConnectionContext:
        return ConnectionContext(
            connection,
            host=self._plugin_hosts[plugin.name],
            sessions=self.sessions,
            topics=self.topics,
            route=self._plugin_for,
            calls=getattr(plugin, "calls", frozenset()),
        )

    def _plugin_for(self, frame_type: str) -> tuple[Plugin, ServerPluginHost] | None:
        """The plugin that handles frame_type and its host: the target of a plugin's call."""
        plugin = self.plugins.by_type.get(frame_type)
        return None if plugin is None else (plugin, self._plugin_hosts[plugin.name])

    def _engine_stats(self) -> EngineStats | None:
        return self.engine.stats if self.engine is not None else None

    @property
    def num_inflight(self) -> int:
        return sum(len(c.inflight) for c in self.connections)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, load_model: Callable[[], LLM]) -> None:
        """Listen, then load the model (in a thread) and start the engine."""
        net = self.config.server
        self._ws_server = await serve(
            self._handle,
            net.host,
            net.port,
            process_request=self._process_request,
            max_size=self.config.max_message_bytes,
            write_limit=net.write_limit_bytes,
            close_timeout=net.close_timeout_s,
            ping_interval=net.ping_interval_s or None,
        )
        llm = await asyncio.to_thread(load_model)
        engine = AsyncEngine(llm)
        engine.start()
        # Before the engine is set, so before any hello: every session is back when clients are.
        num_sessions = await self.sessions.warm()
        if num_sessions:
            log.info("%d sessions back from the %s store", num_sessions, self.store.kind)
        self.llm, self.engine = llm, engine
        self.turns = TurnRunner(
            llm=llm, engine=engine, sessions=self.sessions, metrics=self.metrics, settings=net
        )
        try:
            for plugin in self.plugins.plugins:
                await plugin.start(self._plugin_hosts[plugin.name])
        except BaseException:  # a plugin that cannot start (a bad judge_model): close it all
            await self.shutdown()
            raise
        self._sweeper = asyncio.create_task(self._sweep_sessions())
        self._store_watch = asyncio.create_task(self._watch_store())
        log.info("state in the %s store%s", self.store.kind, "" if self.store.durable else
                 " (lost when the process ends)")  # fmt: skip

    async def shutdown(self) -> None:
        """Graceful stop; see the module docstring. Safe to call once."""
        if self.shutting_down:
            return
        self.shutting_down = True
        assert self._ws_server is not None
        self._ws_server.server.close()  # stop accepting; open connections carry on
        grace = self.config.server.shutdown_grace_s
        if not await self._wait_drained(grace):
            log.info("cancelling %d requests still in flight", self.num_inflight)
            for connection in list(self.connections):
                connection.cancel_all()
            await self._wait_drained(_CANCEL_WAIT_S)
        await asyncio.gather(
            *(c.close(CLOSE_GOING_AWAY, "server shutting down") for c in list(self.connections))
        )
        self._ws_server.close(close_connections=True)
        await self._ws_server.wait_closed()
        for task in (self._sweeper, self._store_watch):
            if task is not None:
                task.cancel()
        for plugin in self.plugins.plugins:
            await plugin.stop()
            await self._plugin_hosts[plugin.name].stop()
        await self.topics.close()
        await self.models.stop()
        if self.engine is not None:
            await self.engine.stop()
        await self.store.close()

    async def _wait_drained(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while self.num_inflight:
                    self._request_ended.clear()
                    try:
                        async with asyncio.timeout(_DRAIN_POLL_S):
                            await self._request_ended.wait()
                    except TimeoutError:
                        pass
        except TimeoutError:
            return False
        return True

    async def _sweep_sessions(self) -> None:
        period = min(30.0, self.config.sessions.idle_ttl_s / 2)
        while True:
            await asyncio.sleep(period)
            self.sessions.expire()
            with contextlib.suppress(StoreUnavailable):  # the store watch reports it
                await self.store.expire(time.time())

    async def _watch_store(self) -> None:
        """A write now and then, so /readyz turns 503 on a store that cannot be written
        (even while nothing else writes) and 200 again once it can."""
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.store.ping()
            await asyncio.sleep(self.config.store.health_interval_s)

    # --- WebSocket and HTTP -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        send_buffer = self.config.server.socket_send_buffer_bytes
        sock = ws.transport.get_extra_info("socket")
        if send_buffer and sock is not None:
            # A small kernel buffer makes the write deadline catch a stalled reader sooner.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        connection = Connection(ws, self)
        self.connections.add(connection)
        self._unauthenticated[connection.address] += 1
        self.metrics.connections.inc()
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            if connection in self._authenticated:
                self._authenticated.discard(connection)
            else:
                self._forget_unauthenticated(connection.address)
            self.metrics.connections.dec()

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return ws.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.ready and not self.store.available:
                # Stateless turns still stream; sessions cannot be kept: route them elsewhere.
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "store unavailable\n")
            if self.ready:
                return ws.respond(HTTPStatus.OK, "ready\n")
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if path == "/metrics":
            if not self._may_scrape(request):
                response = ws.respond(HTTPStatus.UNAUTHORIZED, "a key with the metrics scope\n")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            response = ws.respond(HTTPStatus.OK, self.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = CONTENT_TYPE
            return response
        page = playground.find(path, upgrade=request.headers.get("Upgrade"))
        if page is not None:  # a plain GET of the playground; sockets to / go on below
            return playground.response(page)
        if self.shutting_down:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        return self._admit_socket(ws)

    def _may_scrape(self, request: Request) -> bool:
        if not self.authenticator.enabled:
            return True
        principal = self.authenticator.authenticate(
            bearer_token(request.headers.get("Authorization"))
        )
        return principal is not None and (principal.may("metrics") or principal.may("admin"))

    def _admit_socket(self, ws: ServerConnection) -> Response | None:
        """Refuse an upgrade that would pass a connection limit; None lets it through."""
        net = self.config.server
        address = source_address(ws)
        retry_after = self.auth_failures.retry_after_s(address)
        if retry_after is not None:
            response = ws.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many wrong API keys\n")
            response.headers["Retry-After"] = str(max(1, round(retry_after)))
            return response
        if self._unauthenticated[address] >= net.max_unauthenticated_per_address:
            return ws.respond(HTTPStatus.TOO_MANY_REQUESTS, "too many sockets before hello\n")
        if sum(self._unauthenticated.values()) >= net.max_unauthenticated:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many sockets before hello\n")
        if len(self._authenticated) >= net.max_connections:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None
