"""Fuzz a real server on the tiny model: every frame answered typed, the engine up, nothing leaked.

The frames come from bench/fuzz_frames.py (seeded: a failure names the step and its seed, and
that step replays alone); bench/fuzz_run.py sends them over a few connections and judges every
answer. The run is bounded by frame count, never by time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from server_harness import engine_idle, fast_config, poll, running_server, url_of
from tiny import VOCAB_SIZE

from bench.fuzz_run import FuzzRun, RunSettings, http_get, normal_turn
from server.app import BanterboxServer

SEED = 20261201
NUM_FRAMES = 8000  # about a minute on two cores
# Small frames keep the near-limit cases (a frame of max_frame_bytes, 4x that to be refused
# by the WebSocket layer) cheap; every other limit is the default.
CONFIG = fast_config(limits={"max_frame_bytes": 65536})


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server_harness import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


def _kv_settled(server: BanterboxServer) -> bool:
    assert server.engine is not None
    kv = server.engine.stats.scheduler.kv
    return engine_idle(server) and kv.num_used_by_running == 0 and kv.num_pinned_by_sessions == 0


async def assert_settled(server: BanterboxServer, when: str) -> None:
    """Nothing running or queued, no blocks held by sequences or by (closed) sessions."""
    try:
        await poll(lambda: _kv_settled(server))
    except TimeoutError:
        assert server.engine is not None
        stats = server.engine.stats.scheduler
        pytest.fail(f"{when}: not back to baseline: {stats}", pytrace=False)


async def test_fuzzed_frames_get_typed_answers_and_leave_nothing_behind(model: Path) -> None:
    async with running_server(model, CONFIG) as server:
        url = url_of(server)
        assert await normal_turn(url) is None
        await assert_settled(server, "before the fuzz")

        async def healthy() -> bool:
            return server.engine is not None and server.engine.healthy

        settings = RunSettings(num_frames=NUM_FRAMES, num_connections=4, max_incidents=1)
        run = FuzzRun(url, seed=SEED, settings=settings, vocab_size=VOCAB_SIZE, health=healthy)
        tally = await run.run()

        replay = f"seed {SEED}; the step below replays alone with FrameGenerator({SEED}).step(i)"
        if tally.incidents:
            pytest.fail(f"{replay}\n{tally.incidents[0]}", pytrace=False)
        assert tally.num_untyped == 0 and tally.num_engine_deaths == 0
        assert await healthy()
        assert (await http_get(url, "/readyz"))[0] == 200
        assert tally.num_frames >= NUM_FRAMES
        # The run reached every part of the server, not just the decoder.
        for answer in ("welcome", "delta", "done", "session", "session.closed"):
            assert tally.answers[answer] > 0, (answer, tally.answers)
        codes = {key for key in tally.answers if key.startswith("error:")}
        assert {"error:invalid_field", "error:malformed_frame", "error:hello_required"} <= codes
        assert tally.closes["1008"] > 0, tally.closes  # hello_required and others close

        assert len(server.sessions) == 0, "the run closes every session it opened"
        # A turn after the fuzz works, and its engine steps refresh the stats read below.
        assert await normal_turn(url) is None
        await assert_settled(server, f"after the fuzz (seed {SEED})")
