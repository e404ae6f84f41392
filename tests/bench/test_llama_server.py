"""SSE parsing and the llama-server player, on lines captured from llama-server (0c1e570)."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.llama_server import LlamaServerPlayer, SseChunk, parse_sse_line

# A llama-server stream (max_tokens 2, include_usage), as captured with curl -N.
CAPTURED = """\
data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1795432968,"id":"chatcmpl-2fQYcq","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hello"}}],"created":1795432968,"id":"chatcmpl-2fQYcq","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" there"}}],"created":1795432968,"id":"chatcmpl-2fQYcq","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1795432968,"id":"chatcmpl-2fQYcq","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk"}

data: {"choices":[],"created":1795432968,"id":"chatcmpl-2fQYcq","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b1-0c1e570","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":25,"total_tokens":27,"prompt_tokens_details":{"cached_tokens":24}},"timings":{"cache_n":24,"prompt_n":1,"prompt_ms":6.904,"prompt_per_token_ms":6.904,"prompt_per_second":144.84,"predicted_n":2,"predicted_ms":6.249,"predicted_per_token_ms":6.249,"predicted_per_second":160.02}}

data: [DONE]

"""  # noqa: E501
ROLE, HELLO, THERE, FINISH, USAGE, DONE = (line for line in CAPTURED.splitlines() if line)


def test_content_chunks_carry_text_and_others_none() -> None:
    assert parse_sse_line(HELLO) == SseChunk(text="Hello")
    assert parse_sse_line(ROLE) == SseChunk()
    assert parse_sse_line(FINISH) == SseChunk()
    assert parse_sse_line(DONE) == SseChunk(done=True)


def test_blank_lines_and_comments_are_skipped() -> None:
    assert parse_sse_line("") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("event: message") is None


def test_usage_chunk_gives_prompt_cached_and_completion_tokens() -> None:
    chunk = parse_sse_line(USAGE)
    assert chunk is not None
    assert (chunk.num_prompt_tokens, chunk.num_cached_tokens, chunk.num_completion_tokens) == (
        25,
        24,
        2,
    )


def test_usage_without_details_falls_back_to_timings_cache_n() -> None:
    line = 'data: {"choices":[],"usage":{"completion_tokens":1,"prompt_tokens":9},"timings":{"cache_n":4}}'  # noqa: E501
    chunk = parse_sse_line(line)
    assert chunk is not None and chunk.num_cached_tokens == 4


def test_error_objects_mid_stream_are_reported() -> None:
    chunk = parse_sse_line('data: {"error":{"code":500,"message":"slot unavailable"}}')
    assert chunk == SseChunk(error="slot unavailable")
    with pytest.raises(json.JSONDecodeError):
        parse_sse_line("data: {not json")


def sse_app(bodies: list[dict[str, object]], *, status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(status, text=CAPTURED, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handle)


async def test_player_times_each_token_and_resends_the_whole_transcript() -> None:
    bodies: list[dict[str, object]] = []
    async with httpx.AsyncClient(transport=sse_app(bodies), base_url="http://peer") as http:
        opening = [{"role": "system", "content": "You are Brom."}]
        player = LlamaServerPlayer(http, opening, max_tokens=2, sampling={"temperature": 0.0})
        first = await player.turn("Hi!")
        await player.turn("What do you sell?")
    timeline = first.timeline
    assert timeline.ok and len(timeline.token_times) == 2
    assert timeline.delta_num_tokens == (1, 1)
    assert (timeline.num_prompt_tokens, timeline.num_output_tokens) == (25, 2)
    assert first.num_cached_tokens == 24
    assert bodies[0]["stream"] is True and bodies[0]["cache_prompt"] is True
    assert bodies[1]["messages"] == [
        {"role": "system", "content": "You are Brom."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "What do you sell?"},
    ]


async def test_player_records_http_errors() -> None:
    transport = sse_app([], status=503)
    async with httpx.AsyncClient(transport=transport, base_url="http://peer") as http:
        player = LlamaServerPlayer(http, [], max_tokens=2, sampling={})
        record = await player.turn("Hi!")
    assert record.timeline.error_code == "http_503"
