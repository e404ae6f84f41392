"""A test plugin written only against plugins/api.py v2 (and protocol/): every capability once.

Frames (all answered with one `probe.*` frame carrying the request id, unless said otherwise):
- `probe.remember` {key, value}: store set + incr + append → `probe.remembered` {count, log}
- `probe.recall` {key} → `probe.value` {value}
- `probe.follow` {topic}: subscribe this connection → `probe.following`
- `probe.announce` {topic, text}: emit `probe.news` {text} → `probe.announced` {reached}
- `probe.later` {topic, text}: spawn a task that emits `probe.news` → `probe.spawned`
- `probe.ask` {text, system, choices}: a turn under `system` and a choice constraint; its
  deltas and done are forwarded, then `probe.answer` {text}
- `probe.judge` {prompt, candidates} → `probe.scores` {logprobs}
- `probe.closed` → `probe.closed` {sessions}: the sessions `on_session_closed` saw
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType

from plugins.api import (
    SCOPE_GENERATE,
    BasePlugin,
    Constraint,
    GenerateSpec,
    PluginContext,
    PluginHost,
)
from protocol import ChatMessage, Delta, PluginFrame, Role
from protocol.payload import PayloadReader, array, list_of, string

TEXT = string(max_chars=1000, non_empty=True)


def _frame(frame_type: str, request_id: str | None, **payload: object) -> PluginFrame:
    return PluginFrame(type=frame_type, request_id=request_id, payload=MappingProxyType(payload))


class ProbePlugin(BasePlugin):
    name = "probe"
    frame_types = frozenset(
        f"probe.{verb}"
        for verb in ("remember", "recall", "follow", "announce", "later", "ask", "judge", "closed")
    )
    scopes = MappingProxyType(dict.fromkeys(frame_types, SCOPE_GENERATE))

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        self.host: PluginHost | None = None
        self.stopped = False

    async def start(self, host: PluginHost) -> None:
        self.host = host

    async def stop(self) -> None:
        self.stopped = True

    async def on_session_closed(self, tenant: str, session_id: str) -> None:
        assert self.host is not None
        await self.host.store(tenant).append("closed", session_id)

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        read = PayloadReader(frame)
        rid = read.request_id
        verb = frame.type.removeprefix("probe.")
        if verb == "remember":
            key = read.required("key", TEXT)
            await ctx.store.set(key, read.required("value", TEXT), ttl_s=60)
            count = await ctx.store.incr("count")
            await ctx.store.append("log", key, max_len=3)
            log = await ctx.store.range("log")
            await ctx.send(_frame("probe.remembered", rid, count=count, log=log))
        elif verb == "recall":
            value = await ctx.store.get(read.required("key", TEXT))
            await ctx.send(_frame("probe.value", rid, value=value))
        elif verb == "follow":
            ctx.subscribe(read.required("topic", TEXT))
            await ctx.send(_frame("probe.following", rid))
        elif verb == "announce":
            news = _frame("probe.news", None, text=read.required("text", TEXT))
            reached = await ctx.emit(read.required("topic", TEXT), news)
            await ctx.send(_frame("probe.announced", rid, reached=reached))
        elif verb == "later":
            topic, text = read.required("topic", TEXT), read.required("text", TEXT)
            ctx.spawn(self._announce_later(ctx, topic, text), name="later")
            await ctx.send(_frame("probe.spawned", rid))
        elif verb == "ask":
            await self._ask(read, ctx)
        elif verb == "judge":
            candidates = read.required("candidates", list_of(TEXT, max_items=8, min_items=1))
            logprobs = await ctx.score(prompt=read.required("prompt", TEXT), candidates=candidates)
            await ctx.send(_frame("probe.scores", rid, logprobs=logprobs))
        else:
            closed = await ctx.store.range("closed")
            await ctx.send(_frame("probe.closed", rid, sessions=closed))

    async def _announce_later(self, ctx: PluginContext, topic: str, text: str) -> None:
        await asyncio.sleep(0.05)
        await ctx.emit(topic, _frame("probe.news", None, text=text))

    async def _ask(self, read: PayloadReader, ctx: PluginContext) -> None:
        choices = read.required("choices", array(max_items=8, min_items=1))
        spec = GenerateSpec(
            request_id=read.request_id,
            messages=(ChatMessage(role=Role.USER, content=read.required("text", TEXT)),),
            system=read.required("system", TEXT),
            constraint=Constraint.choice([str(c) for c in choices]),
            max_tokens=16,
        )
        text = []
        async for event in ctx.generate(spec):
            if isinstance(event, Delta):
                text.append(event.text)
            await ctx.send(event)
        await ctx.send(_frame("probe.answer", read.request_id, text="".join(text)))
