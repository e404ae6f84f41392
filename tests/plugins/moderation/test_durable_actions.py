"""A moderation action is committed before its verdict: kill -9 of a real `banterbox serve`
on SQLite right after the verdicts arrive, then the store and a restarted server have every
action's audit entry, hold and strike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server_harness import write_tiny_model

from bench.procs import ServerProcess
from server.client import BanterboxClient
from server.plugin_store import namespace
from server.store import SqliteStore

SERVER_ARGS = ("--threads", "1", "--kv-cache-mib", "16")
# Acted on by the default policy: two holds, a timeout with a strike, and allowed chat.
TEXTS = (
    "gg that was insane",
    "you're terrible at this game, just quit",
    "you should kill yourself",
    "nobody asked for your opinion, idiot",
    "what's the build for this character",
)


async def ask(
    client: BanterboxClient, frame_type: str, end: str, **payload: object
) -> dict[str, Any]:
    async for frame in client.send_plugin(frame_type, payload, end_types=frozenset({end})):
        return dict(frame.payload)
    raise AssertionError(f"no {end}")


async def test_a_verdict_s_action_survives_a_kill_9(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    config = tmp_path / "serve.toml"
    config.write_text('[plugins]\nenabled = ["chat", "moderation"]\n', encoding="utf-8")
    db = tmp_path / "data" / "banterbox.db"
    server = ServerProcess(
        model, store_url=f"sqlite:///{db}", args=(*SERVER_ARGS, "--config", str(config))
    ).start()
    messages = [
        {"message_id": f"m{n}", "user": {"id": f"viewer-{n}", "name": f"V{n}"}, "text": text}
        for n, text in enumerate(TEXTS)
    ]
    try:
        async with BanterboxClient.connect(server.url) as client:
            answer = await ask(
                client, "mod.check_batch", "mod.verdicts", channel="c1", messages=messages
            )
            single = await ask(
                client, "mod.check", "mod.verdict", channel="c1", message_id="s1",
                user={"id": "viewer-9"}, text="get a real job loser",
            )  # fmt: skip
    finally:
        server.kill()  # the moment the verdicts arrived: no drain, no shutdown
    verdicts = {v["message_id"]: v for v in answer["verdicts"]}
    verdicts["s1"] = single
    acted = {mid for mid, v in verdicts.items() if v["action"] != "allow"}
    assert {v["action"] for v in verdicts.values()} >= {"allow", "hold", "timeout"}

    store = SqliteStore(db)
    ns = namespace("moderation", "default")
    try:
        audit = await store.range(ns, "audit:c1")
        logged = {e["message_id"]: e for e in audit if isinstance(e, dict)}
        assert set(logged) == acted
        for mid in acted:
            assert logged[mid]["action"] == verdicts[mid]["action"]
            assert logged[mid]["reasons"] == verdicts[mid]["reasons"]
        held = {mid for mid in acted if verdicts[mid]["action"] == "hold"}
        for mid in held:
            assert isinstance(await store.get(ns, f"hold:c1:{mid}"), dict)
        timed_out = [m for m in messages if verdicts[str(m["message_id"])]["action"] == "timeout"]
        for message in timed_out:
            user = message["user"]
            assert isinstance(user, dict)
            offences = await store.range(ns, f"offences:c1:{user['id']}")
            assert len(offences) == 1 and isinstance(offences[0], dict)
    finally:
        await store.close()

    server.start()  # same store: the restarted server serves the same audit and queue
    try:
        async with BanterboxClient.connect(server.url) as client:
            log = await ask(client, "mod.audit", "mod.log", channel="c1", limit=100)
            assert {e["message_id"] for e in log["entries"]} == acted
            holds = await ask(client, "mod.review", "mod.holds", channel="c1")
            assert {h["message_id"] for h in holds["holds"]} == held
    finally:
        server.stop()
