"""The npc plugin's golden frames (protocol/vectors/*-npc-*): one at least for every npc frame
SPEC section 13 names, in each direction, and for every frame type the plugin accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import protocol
from plugins.npc.plugin import NpcPlugin

VECTORS = Path(protocol.__file__).parent / "vectors"
SPEC = Path(protocol.__file__).parent / "SPEC.md"


def vector_types(direction: str) -> set[str]:
    return {
        json.loads(path.read_text(encoding="utf-8"))["type"]
        for path in VECTORS.glob(f"{direction}-npc-*.json")
    }


def spec_tables() -> tuple[set[str], set[str]]:
    """The npc frame types in the first column of section 13's tables: (client, server)."""
    section = SPEC.read_text(encoding="utf-8").split("## 13.", 1)[1].split("\n## ", 1)[0]
    client: set[str] = set()
    server: set[str] = set()
    target = client
    for line in section.splitlines():
        if line.startswith("| client frame"):
            target = client
        elif line.startswith("| server frame"):
            target = server
        elif match := re.match(r"\| `(npc\.[a-z.]+)` \|", line):
            target.add(match.group(1))
            if target is client and "`npc." in line.split("|")[3]:  # its answers
                server.update(re.findall(r"`(npc\.[a-z.]+)`", line.split("|")[3]))
    return client, server


def test_every_client_frame_of_the_spec_and_the_plugin_has_a_vector() -> None:
    client, _ = spec_tables()
    assert len(client) >= 12
    assert client == set(NpcPlugin.frame_types)  # SPEC and plugin agree on what a client sends
    assert vector_types("client") == client


def test_every_server_frame_of_the_spec_has_a_vector() -> None:
    _, server = spec_tables()
    # Emitted to a scene's subscribers, named in the prose under the scene table; npc.say is
    # named in npc.interrupt's answer as the request that ends too, not as a frame sent.
    server = (server | {"npc.scene.line", "npc.scene.delta"}) - {"npc.say"}
    assert {"npc.emotion", "npc.action", "npc.session", "npc.interrupted"} <= server
    assert vector_types("server") == server


def test_emitted_scene_frames_carry_no_id_and_name_their_line() -> None:
    for name in ("line", "delta", "emotion", "action"):
        frame = json.loads((VECTORS / f"server-npc-scene-{name}.json").read_text("utf-8"))
        assert "id" not in frame
        assert list(frame)[1:4] == ["scene_id", "line", "speaker"]
