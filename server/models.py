"""Models the server serves beside its own, for plugins' `score(..., model=name)` (a larger
LLM judge): each is one more engine instance in this process, owned and stopped by the
server. Never imports plugins' code, only the API's error.

A model is loaded once per path (a second `load` of it returns its name at once; concurrent
ones wait for the first) off the event loop; its engine gets the server's engine settings
(threads, KV budget, device) and its own thread, so a judge's scoring batches apart from the
main model's turns and never blocks them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from plugins.api import ModelError

from .async_engine import AsyncEngine
from .engine.errors import EngineError
from .engine.llm import LLM
from .turns import TurnRunner

log = logging.getLogger("banterbox.models")

MakeRunner = Callable[[LLM, AsyncEngine], TurnRunner]


class ExtraModels:
    def __init__(self, *, load: Callable[[Path], LLM], runner: MakeRunner) -> None:
        self._load = load  # path -> a loaded model (the server's engine settings)
        self._runner = runner  # a turn runner over a loaded model and its engine
        self._by_path: dict[Path, str] = {}
        self._runners: dict[str, TurnRunner] = {}
        self._engines: list[AsyncEngine] = []
        self._lock = asyncio.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._runners)

    async def load(self, path: str) -> str:
        """The model's name, loading it first if this path is new; raises ModelError."""
        resolved = Path(path).expanduser().resolve()
        async with self._lock:
            name = self._by_path.get(resolved)
            if name is not None:
                return name
            if not resolved.exists():
                raise ModelError(f"model {path!r}: no such file or folder")
            try:
                llm = await asyncio.to_thread(self._load, resolved)
            except (EngineError, OSError, ValueError) as exc:
                raise ModelError(f"model {path!r}: {type(exc).__name__}: {exc}") from None
            engine = AsyncEngine(llm)
            engine.start()
            self._engines.append(engine)
            name = self._unique(resolved.name)
            self._by_path[resolved] = name
            self._runners[name] = self._runner(llm, engine)
            log.info("model %s loaded for plugins (%s)", name, llm.info.name)
            return name

    def runner(self, name: str) -> TurnRunner:
        found = self._runners.get(name)
        if found is None:
            loaded = ", ".join(self._runners) or "none"
            raise ModelError(f"no model {name!r} is loaded (loaded: {loaded})")
        return found

    async def stop(self) -> None:
        for engine in self._engines:
            await engine.stop()
        self._engines.clear()

    def _unique(self, name: str) -> str:
        """The file name, or with a number when another path has the same one."""
        found, n = name, 2
        while found in self._runners:
            found, n = f"{name}#{n}", n + 1
        return found
