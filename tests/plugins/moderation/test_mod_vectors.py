"""The mod.* golden vectors (protocol/vectors/*-mod-*): one for every frame SPEC section 12
names, and each client vector's bytes, sent as they are to a real server with the moderation
plugin, answered by exactly its server vector (times fixed at T0: the vectors were captured
from this exchange). After a deliberate wire change, capture them again with
`PYTHONPATH=tests/support .venv/bin/python tests/plugins/moderation/test_mod_vectors.py`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from server_harness import fast_config, raw_client, recv_frame, running_server, write_tiny_model

import protocol
from plugins.moderation.plugin import ModerationPlugin
from protocol import Encoding, PluginFrame, ServerFrame, decode_server_frame, encode_frame

VECTORS = Path(protocol.__file__).parent / "vectors"
SPEC = Path(protocol.__file__).parent / "SPEC.md"
T0 = 1767225600.0  # every "at" of the vectors; "expires_at" is T0 + the default hold_s
HOLD_S = 120.0

# Client vector -> its answer's vector, in an order that builds up the state each needs.
EXCHANGES = (
    ("mod-config-set", "mod-policy"),
    ("mod-config-permit", "mod-permitted"),
    ("mod-subscribe", "mod-subscribed"),
    ("mod-check", "mod-verdict"),
    ("mod-check-batch", "mod-verdicts"),
    ("mod-review-list", "mod-holds"),
    ("mod-review-deny", "mod-reviewed"),
    ("mod-audit", "mod-log"),
)


def vector_types(direction: str) -> set[str]:
    return {
        json.loads(path.read_text(encoding="utf-8"))["type"]
        for path in VECTORS.glob(f"{direction}-mod-*.json")
    }


def spec_answers() -> set[str]:
    """The answer frame types in the last column of section 12's table of client frames."""
    section = SPEC.read_text(encoding="utf-8").split("## 12.", 1)[1].split("\n## ", 1)[0]
    found: set[str] = set()
    for line in section.splitlines():
        if re.match(r"\| `mod\.[a-z_]+` \|", line):
            found.update(re.findall(r"`(mod\.[a-z_]+)`", line.split("|")[3]))
    return found


def fixed_times(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: T0 if k == "at" else T0 + HOLD_S if k == "expires_at" else fixed_times(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [fixed_times(item) for item in value]
    return value


def as_vector(frame: ServerFrame) -> ServerFrame:
    wire = json.loads(encode_frame(frame, Encoding.JSON))
    return decode_server_frame(json.dumps(fixed_times(wire)))


async def exchange(model: Path) -> dict[str, ServerFrame]:
    """Each client vector's msgpack bytes to a real server: the answers and events it sent,
    by their vector's name, times fixed."""
    answers: dict[str, ServerFrame] = {}
    config = fast_config(plugins={"enabled": ["chat", "moderation"]})
    async with running_server(model, config) as server, raw_client(server) as ws:
        for client, server_name in EXCHANGES:
            path = VECTORS / f"client-{client}.json"
            request_id = json.loads(path.read_text(encoding="utf-8"))["id"]
            await ws.send((VECTORS / f"client-{client}.msgpack").read_bytes())
            while True:
                frame = await recv_frame(ws, timeout_s=60)
                assert isinstance(frame, PluginFrame), frame
                if frame.type == "mod.action":  # to this subscribed connection, no id
                    answers[f"mod-action-{frame.payload['kind']}"] = as_vector(frame)
                    continue
                assert frame.request_id == request_id, frame
                answers[server_name] = as_vector(frame)
                break
    return answers


def test_every_frame_of_the_spec_and_the_plugin_has_a_vector() -> None:
    assert vector_types("client") == set(ModerationPlugin.frame_types)
    answers = spec_answers()
    assert {"mod.verdict", "mod.verdicts", "mod.policy", "mod.log"} <= answers
    assert vector_types("server") == answers | {"mod.action"}


def test_emitted_actions_carry_no_id_and_name_their_channel() -> None:
    for kind in ("verdict", "review"):
        frame = json.loads((VECTORS / f"server-mod-action-{kind}.json").read_text("utf-8"))
        assert "id" not in frame
        assert (frame["kind"], frame["channel"]) == (kind, "arena")


async def test_the_client_vectors_get_exactly_the_server_vectors(tmp_path: Path) -> None:
    answers = await exchange(write_tiny_model(tmp_path))
    names = {path.stem for path in VECTORS.glob("server-mod-*.json")}
    assert {f"server-{name}" for name in answers} == names
    for name, frame in answers.items():
        data = (VECTORS / f"server-{name}.msgpack").read_bytes()
        assert decode_server_frame(data) == frame, f"{name}: capture the vectors again"


def _capture() -> None:
    """Write the server vectors from a live exchange (after a deliberate wire change)."""
    import tempfile

    answers = asyncio.run(exchange(write_tiny_model(Path(tempfile.mkdtemp()))))
    for name, frame in answers.items():
        wire = json.loads(encode_frame(frame, Encoding.JSON))
        text = json.dumps(wire, indent=2, ensure_ascii=False)
        (VECTORS / f"server-{name}.json").write_text(text + "\n", encoding="utf-8")
        (VECTORS / f"server-{name}.msgpack").write_bytes(encode_frame(frame, Encoding.MSGPACK))


if __name__ == "__main__":
    sys.exit(_capture())
