"""The async front over the engine thread: streams, merging for slow readers, refusals, aborts."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.async_engine import AsyncEngine, EngineDiedError
from server.engine.config import EngineConfig
from server.engine.errors import EngineRestartedError, OverloadedError, RequestFailedError
from server.engine.llm import LLM
from server.engine.types import Constraint, FinishReason, SamplingParams

SAMPLING = SamplingParams(max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = TinyConfig()
    return write_gguf(tmp_path_factory.mktemp("ae") / "m.gguf", config, random_hf_tensors(config))


@pytest.fixture
async def engine(model_path):
    llm = LLM.load(
        model_path, EngineConfig(kv_cache_mib=4, num_threads=1, max_waiting=2, max_num_seqs=2)
    )
    engine = AsyncEngine(llm)
    engine.start()
    yield engine
    await engine.stop()


def _expected(engine: AsyncEngine, prompt: list[int]) -> list[int]:
    llm = LLM.load(engine.llm.info.path, EngineConfig(num_threads=1))
    return [t for o in llm.generate(prompt, SAMPLING) for t in o.new_token_ids]


async def test_stream_yields_every_token_then_finishes(engine) -> None:
    prompt = [5, 6, 7, 8, 9]
    stream = engine.submit(engine.llm.new_request(prompt, SAMPLING))
    tokens, last = [], None
    async for delta in stream:
        tokens.extend(delta.token_ids)
        last = delta
    assert last is not None and last.finish_reason is FinishReason.LENGTH
    assert tokens == _expected(engine, prompt)
    assert stream.first_token_at is not None and stream.finished_at >= stream.first_token_at
    assert engine.num_active == 0


async def test_slow_reader_gets_merged_deltas_and_loses_nothing(engine) -> None:
    prompt = [11, 12, 13]
    stream = engine.submit(engine.llm.new_request(prompt, SAMPLING))
    for _ in range(1000):  # do not read: let the engine run to the end first
        pending = stream._pending
        if pending is not None and pending.finish_reason is not None:
            break
        await asyncio.sleep(0.01)
    deltas = [d async for d in stream]
    assert len(deltas) < SAMPLING.max_tokens  # merged, not one per token
    assert [t for d in deltas for t in d.token_ids] == _expected(engine, prompt)
    assert "".join(d.text for d in deltas) == engine.llm.tokenizer.decode(
        [t for d in deltas for t in d.token_ids], skip_special=True
    )


async def test_cancel_ends_the_stream_with_cancelled(engine) -> None:
    stream = engine.submit(
        engine.llm.new_request([1, 2, 3], SamplingParams(max_tokens=400, ignore_eos=True))
    )
    first = await stream.__anext__()
    assert first.finish_reason is None
    stream.cancel()
    rest = [d async for d in stream]
    assert rest[-1].finish_reason is FinishReason.CANCELLED
    kv = engine.llm.core.stats().scheduler.kv
    assert kv.num_used_by_running == 0


async def test_overload_is_raised_from_the_stream(engine) -> None:
    long = SamplingParams(max_tokens=300, ignore_eos=True)
    streams = [engine.submit(engine.llm.new_request([i + 1] * 4, long)) for i in range(8)]
    errors = []
    for stream in streams:
        try:
            async for _ in stream:
                stream.cancel()
        except OverloadedError as exc:
            errors.append(exc)
    assert errors, "2 running + 2 waiting is the limit; the rest must be refused"


async def test_a_request_failing_in_the_engine_fails_its_stream_alone(engine) -> None:
    vocab = engine.llm.core.vocab_size
    ban_all = SamplingParams(
        temperature=1.0, max_tokens=8, logit_bias=dict.fromkeys(range(vocab), float("-inf"))
    )
    bad = engine.submit(engine.llm.new_request([3, 4, 5], ban_all))
    good = engine.submit(engine.llm.new_request([3, 4, 6], SAMPLING))
    with pytest.raises(RequestFailedError, match="sampling"):
        async for _ in bad:
            pass
    assert [t async for d in good for t in d.token_ids] == _expected(engine, [3, 4, 6])
    assert engine.healthy


def _mask_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("banterbox-mask")]


async def test_a_dead_engine_thread_is_restarted_and_in_flight_requests_told_to_retry(
    engine, monkeypatch
) -> None:
    constrained = SamplingParams(max_tokens=4, constraint=Constraint.regex("[a-z]{4}"))
    async for _ in engine.submit(engine.llm.new_request([5, 6], constrained)):
        pass  # the old core's constraint masks started their helper thread
    assert len(_mask_threads()) == 1
    running = engine.submit(
        engine.llm.new_request([1, 2, 3], SamplingParams(max_tokens=400, ignore_eos=True))
    )
    await running.__anext__()
    scheduler = engine.llm.core.scheduler

    def broken_schedule():
        raise RuntimeError("injected scheduler fault")

    monkeypatch.setattr(scheduler, "schedule", broken_schedule)  # only this core's scheduler
    with pytest.raises(EngineRestartedError):
        async for _ in running:
            pass
    async with asyncio.timeout(30):
        while not engine.healthy:
            assert engine.restarting
            await asyncio.sleep(0.01)
    assert engine.num_restarts == 1
    assert engine.llm.core.scheduler is not scheduler  # a fresh core, not the broken one
    prompt = [9, 8, 7]
    tokens = [
        t
        async for d in engine.submit(engine.llm.new_request(prompt, SAMPLING))
        for t in d.token_ids
    ]
    assert tokens == _expected(engine, prompt)
    assert _mask_threads() == []  # the dead core's went with it; the new core starts its own
    async for _ in engine.submit(engine.llm.new_request([5, 6], constrained)):
        pass
    assert len(_mask_threads()) == 1
    await engine.stop()
    assert _mask_threads() == []


async def test_a_crash_loop_leaves_the_engine_down(model_path, monkeypatch) -> None:
    llm = LLM.load(model_path, EngineConfig(kv_cache_mib=4, num_threads=1))
    engine = AsyncEngine(llm, max_restarts=1, restart_window_s=60)
    engine.start()
    try:
        for _ in range(2):
            async with asyncio.timeout(30):
                while engine.restarting:
                    await asyncio.sleep(0.01)
            monkeypatch.setattr(
                engine.llm.core.scheduler, "schedule", lambda: (_ for _ in ()).throw(OSError())
            )
            stream = engine.submit(engine.llm.new_request([1, 2], SAMPLING))
            with pytest.raises((EngineRestartedError, EngineDiedError)):
                async for _ in stream:
                    pass
        async with asyncio.timeout(30):
            while engine.restarting:
                await asyncio.sleep(0.01)
        assert not engine.healthy
        with pytest.raises(EngineDiedError):
            engine.submit(engine.llm.new_request([1, 2], SAMPLING))
    finally:
        await engine.stop()


async def test_score_equals_the_synchronous_score(engine) -> None:
    prompt, candidates = list(range(40, 90)), [[3], [4, 5, 6]]
    result = await engine.score(prompt, candidates, request_id="sc")
    llm = LLM.load(engine.llm.info.path, EngineConfig(num_threads=1))
    expected = llm.score(prompt, candidates)
    assert result.logprobs == pytest.approx(expected.logprobs, abs=1e-5)
    again = await engine.score(prompt, candidates, request_id="sc")
    assert again.num_cached_tokens == 48 and result.num_prompt_tokens == 50
    assert engine.num_active == 0


async def test_a_cancelled_score_leaves_nothing_running(engine) -> None:
    task = asyncio.create_task(engine.score(list(range(300)), [[1]] * 4, request_id="c"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if not engine.llm.core.has_unfinished():
            break
        await asyncio.sleep(0.01)
    assert not engine.llm.core.has_unfinished() and engine.num_active == 0
