"""The plugin API, version 2: what a plugin is and what the server lends it. Imports protocol only.

Dependency inversion: plugins import this module and protocol/, never server/. The server
implements `PluginContext`, `PluginHost`, `Store` and `SessionAccess`; a plugin implements
`Plugin` (subclass `BasePlugin` for the optional hooks). plugins/README.md is the guide.

A plugin is a class registered under the entry point group "banterbox.plugins" and enabled by
name in the server config (`[plugins] enabled = ["chat", "npc"]`). The server constructs it
once with its settings table (`[plugins.settings.NAME]`, an empty mapping when absent), awaits
`start(host)` before serving, calls `handle` once per client frame of one of its
`frame_types` (in a task of its own per frame), and awaits `stop()` at shutdown.

Rules a plugin follows:
- Answer frames carry the request's id. A request ends with a `done`, an `error`, or a
  plugin frame the plugin documents as final; `ctx.generate` yields the `done` of a turn.
- Refuse a frame by raising `protocol.ProtocolError` (its code and message reach the client
  as an error frame with the request's id). Read payloads with `protocol.payload` so errors
  match the core frames'. Any other exception is reported as `internal` and logged.
- A client `cancel` of the request cancels the plugin's engine turns (they end with
  `finish_reason: "cancelled"`); when the request has no turn running, its task is cancelled.
- State goes through `ctx.store` (namespaced per plugin and tenant, durable where the
  server's store is), never module globals: a fleet runs many copies of the plugin.

Version 1 plugins (no `system`, `store`, `spawn`, `emit`, `score`) are refused at load with a
message saying how to port them.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias, runtime_checkable

from protocol import (
    ChatMessage,
    Constraint,
    ConstraintKind,
    Delta,
    Done,
    PluginFrame,
    Priority,
    Sampling,
    ServerFrame,
)

PLUGIN_API_VERSION = 2

# Scopes an API key may hold; a plugin names the one each of its frame types needs.
SCOPE_GENERATE = "generate"
SCOPE_MODERATE = "moderate"
SCOPE_ADMIN = "admin"

TurnEvent = Delta | Done
# The wire's own types, so a plugin's constraint is exactly what a generate frame can carry.
__all__ = ["Constraint", "ConstraintKind"]
JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None


@dataclass(frozen=True, kw_only=True)
class GenerateSpec:
    """One engine turn, the one list of generate parameters (a `generate` frame maps onto it).

    `system` is the plugin's own system prompt, placed before the session's history (an NPC's
    card): every turn that starts with the same system text shares its KV blocks.
    """

    request_id: str  # echoed in every delta and the done
    messages: tuple[ChatMessage, ...] | None = None  # this turn's new messages
    prompt: str | None = None  # raw text instead of messages (no chat template, no session)
    system: str | None = None
    session_id: str | None = None  # continue (and extend) this session's transcript
    sampling: Sampling | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    priority: Priority = Priority.INTERACTIVE
    constraint: Constraint | None = None
    logprobs: int | None = None  # N: each sampled token's logprob and its top N alternatives
    prefill_only: bool = False  # warm the KV of the prompt, sample nothing, record nothing
    return_token_ids: bool = False
    record: bool = True  # append this turn to the session's transcript when it completes
    # Leave the session's first N messages out of the prompt (a summary of them in `system`
    # stands in for them); the stored transcript keeps every message and gets the turn.
    history_start: int = 0


class ModelError(Exception):
    """A model the host cannot serve: a path that is missing or is not a model the engine
    loads (`load_model`), or a name it never loaded (`score(model=...)`)."""


class SessionAccess(Protocol):
    """The calling tenant's sessions, read from and written through to the server's session
    store: on a fleet, a session opened or changed on one replica is found, with its exact
    transcript, on any other. Every change is durable when its call returns. Unknown or
    foreign ids raise ProtocolError (session_not_found); a store that cannot be written,
    ProtocolError (store_unavailable) with nothing changed."""

    async def transcript(self, session_id: str) -> tuple[ChatMessage, ...]: ...

    async def metadata(self, session_id: str) -> Mapping[str, str]: ...

    async def open(self, session_id: str, metadata: Mapping[str, str] | None = None) -> bool:
        """Open (or find, on this replica or in the store) the tenant's session; True when it
        already existed."""
        ...

    async def close(self, session_id: str) -> None: ...

    async def append(self, session_id: str, *messages: ChatMessage) -> None:
        """Add messages (a narration, an interrupted turn) to the end of the transcript."""
        ...

    async def truncate(self, session_id: str, num_messages: int) -> None:
        """Keep the first num_messages messages (an interrupted reply is cut to what was
        heard by replacing the tail); the KV is recomputed from the new transcript."""
        ...


class Store(Protocol):
    """Key-value state of one plugin for one tenant. Values are JSON-compatible.

    Durable where the server's store is (SQLite, Redis); `incr` is atomic across replicas.
    `incr_windows` is the cheap, not always durable counter for rate limits.
    Values and logs are two key spaces under one namespace: `delete` removes both, `list`
    names both.
    """

    async def get(self, key: str) -> JSON: ...  # None when absent or expired

    async def set(self, key: str, value: JSON, *, ttl_s: float | None = None) -> None: ...

    async def set_many(self, items: Sequence[tuple[str, JSON, float | None]]) -> None:
        """`set` of each (key, value, ttl_s) in one write: one commit, one round trip."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys starting with prefix, sorted."""
        ...

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add atomically (absent counts as 0); ttl_s is set when this creates the key."""
        ...

    async def incr_windows(self, windows: Sequence[tuple[str, float]]) -> builtins.list[int]:
        """Count one in each short-window counter (key, ttl_s), in one call; the new counts.

        For rate limits (flood, duplicate windows), never for state that must survive a
        crash: on a fleet's Redis the counts are atomic and agree across replicas, as `incr`;
        on SQLite and memory they live in this server process only (no disk write; a
        restart forgets the open windows, at most ttl_s of history). A window starts at its
        first count and ends ttl_s later. Their own key space: `get`, `list` and `delete`
        do not see them."""
        ...

    async def append(self, key: str, value: JSON, *, max_len: int | None = None) -> None:
        """Append to a log and keep only its newest max_len entries."""
        ...

    async def extend(self, key: str, values: Sequence[JSON], *, max_len: int | None = None) -> None:
        """`append` of each value, in order, in one write."""
        ...

    async def append_logs(
        self, items: Sequence[tuple[str, Sequence[JSON], int | None]], *, durable: bool = True
    ) -> builtins.list[builtins.list[JSON]]:
        """`extend` of each (key, values, max_len) in one call; each log's entries after its
        append. Atomic per log, on a fleet too: a caller finds its own entries' places among
        concurrent appends (an ordinal counted once across replicas, such as a strike).
        `durable=False`: committed and seen at once, survives a crash of the server, but its
        sync to disk may wait for the next durable write (SQLite FULL: the next fsync); for
        entries that a durable write always follows before anything is acknowledged."""
        ...

    async def range(self, key: str, start: int = 0, stop: int = -1) -> builtins.list[JSON]:
        """Entries start to stop inclusive, oldest first; negatives count from the end."""
        ...


class PluginHost(Protocol):
    """Server-wide services, for work that belongs to no connection (started in `start`)."""

    def store(self, tenant: str) -> Store: ...

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run work in the background; cancelled at shutdown; a failure is logged."""
        ...

    async def emit(self, tenant: str, topic: str, frame: ServerFrame) -> int:
        """Send frame to every connection of tenant subscribed to topic; returns how many."""
        ...

    def generate(self, tenant: str, spec: GenerateSpec) -> AsyncIterator[TurnEvent]:
        """A turn that answers no client (a background summary); same semantics otherwise."""
        ...

    def max_prompt_tokens(self) -> int:
        """The most tokens a turn's prompt may have (the model's context window, or the
        server's lower cap): a longer one is refused with prompt_too_long. ProtocolError
        (not_ready) before the model is loaded."""
        ...

    async def load_model(self, path: str) -> str:
        """Serve the model at `path` (any GGUF file or HF folder the engine loads) beside the
        server's own, for `score(..., model=name)`; its name (the file or folder name) once
        it is loaded. The server owns it: one engine instance of its own, stopped with the
        server; loading a path again returns the same name. Raises ModelError when the path
        is missing or is no model the engine can load (the message says which and why)."""
        ...

    async def score(
        self,
        tenant: str,
        *,
        candidates: Sequence[str],
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        system: str | None = None,
        model: str | None = None,  # a name from load_model; None: the server's model
    ) -> list[float]: ...


class PluginContext(Protocol):
    """What the server lends a plugin for one connection."""

    @property
    def tenant(self) -> str: ...

    @property
    def connection_id(self) -> str: ...

    @property
    def sessions(self) -> SessionAccess: ...

    @property
    def store(self) -> Store: ...

    @property
    def host(self) -> PluginHost: ...

    def generate(self, spec: GenerateSpec) -> AsyncIterator[TurnEvent]:
        """One engine turn for a request in flight on this connection, exactly as a client
        `generate` frame would run it (same session semantics): `Delta`s numbered from 0
        under `spec.request_id`, then one `Done`. Refusals raise ProtocolError."""
        ...

    async def score(
        self,
        *,
        candidates: Sequence[str],
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        system: str | None = None,
        model: str | None = None,
    ) -> list[float]:
        """Log-probability of each candidate continuing the prompt (or the rendered chat,
        ready for the assistant's answer), batched; the prompt's KV is shared through the
        prefix cache across candidates and across calls. `model`: a name the host's
        `load_model` gave (ModelError for one it did not), None for the server's model."""
        ...

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None: ...

    def subscribe(self, topic: str) -> None:
        """This connection receives what is emitted to topic (within its tenant)."""
        ...

    def unsubscribe(self, topic: str) -> None: ...

    async def emit(self, topic: str, frame: ServerFrame) -> int:
        """Send frame to every connection of this tenant subscribed to topic."""
        ...

    async def send(self, frame: ServerFrame) -> None:
        """Send a frame to this connection's client (deltas, done, plugin events)."""
        ...

    def can_call(self, frame_type: str) -> bool:
        """Whether `call` can reach a plugin for frame_type: the type is in this plugin's
        `calls` and the plugin that handles it is loaded."""
        ...

    async def call(self, frame: PluginFrame) -> tuple[ServerFrame, ...]:
        """Another plugin's service: the server hands FRAME to the plugin that handles its
        type, for this tenant, as if a client had sent it on this connection, and returns
        the frames it answered instead of sending them to the client. Give it this request's
        id, so a cancel reaches the work it starts. A type missing from this plugin's `calls`
        or handled by no loaded plugin is ProtocolError(unknown_type); the called plugin's
        refusals raise as its ProtocolError. The caller's API key scope is not asked: the
        caller decides what its own client may reach through it."""
        ...


@runtime_checkable
class Plugin(Protocol):
    """A domain feature behind namespaced frame types ("npc.say")."""

    name: str  # the entry point name, also listed in welcome.capabilities
    api_version: int  # PLUGIN_API_VERSION the plugin was written for
    frame_types: frozenset[str]  # client frame types it handles: "namespace.name"
    scopes: Mapping[str, str]  # frame type -> the API key scope it needs

    async def start(self, host: PluginHost) -> None: ...

    async def stop(self) -> None: ...

    async def on_session_closed(self, tenant: str, session_id: str) -> None: ...

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None: ...


class BasePlugin:
    """No-op lifecycle hooks; subclasses set name, frame_types, scopes and write handle()."""

    name: str = ""
    api_version: int = PLUGIN_API_VERSION
    frame_types: frozenset[str] = frozenset()
    scopes: Mapping[str, str] = MappingProxyType({})
    # Other plugins' frame types this one may `ctx.call` (its declared dependencies; each
    # optional: `ctx.can_call` says whether the plugin that handles it is loaded).
    calls: frozenset[str] = frozenset()

    async def start(self, host: PluginHost) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def on_session_closed(self, tenant: str, session_id: str) -> None:
        return None

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        raise NotImplementedError(f"plugin {self.name!r} handles no frames")
