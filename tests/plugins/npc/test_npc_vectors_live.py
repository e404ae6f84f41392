"""The npc golden vectors against the plugin itself: each client vector's bytes, sent as they
are to a real server with the npc plugin (the sample cards, a tiny random model), are taken
and answered with the frame types SPEC section 13 gives, whose server vectors exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from server_harness import fast_config, raw_client, recv_frame, running_server
from tiny import TinyConfig, random_hf_tensors, write_gguf
from websockets.asyncio.client import ClientConnection

import protocol
from protocol import Delta, Done, ErrorFrame, PluginFrame

VECTORS = Path(protocol.__file__).parent / "vectors"

# Client vector -> the answer that ends it; in an order that builds up the state each needs.
EXCHANGES = (
    ("npc-open", "npc.session"),
    ("npc-say", "done"),
    ("npc-typing", "npc.typed"),
    ("npc-event", "npc.noted"),
    ("npc-state", "npc.state"),
    ("npc-memory-set", "npc.memory"),
    ("npc-memory-get", "npc.memory"),
    ("npc-memory-forget", "npc.memory"),
    ("npc-define", "npc.defined"),
    ("npc-close", "npc.closed"),
    ("npc-scene-open", "npc.scene"),
    ("npc-scene-say", "npc.scene.done"),
    ("npc-scene-advance", "npc.scene.done"),
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=8192)  # the tiny model reads bytes: room for the cards
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


def vector(name: str) -> tuple[bytes, str]:
    """The client vector's msgpack bytes and its request id."""
    request_id = json.loads((VECTORS / f"client-{name}.json").read_text("utf-8"))["id"]
    return (VECTORS / f"client-{name}.msgpack").read_bytes(), request_id


def server_vector_types() -> set[str]:
    return {
        json.loads(path.read_text("utf-8"))["type"] for path in VECTORS.glob("server-npc-*.json")
    }


async def answers(ws: ClientConnection, request_id: str, ends: set[str]) -> list[str]:
    """The types of every frame answering request_id, up to one in `ends` or an error."""
    types = []
    while True:
        frame = await recv_frame(ws, timeout_s=60)
        if getattr(frame, "request_id", None) != request_id:
            continue  # a scene's emitted frames (no id)
        if isinstance(frame, ErrorFrame):
            return [*types, f"error {frame.code}: {frame.message}"]
        kind = frame.type if isinstance(frame, PluginFrame) else type(frame).TYPE
        types.append(kind)
        if kind in ends:
            return types


async def test_each_client_vector_is_taken_and_answered_as_the_spec_says(model: Path) -> None:
    config = fast_config(plugins={"enabled": ["chat", "npc"]}, engine={"kv_cache_mib": 64})
    known = server_vector_types() | {"delta", "done"}
    async with running_server(model, config) as server, raw_client(server) as ws:
        for name, end in EXCHANGES:
            data, request_id = vector(name)
            await ws.send(data)
            got = await answers(ws, request_id, {end})
            assert got[-1] == end, (name, got)
            assert set(got) <= known, (name, got)  # every frame it sent has a vector


async def test_the_interrupt_vector_stops_the_say_it_names(model: Path) -> None:
    config = fast_config(plugins={"enabled": ["chat", "npc"]}, engine={"kv_cache_mib": 64})
    async with running_server(model, config) as server, raw_client(server) as ws:
        say, say_id = vector("npc-say-session")  # names the session npc:blacksmith:ann
        opened, open_id = vector("npc-open")
        await ws.send(opened)
        assert await answers(ws, open_id, {"npc.session"}) == ["npc.session"]
        interrupt, interrupt_id = vector("npc-interrupt")  # turn_id: the say's id
        await ws.send(say)
        while not isinstance(frame := await recv_frame(ws, timeout_s=60), Delta | PluginFrame):
            assert not isinstance(frame, ErrorFrame | Done), frame
        await ws.send(interrupt)
        ended: dict[str, str] = {}
        while len(ended) < 2:
            frame = await recv_frame(ws, timeout_s=60)
            if isinstance(frame, PluginFrame) and frame.type == "npc.interrupted":
                assert frame.payload["turn_id"] == say_id
                ended[str(frame.request_id)] = frame.type
            assert not isinstance(frame, ErrorFrame | Done), frame
        assert ended == {say_id: "npc.interrupted", interrupt_id: "npc.interrupted"}
