"""The moderation plugin over a real server: every mod.* frame, typed errors, subscriptions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from server_harness import encode, fast_config, raw_client, recv_frame, running_server
from websockets.asyncio.client import ClientConnection

from protocol import ErrorFrame, PluginFrame

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server_harness import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


def config() -> Any:
    return fast_config(plugins={"enabled": ["chat", "moderation"]})


async def ask(ws: ClientConnection, frame_type: str, rid: str, **payload: object) -> PluginFrame:
    await ws.send(encode({"type": frame_type, "id": rid, **payload}))
    while True:
        frame = await recv_frame(ws, timeout_s=30)
        if getattr(frame, "request_id", None) == rid:
            if isinstance(frame, ErrorFrame):
                raise AssertionError(f"error {frame.code}: {frame.message}")
            assert isinstance(frame, PluginFrame)
            return frame


async def error_of(
    ws: ClientConnection, frame_type: str, rid: str, **payload: object
) -> ErrorFrame:
    await ws.send(encode({"type": frame_type, "id": rid, **payload}))
    while True:
        frame = await recv_frame(ws, timeout_s=30)
        if getattr(frame, "request_id", None) == rid:
            assert isinstance(frame, ErrorFrame), frame
            return frame


def user(uid: str = "u1", roles: tuple[str, ...] = ()) -> Mapping[str, object]:
    return {"id": uid, "name": uid.upper(), "roles": list(roles)}


async def check(
    ws: ClientConnection, text: str, *, rid: str, uid: str = "u1", roles: tuple[str, ...] = (),
    channel: str = "c1",
) -> Mapping[str, object]:  # fmt: skip
    frame = await ask(
        ws, "mod.check", rid, channel=channel, user=user(uid, roles), text=text, message_id=rid
    )
    assert frame.type == "mod.verdict" and frame.payload["message_id"] == rid
    return frame.payload


async def set_policy(ws: ClientConnection, policy: Mapping[str, object], rid: str = "cfg") -> None:
    frame = await ask(ws, "mod.config", rid, channel="c1", op="set", policy=policy)
    assert frame.type == "mod.policy"


async def actions(ws: ClientConnection, *texts: str, uid: str = "u1") -> list[object]:
    found = []
    for n, text in enumerate(texts):
        found.append((await check(ws, text, rid=f"{uid}-{n}", uid=uid))["action"])
    return found


async def test_check_verdict_shape_and_welcome(model: Path) -> None:
    async with running_server(model, config()) as server, raw_client(server) as ws:
        verdict = await check(ws, "gg that was insane", rid="a")
        assert set(verdict) == {
            "message_id", "action", "score", "categories", "reasons", "duration_s"
        }  # fmt: skip
        assert verdict["action"] == "allow" and verdict["reasons"] == []
        bad = await check(ws, "k.y.s you noob", rid="b")
        assert bad["action"] in ("delete", "timeout")
        assert 0.0 <= float(bad["score"]) <= 1.0  # type: ignore[arg-type]
        categories = bad["categories"]
        assert isinstance(categories, Mapping) and categories["self_harm"] >= 0.9
        reasons = bad["reasons"]
        assert isinstance(reasons, list)
        assert {k: reasons[0][k] for k in ("source", "name")} == {
            "source": "classifier",
            "name": "self_harm",
        }


async def test_batch_obfuscation_exemptions_and_bad_frames(model: Path) -> None:
    async with running_server(model, config()) as server, raw_client(server) as ws:
        texts = ["hello chat", "f.u.c.k you", "ph4ggot", "ur mom", "kyyys", "nice clutch"]
        messages = [
            {"message_id": f"m{n}", "user": user(f"v{n}"), "text": text}
            for n, text in enumerate(texts)
        ]
        messages.append({"message_id": "mod", "user": user("boss", ("moderator",)), "text": "kys"})
        frame = await ask(ws, "mod.check_batch", "b1", channel="c1", messages=messages)
        assert frame.type == "mod.verdicts"
        verdicts = frame.payload["verdicts"]
        assert isinstance(verdicts, list)
        assert [v["message_id"] for v in verdicts] == [m["message_id"] for m in messages]
        flagged = [v["action"] != "allow" for v in verdicts]
        assert flagged == [False, True, True, True, True, False, False]
        for payload, field in (
            ({"channel": "c1", "text": "x", "message_id": "m"}, "user"),
            ({"channel": "c1", "user": {"id": "u"}, "message_id": "m"}, "text"),
            ({"channel": "c1", "user": {"id": "u"}, "text": 5, "message_id": "m"}, "text"),
            ({"user": {"id": "u"}, "text": "x", "message_id": "m"}, "channel"),
            ({"channel": "c1", "user": {"id": "u", "roles": [1]}, "text": "x", "message_id": "m"},
             "user.roles"),
        ):  # fmt: skip
            error = await error_of(ws, "mod.check", f"bad-{field}", **payload)
            assert error.code == "invalid_field" and field in error.message
        too_many = [messages[0]] * 1001
        error = await error_of(ws, "mod.check_batch", "big", channel="c1", messages=too_many)
        assert error.code == "limit_exceeded"
        error = await error_of(ws, "mod.check_batch", "bad-item", channel="c1", messages=[5])
        assert error.code == "invalid_field" and "messages[0]" in error.message


async def test_rules_filters_windows_escalation_and_bad_configs(model: Path) -> None:
    async with running_server(model, config()) as server, raw_client(server) as ws:
        await set_policy(
            ws,
            {
                "blocked_terms": ["pineapple", "*spoil*", "re:free\\s+v-?bucks"],
                "permitted_terms": ["spoilers tag"],
                "escalation": {"enabled": False},
                "duplicates": {"limit": 1, "window_s": 60},
                "flood": {"limit": 4, "window_s": 60, "action": "timeout", "duration_s": 30},
                "link_allow": ["youtube.com"],
            },
        )
        got = await actions(ws, "P1NEAPPLE", "no spoilers pls", "FREE VBUCKS", uid="r")
        assert got == ["delete"] * 3
        assert await actions(ws, "use the spoilers tag", uid="p") == ["allow"]
        verdict = await check(ws, "THIS IS THE BEST STREAM IN THE WORLD", rid="caps", uid="c")
        assert verdict["reasons"][0]["name"] == "caps"  # type: ignore[index]
        assert await actions(ws, "watch youtube.com/x", "buy at evil.ru", uid="l") == [
            "allow", "delete"
        ]  # fmt: skip
        assert await actions(ws, "same line", "same line", uid="d") == ["allow", "delete"]
        flood = await actions(ws, *(f"line {n}" for n in range(6)), uid="f")
        assert flood == ["allow"] * 4 + ["timeout"] * 2
        await set_policy(ws, {"blocked_terms": ["noob"], "escalation": {"timeouts_s": [5, 60]}})
        verdicts = [await check(ws, "noob", rid=f"e{n}", uid="esc") for n in range(3)]
        assert [(v["action"], v["duration_s"]) for v in verdicts] == [
            ("timeout", 5), ("timeout", 60), ("ban", 0)
        ]  # fmt: skip
        for policy, field in (
            ({"blocked_terms": ["re:(a+)\\1"]}, "policy.blocked_terms"),
            ({"blocked_terms": ["re:((a{100}){100}){100}"]}, "policy.blocked_terms"),
            ({"filters": {"caps": {"limit": "lots"}}}, "policy.filters.caps.limit"),
            ({"categories": {"taunt": 9}}, "policy.categories.taunt.level"),
            ({"nope": 1}, "policy.nope"),
        ):
            error = await error_of(ws, "mod.config", "bad", channel="c1", op="set", policy=policy)
            assert error.code == "invalid_field" and field in error.message, error.message
        error = await error_of(ws, "mod.config", "op", channel="c1", op="explode")
        assert error.code == "invalid_field"
        current = await ask(ws, "mod.config", "get", channel="c1")
        policy = current.payload["policy"]
        assert isinstance(policy, Mapping) and policy["blocked_terms"] == ["noob"]
        # A catastrophic pattern is linear under re2: it is accepted and answers at once.
        await set_policy(ws, {"blocked_terms": ["re:(x+x+)+y"]}, rid="cat")
        verdict = await check(ws, "x" * 3000, rid="xs", uid="x")
        names = {r["name"] for r in verdict["reasons"]}  # type: ignore[attr-defined]
        assert "blocked_term" not in names and "length" in names


async def test_holds_review_expiry_audit_and_subscriptions(model: Path) -> None:
    async with (
        running_server(model, config()) as server,
        raw_client(server) as bot,
        raw_client(server) as dashboard,
    ):
        frame = await ask(dashboard, "mod.subscribe", "s", channel="c1")
        assert frame.type == "mod.subscribed" and frame.payload["subscribed"] is True
        await set_policy(bot, {"hold_s": 1.0, "escalation": {"timeouts_s": [10]}})
        for n, text in enumerate(("your mom", "you are so annoying", "ur dad left")):
            verdict = await check(bot, text, rid=f"h{n}", uid=f"v{n}")
            assert verdict["action"] == "hold", verdict
            event = await recv_frame(dashboard)
            assert isinstance(event, PluginFrame) and event.type == "mod.action"
            assert event.payload["message_id"] == f"h{n}" and event.payload["action"] == "hold"
        holds = await ask(dashboard, "mod.review", "l", channel="c1", op="list")
        assert [h["message_id"] for h in holds.payload["holds"]] == ["h0", "h1", "h2"]  # type: ignore[union-attr]
        ok = await ask(dashboard, "mod.review", "a", channel="c1", op="approve", message_id="h0")
        assert ok.payload["decision"] == "approve" and ok.payload["action"] == "allow"
        no = await ask(
            dashboard, "mod.review", "d", channel="c1", op="deny", message_id="h1", moderator="ann"
        )
        assert (no.payload["action"], no.payload["duration_s"]) == ("timeout", 10)
        again = await error_of(
            dashboard, "mod.review", "a2", channel="c1", op="approve", message_id="h0"
        )
        assert again.code == "invalid_field" and "expired or was reviewed" in again.message
        # Past hold_s nobody reviewed h2: subscribers hear that it expired.
        while True:
            event = await recv_frame(dashboard)
            assert isinstance(event, PluginFrame) and event.type == "mod.action"
            if event.payload.get("decision") == "expired":
                break
        assert event.payload["message_id"] == "h2" and event.payload["action"] == "delete"
        expired = await error_of(
            dashboard, "mod.review", "x", channel="c1", op="deny", message_id="h2"
        )
        assert expired.code == "invalid_field"
        log = await ask(bot, "mod.audit", "q", channel="c1")
        entries = log.payload["entries"]
        assert isinstance(entries, list)
        kinds = [(e["kind"], e.get("decision"), e.get("message_id")) for e in entries]
        assert kinds[:3] == [
            ("review", "expired", "h2"),
            ("review", "deny", "h1"),
            ("review", "approve", "h0"),
        ]
        mine = await ask(bot, "mod.audit", "q2", channel="c1", user_id="v1", limit=10)
        assert {e["message_id"] for e in mine.payload["entries"]} == {"h1"}  # type: ignore[union-attr]
        denied = await ask(bot, "mod.audit", "q3", channel="c1", action="deny")
        assert [e["moderator"] for e in denied.payload["entries"]] == ["ann"]  # type: ignore[union-attr]
        error = await error_of(bot, "mod.audit", "q4", channel="c1", limit=0)
        assert error.code == "invalid_field"
        # The bot is not subscribed: it saw only its own answers; unsubscribing stops events.
        await ask(dashboard, "mod.subscribe", "u", channel="c1", op="unsubscribe")
        await check(bot, "your mom again", rid="after", uid="v9")
        with pytest.raises(TimeoutError):
            await recv_frame(dashboard, timeout_s=0.5)
        # Policy by example: two and two examples in the policy, and the two reviews above
        # (approved "your mom", denied "you are so annoying") make three of each.
        await set_policy(
            bot,
            {
                "examples_allowed": ["love the stream", "nice play"],
                "examples_disallowed": ["go left now", "use your ult"],
                "examples_threshold": 0.8,
            },
            rid="ex",
        )
        verdict = await check(bot, "go left and use your ult", rid="bs", uid="bs")
        assert verdict["action"] == "hold"
        (reason,) = verdict["reasons"]  # type: ignore[misc]
        assert reason["name"] == "examples" and "3 allowed, 3 disallowed" in reason["detail"]


async def test_single_checks_sent_at_once_are_answered_each_and_counted_in_arrival_order(
    model: Path,
) -> None:
    """Checks that arrive together go through the cascade as one batch: each frame still gets
    its own verdict under its own id, and a user's flood window and strikes count its
    messages in the order they came, as one at a time would."""
    async with running_server(model, config()) as server:
        plugin = server.plugins.by_type["mod.check"]
        async with raw_client(server) as ws, raw_client(server) as other:
            await set_policy(
                ws,
                {
                    "blocked_terms": ["noob"],
                    "escalation": {"timeouts_s": [5, 60, 600], "ban": True},
                    "flood": {"limit": 3, "window_s": 60, "action": "timeout", "duration_s": 30},
                },
            )
            texts = ["hi", "noob", "hello", "noob", "gg", "noob", "wp"]
            frames = [
                {"type": "mod.check", "id": f"b{n}", "channel": "c1", "message_id": f"b{n}",
                 "user": user("burst"), "text": text}
                for n, text in enumerate(texts)
            ]  # fmt: skip
            others = [
                {"type": "mod.check", "id": f"o{n}", "channel": "c1", "message_id": f"o{n}",
                 "user": user(f"calm-{n}"), "text": "noob"}
                for n in range(3)
            ]  # fmt: skip
            batches_before = plugin._singles.num_batches  # type: ignore[attr-defined]
            for frame in frames:  # no await of an answer in between: one burst
                await ws.send(encode(frame))
            for frame in others:
                await other.send(encode(frame))
            got: dict[str, Mapping[str, object]] = {}
            for socket, count in ((ws, len(frames)), (other, len(others))):
                while len([k for k in got if k[0] == ("b" if socket is ws else "o")]) < count:
                    frame = await recv_frame(socket, timeout_s=30)
                    assert isinstance(frame, PluginFrame) and frame.type == "mod.verdict", frame
                    assert frame.payload["message_id"] == frame.request_id
                    got[str(frame.request_id)] = frame.payload
            batches = plugin._singles.num_batches - batches_before  # type: ignore[attr-defined]
        assert batches < len(frames) + len(others)  # coalesced, not one cascade pass each
        burst = [(got[f"b{n}"]["action"], got[f"b{n}"]["duration_s"]) for n in range(len(texts))]
        # The first "noob" is strike 1; from the fourth message on the flood limit (3) is
        # passed, and each of those is an offence too: strikes 2, 3, then the ban.
        assert burst == [
            ("allow", 0), ("timeout", 5), ("allow", 0), ("timeout", 60), ("timeout", 600),
            ("ban", 0), ("ban", 0),
        ]  # fmt: skip
        assert [got[f"o{n}"]["action"] for n in range(3)] == ["timeout"] * 3  # strike 1 each
        assert {got[f"o{n}"]["duration_s"] for n in range(3)} == {5}
