"""The engine thread: owns one EngineCore and steps it; commands arrive on a thread-safe queue.

No asyncio here. The caller hands in callbacks, invoked on the engine thread: one for each
step's outputs, one for a request the engine refused, one for a crash (an error that escaped
`step()`: the thread ends, and the caller decides whether to start a fresh core). Aborts are
applied between steps. An idle worker still wakes every `idle_tick_s` to expire idle sessions'
KV and refresh its stats, so /metrics is never stale on a quiet server.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .core import EngineCore, EngineStats
from .errors import EngineError, RequestError, RequestFailedError
from .types import EngineRequest, RequestOutput


@dataclass(frozen=True)
class _Add:
    request: EngineRequest


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _ReleaseSession:
    session_id: str


@dataclass(frozen=True)
class _Stop:
    pass


_Command = _Add | _Abort | _ReleaseSession | _Stop
log = logging.getLogger("banterbox.engine")


class EngineWorker:
    """Runs `core.step()` in its own thread while there is work; sleeps on the queue otherwise."""

    def __init__(
        self,
        core: EngineCore,
        *,
        on_outputs: Callable[[list[RequestOutput]], None],
        on_reject: Callable[[str, EngineError], None],
        on_crash: Callable[[BaseException], None] | None = None,
        idle_tick_s: float = 0.5,
    ) -> None:
        self._core = core
        self._on_outputs = on_outputs
        self._on_reject = on_reject
        self._on_crash = on_crash
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="banterbox-engine", daemon=True)
        self._idle_tick_s = idle_tick_s
        self._stats = core.stats()
        self._num_steps = 0

    @property
    def stats(self) -> EngineStats:
        """The figures as of the last step (a consistent snapshot; safe from any thread)."""
        return self._stats

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: EngineRequest) -> None:
        self._commands.put(_Add(request))

    def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    def release_session(self, session_id: str) -> None:
        """Unpin a closed session's KV blocks (they stay cached until evicted)."""
        self._commands.put(_ReleaseSession(session_id))

    def stop(self, timeout: float | None = None) -> None:
        self._commands.put(_Stop())
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _apply(self, command: _Command) -> bool:
        """Apply one command; False when the worker must stop."""
        if isinstance(command, _Stop):
            return False
        if isinstance(command, _Abort):
            self._core.abort_request(command.request_id)
        elif isinstance(command, _ReleaseSession):
            self._core.scheduler.release_session(command.session_id)
        else:
            try:
                self._core.add_request(command.request)
            except (RequestError, ValueError) as exc:
                error = exc if isinstance(exc, EngineError) else RequestError(str(exc))
                self._on_reject(command.request.request_id, error)
            except Exception as exc:  # a bad request must not take the engine thread down
                log.exception("request %s refused on an error", command.request.request_id)
                failure = RequestFailedError(f"the engine could not take the request: {exc}")
                self._on_reject(command.request.request_id, failure)
        return True

    def _drain(self, *, block: bool) -> bool:
        try:
            command = self._commands.get(block=block, timeout=self._idle_tick_s if block else None)
        except queue.Empty:
            if block:  # idle: sessions still expire, and the figures follow
                self._core.expire_sessions()
                self._stats = self._core.stats()
            return True
        if not self._apply(command):
            return False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if not self._apply(command):
                return False

    def _run(self) -> None:
        try:
            while self._drain(block=not self._core.has_unfinished()):
                if not self._core.has_unfinished():
                    self._stats = self._core.stats()  # commands alone change the figures too
                else:
                    outputs = self._core.step()
                    self._num_steps += 1
                    self._stats = self._core.stats()
                    if outputs:
                        self._on_outputs(outputs)
        except BaseException as exc:  # the engine died: say so loudly, never hang clients
            log.exception("the engine thread died")
            if self._on_crash is not None:
                self._on_crash(exc)
