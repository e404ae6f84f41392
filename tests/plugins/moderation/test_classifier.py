"""The profanity model's fast path agrees with alt-profanity-check; the micro-batcher batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from plugins.moderation.batcher import MicroBatcher
from plugins.moderation.profanity import ProfanityModel

CORPUS = Path(__file__).parents[3] / "bench" / "corpus" / "moderation_tune.tsv"


def test_the_fast_path_equals_predict_prob() -> None:
    from profanity_check import predict_prob

    texts = [line.split("\t", 1)[1] for line in CORPUS.read_text().splitlines() if "\t" in line]
    texts += ["", "!!!", "fuck fuck fuck you", "Ünïcödé wörds", "the THE the"]
    ours = ProfanityModel.load().predict_prob(texts)
    theirs = [float(p) for p in predict_prob(texts)]
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-9
    assert ProfanityModel.load().predict_prob([]) == []


async def test_concurrent_callers_share_one_model_call_in_order() -> None:
    calls: list[list[str]] = []

    def predict(texts: Sequence[str]) -> list[float]:
        calls.append(list(texts))
        return [float(len(t)) for t in texts]

    batcher = MicroBatcher(predict, window_s=0.05)
    got = await asyncio.gather(
        batcher.predict(["a"]), batcher.predict(["bb", "ccc"]), batcher.predict([])
    )
    assert got == [[1.0], [2.0, 3.0], []]
    assert calls == [["a", "bb", "ccc"]] and batcher.num_calls == 1


async def test_a_full_batch_goes_at_once_and_failures_reach_every_waiter() -> None:
    def broken(texts: Sequence[str]) -> list[float]:
        raise RuntimeError("model gone")

    batcher = MicroBatcher(broken, window_s=60.0, max_batch=2)  # full at 2: no 60 s wait
    results = await asyncio.gather(
        batcher.predict(["a"]), batcher.predict(["b"]), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(ValueError):
        MicroBatcher(broken, max_batch=0)
