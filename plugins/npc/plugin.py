"""The npc plugin: npc.* frames onto cards, sessions and turns. Only plugins.api, protocol.

Character cards to talk to, one session per (player, npc), typed events, scenes, barge-in,
prefill while typing, memory between sessions.

Frames and their answers are in protocol/SPEC.md ("NPC dialogue"). What lives where: the
transcript in the server session (so a turn reuses its KV); the session record, memories,
world state and defined cards in the plugin's store; running turns and prefills in this
object, per connection, only while they run.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from collections.abc import Mapping
from types import MappingProxyType

from plugins.api import (
    SCOPE_ADMIN,
    SCOPE_GENERATE,
    BasePlugin,
    Constraint,
    GenerateSpec,
    PluginContext,
    PluginHost,
    Store,
)
from protocol import (
    ChatMessage,
    Done,
    ErrorCode,
    PluginFrame,
    Priority,
    ProtocolError,
    Role,
    Sampling,
)
from protocol.payload import PayloadReader, choice, integer, mapping, number, string

from .cards import Card, CardError
from .library import CardLibrary, load_folder
from .markup import reply_grammar
from .memory import Memory, remember
from .prefills import Prefills
from .prompt import session_note, system_prompt
from .records import (
    SessionRecord,
    default_session_id,
    memory_key,
    session_key,
)
from .reply import heard
from .safety import MOD_CHECK, Moderation, refusal, replacement
from .scenes import Scenes
from .settings import NpcSettings
from .summary import Summaries, summary_block
from .turn import ReplyStream
from .wire import frame, invalid, memory_payload, read_id, read_line, read_session_id
from .world import set_state, world_vars

_GENERATE = (
    *("say", "interrupt", "typing", "open", "close", "memory", "event", "state"),
    *("scene.open", "scene.say", "scene.advance"),
)
SCOPES: Mapping[str, str] = MappingProxyType(
    {f"npc.{name}": SCOPE_GENERATE for name in _GENERATE} | {"npc.define": SCOPE_ADMIN}
)
MAX_CARD_CHARS = 65536


class MemoryOp(enum.StrEnum):
    GET = "get"
    SET = "set"
    FORGET = "forget"


class NpcPlugin(BasePlugin):
    name = "npc"
    frame_types = frozenset(SCOPES)
    scopes = SCOPES
    calls = frozenset({MOD_CHECK})  # optional: player lines and replies, when loaded

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        config = NpcSettings.from_mapping(settings or {})
        self.max_tokens = config.max_tokens
        self.temperature = config.temperature
        self.lore_window = config.lore_window
        self.lead_emotion = config.lead_emotion
        self.summaries = Summaries(
            summarize_at=config.summarize_at,
            keep_recent=config.keep_recent,
            max_tokens=config.summary_max_tokens,
        )
        self.library = CardLibrary(load_folder(config.cards))
        self._host: PluginHost | None = None
        # Running replies, keyed by who may stop them: (connection, request id).
        self._replies: dict[tuple[str, str], tuple[str, ReplyStream]] = {}
        self.prefills = Prefills()  # by (tenant, session id)
        self.moderation = Moderation()
        self.scenes = Scenes(
            self._card,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            lead_emotion=self.lead_emotion,
        )

    async def start(self, host: PluginHost) -> None:
        self._host = host

    async def on_session_closed(self, tenant: str, session_id: str) -> None:
        if self._host is not None:
            await self._end_session(self._host.store(tenant), session_id)

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        read = PayloadReader(frame)
        handler = {
            "npc.say": self._say,
            "npc.interrupt": self._interrupt,
            "npc.typing": self._typing,
            "npc.open": self._open,
            "npc.close": self._close,
            "npc.memory": self._memory,
            "npc.define": self._define,
            "npc.event": self._event,
            "npc.state": set_state,
            "npc.scene.open": self.scenes.open,
            "npc.scene.say": self.scenes.say,
            "npc.scene.advance": self.scenes.advance,
        }[frame.type]
        await handler(read, ctx)

    # --- turns ---------------------------------------------------------------------------

    async def _say(self, read: PayloadReader, ctx: PluginContext) -> None:
        request_id = read.request_id
        record, card, opened = await self._session(read, ctx, open_missing=True)
        text = read_line(read)
        max_tokens = read.optional("max_tokens", integer(lo=1, hi=4096)) or self.max_tokens
        temperature = read.optional("temperature", number(lo=0.0, hi=2.0))
        seed = read.optional("seed", integer(lo=0, hi=2**63 - 1))
        sampling = Sampling(
            temperature=self.temperature if temperature is None else temperature, seed=seed
        )
        if opened:
            await ctx.send(self._session_frame(request_id, record, card, resumed=False))
        session_id = record.session_id
        await self.prefills.stop((ctx.tenant, session_id))
        if self.moderation.applies(ctx, card, output=False) and not await self.moderation.allowed(
            ctx, request_id, card, record.player, text
        ):  # the line never reaches the model or the transcript
            answer = {"session_id": session_id, "text": refusal(card)}
            await ctx.send(frame("npc.refused", request_id, **answer))
            return
        messages = await self._turn_messages(ctx, card, session_id, text)
        check = None
        if self.moderation.applies(ctx, card, output=True):
            npc_user = f"npc:{card.card_id}"
            check = functools.partial(self.moderation.allowed, ctx, request_id, card, npc_user)
        reply = ReplyStream(card, ctx.send, request_id=request_id, check=check)
        key = (ctx.connection_id, request_id)
        self._replies[key] = (session_id, reply)
        try:
            done = await self._stream(ctx, reply, card, record, messages, sampling, max_tokens)
        finally:
            del self._replies[key]
        if done is not None and done.usage is not None:
            used = done.usage.num_prompt_tokens + done.usage.num_completion_tokens
            self.summaries.after_turn(ctx, card, record.player, session_id, used)
        cut = heard(reply.pieces, heard_chars=reply.heard_chars)
        events = () if reply.cut else cut.events
        if reply.cut:  # failed output moderation: the NPC said the replacement instead
            said = ChatMessage(role=Role.ASSISTANT, content=replacement(card))
            await ctx.sessions.append(session_id, *messages, said)
        elif done is None:  # interrupted: the server keeps nothing of a cancelled turn
            kept = (ChatMessage(role=Role.ASSISTANT, content=cut.markup),) if cut.markup else ()
            await ctx.sessions.append(session_id, *messages, *kept)
        elif reply.splitter.num_dropped:  # a span cut by max_tokens: keep only whole events
            num_messages = len(await ctx.sessions.transcript(session_id))
            await ctx.sessions.truncate(session_id, num_messages - 1)
            await ctx.sessions.append(
                session_id, ChatMessage(role=Role.ASSISTANT, content=cut.markup)
            )
        latest = await self._record(ctx.store, session_id) or record
        await ctx.store.set(session_key(session_id), latest.after_turn(text, events).to_json())
        if reply.cut:
            answer = {"turn_id": request_id, "text": replacement(card)}
            await ctx.send(frame("npc.replaced", request_id, **answer))
        elif done is None:
            interrupted = {"turn_id": request_id, "heard_chars": len(cut.speech)}
            await ctx.send(frame("npc.interrupted", request_id, **interrupted, text=cut.speech))
        else:
            await ctx.send(done)

    async def _stream(
        self,
        ctx: PluginContext,
        reply: ReplyStream,
        card: Card,
        record: SessionRecord,
        messages: tuple[ChatMessage, ...],
        sampling: Sampling,
        max_tokens: int,
    ) -> Done | None:
        """The reply's turn; a prompt too long for the context makes room (a summary now,
        keeping fewer lines each time) and is tried again, so a long history never fails."""
        for keep in (None, min(2, self.summaries.keep_recent), 0):
            if keep is not None:
                await self.summaries.make_room(
                    ctx, card, record.player, record.session_id, keep=keep
                )
            system, history_start = await self._context(ctx, card, record)
            spec = GenerateSpec(
                request_id=reply.request_id,
                messages=messages,
                system=system,
                history_start=history_start,
                session_id=record.session_id,
                sampling=sampling,
                max_tokens=max_tokens,
                constraint=Constraint.grammar(reply_grammar(card, lead_emotion=self.lead_emotion)),
            )
            try:
                return await reply.stream(ctx, spec)
            except ProtocolError as exc:
                if exc.code is not ErrorCode.PROMPT_TOO_LONG or keep == 0:
                    raise
        raise AssertionError("unreachable: the last try raises")

    async def _interrupt(self, read: PayloadReader, ctx: PluginContext) -> None:
        turn_id = read.required("turn_id", string(max_chars=200, non_empty=True))
        heard_chars = read.required("heard_chars", integer(lo=0, hi=1_000_000))
        running = self._replies.get((ctx.connection_id, turn_id))
        if running is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"turn_id: no npc.say {turn_id!r} is running on this connection",
                request_id=read.request_id,
                field="turn_id",
            )
        reply = running[1]
        await reply.interrupt(min(heard_chars, reply.splitter.num_speech_chars))
        cut = heard(reply.pieces, heard_chars=reply.heard_chars)
        await ctx.send(
            frame(
                "npc.interrupted",
                read.request_id,
                turn_id=turn_id,
                heard_chars=len(cut.speech),
                text=cut.speech,
            )
        )

    async def _typing(self, read: PayloadReader, ctx: PluginContext) -> None:
        request_id = read.request_id
        record, card, _ = await self._session(read, ctx, open_missing=True)
        text = read.required("text", string(max_chars=2000))
        session_id = record.session_id
        key = (ctx.tenant, session_id)
        speaking = any(sid == session_id for sid, _ in self._replies.values())
        answer = {"session_id": session_id, "prefilled": False, "superseded": False}
        if speaking:  # the NPC is still talking: the say after this line prefills itself
            await ctx.send(frame("npc.typed", request_id, **answer))
            return
        # A running prefill is left to finish; an older waiting line is superseded.
        if not await self.prefills.my_turn(key):
            await ctx.send(frame("npc.typed", request_id, **answer | {"superseded": True}))
            return
        messages = await self._turn_messages(ctx, card, session_id, text)
        system, history_start = await self._context(ctx, card, record)
        spec = GenerateSpec(
            request_id=request_id,
            messages=messages,
            system=system,
            history_start=history_start,
            session_id=session_id,
            max_tokens=1,
            priority=Priority.BACKGROUND,
            prefill_only=True,
            record=False,
        )

        async def warm() -> object:
            try:
                async for _ in ctx.generate(spec):
                    pass
            except ProtocolError as exc:
                if exc.code is not ErrorCode.PROMPT_TOO_LONG:
                    raise
                # The say makes room; a summary started now is ready sooner.
                self.summaries.after_turn(ctx, card, record.player, session_id, 1 << 30)
                return False
            return True

        finished = await self.prefills.run(key, warm)
        await ctx.send(
            frame(
                "npc.typed",
                request_id,
                session_id=session_id,
                prefilled=finished is True,
                superseded=finished is None,
            )
        )

    async def _context(
        self, ctx: PluginContext, card: Card, record: SessionRecord
    ) -> tuple[str, int]:
        """A turn's system prompt and where its history starts: the card, the player, and
        the notes standing for the lines a summary covers."""
        summary = await self.summaries.current(ctx.store, record.session_id)
        system = system_prompt(card, record.player, record.memory) + summary_block(summary)
        return system, summary.upto

    async def _turn_messages(
        self, ctx: PluginContext, card: Card, session_id: str, text: str
    ) -> tuple[ChatMessage, ...]:
        transcript = await ctx.sessions.transcript(session_id)
        spoken = [m.content for m in transcript if m.role is not Role.SYSTEM]
        recent = [*spoken[-self.lore_window :], text]
        already = "\n".join(m.content for m in transcript if m.role is Role.SYSTEM)
        world = await world_vars(ctx.store)
        note = session_note(card, recent, world, already=already)
        line = ChatMessage(role=Role.USER, content=text)
        return (ChatMessage(role=Role.SYSTEM, content=note), line) if note else (line,)

    # --- sessions and memory --------------------------------------------------------------

    async def _session(
        self, read: PayloadReader, ctx: PluginContext, *, open_missing: bool
    ) -> tuple[SessionRecord, Card, bool]:
        """The session a frame names (session_id, or npc + player), its card, and whether
        this frame opened it. session_not_found for a session_id that is not open."""
        session_id = read_session_id(read)
        if session_id is not None:
            record = await self._record(ctx.store, session_id)
            if record is None:
                raise ProtocolError(
                    ErrorCode.SESSION_NOT_FOUND,
                    f"session_id: no open npc session {session_id!r}",
                    request_id=read.request_id,
                    field="session_id",
                )
            card = await self._card(ctx.store, read.request_id, record.card_id)
            # Loads the transcript on a replica that has not seen the session yet.
            await ctx.sessions.open(session_id, {"npc": card.card_id, "player": record.player})
            return record, card, False
        card = await self._card(ctx.store, read.request_id, read_id(read, "npc"))
        player = read_id(read, "player")
        session_id = default_session_id(card.card_id, player)
        record = await self._record(ctx.store, session_id)
        if record is not None or not open_missing:
            if record is None:
                raise ProtocolError(
                    ErrorCode.SESSION_NOT_FOUND,
                    f"no open session of {player!r} with {card.card_id!r}",
                    request_id=read.request_id,
                )
            await ctx.sessions.open(session_id, {"npc": card.card_id, "player": player})
            return record, card, False
        memory = await _memory(ctx.store, card.card_id, player)
        await ctx.sessions.open(session_id, {"npc": card.card_id, "player": player})
        record = SessionRecord(
            session_id=session_id, card_id=card.card_id, player=player, memory=memory
        )
        await ctx.store.set(session_key(session_id), record.to_json())
        return record, card, True

    async def _card(self, store: Store, request_id: str, card_id: str) -> Card:
        card = await self.library.get(store, card_id)
        if card is None:
            raise invalid(request_id, "npc", f"no character card {card_id!r}")
        return card

    @staticmethod
    async def _record(store: Store, session_id: str) -> SessionRecord | None:
        raw = await store.get(session_key(session_id))
        return SessionRecord.from_json(raw) if isinstance(raw, str) else None

    def _session_frame(
        self, request_id: str, record: SessionRecord, card: Card, *, resumed: bool
    ) -> PluginFrame:
        return frame(
            "npc.session",
            request_id,
            session_id=record.session_id,
            npc=card.card_id,
            player=record.player,
            resumed=resumed,
            greeting=card.greeting,
            memory=memory_payload(record.memory),
        )

    async def _open(self, read: PayloadReader, ctx: PluginContext) -> None:
        record, card, opened = await self._session(read, ctx, open_missing=True)
        await ctx.send(self._session_frame(read.request_id, record, card, resumed=not opened))

    async def _close(self, read: PayloadReader, ctx: PluginContext) -> None:
        record, _, _ = await self._session(read, ctx, open_missing=False)
        await self.prefills.stop((ctx.tenant, record.session_id))
        memory = await self._end_session(ctx.store, record.session_id)
        # A server session that already expired leaves the memory written all the same.
        with contextlib.suppress(ProtocolError):
            await ctx.sessions.close(record.session_id)
        payload = memory_payload(memory)
        await ctx.send(
            frame("npc.closed", read.request_id, session_id=record.session_id, memory=payload)
        )

    async def _end_session(self, store: Store, session_id: str) -> Memory | None:
        """Write the memory of an ending session (once, whoever ends it first)."""
        record = await self._record(store, session_id)
        if record is None or not await store.delete(session_key(session_id)):
            return None
        await self.summaries.forget(store, session_id)
        card = await self.library.get(store, record.card_id)
        if card is None:  # a defined card deleted since: nothing to weigh emotions with
            return None
        previous = await _memory(store, record.card_id, record.player)
        memory = remember(previous, card, record.player_lines, record.shown())
        await store.set(memory_key(record.card_id, record.player), memory.to_json())
        return memory

    async def _memory(self, read: PayloadReader, ctx: PluginContext) -> None:
        card = await self._card(ctx.store, read.request_id, read_id(read, "npc"))
        player = read_id(read, "player")
        op = read.required("op", choice(MemoryOp))
        key = memory_key(card.card_id, player)
        memory = await _memory(ctx.store, card.card_id, player)
        if op is MemoryOp.SET:
            edits = read.required("memory", mapping)
            try:
                memory = Memory.from_mapping({str(k): v for k, v in edits.items()}, base=memory)
            except ValueError as exc:
                raise invalid(read.request_id, "memory", str(exc)) from None
            await ctx.store.set(key, memory.to_json())
        elif op is MemoryOp.FORGET:
            await ctx.store.delete(key)
            memory = None
            await self._forget_open_session(ctx.store, card.card_id, player)
        await ctx.send(
            frame(
                "npc.memory",
                read.request_id,
                npc=card.card_id,
                player=player,
                memory=memory_payload(memory),
            )
        )

    async def _forget_open_session(self, store: Store, card_id: str, player: str) -> None:
        """The right to erase reaches the open session too: its lines so far, its memory."""
        session_id = default_session_id(card_id, player)
        if await self._record(store, session_id) is not None:
            fresh = SessionRecord(session_id=session_id, card_id=card_id, player=player)
            await store.set(session_key(session_id), fresh.to_json())
            await self.summaries.forget(store, session_id)

    # --- cards, events, world -------------------------------------------------------------

    async def _define(self, read: PayloadReader, ctx: PluginContext) -> None:
        card_id = read_id(read, "npc")
        text = read.required("card", string(max_chars=MAX_CARD_CHARS, non_empty=True))
        try:
            card = await self.library.define(ctx.store, card_id, text)
        except CardError as exc:
            raise invalid(read.request_id, "card", str(exc)) from None
        await ctx.send(frame("npc.defined", read.request_id, npc=card.card_id, name=card.name))

    async def _event(self, read: PayloadReader, ctx: PluginContext) -> None:
        record, _, _ = await self._session(read, ctx, open_missing=True)
        text = read_line(read)
        narration = ChatMessage(role=Role.SYSTEM, content=f"(In the game: {text})")
        await ctx.sessions.append(record.session_id, narration)
        await ctx.send(frame("npc.noted", read.request_id, session_id=record.session_id))


async def _memory(store: Store, card_id: str, player: str) -> Memory | None:
    raw = await store.get(memory_key(card_id, player))
    return Memory.from_json(raw) if isinstance(raw, str) else None
