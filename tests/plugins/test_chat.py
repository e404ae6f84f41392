"""The built-in chat plugin, end to end: client → plugin → engine → client; and its loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_harness import running_server, url_of, write_tiny_model

from plugins.api import PLUGIN_API_VERSION, Plugin
from plugins.chat import ChatPlugin
from protocol import Delta, Done, FinishReason
from server.client import BanterboxClient, BanterboxError
from server.plugin_host import PluginLoadError, PluginRegistry, load_plugins


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def test_chat_is_found_by_its_entry_point() -> None:
    registry = load_plugins(["chat"], {"chat": {"max_tokens": 7}})
    plugin = registry.by_type["chat.say"]
    assert isinstance(plugin, ChatPlugin) and isinstance(plugin, Plugin)
    assert plugin.api_version == PLUGIN_API_VERSION
    assert plugin.default_max_tokens == 7
    assert registry.capabilities == ("chat", "chat.say")
    with pytest.raises(PluginLoadError, match="not found"):
        load_plugins(["no-such-plugin"], {})


def test_registry_refuses_clashes_and_other_api_versions() -> None:
    with pytest.raises(PluginLoadError, match="claimed"):
        PluginRegistry([ChatPlugin(), ChatPlugin()])

    class Future(ChatPlugin):
        api_version = PLUGIN_API_VERSION + 1

    with pytest.raises(PluginLoadError, match="plugin API"):
        PluginRegistry([Future()])


async def test_chat_say_streams_a_session_turn(model: Path) -> None:
    async with running_server(model) as server, BanterboxClient.connect(url_of(server)) as client:
        session = await client.open_session()
        frames = [
            frame
            async for frame in client.send_plugin(
                "chat.say",
                {"text": "Hello, bot!", "session_id": session.session_id, "max_tokens": 6},
            )
        ]
        assert isinstance(frames[-1], Done)
        assert frames[-1].usage.num_completion_tokens <= 6
        deltas = [f for f in frames if isinstance(f, Delta)]
        assert [d.seq for d in deltas] == list(range(len(deltas)))
        transcript = server.sessions.get("default", session.session_id).messages
        assert transcript[0].content == "Hello, bot!"
        assert transcript[1].content == "".join(d.text for d in deltas)
        # A second line continues the conversation from the cache.
        second = [
            frame
            async for frame in client.send_plugin(
                "chat.say", {"text": "Again!", "session_id": session.session_id, "max_tokens": 4}
            )
        ]
        assert isinstance(second[-1], Done)
        assert second[-1].usage.num_cached_tokens > 0


async def test_chat_say_errors(model: Path) -> None:
    async with running_server(model) as server, BanterboxClient.connect(url_of(server)) as client:
        for payload, code in (
            ({}, "invalid_field"),
            ({"text": 5}, "invalid_field"),
            ({"text": "hi", "session_id": "missing"}, "session_not_found"),
        ):
            with pytest.raises(BanterboxError) as error:
                async for _ in client.send_plugin("chat.say", payload):
                    pass
            assert error.value.code == code
        stream = client.send_plugin("chat.say", {"text": "still here", "max_tokens": 400})
        first = await anext(stream)
        assert isinstance(first, Delta)
        await client.cancel(first.request_id)
        frames = [frame async for frame in stream]
        assert isinstance(frames[-1], Done)
        assert frames[-1].finish_reason is FinishReason.CANCELLED
