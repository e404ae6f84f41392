"""Scenes: NPCs and players over one transcript, emitted to subscribers. plugins.api only.

Each NPC speaks with its own card, and every frame of the scene goes to every connection
subscribed to it. Talks to the server only through plugins.api (generate, store, subscribe,
emit).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from plugins.api import Constraint, GenerateSpec, PluginContext, Store
from protocol import Delta, ErrorCode, PluginFrame, ProtocolError, Sampling
from protocol.payload import PayloadReader, identifier, integer, list_of

from .cards import Card
from .markup import Speech, reply_grammar
from .prompt import Line, build_messages, scene_prompt, strip_markup
from .reply import heard
from .splitter import MarkupSplitter
from .wire import MAX_ID_CHARS, event_frame, frame, read_id, read_line

MAX_SCENE_LINES = 40  # the transcript a scene keeps (and prompts with)
MAX_ADVANCE = 8  # lines one npc.scene.advance may ask for

CardLookup = Callable[[Store, str, str], Awaitable[Card]]  # (store, request id, npc)


@dataclass(frozen=True, kw_only=True)
class Scene:
    scene_id: str
    npcs: tuple[str, ...]
    players: tuple[str, ...]
    lines: tuple[Line, ...] = ()

    def to_json(self) -> str:
        lines = [[line.speaker, line.text] for line in self.lines[-MAX_SCENE_LINES:]]
        return json.dumps({"npcs": self.npcs, "players": self.players, "lines": lines})

    @classmethod
    def from_json(cls, scene_id: str, text: str) -> Scene:
        data = json.loads(text)
        return cls(
            scene_id=scene_id,
            npcs=tuple(data["npcs"]),
            players=tuple(data["players"]),
            lines=tuple(Line(speaker=s, text=t) for s, t in data["lines"]),
        )

    def with_line(self, line: Line) -> Scene:
        return Scene(
            scene_id=self.scene_id, npcs=self.npcs, players=self.players, lines=(*self.lines, line)
        )

    def next_speaker(self, text: str = "", names: Sequence[str] = ()) -> str:
        """The NPC a line names (by id or name), else the one silent longest (the director)."""
        for npc, name in zip(self.npcs, names, strict=False):
            if re.search(rf"\b({re.escape(npc)}|{re.escape(name)})\b", text, re.IGNORECASE):
                return npc
        spoke = {line.speaker: index for index, line in enumerate(self.lines)}
        return min(self.npcs, key=lambda npc: (spoke.get(npc, -1), self.npcs.index(npc)))


def topic_of(scene_id: str) -> str:
    return f"scene/{scene_id}"


class Scenes:
    """The npc.scene.* frames. One lock per scene keeps its lines in order on this server."""

    def __init__(
        self, cards: CardLookup, *, max_tokens: int, temperature: float, lead_emotion: bool
    ) -> None:
        self._cards = cards
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._lead_emotion = lead_emotion
        self._locks: dict[str, asyncio.Lock] = {}

    async def open(self, read: PayloadReader, ctx: PluginContext) -> None:
        """Open a scene, or join it when its id exists; either way, subscribe to it."""
        scene_id = read_id(read, "scene_id")
        scene = await self._scene(ctx, scene_id)
        if scene is None:
            npcs = read.required("npcs", list_of(identifier(max_chars=MAX_ID_CHARS), max_items=8))
            players = read.optional(
                "players", list_of(identifier(max_chars=MAX_ID_CHARS), max_items=16)
            )
            if len(set(npcs)) < 2:
                raise ProtocolError(
                    ErrorCode.INVALID_FIELD,
                    "npcs: a scene needs at least two different npcs",
                    request_id=read.request_id,
                    field="npcs",
                )
            for npc in npcs:
                await self._cards(ctx.store, read.request_id, npc)
            scene = Scene(scene_id=scene_id, npcs=tuple(dict.fromkeys(npcs)), players=players or ())
            await ctx.store.set(f"scene/{scene_id}", scene.to_json())
        ctx.subscribe(topic_of(scene_id))
        await ctx.send(
            frame(
                "npc.scene",
                read.request_id,
                scene_id=scene_id,
                npcs=list(scene.npcs),
                players=list(scene.players),
                num_lines=len(scene.lines),
            )
        )

    async def say(self, read: PayloadReader, ctx: PluginContext) -> None:
        """A player's line to the scene; the NPC it addresses (or the director's pick) answers."""
        scene_id = read_id(read, "scene_id")
        player = read_id(read, "player")
        text = read_line(read)
        to = read.optional("to", identifier(max_chars=MAX_ID_CHARS))
        async with self._lock(scene_id):
            scene = await self._required(read, ctx, scene_id)
            if to is not None and to not in scene.npcs:
                raise ProtocolError(
                    ErrorCode.INVALID_FIELD,
                    f"to: {to!r} is not in the scene",
                    request_id=read.request_id,
                    field="to",
                )
            line = Line(speaker=player, text=text)
            await ctx.emit(topic_of(scene_id), _line_frame(scene, line))
            scene = scene.with_line(line)
            names = [(await self._cards(ctx.store, read.request_id, n)).name for n in scene.npcs]
            speaker = to or scene.next_speaker(text, names)
            scene = await self._speak(read.request_id, ctx, scene, speaker)
            await ctx.store.set(f"scene/{scene_id}", scene.to_json())
        await ctx.send(frame("npc.scene.done", read.request_id, scene_id=scene_id, num_lines=2))

    async def advance(self, read: PayloadReader, ctx: PluginContext) -> None:
        """N lines of the NPCs answering each other, each speaker picked by the director."""
        scene_id = read_id(read, "scene_id")
        num_lines = read.optional("lines", integer(lo=1, hi=MAX_ADVANCE)) or 1
        async with self._lock(scene_id):
            scene = await self._required(read, ctx, scene_id)
            for _ in range(num_lines):
                scene = await self._speak(read.request_id, ctx, scene, scene.next_speaker())
            await ctx.store.set(f"scene/{scene_id}", scene.to_json())
        await ctx.send(
            frame("npc.scene.done", read.request_id, scene_id=scene_id, num_lines=num_lines)
        )

    async def _speak(self, request_id: str, ctx: PluginContext, scene: Scene, npc: str) -> Scene:
        """One NPC line over the scene's transcript, its frames emitted to the scene."""
        card = await self._cards(ctx.store, request_id, npc)
        others = [
            f"{(await self._cards(ctx.store, request_id, n)).name} ({n})"
            for n in scene.npcs
            if n != npc
        ]
        system = scene_prompt(card, [*others, *(f"{p} (a player)" for p in scene.players)])
        messages = build_messages(card, system=system, player="", history=scene.lines, line=None)
        spec = GenerateSpec(
            request_id=request_id,
            messages=messages,
            sampling=Sampling(temperature=self._temperature),
            max_tokens=self._max_tokens,
            constraint=Constraint.grammar(reply_grammar(card, lead_emotion=self._lead_emotion)),
        )
        topic = topic_of(scene.scene_id)
        where = {"scene_id": scene.scene_id, "line": len(scene.lines), "speaker": npc}
        splitter = MarkupSplitter(card)
        pieces = []
        seq = 0
        async for event in ctx.generate(spec):
            if not isinstance(event, Delta):
                break
            for piece in splitter.feed(event.text):
                pieces.append(piece)
                if isinstance(piece, Speech):
                    delta = frame("npc.scene.delta", None, **where, seq=seq, text=piece.text)
                    await ctx.emit(topic, delta)
                    seq += 1
                else:
                    await ctx.emit(topic, event_frame(piece, None, where))
        splitter.finish()
        line = Line(speaker=npc, text=heard(pieces).markup)
        await ctx.emit(topic, _line_frame(scene, line))
        return scene.with_line(line)

    async def _scene(self, ctx: PluginContext, scene_id: str) -> Scene | None:
        raw = await ctx.store.get(f"scene/{scene_id}")
        return Scene.from_json(scene_id, raw) if isinstance(raw, str) else None

    async def _required(self, read: PayloadReader, ctx: PluginContext, scene_id: str) -> Scene:
        scene = await self._scene(ctx, scene_id)
        if scene is None:
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"scene_id: no scene {scene_id!r} (npc.scene.open it first)",
                request_id=read.request_id,
                field="scene_id",
            )
        return scene

    def _lock(self, scene_id: str) -> asyncio.Lock:
        return self._locks.setdefault(scene_id, asyncio.Lock())


def _line_frame(scene: Scene, line: Line) -> PluginFrame:
    """npc.scene.line: a whole line of the scene, its speech without markup."""
    return frame(
        "npc.scene.line",
        None,
        scene_id=scene.scene_id,
        line=len(scene.lines),
        speaker=line.speaker,
        text=strip_markup(line.text),
    )
