"""Over a real server: generate.constraint, generate.logprobs, prefill-only turns and score."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from server_harness import NO_EOS, encode, engine_idle, poll, raw_client, recv_frame, running_server
from websockets.asyncio.client import ClientConnection

from protocol import Delta, Done, ErrorFrame, FinishReason, Scores, ServerFrame, SessionInfo

SYSTEM = "You are Brom, the blacksmith of Eastmarch. " * 5  # about 220 byte tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server_harness import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def _answer(ws: ClientConnection, frame: dict[str, object]) -> list[ServerFrame]:
    """Send frame; every answer frame up to its done, scores or error."""
    await ws.send(encode(frame))
    frames: list[ServerFrame] = []
    while True:
        answer = await recv_frame(ws, timeout_s=30)
        frames.append(answer)
        if isinstance(answer, Done | Scores | ErrorFrame):
            return frames


def _text(frames: list[ServerFrame]) -> str:
    return "".join(f.text for f in frames if isinstance(f, Delta))


async def test_constrained_turns_match_and_bad_ones_are_refused(model: Path) -> None:
    async with running_server(model) as server, raw_client(server) as ws:
        for seed in range(5):
            frames = await _answer(
                ws,
                {
                    "type": "generate",
                    "id": f"c{seed}",
                    "prompt": "Roll: ",
                    "max_tokens": 16,
                    "sampling": {"temperature": 1.0, "seed": seed},
                    "constraint": {"regex": "[1-6]d(4|6|8|20)"},
                },
            )
            done = frames[-1]
            assert isinstance(done, Done) and done.finish_reason is FinishReason.STOP
            assert re.fullmatch("[1-6]d(4|6|8|20)", _text(frames))
        choice = await _answer(
            ws,
            {
                "type": "generate",
                "id": "ch",
                "prompt": "Act: ",
                "constraint": {"choice": ["attack", "flee"]},
            },
        )
        assert _text(choice) in ("attack", "flee")
        for constraint, field in [
            ({"regex": "(unclosed"}, "constraint.regex"),
            ({"json_schema": {"type": "no-such-type"}}, "constraint.json_schema"),
            ({"grammar": "start: missing_rule"}, "constraint.grammar"),
        ]:
            frame = {"type": "generate", "id": "bad", "prompt": "x", "constraint": constraint}
            [error] = await _answer(ws, frame)
            assert isinstance(error, ErrorFrame) and error.code == "invalid_field"
            assert error.request_id == "bad" and error.message.startswith(field)
        await poll(lambda: engine_idle(server))
        ok = await _answer(ws, {"type": "generate", "id": "ok", "prompt": "hi", "max_tokens": 3})
        assert isinstance(ok[-1], Done)


async def test_deltas_carry_one_logprob_entry_per_token(model: Path) -> None:
    async with running_server(model) as server, raw_client(server, encoding="json") as ws:
        frame = {
            "type": "generate",
            "id": "lp",
            "prompt": "Hello",
            "max_tokens": 6,
            "return_token_ids": True,
            "logprobs": 3,
            "sampling": NO_EOS,
        }
        await ws.send(encode(frame, "json"))
        deltas = []
        while not isinstance(answer := await recv_frame(ws), Done):
            assert isinstance(answer, Delta)
            deltas.append(answer)
        entries = [e for d in deltas for e in d.logprobs or ()]
        assert [e.token_id for e in entries] == [t for d in deltas for t in d.token_ids or ()]
        assert len(entries) == 6
        for entry in entries:
            assert entry.logprob <= 0 and len(entry.top) == 3
            assert entry.top[0][1] >= entry.logprob  # the most likely comes first


async def test_a_prefill_only_turn_makes_the_real_turn_cached(model: Path) -> None:
    async with running_server(model) as server, raw_client(server) as ws:
        [opened] = await _answer_session(ws)
        assert isinstance(opened, SessionInfo)
        system = {"role": "system", "content": SYSTEM}
        prefill = await _answer(
            ws,
            {
                "type": "generate",
                "id": "p1",
                "session_id": "npc-1",
                "messages": [system, {"role": "user", "content": "Can you fix my"}],
                "prefill_only": True,
            },
        )
        [done] = prefill
        assert isinstance(done, Done) and done.finish_reason is FinishReason.PREFILLED
        assert done.usage.num_completion_tokens == 0 and done.usage.num_prompt_tokens > 200
        real = await _answer(
            ws,
            {
                "type": "generate",
                "id": "t1",
                "session_id": "npc-1",
                "messages": [system, {"role": "user", "content": "Can you fix my sword?"}],
                "max_tokens": 4,
                "sampling": NO_EOS,
            },
        )
        final = real[-1]
        assert isinstance(final, Done) and final.finish_reason is FinishReason.LENGTH
        # The prefill's full blocks up to where the texts part ("my" / "my sword?").
        assert final.usage.num_cached_tokens >= 208


async def _answer_session(ws: ClientConnection) -> list[ServerFrame]:
    await ws.send(encode({"type": "session.open", "id": "o", "session_id": "npc-1"}))
    return [await recv_frame(ws)]


async def test_score_answers_scores_and_reuses_the_prompt(model: Path) -> None:
    async with running_server(model) as server, raw_client(server) as ws:
        frame = {
            "type": "score",
            "id": "j1",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Is this line rude? gg ez"},
            ],
            "candidates": ["yes", "no", "y"],
        }
        [first] = await _answer(ws, frame)
        assert isinstance(first, Scores) and first.request_id == "j1"
        assert len(first.logprobs) == 3 and all(lp < 0 for lp in first.logprobs)
        [again] = await _answer(ws, {**frame, "id": "j2"})
        assert isinstance(again, Scores)
        assert again.logprobs == pytest.approx(first.logprobs, abs=1e-4)
        assert again.usage.num_cached_tokens >= again.usage.num_prompt_tokens - 16
        [error] = await _answer(ws, {**frame, "id": "j3", "candidates": [""]})
        assert isinstance(error, ErrorFrame) and error.code == "invalid_field"
        await poll(lambda: engine_idle(server))
