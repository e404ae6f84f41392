"""Summaries of a long session's older lines, so its prompt fits the context. plugins.api only.

The stored transcript stays exact; the prompt leaves its first `upto` messages out and the
system prompt carries a summary of them instead. Summaries fold older lines in chunks small
enough for the summary's own prompt to fit, each one an engine turn at background priority
through the plugin host (no connection needed, so a summary outlives the say that asked).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from plugins.api import GenerateSpec, PluginContext, PluginHost, Store
from protocol import ChatMessage, Delta, ErrorCode, Priority, ProtocolError, Role, Sampling

from .cards import Card
from .prompt import strip_markup
from .records import session_key

INSTRUCTIONS = (
    "You keep the notes of a conversation in a game. Write one short paragraph in the third "
    "person with what matters later: facts the player told, promises, what happened, and how "
    "the characters feel about each other. Write only the notes."
)


@dataclass(frozen=True, kw_only=True)
class Summary:
    """What stands for a session's first `upto` transcript messages in its prompt."""

    text: str = ""
    upto: int = 0

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "upto": self.upto})

    @classmethod
    def from_json(cls, raw: str) -> Summary:
        data = json.loads(raw)
        return cls(text=str(data["text"]), upto=int(data["upto"]))


def summary_block(summary: Summary) -> str:
    """The part of the system prompt after the card and player parts ("" without one)."""
    if not summary.text:
        return ""
    return f"\nEarlier in this conversation (your notes): {summary.text}\n"


def render_lines(card: Card, player: str, messages: Sequence[ChatMessage]) -> str:
    """Transcript messages as plain lines for the summariser: who said what, no markup."""
    lines = []
    for message in messages:
        if message.role is Role.USER:
            lines.append(f"{player}: {message.content}")
        elif message.role is Role.ASSISTANT:
            lines.append(f"{card.name}: {strip_markup(message.content)}")
        else:
            lines.append(message.content)
    return "\n".join(lines)


async def fold(
    host: PluginHost,
    tenant: str,
    *,
    card: Card,
    player: str,
    previous: Summary,
    messages: Sequence[ChatMessage],
    end: int,
    budget_chars: int,
    max_tokens: int,
) -> Summary:
    """The summary of the transcript's first END messages, from PREVIOUS (of its first
    `previous.upto`) and MESSAGES (the whole transcript). Each step's prompt holds at most
    BUDGET_CHARS characters of notes and lines; a step refused as too long halves it."""
    text, upto = previous.text, previous.upto
    while upto < end:
        chunk: list[ChatMessage] = []
        size = len(text)
        while upto < end and (not chunk or size + len(messages[upto].content) <= budget_chars):
            content = messages[upto].content[:budget_chars]
            chunk.append(ChatMessage(role=messages[upto].role, content=content))
            size += len(content)
            upto += 1
        try:
            text = await _notes(host, tenant, card, player, text, chunk, max_tokens)
        except ProtocolError as exc:
            if exc.code is not ErrorCode.PROMPT_TOO_LONG or budget_chars < 64:
                raise
            budget_chars //= 2
            upto -= len(chunk)  # again, in smaller steps
            text = text[: budget_chars // 2]
    return Summary(text=text[: max(64, budget_chars // 2)], upto=upto)


async def _notes(
    host: PluginHost,
    tenant: str,
    card: Card,
    player: str,
    previous: str,
    chunk: Sequence[ChatMessage],
    max_tokens: int,
) -> str:
    head = f"Notes so far: {previous}\n\n" if previous else ""
    ask = f"{head}Then:\n{render_lines(card, player, chunk)}\n\nThe notes, updated:"
    spec = GenerateSpec(
        request_id="npc-summary",
        system=INSTRUCTIONS,
        messages=(ChatMessage(role=Role.USER, content=ask),),
        sampling=Sampling(temperature=0.0),
        max_tokens=max_tokens,
        priority=Priority.BACKGROUND,
        record=False,
    )
    pieces = [event.text async for event in host.generate(tenant, spec) if isinstance(event, Delta)]
    # A model that says nothing still leaves the old notes and the lines' gist.
    fallback = f"{previous} {render_lines(card, player, chunk)}"
    return " ".join("".join(pieces).split()) or " ".join(fallback.split())[-400:]


def summary_key(session_id: str) -> str:
    return f"summary/{session_id}"


class Summaries:
    """When a session's prompt nears the context window, its older lines are summarised in
    the background; a prompt refused as too long makes room in the foreground first."""

    def __init__(self, *, summarize_at: float, keep_recent: int, max_tokens: int) -> None:
        self.summarize_at = summarize_at  # of the context window: start a summary past it
        self.keep_recent = keep_recent  # newest messages always kept word for word
        self.max_tokens = max_tokens  # a summary's length cap
        self._running: set[tuple[str, str]] = set()  # (tenant, session id)

    @staticmethod
    async def current(store: Store, session_id: str) -> Summary:
        raw = await store.get(summary_key(session_id))
        return Summary.from_json(raw) if isinstance(raw, str) else Summary()

    @staticmethod
    async def forget(store: Store, session_id: str) -> None:
        await store.delete(summary_key(session_id))

    def after_turn(
        self, ctx: PluginContext, card: Card, player: str, session_id: str, num_tokens: int
    ) -> None:
        """A turn of NUM_TOKENS (prompt and reply) ended: summarise in the background when
        the next one would come near the window."""
        key = (ctx.tenant, session_id)
        if key in self._running or num_tokens < self.summarize_at * ctx.host.max_prompt_tokens():
            return
        self._running.add(key)

        async def work() -> None:
            try:
                await self.make_room(ctx, card, player, session_id, keep=self.keep_recent)
            finally:
                self._running.discard(key)

        ctx.spawn(work(), name=f"summary:{session_id}")

    async def make_room(
        self, ctx: PluginContext, card: Card, player: str, session_id: str, *, keep: int
    ) -> Summary:
        """Summarise all but the newest KEEP messages (what a summary already covers stays)."""
        messages = await ctx.sessions.transcript(session_id)
        previous = await self.current(ctx.store, session_id)
        end = len(messages) - keep
        if end <= previous.upto:
            return previous
        summary = await fold(
            ctx.host,
            ctx.tenant,
            card=card,
            player=player,
            previous=previous,
            messages=messages,
            end=end,
            budget_chars=max(64, ctx.host.max_prompt_tokens() // 2),
            max_tokens=self.max_tokens,
        )
        # The session ended (or another summary landed) while this ran: keep out of its way.
        ended = await ctx.store.get(session_key(session_id)) is None
        if not ended and await self.current(ctx.store, session_id) == previous:
            await ctx.store.set(summary_key(session_id), summary.to_json())
        return summary
