"""One streamed npc.say reply, and stopping work from another frame. plugins.api only.

Speech goes out as `delta`, events as npc.emotion/npc.action where they occur; a barge-in or a
newer prefill stops work from another frame. Talks to the engine only through plugins.api's
ctx.generate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from plugins.api import GenerateSpec, PluginContext
from protocol import Delta, Done, ServerFrame

from .cards import Card
from .markup import Piece, Speech
from .splitter import MarkupSplitter
from .wire import event_frame

T = TypeVar("T")


class Stoppable(Generic[T]):
    """Work run as a child task that another frame's handler may stop, saying why.

    `run` returns the work's result, or None when it was stopped; a cancellation of the
    handler itself (client cancel, disconnect) still propagates.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None
        self.stopped = False

    async def run(self, work: Callable[[], Awaitable[T]]) -> T | None:
        async def body() -> T:
            return await work()

        self._task = asyncio.create_task(body())
        try:
            return await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.stopped and (current is None or not current.cancelling()):
                return None
            raise

    async def stop(self) -> None:
        """Stop the work now and wait until it has let go of its engine turn."""
        self.stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class ReplyStream(Stoppable[Done]):
    """An npc.say turn: the engine's text split into speech deltas and typed events."""

    def __init__(self, card: Card, send: Callable[[ServerFrame], Awaitable[None]]) -> None:
        super().__init__()
        self.splitter = MarkupSplitter(card)
        self.pieces: list[Piece] = []
        self.heard_chars: int | None = None  # set by an interruption
        self._send = send

    async def stream(self, ctx: PluginContext, spec: GenerateSpec) -> Done | None:
        """The turn's done (not yet sent: the caller commits the transcript first), or None
        when it was interrupted."""
        return await self.run(lambda: self._forward(ctx, spec))

    async def interrupt(self, heard_chars: int) -> None:
        self.heard_chars = heard_chars
        await self.stop()

    async def _forward(self, ctx: PluginContext, spec: GenerateSpec) -> Done:
        seq = 0
        async for event in ctx.generate(spec):
            if isinstance(event, Done):
                self.splitter.finish()
                return event
            for piece in self.splitter.feed(event.text):
                self.pieces.append(piece)
                if isinstance(piece, Speech):
                    await self._send(Delta(request_id=spec.request_id, seq=seq, text=piece.text))
                    seq += 1
                else:
                    await self._send(event_frame(piece, spec.request_id))
        raise RuntimeError("a turn ended without its done")
