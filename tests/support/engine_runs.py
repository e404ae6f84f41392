"""Helpers of the engine tests: seeded prompts, running requests to their end, their tokens."""

from __future__ import annotations

import random
from collections.abc import Iterable

from server.engine.llm import LLM
from server.engine.types import EngineRequest, RequestOutput


def random_prompt(seed: int, length: int = 20) -> list[int]:
    """length token ids below 256 (a tiny model's byte vocabulary), the same for a seed."""
    rng = random.Random(seed)
    return [rng.randrange(0, 256) for _ in range(length)]


def run_requests(llm: LLM, requests: Iterable[EngineRequest]) -> dict[str, list[RequestOutput]]:
    """Add the requests, step until none is unfinished; every output by request id."""
    outputs: dict[str, list[RequestOutput]] = {}
    for request in requests:
        llm.core.add_request(request)
    while llm.core.has_unfinished():
        for out in llm.core.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for out in outputs for t in out.new_token_ids]
