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


class ReplyStream(Stoppable[Done | None]):
    """An npc.say turn: the engine's text split into speech deltas and typed events; with a
    CHECK (output moderation), the turn stops where the speech fails it (`cut`)."""

    def __init__(
        self,
        card: Card,
        send: Callable[[ServerFrame], Awaitable[None]],
        *,
        request_id: str,
        check: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.splitter = MarkupSplitter(card)
        self.pieces: list[Piece] = []
        self.heard_chars: int | None = None  # set by an interruption
        self.cut = False  # the speech failed CHECK: the turn stopped there
        self._send = send
        # Output moderation: the speech so far, at each sentence's end and at the reply's.
        self._check = check
        self._num_checked = 0

    async def stream(self, ctx: PluginContext, spec: GenerateSpec) -> Done | None:
        """The turn's done (not yet sent: the caller commits the transcript first), or None
        when it was interrupted."""
        return await self.run(lambda: self._forward(ctx, spec))

    async def interrupt(self, heard_chars: int) -> None:
        self.heard_chars = heard_chars
        await self.stop()

    async def _forward(self, ctx: PluginContext, spec: GenerateSpec) -> Done | None:
        seq = 0
        async for event in ctx.generate(spec):
            if isinstance(event, Done):
                self.splitter.finish()
                return None if await self._fails(final=True) else event
            for piece in self.splitter.feed(event.text):
                if isinstance(piece, Speech) and await self._fails(piece.text):
                    return None  # leaving the loop ends the engine turn
                self.pieces.append(piece)
                if isinstance(piece, Speech):
                    await self._send(Delta(request_id=spec.request_id, seq=seq, text=piece.text))
                    seq += 1
                else:
                    await self._send(event_frame(piece, spec.request_id))
        raise RuntimeError("a turn ended without its done")

    async def _fails(self, text: str = "", *, final: bool = False) -> bool:
        """Whether the speech with TEXT added fails the check. Checked where a sentence ends
        (before its last piece is sent) and at the reply's end, so a line is judged whole."""
        if self._check is None:
            return False
        speech = "".join(p.text for p in self.pieces if isinstance(p, Speech)) + text
        ends = final or text.rstrip().endswith((".", "!", "?"))
        if not ends or len(speech.strip()) <= self._num_checked:
            return False
        self._num_checked = len(speech.strip())
        self.cut = not await self._check(speech)
        return self.cut
