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


async def set_policy(
    ws: ClientConnection, policy: Mapping[str, object], channel: str = "c1"
) -> None:
    frame = await ask(ws, "mod.config", "cfg", channel=channel, op="set", policy=policy)
    assert frame.type == "mod.policy"


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
