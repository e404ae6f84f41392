"""Scoring as engine requests: candidates after a prompt become prefill-only requests that share
the prompt's cached KV blocks. Builds requests and reads their outputs; steps no engine.

Two phases, so that the candidates find the prompt's blocks cached: a warm-up request
prefills the prompt alone (its full blocks enter the prefix cache), then one request per
candidate prefills prompt + candidate and returns the candidate tokens' log-probabilities.
Only the prompt's last partial block and the candidate are computed per candidate, and a later
call with the same prompt (and salt) finds the prompt cached as well.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import InvalidRequestError, RequestFailedError
from .types import EngineRequest, FinishReason, Priority, RequestOutput, ScoreOutput


@dataclass(frozen=True)
class ScorePlan:
    """The requests of one scoring call: run `warm` to its end, then every candidate request."""

    warm: EngineRequest
    candidates: tuple[EngineRequest, ...]

    def result(self, warm: RequestOutput, outputs: Mapping[str, RequestOutput]) -> ScoreOutput:
        """The score from each request's finishing output (keyed by request id)."""
        per_token = []
        for request in self.candidates:
            output = outputs[request.request_id]
            if output.finish_reason is not FinishReason.PREFILLED:
                why = output.error or f"it ended {output.finish_reason}"
                raise RequestFailedError(f"scoring {request.request_id} failed: {why}")
            per_token.append(output.prompt_logprobs)
        return ScoreOutput(
            logprobs=tuple(sum(values) for values in per_token),
            token_logprobs=tuple(per_token),
            num_prompt_tokens=warm.num_prompt_tokens,
            num_cached_tokens=warm.num_cached_tokens,
        )


def plan_score(
    request_id: str,
    prompt_token_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    *,
    priority: Priority = Priority.INTERACTIVE,
    cache_salt: str = "",
    max_candidates: int = 64,  # candidates of one call
) -> ScorePlan:
    """Requests `{request_id}/prompt` and `{request_id}/{i}`; InvalidRequestError if unfit."""
    if not prompt_token_ids:
        raise InvalidRequestError("prompt", "must not be empty")
    if not 1 <= len(candidates) <= max_candidates:
        raise InvalidRequestError("candidates", f"give 1 to {max_candidates} candidates")
    for i, candidate in enumerate(candidates):
        if not candidate:
            raise InvalidRequestError(f"candidates.{i}", "a candidate must have tokens")
    now = time.monotonic()

    def prefill(suffix: str, token_ids: tuple[int, ...], num_scored: int) -> EngineRequest:
        # No session id: scoring reads a session's cached blocks (same salt), never pins them.
        return EngineRequest(
            request_id=f"{request_id}/{suffix}",
            prompt_token_ids=token_ids,
            priority=priority,
            cache_salt=cache_salt,
            arrival_time=now,
            prefill_only=True,
            num_scored_tokens=num_scored,
        )

    prompt = tuple(prompt_token_ids)
    return ScorePlan(
        warm=prefill("prompt", prompt, 0),
        candidates=tuple(
            prefill(str(i), (*prompt, *candidate), len(candidate))
            for i, candidate in enumerate(candidates)
        ),
    )
