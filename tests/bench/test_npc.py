"""`bench npc` end to end against a real server on the tiny model, and its corpus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from server_harness import running_server, url_of, write_tiny_model

from bench.__main__ import main
from bench.npc import CORPUS, banterbox_opener, load_lines, load_persona


def test_the_corpus_has_personas_and_lines() -> None:
    assert len(load_lines("player_lines")) >= 50
    assert len(load_lines("chat_messages")) >= 50
    assert len(load_lines("npc_replies")) >= 30
    assert "Brom" in load_persona("brom")
    assert load_persona(str(CORPUS / "persona_mira.txt")) == load_persona("mira")


async def test_npc_at_concurrency_two_writes_latency_and_goodput_figures(tmp_path: Path) -> None:
    out = tmp_path / "npc.json"
    persona = tmp_path / "persona.txt"
    persona.write_text("You are Brom, a dwarf smith.")  # the tiny model's context is 512 bytes
    async with running_server(write_tiny_model(tmp_path)) as server:
        argv = [
            "npc",
            "--mode",
            "generate",
            "--url",
            url_of(server),
            "--concurrency",
            "2",
            "--turns",
            "2",
            "--think-time",
            "0",
            "--max-tokens",
            "6",
            "--persona",
            str(persona),
            "--no-progress",
            "--json",
            str(out),
        ]
        code = await asyncio.to_thread(main, argv)
    assert code == 0
    document = json.loads(out.read_text())
    (level,) = document["results"]["banterbox"]
    assert (level["concurrency"], level["num_players"], level["num_turns"]) == (2, 2, 4)
    metrics = level["metrics"]
    assert metrics["num_ok"] == 4 and metrics["num_errors"] == 0
    for name in ("ttft", "itl", "tpot", "e2e"):
        assert metrics[name]["p99"] is not None and metrics[name]["p99"] >= metrics[name]["p50"]
    assert 0.0 <= metrics["goodput_fraction"] <= 1.0
    assert metrics["output_tok_s"] > 0
    # Every player's persona is the same system prompt, and turn 2 continues the session.
    assert level["num_cached_tokens"] > 0
    assert out.with_suffix(".md").is_file()
    assert (tmp_path / "npc-latency.png").is_file()


async def test_many_players_opening_at_once_from_one_address_all_get_in(tmp_path: Path) -> None:
    # The server lets 8 sockets per address wait for hello; a load generator is one address.
    num_players = 24
    async with running_server(write_tiny_model(tmp_path)) as server:
        open_player = banterbox_opener(url_of(server), "You are Brom.", max_tokens=4, sampling={})
        async with contextlib.AsyncExitStack() as stack:
            players = await asyncio.gather(
                *(stack.enter_async_context(open_player(i)) for i in range(num_players))
            )
            assert len(players) == num_players
