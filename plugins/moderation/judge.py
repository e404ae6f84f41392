"""The LLM judge: a channel's plain-words policy as a cached prompt prefix, and a message's
verdict as P(" yes") among " yes" / " no", never generated text. Knows only a Scorer protocol.

The prompt puts the policy first and the message last, so every message of a channel shares
the policy's KV blocks in the engine's prefix cache. Under load the judge declines (too many
calls in flight, or a call over its deadline) and the cascade keeps the fast layers' verdict,
saying so in its reasons: chat never waits on the judge.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CANDIDATES = (" yes", " no")


class Scorer(Protocol):
    async def __call__(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Log-probabilities of each candidate continuing `prompt`."""
        ...


@dataclass(frozen=True, kw_only=True)
class Ruling:
    p_yes: tuple[float, ...] | None  # per message, or None when the judge declined
    model: str
    detail: str  # why it declined, when it did


def render_prompt(policy: str, text: str) -> str:
    """The policy prefix (shared by the channel) followed by one message."""
    return (
        "You moderate a live-stream chat. The channel's rules:\n"
        f"{policy.strip()}\n\n"
        "Answer yes if the chat message breaks these rules, no if it keeps them.\n"
        f"Message: {text.strip()}\n"
        "Does the message break the rules? Answer:"
    )


def p_yes(logprobs: Sequence[float]) -> float:
    """P(" yes") renormalised over the two answers."""
    yes, no = logprobs[0], logprobs[1]
    top = max(yes, no)
    return math.exp(yes - top) / (math.exp(yes - top) + math.exp(no - top))


class Judge:
    """Shared by every connection: the in-flight bound is the server's, not one bot's."""

    def __init__(self, *, model: str, max_inflight: int = 64, timeout_s: float = 2.0) -> None:
        self.model = model  # named in the reasons: which model ruled
        self._max_inflight = max_inflight  # past this many messages waiting, decline
        self._timeout_s = timeout_s
        self._inflight = 0

    async def rule(self, scorer: Scorer, policy: str, texts: Sequence[str]) -> Ruling:
        if self._inflight + len(texts) > self._max_inflight:
            detail = f"judge overloaded ({self._inflight} in flight): fast layers only"
            return Ruling(p_yes=None, model=self.model, detail=detail)
        self._inflight += len(texts)
        try:
            async with asyncio.timeout(self._timeout_s):
                scored = await asyncio.gather(
                    *(scorer(render_prompt(policy, text), CANDIDATES) for text in texts)
                )
        except TimeoutError:
            detail = f"judge over its {self._timeout_s:g} s deadline: fast layers only"
            return Ruling(p_yes=None, model=self.model, detail=detail)
        except Exception as exc:  # an engine refusal (overloaded...) degrades, never fails chat
            detail = f"judge unavailable ({type(exc).__name__}: {exc}): fast layers only"
            return Ruling(p_yes=None, model=self.model, detail=detail)
        finally:
            self._inflight -= len(texts)
        return Ruling(p_yes=tuple(p_yes(s) for s in scored), model=self.model, detail="")
