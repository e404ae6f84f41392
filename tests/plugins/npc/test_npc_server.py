"""The npc plugin over a real server on a tiny random model: frames, sessions, barge-in,
prefill while typing, memory, cards at runtime, and typed errors that leave the server up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import encode, fast_config, raw_client, recv_frame, running_server
from tiny import TinyConfig, random_hf_tensors, write_gguf
from websockets.asyncio.client import ClientConnection

from plugins.npc.cards import load_card
from plugins.npc.markup import Action, Emotion, parse_span
from plugins.npc.prompt import system_prompt
from plugins.npc.records import SessionRecord, session_key
from plugins.npc.summary import Summary, summary_key
from protocol import Delta, Done, ErrorFrame, PluginFrame, Role, ServerFrame
from server.app import BanterboxServer

# A small card: the tiny model reads bytes, and its prompt must fit.
CARD = """
name = "Bo"
role = "a guard"
persona = "Terse."
[knowledge]
facts = ["The gate shuts at dusk."]
[[knowledge.lore]]
keywords = ["dragon"]
text = "A dragon sleeps under the hill."
[emotions]
calm = 0.2
mad = -0.5
[actions.give]
params = { item = ["key", "coin"], count = "int" }
[actions.wave]
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=4096)
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cards")
    (folder / "guard.toml").write_text(CARD)
    (folder / "cook.toml").write_text(CARD.replace('name = "Bo"', 'name = "Mo"'))
    return folder


def config(cards: Path) -> Any:
    return fast_config(
        plugins={"enabled": ["chat", "npc"], "settings": {"npc": {"cards": str(cards)}}},
        engine={"kv_cache_mib": 64},
    )


_NOT_FINAL = frozenset({"npc.emotion", "npc.action", "npc.session"})


async def frames_until_end(ws: ClientConnection, request_id: str) -> AsyncIterator[ServerFrame]:
    """Frames of one request up to its final one (done, error, an npc.* answer); npc.session
    is final only for npc.open (npc.say sends it first when it opens the session)."""
    while True:
        frame = await recv_frame(ws, timeout_s=60)
        if getattr(frame, "request_id", None) != request_id:
            continue
        yield frame
        if isinstance(frame, Done | ErrorFrame):
            return
        if isinstance(frame, PluginFrame) and (
            frame.type not in _NOT_FINAL or request_id.startswith("open")
        ):
            return


async def ask(ws: ClientConnection, frame: dict[str, object]) -> list[ServerFrame]:
    await ws.send(encode(frame))
    return [f async for f in frames_until_end(ws, str(frame["id"]))]


def store_of(server: BanterboxServer) -> Any:
    return server._plugin_hosts["npc"].store("default")


async def test_say_streams_speech_and_valid_events_then_done(model: Path, cards: Path) -> None:
    card = load_card(cards / "guard.toml")
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        for seed in range(6):
            say = {"type": "npc.say", "id": f"s{seed}", "npc": "guard", "player": "ann"}
            frames = await ask(ws, say | {"text": "Hi", "max_tokens": 40, "seed": seed})
            if seed == 0:
                assert isinstance(frames[0], PluginFrame) and frames[0].type == "npc.session"
                assert frames[0].payload["session_id"] == "npc:guard:ann"
            assert isinstance(frames[-1], Done)
            speech = "".join(f.text for f in frames if isinstance(f, Delta))
            assert "[" not in speech and "]" not in speech
            deltas = [f for f in frames if isinstance(f, Delta)]
            assert [d.seq for d in deltas] == list(range(len(deltas)))
            for f in frames:
                if isinstance(f, PluginFrame) and f.type == "npc.emotion":
                    assert f.payload["emotion"] in ("calm", "mad")
                    assert 0.0 <= float(f.payload["intensity"]) <= 1.0  # type: ignore[arg-type]
                elif isinstance(f, PluginFrame) and f.type == "npc.action":
                    assert f.payload["name"] in ("give", "wave")
                    if f.payload["name"] == "give":
                        args = f.payload["args"]
                        assert isinstance(args, dict) and args["item"] in ("key", "coin")
                        assert isinstance(args["count"], int)
            # The transcript keeps the reply's markup: every span in it is a valid event.
            transcript = server.sessions.get("default", "npc:guard:ann").messages
            reply = transcript[-1].content
            for span in _spans(reply):
                assert isinstance(parse_span(card, span, offset=0), Emotion | Action), span


def _spans(text: str) -> list[str]:
    spans = []
    while "[" in text:
        start = text.index("[")
        end = text.index("]", start)
        spans.append(text[start : end + 1])
        text = text[end + 1 :]
    return spans


async def test_interrupt_keeps_exactly_the_heard_prefix(model: Path, cards: Path) -> None:
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        say = {"type": "npc.say", "id": "long", "npc": "guard", "player": "bob", "text": "Talk"}
        await ws.send(encode(say | {"max_tokens": 400, "seed": 3}))
        speech = ""
        while len(speech) < 5:
            frame = await recv_frame(ws, timeout_s=60)
            if isinstance(frame, Delta):
                speech += frame.text
        await ws.send(
            encode({"type": "npc.interrupt", "id": "stop", "turn_id": "long", "heard_chars": 4})
        )
        answers: dict[str, PluginFrame] = {}
        while len(answers) < 2:
            frame = await recv_frame(ws, timeout_s=60)
            assert not isinstance(frame, Done | ErrorFrame), frame
            if isinstance(frame, Delta):
                speech += frame.text
            elif isinstance(frame, PluginFrame) and frame.type == "npc.interrupted":
                assert frame.request_id is not None
                answers[frame.request_id] = frame
        assert answers["stop"].payload == answers["long"].payload
        assert answers["stop"].payload["text"] == speech[:4]
        transcript = server.sessions.get("default", "npc:guard:bob").messages
        assert [m.role.value for m in transcript][-2:] == ["user", "assistant"]
        heard = _strip(transcript[-1].content)
        assert heard == speech[:4].strip()
        # Interrupting a turn that has ended is a typed error; the server keeps serving.
        late = await ask(
            ws, {"type": "npc.interrupt", "id": "late", "turn_id": "long", "heard_chars": 1}
        )
        assert isinstance(late[-1], ErrorFrame) and late[-1].code == "unknown_request"
        again = await ask(ws, say | {"id": "again", "max_tokens": 4})
        assert isinstance(again[-1], Done)


def _strip(markup: str) -> str:
    for span in _spans(markup):
        markup = markup.replace(span, "")
    return " ".join(markup.split())


async def test_typing_prefills_and_the_say_reuses_it(model: Path, cards: Path) -> None:
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        base = {"npc": "guard", "player": "cy"}
        first = await ask(ws, {"type": "npc.typing", "id": "t1", **base, "text": "Where is the"})
        assert first[-1].type == "npc.typed"  # type: ignore[union-attr]
        # A newer partial line supersedes the older one; the last one prefills.
        typed = await ask(
            ws, {"type": "npc.typing", "id": "t2", **base, "text": "Where is the gate"}
        )
        assert isinstance(typed[-1], PluginFrame) and typed[-1].payload["prefilled"] is True
        # Lines typed faster than they prefill: none errs, the newest one prefills.
        for index, partial in enumerate(("Where", "Where is", "Where is the gate")):
            await ws.send(
                encode({"type": "npc.typing", "id": f"q{index}", **base, "text": partial})
            )
        answers = {}
        while len(answers) < 3:
            frame = await recv_frame(ws, timeout_s=60)
            assert isinstance(frame, PluginFrame) and frame.type == "npc.typed", frame
            answers[frame.request_id] = frame.payload
        assert answers["q2"]["prefilled"] is True
        assert all(a["prefilled"] != a["superseded"] for a in answers.values())
        frames = await ask(
            ws,
            {"type": "npc.say", "id": "s", **base, "text": "Where is the gate?", "max_tokens": 3},
        )
        done = frames[-1]
        assert isinstance(done, Done) and done.usage.num_cached_tokens > 0
        assert server.sessions.get("default", "npc:guard:cy").messages[-2].content == (
            "Where is the gate?"
        )


async def test_lore_is_recorded_once_when_its_keyword_is_said(model: Path, cards: Path) -> None:
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        base = {"type": "npc.say", "npc": "guard", "player": "di", "max_tokens": 2}
        await ask(ws, base | {"id": "a", "text": "Nice gate."})
        await ask(ws, base | {"id": "b", "text": "Any dragon here?"})
        await ask(ws, base | {"id": "c", "text": "The dragon again."})
        messages = server.sessions.get("default", "npc:guard:di").messages
        lore = [i for i, m in enumerate(messages) if "A dragon sleeps" in m.content]
        assert len(lore) == 1 and messages[lore[0]].role.value == "system"
        assert messages[lore[0] + 1].content == "Any dragon here?"


async def test_memory_reaches_the_next_session_and_forget_removes_it(
    model: Path, cards: Path
) -> None:
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        base = {"npc": "guard", "player": "eve"}
        await ask(
            ws,
            {"type": "npc.say", "id": "a", **base, "text": "I am Eve, a smith.", "max_tokens": 2},
        )
        closed = await ask(ws, {"type": "npc.close", "id": "c", **base})
        memory = closed[-1].payload["memory"]  # type: ignore[union-attr]
        assert memory["facts"] == ["I am Eve, a smith."] and memory["num_sessions"] == 1
        # Typing into the closed session by its id: a typed error.
        gone = await ask(
            ws, {"type": "npc.typing", "id": "t", "session_id": "npc:guard:eve", "text": "x"}
        )
        assert isinstance(gone[-1], ErrorFrame) and gone[-1].code == "session_not_found"
        opened = await ask(ws, {"type": "npc.open", "id": "open", **base})
        assert opened[-1].payload["memory"]["facts"] == ["I am Eve, a smith."]  # type: ignore[union-attr,index]
        record = SessionRecord.from_json(await store_of(server).get(session_key("npc:guard:eve")))
        card = load_card(cards / "guard.toml")
        assert "I am Eve, a smith." in system_prompt(card, "eve", record.memory)
        edited = await ask(
            ws, {"type": "npc.memory", "id": "m", **base, "op": "set", "memory": {"trust": 0.9}}
        )
        assert edited[-1].payload["memory"]["trust"] == 0.9  # type: ignore[union-attr,index]
        forgot = await ask(ws, {"type": "npc.memory", "id": "f", **base, "op": "forget"})
        assert forgot[-1].payload["memory"] is None  # type: ignore[union-attr]
        got = await ask(ws, {"type": "npc.memory", "id": "g", **base, "op": "get"})
        assert got[-1].payload["memory"] is None  # type: ignore[union-attr]
        record = SessionRecord.from_json(await store_of(server).get(session_key("npc:guard:eve")))
        assert record.memory is None and record.player_lines == ()
        closed = await ask(ws, {"type": "npc.close", "id": "c2", **base})
        assert closed[-1].payload["memory"]["facts"] == []  # type: ignore[union-attr,index]


async def test_bad_input_gets_typed_errors_and_the_server_keeps_serving(
    model: Path, cards: Path
) -> None:
    async with running_server(model, config(cards)) as server, raw_client(server) as ws:
        cases: list[tuple[dict[str, object], str, str]] = [
            (
                {"type": "npc.say", "npc": "nobody", "player": "a", "text": "hi"},
                "invalid_field",
                "npc: no character card 'nobody'",
            ),
            ({"type": "npc.say", "npc": "guard", "player": "a"}, "invalid_field", "text"),
            ({"type": "npc.say", "session_id": "nope", "text": "hi"}, "session_not_found", "nope"),
            (
                {"type": "npc.define", "npc": "bad", "card": "name = 1"},
                "invalid_field",
                "card: bad.toml: name: must be a non-empty string",
            ),
            (
                {"type": "npc.define", "npc": "bad", "card": CARD.replace("calm", "Calm")},
                "invalid_field",
                "emotions.Calm",
            ),
            (
                {"type": "npc.memory", "npc": "guard", "player": "a", "op": "drop"},
                "invalid_field",
                "op",
            ),
            (
                {
                    "type": "npc.memory",
                    "npc": "guard",
                    "player": "a",
                    "op": "set",
                    "memory": {"trust": 5},
                },
                "invalid_field",
                "trust",
            ),
            (
                {"type": "npc.close", "npc": "guard", "player": "never"},
                "session_not_found",
                "never",
            ),
            (
                {"type": "npc.interrupt", "turn_id": "none", "heard_chars": 0},
                "unknown_request",
                "none",
            ),
        ]
        for index, (frame, code, message) in enumerate(cases):
            answer = await ask(ws, frame | {"id": f"bad{index}"})
            assert isinstance(answer[-1], ErrorFrame), (frame, answer)
            assert answer[-1].code == code and message in answer[-1].message, answer[-1]
        defined = await ask(
            ws, {"type": "npc.define", "id": "d", "npc": "gate_guard", "card": CARD}
        )
        assert defined[-1].payload == {"npc": "gate_guard", "name": "Bo"}  # type: ignore[union-attr]
        world = await ask(ws, {"type": "npc.state", "id": "w", "vars": {"time": "dusk"}})
        assert world[-1].payload == {"vars": {"time": "dusk"}}  # type: ignore[union-attr]
        say = {"type": "npc.say", "id": "ok", "npc": "gate_guard", "player": "a", "text": "hi"}
        frames = await ask(ws, say | {"max_tokens": 3})
        assert isinstance(frames[-1], Done)
        assert (
            "time = dusk" in server.sessions.get("default", "npc:gate_guard:a").messages[0].content
        )
        noted = await ask(
            ws,
            {
                "type": "npc.event",
                "id": "e",
                "npc": "gate_guard",
                "player": "a",
                "text": "A horn sounds.",
            },
        )
        assert noted[-1].type == "npc.noted"  # type: ignore[union-attr]


async def _scene_frames(ws: ClientConnection, num_lines: int) -> list[tuple[str, object]]:
    """Scene frames until NUM_LINES npc.scene.line frames came; (type, payload) each."""
    seen: list[tuple[str, object]] = []
    while sum(1 for kind, _ in seen if kind == "npc.scene.line") < num_lines:
        frame = await recv_frame(ws, timeout_s=60)
        answer = isinstance(frame, PluginFrame) and frame.type in ("npc.scene", "npc.scene.done")
        if isinstance(frame, PluginFrame) and "scene_id" in frame.payload and not answer:
            seen.append((frame.type, dict(frame.payload)))
    return seen


async def test_a_scene_reaches_every_subscribed_connection(model: Path, cards: Path) -> None:
    async with (
        running_server(model, config(cards)) as server,
        raw_client(server) as a,
        raw_client(server) as b,
    ):
        opening = {"type": "npc.scene.open", "scene_id": "inn", "npcs": ["guard", "cook"]}
        opened = await ask(a, opening | {"id": "open-a", "players": ["ann", "bob"]})
        assert opened[-1].payload["npcs"] == ["guard", "cook"]  # type: ignore[union-attr]
        joined = await ask(b, {"type": "npc.scene.open", "id": "open-b", "scene_id": "inn"})
        assert joined[-1].payload["players"] == ["ann", "bob"]  # type: ignore[union-attr]
        await a.send(
            encode({"type": "npc.scene.advance", "id": "adv", "scene_id": "inn", "lines": 2})
        )
        seen_a, seen_b = await asyncio.gather(_scene_frames(a, 2), _scene_frames(b, 2))
        assert seen_a == seen_b
        speakers = [p["speaker"] for kind, p in seen_a if kind == "npc.scene.line"]  # type: ignore[index]
        assert speakers == ["guard", "cook"]  # the director lets each NPC speak in turn
        assert all("[" not in str(p["text"]) for kind, p in seen_a if kind == "npc.scene.delta")  # type: ignore[index]
        # A player's line to one NPC: the line and the answer reach both connections.
        say = {"type": "npc.scene.say", "id": "say", "scene_id": "inn", "player": "bob"}
        await b.send(encode(say | {"text": "Mo, any stew?", "to": "cook"}))
        seen_a, seen_b = await asyncio.gather(_scene_frames(a, 2), _scene_frames(b, 2))
        assert seen_a == seen_b
        lines = [p for kind, p in seen_a if kind == "npc.scene.line"]
        assert [p["speaker"] for p in lines] == ["bob", "cook"]  # type: ignore[index]
        missing = await ask(a, {"type": "npc.scene.advance", "id": "x", "scene_id": "nowhere"})
        assert isinstance(missing[-1], ErrorFrame) and missing[-1].code == "invalid_field"


WINDOW = 1024
SESSION = "npc:guard:ann"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1k context: a few lines of the tiny model (it reads bytes) fill it."""
    config = TinyConfig(max_position=WINDOW)
    folder = tmp_path_factory.mktemp("small-model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


def summary_config(cards: Path) -> Any:
    npc = {"cards": str(cards), "summarize_at": 0.5, "keep_recent": 2, "summary_max_tokens": 24}
    return fast_config(
        plugins={"enabled": ["chat", "npc"], "settings": {"npc": npc}},
        engine={"kv_cache_mib": 64},
    )


async def test_a_long_history_is_summarised_and_never_refused(
    cards: Path, small_model: Path
) -> None:
    """Older lines are summarised in the background and left out of the prompt; the stored
    transcript stays exact, and no turn fails for the history's length."""
    base = {"npc": "guard", "player": "ann"}
    config = summary_config(cards)
    async with running_server(small_model, config) as server, raw_client(server) as ws:
        store = store_of(server)
        said = []
        for index in range(10):  # about 3x the window of narration and lines
            event = f"Event {index}: " + "the rain goes on and the road floods " * 3
            noted = await ask(ws, {"type": "npc.event", "id": f"e{index}", **base, "text": event})
            assert isinstance(noted[-1], PluginFrame) and noted[-1].type == "npc.noted"
            typed = await ask(ws, {"type": "npc.typing", "id": f"t{index}", **base, "text": "Go"})
            assert isinstance(typed[-1], PluginFrame) and typed[-1].type == "npc.typed", typed
            line = f"Line {index}: where does the road go?"
            frames = await ask(
                ws, {"type": "npc.say", "id": f"s{index}", **base, "text": line, "max_tokens": 8}
            )
            done = frames[-1]
            assert isinstance(done, Done), done  # never prompt_too_long
            assert done.usage is not None and done.usage.num_prompt_tokens < WINDOW
            said += [event, line]
        # The background summary landed: it covers the older lines, the newest stay verbatim.
        raw = await store.get(summary_key(SESSION))
        assert isinstance(raw, str)
        summary = Summary.from_json(raw)
        assert summary.text and summary.upto > 0
        # The stored transcript is exact: every narration and line, in order, none cut.
        messages = server.sessions.get("default", SESSION).messages
        kept = [m.content for m in messages if m.role is Role.USER or "In the game" in m.content]
        assert kept == [t if t.startswith("Line") else f"(In the game: {t})" for t in said]
        assert summary.upto < len(messages)
