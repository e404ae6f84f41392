"""The `moderation` plugin: mod.* frames in, verdicts and events out. Imports plugins.api,
protocol and this package only; never the server.

It keeps no moderation state of its own: policies, counters, strikes, holds and the audit log
live in the store the server lends (`ctx.store`, per plugin and tenant), and `mod.action`
events go through the server's topics (`mod:CHANNEL`). What it keeps is derived: compiled
policies (a cache of the store's) and the classifier.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from plugins.api import SCOPE_MODERATE, BasePlugin, PluginContext, PluginHost
from protocol import PluginFrame

from .audit import (
    DECISIONS,
    AuditQuery,
    hold_value,
    pending,
    query,
    record,
    record_all,
    take_hold,
)
from .batcher import MicroBatcher
from .cascade import Cascade, Message, TextMemo
from .categorize import Lexicon
from .coalesce import Coalescer
from .examples import Example, ExampleModel
from .expiry import HoldExpiry
from .judge import Judge, Ruling
from .policy import ChannelPolicy, PolicyError, parse_policy, policy_to_wire
from .profanity import ProfanityModel
from .rules import CompiledChannel
from .settings import ModerationSettings
from .state import PERMIT_S, grant_permit, strike
from .store import Store
from .verdict import Action, Verdict
from .wire import FrameReader, WireLimits, answer, verdict_payload

FRAME_TYPES = frozenset(
    {"mod.check", "mod.check_batch", "mod.config", "mod.review", "mod.audit", "mod.subscribe"}
)
Channel = tuple[str, str]  # (tenant, channel)
MAX_DECISIONS = 5000  # review decisions kept per channel as examples (the newest)


class ModerationPlugin(BasePlugin):
    name = "moderation"
    frame_types = FRAME_TYPES
    scopes = MappingProxyType(dict.fromkeys(FRAME_TYPES, SCOPE_MODERATE))

    def __init__(self, settings: Mapping[str, object] | None = None) -> None:
        self.settings = ModerationSettings.parse(settings or {})
        self._limits = WireLimits(
            max_batch_messages=self.settings.max_batch_messages,
            max_text_chars=self.settings.max_text_chars,
        )
        self._lexicon = Lexicon()
        self._default = CompiledChannel.compile(ChannelPolicy())
        # (the stored policy, compiled, its memo scope, when it was read from the store)
        self._compiled: dict[Channel, tuple[object, CompiledChannel, int, float]] = {}
        # Derived from the policy's examples and the store's decision log; rebuilt on change.
        self._example_models: dict[Channel, ExampleModel] = {}
        # One bound for all channels; entries are scoped by compiled policy (0: the default).
        self._memo = TextMemo()
        self._scopes = itertools.count(1)
        self._judge_model: str | None = None  # a model the host loaded for the judge
        self._judge = Judge(
            model="the server's model",
            max_inflight=self.settings.judge_max_inflight,
            timeout_s=self.settings.judge_timeout_s,
        )
        self._batcher: MicroBatcher | None = None
        # A context per tenant that has holds waiting: any of its frames' will do (the
        # expiry uses the tenant's store and topics only). Dropped with the tenant's last
        # waiting hold, so a closed connection's context is not kept past its holds.
        self._contexts: dict[str, PluginContext] = {}
        self._expiry = HoldExpiry(self._expire, on_idle=self._drop_context)
        self._loading: asyncio.Lock | None = None
        # Single checks of one channel that arrive in the same loop pass: one cascade pass.
        self._singles: Coalescer[Channel, tuple[PluginContext, Message], Verdict] = Coalescer(
            self._moderate_singles, max_batch=self.settings.max_batch_messages
        )

    async def start(self, host: PluginHost) -> None:
        if self.settings.judge_model:
            # A bad path fails the server's start with the host's ModelError, which says why.
            self._judge_model = await host.load_model(self.settings.judge_model)
            self._judge.model = self._judge_model
        await self._classifier()

    async def handle(self, frame: PluginFrame, ctx: PluginContext) -> None:
        reader = FrameReader(frame, self._limits)
        handler = {
            "mod.check": self._check,
            "mod.check_batch": self._check_batch,
            "mod.config": self._config,
            "mod.review": self._review,
            "mod.audit": self._audit,
            "mod.subscribe": self._subscribe,
        }[frame.type]
        await handler(reader, ctx)

    # --- checks -------------------------------------------------------------------------------

    async def _check(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        message = reader.message(reader.frame.payload)
        verdict = await self._singles.submit((ctx.tenant, channel), (ctx, message))
        payload = verdict_payload(message.message_id, verdict)
        await ctx.send(answer("mod.verdict", reader.request_id, **payload))

    async def _check_batch(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        messages = reader.messages()
        verdicts = await self._moderate(ctx, channel, messages)
        wire = [verdict_payload(m.message_id, v) for m, v in zip(messages, verdicts, strict=True)]
        await ctx.send(answer("mod.verdicts", reader.request_id, verdicts=wire))

    async def _moderate_singles(
        self, key: Channel, checks: Sequence[tuple[PluginContext, Message]]
    ) -> list[Verdict]:
        # Any of the frames' contexts will do: what _moderate uses of one is its tenant's
        # (store, score, spawn, emit), and they share the tenant. Each frame's own context
        # sends its verdict.
        ctx = checks[0][0]
        return await self._moderate(ctx, key[1], [message for _, message in checks])

    async def _moderate(
        self, ctx: PluginContext, channel: str, messages: Sequence[Message]
    ) -> list[Verdict]:
        store = self._store(ctx)
        compiled, scope = await self._channel(ctx, store, channel)
        cascade = Cascade(
            store=store,
            predict=(await self._classifier()).predict,
            lexicon=self._lexicon,
            judge=functools.partial(self._rule, ctx),
            memo=self._memo,
            memo_scope=scope,
            clock=time.time,
        )
        examples = await self._example_model(ctx, store, channel, compiled.policy)
        # The offences are committed without a sync of their own: every offence is an acting
        # verdict, whose audit entry is written durably below, and that write's sync covers
        # them (one fsync a batch on SQLite FULL, not two).
        decided = await cascade.decide(
            channel, compiled, messages, examples=examples, durable=False
        )
        # Acknowledged means durable: each action's audit entry and hold are written
        # (together: one commit on SQLite's group commit, whose fsync covers the strikes
        # committed above too) before the caller sends a verdict; subscribers hear of them
        # after that.
        acting = [
            (m, v) for m, v in zip(messages, decided.verdicts, strict=True)
            if v.action is not Action.ALLOW
        ]  # fmt: skip
        now = time.time()
        entries = [_verdict_entry(m, v, at=now) for m, v in acting]
        policy = compiled.policy
        values = [
            hold_value(channel, {**e, "expires_at": now + policy.hold_s}, hold_s=policy.hold_s)
            for (_, v), e in zip(acting, entries, strict=True)
            if v.action is Action.HOLD
        ]
        writes = [record_all(store, channel, entries)] if entries else []
        if values:
            writes.append(store.set_many(values))
        await asyncio.gather(*writes)
        if values:
            self._contexts[ctx.tenant] = ctx  # the expiry's, for the tenant's store and topics
            spawn = functools.partial(ctx.spawn, name="mod hold expiry")
            for message, verdict in acting:
                if verdict.action is Action.HOLD:
                    self._expiry.add(
                        ctx.tenant, channel, message.message_id, after_s=policy.hold_s,
                        spawn=spawn,
                    )  # fmt: skip
        for (_, verdict), entry in zip(acting, entries, strict=True):  # in order, for dashboards
            await self._emit(ctx, channel, {**entry, "silent": verdict.silent})
        return decided.verdicts

    def _drop_context(self, tenant: str) -> None:
        self._contexts.pop(tenant, None)

    async def _expire(self, tenant: str, channel: str, message_id: str) -> None:
        """Log and announce a hold nobody reviewed in time: the message stays out of chat."""
        ctx = self._contexts[tenant]
        store = self._store(ctx)
        held = await take_hold(store, channel, message_id, now=time.time(), expired=True)
        if held is None:  # reviewed in time
            return
        entry: dict[str, object] = {
            **_held_entry(held, message_id),
            "at": time.time(),
            "decision": "expired",
            "moderator": "",
            "action": Action.DELETE.value,
            "duration_s": 0,
        }
        await record(store, channel, entry)
        await self._emit(ctx, channel, entry)

    async def _example_model(
        self, ctx: PluginContext, store: Store, channel: str, policy: ChannelPolicy
    ) -> ExampleModel:
        model = self._example_models.get((ctx.tenant, channel))
        if model is None:
            model = await self._train(store, channel, policy)
            self._example_models[(ctx.tenant, channel)] = model
        return model

    async def _train(self, store: Store, channel: str, policy: ChannelPolicy) -> ExampleModel:
        examples = [Example(text=t, disallowed=False) for t in policy.examples_allowed]
        examples += [Example(text=t, disallowed=True) for t in policy.examples_disallowed]
        for entry in await store.range(_examples_key(channel)):
            if isinstance(entry, dict) and isinstance(entry.get("text"), str):
                examples.append(Example(text=entry["text"], disallowed=bool(entry["disallowed"])))
        return ExampleModel(examples)

    async def _retrain(self, ctx: PluginContext, channel: str) -> None:
        """After a moderator's decision: the channel's example classifier, trained again."""
        store = self._store(ctx)
        policy = (await self._channel(ctx, store, channel))[0].policy
        self._example_models[(ctx.tenant, channel)] = await self._train(store, channel, policy)

    async def _rule(self, ctx: PluginContext, policy: str, texts: Sequence[str]) -> Ruling:
        async def score(prompt: str, candidates: Sequence[str]) -> list[float]:
            return await ctx.score(prompt=prompt, candidates=candidates, model=self._judge_model)

        return await self._judge.rule(score, policy, texts)

    async def _classifier(self) -> MicroBatcher:
        """The batcher over the loaded model; the first caller loads it (start, or a frame
        that a server let in before start finished), the others wait for it."""
        if self._batcher is None:
            self._loading = self._loading or asyncio.Lock()
            async with self._loading:
                if self._batcher is None:
                    # Loading imports scikit-learn (seconds): off the event loop.
                    model = await asyncio.to_thread(ProfanityModel.load)
                    self._batcher = MicroBatcher(
                        model.predict_prob,
                        window_s=self.settings.batch_window_ms / 1000,
                        max_batch=self.settings.max_classifier_batch,
                    )
        return self._batcher

    # --- policy -------------------------------------------------------------------------------

    def _store(self, ctx: PluginContext) -> Store:
        return ctx.store

    async def _channel(
        self, ctx: PluginContext, store: Store, channel: str
    ) -> tuple[CompiledChannel, int]:
        """The channel's compiled policy and its memo scope."""
        key = (ctx.tenant, channel)
        cached = self._compiled.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[3] < self.settings.policy_refresh_s:
            return cached[1], cached[2]
        raw = await store.get(f"policy:{channel}")
        if not isinstance(raw, Mapping):
            raw = None
        if cached is not None and cached[0] == raw:
            self._compiled[key] = (raw, cached[1], cached[2], now)
            return cached[1], cached[2]
        if raw is None:
            compiled, scope = self._default, 0
        else:
            compiled, scope = CompiledChannel.compile(parse_policy(raw)), next(self._scopes)
        self._compiled[key] = (raw, compiled, scope, now)
        return compiled, scope

    async def _config(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        op = reader.choice("op", ("get", "set", "reset", "permit"), "get")
        store = self._store(ctx)
        if op == "permit":
            user_id = reader.need(reader.frame.payload, "user_id", str)
            await grant_permit(store, channel, user_id)
            await ctx.send(
                answer(
                    "mod.permitted",
                    reader.request_id,
                    channel=channel,
                    user_id=user_id,
                    expires_in_s=PERMIT_S,
                )
            )
            return
        if op in ("set", "reset"):
            raw = reader.get(reader.frame.payload, "policy", Mapping) if op == "set" else {}  # type: ignore[type-abstract]
            if raw is None:
                reader.fail("policy", "required")
            try:
                policy = parse_policy(raw or {})
                CompiledChannel.compile(policy)
            except PolicyError as exc:
                reader.fail(f"policy.{exc.field}", str(exc).partition(": ")[2])
            wire = policy_to_wire(policy)
            await store.set(f"policy:{channel}", wire)
            self._compiled.pop((ctx.tenant, channel), None)  # this replica sees it at once
            self._example_models.pop((ctx.tenant, channel), None)
            entry = {"at": time.time(), "kind": "config", "moderator": _moderator(reader, ctx)}
            await record(store, channel, entry)
        compiled, _ = await self._channel(ctx, store, channel)
        await ctx.send(
            answer(
                "mod.policy",
                reader.request_id,
                channel=channel,
                policy=policy_to_wire(compiled.policy),
            )
        )

    # --- review, audit, subscriptions ---------------------------------------------------------

    async def _review(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        op = reader.choice("op", ("list", *DECISIONS), "list")
        store = self._store(ctx)
        if op == "list":
            holds = await pending(store, channel, now=time.time())
            await ctx.send(answer("mod.holds", reader.request_id, channel=channel, holds=holds))
            return
        message_id = reader.need(reader.frame.payload, "message_id", str)
        held = await take_hold(store, channel, message_id, now=time.time())
        if held is None:
            reader.fail("message_id", f"no held message {message_id!r}: it expired or was reviewed")
        action, duration_s = Action.ALLOW, 0
        user_id = str(held.get("user_id", ""))
        if op == "deny":
            policy = (await self._channel(ctx, store, channel))[0].policy
            penalty = await strike(store, policy, channel, user_id, now=time.time())
            action, duration_s = Action.DELETE, 0
            if policy.escalation.enabled:
                action, duration_s = penalty.action, penalty.duration_s
        decision = {"text": str(held.get("text", "")), "disallowed": op == "deny"}
        await store.append(_examples_key(channel), decision, max_len=MAX_DECISIONS)
        ctx.spawn(self._retrain(ctx, channel), name=f"mod examples {channel}")
        entry: dict[str, object] = {
            **_held_entry(held, message_id),
            "at": time.time(),
            "decision": op,
            "moderator": _moderator(reader, ctx),
            "action": action.value,
            "duration_s": duration_s,
        }
        await record(store, channel, entry)
        await self._emit(ctx, channel, entry)
        await ctx.send(
            answer(
                "mod.reviewed",
                reader.request_id,
                channel=channel,
                message_id=message_id,
                decision=op,
                action=action.value,
                duration_s=duration_s,
            )
        )

    async def _audit(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        payload = reader.frame.payload
        limit = reader.get(payload, "limit", int)
        limit = 100 if limit is None else limit
        if not 1 <= limit <= self._limits.max_audit_entries:
            reader.fail("limit", f"must be 1 to {self._limits.max_audit_entries}")
        since = payload.get("since", 0.0)
        if isinstance(since, bool) or not isinstance(since, int | float):
            reader.fail("since", "must be a number (unix seconds)")
        q = AuditQuery(
            user_id=reader.get(payload, "user_id", str),
            action=reader.get(payload, "action", str),
            since=float(since),
            limit=limit,
        )
        entries = await query(self._store(ctx), channel, q)
        await ctx.send(answer("mod.log", reader.request_id, channel=channel, entries=entries))

    async def _subscribe(self, reader: FrameReader, ctx: PluginContext) -> None:
        channel = reader.channel()
        op = reader.choice("op", ("subscribe", "unsubscribe"), "subscribe")
        if op == "subscribe":
            ctx.subscribe(_topic(channel))
        else:
            ctx.unsubscribe(_topic(channel))
        subscribed = op == "subscribe"
        await ctx.send(
            answer("mod.subscribed", reader.request_id, channel=channel, subscribed=subscribed)
        )

    async def _emit(self, ctx: PluginContext, channel: str, event: Mapping[str, object]) -> None:
        await ctx.emit(_topic(channel), answer("mod.action", None, channel=channel, **event))


def _verdict_entry(message: Message, verdict: Verdict, *, at: float) -> dict[str, object]:
    """The audit entry of a verdict that acts (and, with expires_at, its hold)."""
    return {
        "at": at,
        "kind": "verdict",
        "message_id": message.message_id,
        "user_id": message.user_id,
        "user_name": message.user_name,
        "text": message.text,
        **verdict.to_wire(),
    }


def _held_entry(held: Mapping[str, object], message_id: str) -> dict[str, object]:
    """The review entry's fields that come from the held message."""
    return {
        "kind": "review",
        "message_id": message_id,
        "user_id": held.get("user_id", ""),
        "user_name": held.get("user_name", ""),
        "text": held.get("text", ""),
    }


def _examples_key(channel: str) -> str:
    return f"examples:{channel}"


def _topic(channel: str) -> str:
    return f"mod:{channel}"


def _moderator(reader: FrameReader, ctx: PluginContext) -> str:
    return reader.get(reader.frame.payload, "moderator", str) or ctx.connection_id
