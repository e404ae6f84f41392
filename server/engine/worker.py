"""The engine thread: owns one EngineCore and steps it; commands arrive on a thread-safe queue.

No asyncio here. The caller hands in two callbacks, invoked on the engine thread: one for each
step's outputs, one for a request the engine refused. Aborts are applied between steps.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .core import EngineCore, EngineStats
from .errors import EngineError, RequestError
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


class EngineWorker:
    """Runs `core.step()` in its own thread while there is work; sleeps on the queue otherwise."""

    def __init__(
        self,
        core: EngineCore,
        *,
        on_outputs: Callable[[list[RequestOutput]], None],
        on_reject: Callable[[str, EngineError], None],
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._core = core
        self._on_outputs = on_outputs
        self._on_reject = on_reject
        self._on_crash = on_crash
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="banterbox-engine", daemon=True)
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
            self._core.kv_manager.release_session(command.session_id)
        else:
            try:
                self._core.add_request(command.request)
            except (RequestError, ValueError) as exc:
                error = exc if isinstance(exc, EngineError) else RequestError(str(exc))
                self._on_reject(command.request.request_id, error)
        return True

    def _drain(self, *, block: bool) -> bool:
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
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
                if self._core.has_unfinished():
                    outputs = self._core.step()
                    self._num_steps += 1
                    self._stats = self._core.stats()
                    if outputs:
                        self._on_outputs(outputs)
        except BaseException as exc:  # the engine died: say so loudly, never hang clients
            traceback.print_exc()
            if self._on_crash is not None:
                self._on_crash(exc)
