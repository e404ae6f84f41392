"""The npc scenario's peer: players against llama.cpp's llama-server over its OpenAI-style SSE API.

llama-server keeps no sessions, so each player keeps its transcript and sends it whole every
turn with cache_prompt=true; a slot that still holds the player's previous prompt serves the
shared prefix from its KV cache. Launches and stops llama-server; never builds it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .load import Player, PlayerOpener, TurnRecord, error_record
from .metrics import RequestTimeline
from .peers.llama_cpp import BUILD_SCRIPT, find_binary

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class SseChunk:
    """One `data:` line of a chat-completion stream."""

    text: str = ""  # choices[0].delta.content; "" for role, finish and usage chunks
    done: bool = False  # the "[DONE]" sentinel
    num_prompt_tokens: int | None = None  # from the usage chunk
    num_cached_tokens: int | None = None
    num_completion_tokens: int | None = None
    error: str | None = None  # an error object sent mid-stream


def parse_sse_line(line: str) -> SseChunk | None:
    """The chunk on one SSE line; None for blank lines, comments and non-data fields."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :].strip()
    if payload == "[DONE]":
        return SseChunk(done=True)
    event: dict[str, Any] = json.loads(payload)
    if "error" in event:
        error = event["error"]
        return SseChunk(
            error=str(error.get("message", error) if isinstance(error, dict) else error)
        )
    choices = event.get("choices") or []
    text = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
    usage = event.get("usage")
    if not usage:
        return SseChunk(text=text)
    timings = event.get("timings") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", timings.get("cache_n"))
    return SseChunk(
        text=text,
        num_prompt_tokens=int(usage["prompt_tokens"]),
        num_cached_tokens=int(cached) if cached is not None else None,
        num_completion_tokens=int(usage["completion_tokens"]),
    )


class LlamaServerPlayer:
    """One player: its transcript, resent whole each turn."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        opening: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        sampling: Mapping[str, Any],
    ) -> None:
        self._http = http
        self._messages: list[Mapping[str, str]] = list(opening)
        self._max_tokens = max_tokens
        self._sampling = dict(sampling)

    async def turn(self, line: str) -> TurnRecord:
        messages = [*self._messages, {"role": "user", "content": line}]
        body = {
            "messages": messages,
            "stream": True,
            "cache_prompt": True,
            "max_tokens": self._max_tokens,
            "stream_options": {"include_usage": True},
            **self._sampling,
        }
        start = time.perf_counter()
        times: list[float] = []
        text: list[str] = []
        usage: SseChunk | None = None
        try:
            async with self._http.stream("POST", CHAT_PATH, json=body) as response:
                if response.status_code != 200:
                    return error_record(start, f"http_{response.status_code}")
                async for raw in response.aiter_lines():
                    chunk = parse_sse_line(raw)
                    if chunk is None or chunk.done:
                        continue
                    if chunk.error is not None:
                        return error_record(start, "server_error")
                    if chunk.text:
                        times.append(time.perf_counter())
                        text.append(chunk.text)
                    if chunk.num_completion_tokens is not None:
                        usage = chunk
        except httpx.HTTPError as exc:
            return error_record(start, f"httpx_{type(exc).__name__}")
        end = time.perf_counter()
        if usage is None or usage.num_prompt_tokens is None or usage.num_completion_tokens is None:
            return error_record(start, "no_usage")
        self._messages = [*messages, {"role": "assistant", "content": "".join(text)}]
        num_output = usage.num_completion_tokens
        # llama-server sends one chunk per token, except that text held back (half a UTF-8
        # character, a possible stop string) comes later merged; then the split is unknown.
        counts = (1,) * len(times) if len(times) == num_output else ()
        timeline = RequestTimeline(
            start, tuple(times), end, usage.num_prompt_tokens, num_output, delta_num_tokens=counts
        )
        return TurnRecord(timeline, num_cached_tokens=usage.num_cached_tokens or 0)


@contextlib.asynccontextmanager
async def llama_http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """One HTTP client for every player of a run; no pool cap, so no queueing on our side.

    No keep-alive: an idle connection would hold one of llama-server's few HTTP threads, and
    one it timed out races our next request into a spurious disconnect.
    """
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    timeout = httpx.Timeout(10.0, read=600.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as http:
        yield http


def llama_opener(
    http: httpx.AsyncClient,
    persona: str,
    *,
    max_tokens: int,
    sampling: Mapping[str, Any],
    histories: Sequence[Sequence[Mapping[str, str]]] = (),
) -> PlayerOpener:
    """Players against llama-server through one shared HTTP client."""

    @contextlib.asynccontextmanager
    async def open_player(index: int) -> AsyncIterator[Player]:
        history = list(histories[index]) if histories else []
        opening = [{"role": "system", "content": persona}, *history]
        yield LlamaServerPlayer(http, opening, max_tokens=max_tokens, sampling=sampling)

    return open_player


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, num_lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])


@contextlib.contextmanager
def stopping(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> Iterator[None]:
    """SIGTERM the process on exit, SIGKILL after grace_s."""
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def launch_llama_server(
    model: Path,
    *,
    parallel: int,
    ctx_per_slot: int = 2048,
    threads: int = 2,
    log_path: Path,
    binary: Path | None = None,
    startup_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Run llama-server on model until exit; yields its base URL once GET /health is 200."""
    found = binary or find_binary("llama-server")
    if found is None:
        raise FileNotFoundError(f"llama-server is not built; run {BUILD_SCRIPT}")
    port = free_port()
    command = [
        str(found), "-m", str(model), "--parallel", str(parallel),
        "-c", str(parallel * ctx_per_slot), "-t", str(threads),
        "--host", "127.0.0.1", "--port", str(port), "--no-webui",
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    with stopping(process):
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited ({process.returncode}):\n{_tail(log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not healthy after {startup_timeout_s} s")
            time.sleep(0.25)
        yield base_url
