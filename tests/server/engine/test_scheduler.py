"""Scheduler over a fake model: budgets, chunked prefill, priority, preemption, aborts, prefix
and session reuse. The fake model keeps its "KV" in a dict keyed by (block id, offset) and
samples from what it reads back there, so a wrong block table, position or cached block changes
the tokens."""

from __future__ import annotations

import random
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import pytest

from server.engine.errors import OverloadedError, PromptTooLongError, RequestError
from server.engine.kv_manager import KVCacheManager, KVUsage
from server.engine.scheduler import Scheduler, SchedulerOutput, SequenceStatus
from server.engine.types import EngineRequest, FinishReason, Priority, SamplingParams

BS = 16
EOS = 2


def next_token(context: Seq[int], *, eos_token_id: int | None = None) -> int:
    """A deterministic "model": the next token depends on every token before it."""
    h = 17
    for token_id in context:
        h = (h * 1_000_003 + token_id) & 0xFFFF_FFFF
    if eos_token_id is not None and h % 13 == 0:
        return eos_token_id
    return 3 + h % 997


def reference(prompt: Seq[int], max_tokens: int, *, eos_token_id: int | None = None) -> list[int]:
    """What an unconstrained run must produce."""
    tokens = list(prompt)
    outputs: list[int] = []
    while len(outputs) < max_tokens:
        token_id = next_token(tokens, eos_token_id=eos_token_id)
        outputs.append(token_id)
        tokens.append(token_id)
        if token_id == eos_token_id:
            break
    return outputs


def prompt_of(seed: int, num_tokens: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(num_tokens)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel:
    """Writes every fed token at its slot, and samples from the context read back from slots."""

    def __init__(self, *, eos_token_id: int | None = None) -> None:
        self.slots: dict[tuple[int, int], int] = {}
        self.eos_token_id = eos_token_id

    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        sampled: dict[str, int] = {}
        for chunk in output.chunks:
            end = chunk.start_position + len(chunk.token_ids)
            assert len(chunk.block_ids) * BS >= end
            for offset, token_id in enumerate(chunk.token_ids):
                position = chunk.start_position + offset
                block_id = chunk.block_ids[position // BS]
                assert block_id != KVCacheManager.NULL_BLOCK_ID
                self.slots[block_id, position % BS] = token_id
            if chunk.sample:
                context = [self.slots[chunk.block_ids[p // BS], p % BS] for p in range(end)]
                assert context == chunk.seq.all_token_ids
                sampled[chunk.request_id] = next_token(context, eos_token_id=self.eos_token_id)
        return sampled


@dataclass
class Harness:
    sched: Scheduler
    kv: KVCacheManager
    model: FakeModel
    budget: int
    max_num_seqs: int
    outputs: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, FinishReason] = field(default_factory=dict)

    def add(
        self,
        request_id: str,
        prompt: Seq[int],
        *,
        max_tokens: int = 8,
        priority: Priority = Priority.INTERACTIVE,
        session_id: str | None = None,
        prefill_only: bool = False,
        **sampling: object,
    ) -> None:
        self.sched.add_request(
            EngineRequest(
                request_id=request_id,
                prompt_token_ids=tuple(prompt),
                sampling=SamplingParams(max_tokens=max_tokens, **sampling),  # type: ignore[arg-type]
                priority=priority,
                session_id=session_id,
                prefill_only=prefill_only,
            )
        )
        self.outputs[request_id] = []

    def step(self) -> SchedulerOutput:
        out = self.sched.schedule()
        self.check(out)
        for update in self.sched.update_from_output(out, self.model.execute(out)):
            self.outputs[update.request_id].extend(update.new_token_ids)
            assert update.num_output_tokens == len(self.outputs[update.request_id])
            if update.finish_reason is not None:
                self.finished(update.request_id, update.finish_reason)
        for done in out.finished:
            self.finished(done.request_id, done.finish_reason)
        assert_partition(self.kv.usage())
        return out

    def finished(self, request_id: str, reason: FinishReason) -> None:
        assert request_id not in self.reasons, f"{request_id} finished twice"
        self.reasons[request_id] = reason

    def check(self, out: SchedulerOutput) -> None:
        assert out.num_scheduled_tokens == sum(len(c.token_ids) for c in out.chunks)
        assert out.num_scheduled_tokens <= self.budget
        assert len(out.chunks) <= self.max_num_seqs
        assert len({c.request_id for c in out.chunks}) == len(out.chunks)
        for chunk in out.chunks:
            seq = chunk.seq
            start = chunk.start_position
            assert seq.status is SequenceStatus.RUNNING
            assert start == seq.num_computed_tokens
            assert list(chunk.token_ids) == seq.all_token_ids[start : start + len(chunk.token_ids)]
            reaches_end = start + len(chunk.token_ids) == seq.num_tokens
            assert chunk.sample == (reaches_end and not seq.request.prefill_only)

    def run(self, *, max_steps: int = 5_000) -> None:
        for _ in range(max_steps):
            if not self.sched.has_unfinished():
                return
            self.step()
        raise AssertionError("the scheduler did not finish its work")


def make(
    *,
    num_blocks: int = 257,
    budget: int = 512,
    max_num_seqs: int = 64,
    max_waiting: int = 256,
    max_model_len: int = 1024,
    eos_token_ids: frozenset[int] = frozenset(),
    model_eos: int | None = None,
    clock: FakeClock | None = None,
    session_ttl_s: float = 600.0,
    max_session_share: float = 0.5,
) -> Harness:
    clock = clock or FakeClock()
    kv = KVCacheManager(
        num_blocks=num_blocks,
        block_size=BS,
        session_ttl_s=session_ttl_s,
        max_session_share=max_session_share,
        clock=clock,
    )
    sched = Scheduler(
        kv,
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs,
        max_waiting=max_waiting,
        max_model_len=max_model_len,
        eos_token_ids=eos_token_ids,
        clock=clock,
    )
    return Harness(sched, kv, FakeModel(eos_token_id=model_eos), budget, max_num_seqs)


def assert_partition(usage: KVUsage) -> None:
    parts = (
        usage.num_free,
        usage.num_cached_evictable,
        usage.num_used_by_running,
        usage.num_pinned_by_sessions,
    )
    assert sum(parts) == usage.num_blocks


def assert_baseline(usage: KVUsage) -> None:
    assert usage.num_used_by_running == 0
    assert usage.num_pinned_by_sessions == 0
    assert usage.num_free + usage.num_cached_evictable == usage.num_blocks


def test_budget_respected_and_outputs_match_under_load() -> None:
    h = make(budget=64, max_num_seqs=8)
    rng = random.Random(7)
    expected: dict[str, list[int]] = {}
    for i in range(40):
        prompt = prompt_of(i, rng.randint(1, 150))
        max_tokens = rng.randint(1, 20)
        h.add(f"r{i}", prompt, max_tokens=max_tokens)
        expected[f"r{i}"] = reference(prompt, max_tokens)
        if i % 4 == 0:
            h.step()
    h.run()
    assert h.outputs == expected
    assert set(h.reasons.values()) == {FinishReason.LENGTH}
    assert_baseline(h.kv.usage())


def test_long_prompt_is_chunked_while_decodes_continue() -> None:
    h = make(budget=64)
    for name in ("a", "b", "c"):
        h.add(name, prompt_of(ord(name), 5), max_tokens=50)
    h.step()
    long_prompt = prompt_of(99, 300)
    h.add("long", long_prompt, max_tokens=4)
    starts = []
    for _ in range(5):
        out = h.step()
        decodes, prefill = out.chunks[:3], out.chunks[3:]
        assert [c.request_id for c in decodes] == ["a", "b", "c"]
        assert all(len(c.token_ids) == 1 and c.sample for c in decodes)
        assert [c.request_id for c in prefill] == ["long"]
        starts.append(prefill[0].start_position)
        assert prefill[0].sample == (starts[-1] == 244)
        assert out.num_scheduled_tokens == 3 + len(prefill[0].token_ids)
    assert starts == [0, 61, 122, 183, 244]
    assert h.outputs["long"] == reference(long_prompt, 4)[:1]
    h.run()
    assert h.outputs["long"] == reference(long_prompt, 4)


def test_interactive_admitted_before_earlier_background() -> None:
    h = make(max_num_seqs=1)
    h.add("bg", prompt_of(1, 8), max_tokens=3, priority=Priority.BACKGROUND)
    h.add("i1", prompt_of(2, 8), max_tokens=3)
    h.add("i2", prompt_of(3, 8), max_tokens=3)
    order: list[str] = []
    while h.sched.has_unfinished():
        out = h.step()
        order.extend(c.request_id for c in out.chunks if c.request_id not in order)
        if "bg" not in order:
            assert h.sched.get_sequence("bg").status is SequenceStatus.WAITING  # type: ignore[union-attr]
    assert order == ["i1", "i2", "bg"]


def test_background_waits_for_budget_while_interactive_runs() -> None:
    h = make(budget=16)
    h.add("bg", prompt_of(1, 16), max_tokens=2, priority=Priority.BACKGROUND)
    h.add("i", prompt_of(2, 16), max_tokens=2)
    first = h.step()
    assert [c.request_id for c in first.chunks] == ["i"]
    second = h.step()
    assert [(c.request_id, len(c.token_ids)) for c in second.chunks] == [("i", 1), ("bg", 15)]


def test_background_does_not_jump_an_interactive_request_short_of_blocks() -> None:
    h = make(num_blocks=5)
    h.add("r", prompt_of(1, 40), max_tokens=4)
    h.step()
    h.add("i", prompt_of(2, 40), max_tokens=2)  # needs 3 blocks; 1 is free
    h.add("bg", prompt_of(3, 4), max_tokens=2, priority=Priority.BACKGROUND)  # would fit
    while h.sched.get_sequence("r") is not None:
        assert [c.request_id for c in h.step().chunks] == ["r"]
    assert [c.request_id for c in h.step().chunks] == ["i", "bg"]


@pytest.mark.parametrize(
    ("first", "second", "victim"),
    [
        (Priority.BACKGROUND, Priority.INTERACTIVE, "first"),  # lowest priority, though earlier
        (Priority.INTERACTIVE, Priority.INTERACTIVE, "second"),  # same class: latest arrival
    ],
)
def test_preemption_victim_and_resume(first: Priority, second: Priority, victim: str) -> None:
    h = make(num_blocks=5)  # 4 usable blocks: 64 tokens for both
    prompts = {"first": prompt_of(1, 16), "second": prompt_of(2, 16)}
    h.add("first", prompts["first"], max_tokens=40, priority=first)
    h.add("second", prompts["second"], max_tokens=40, priority=second)
    preempted: list[str] = []
    while h.sched.has_unfinished():
        out = h.step()
        preempted.extend(out.preempted_request_ids)
        if out.preempted_request_ids:
            seq = h.sched.get_sequence(victim)
            assert seq is not None
            assert seq.status is SequenceStatus.PREEMPTED
            assert seq.block_ids == []
            assert victim not in {c.request_id for c in out.chunks}
    assert preempted == [victim]
    assert h.sched.stats().num_preemptions_total == 1
    for name, prompt in prompts.items():
        assert h.outputs[name] == reference(prompt, 40)
    assert_baseline(h.kv.usage())


def test_preempted_sequence_resumes_before_later_arrivals() -> None:
    h = make(num_blocks=5, max_num_seqs=2)
    h.add("a", prompt_of(1, 16), max_tokens=40)
    h.add("b", prompt_of(2, 16), max_tokens=40)
    h.step()
    h.add("c", prompt_of(3, 16), max_tokens=4)  # waits: two sequences already run
    while "b" not in h.step().preempted_request_ids:
        pass
    while True:
        scheduled = [c.request_id for c in h.step().chunks if c.request_id != "a"]
        if scheduled:
            break
    assert scheduled[0] == "b"
    h.run()
    assert h.outputs["b"] == reference(prompt_of(2, 16), 40)


def test_victim_already_scheduled_this_step_is_taken_back() -> None:
    h = make(num_blocks=5, budget=20)
    h.add("b", prompt_of(2, 4), max_tokens=20, priority=Priority.BACKGROUND)
    h.step()
    h.add("a", prompt_of(1, 60), max_tokens=4)
    h.step()
    h.step()
    out = h.step()  # b's decode goes first; then a's chunk needs b's block
    assert out.preempted_request_ids == ("b",)
    assert [c.request_id for c in out.chunks] == ["a"]
    assert out.num_scheduled_tokens == 19
    h.run()
    assert h.outputs["a"] == reference(prompt_of(1, 60), 4)
    assert h.outputs["b"] == reference(prompt_of(2, 4), 20)


def test_no_admission_in_a_step_that_preempted() -> None:
    h = make(num_blocks=5, max_num_seqs=2)
    h.add("a", prompt_of(1, 16), max_tokens=40)
    h.add("b", prompt_of(2, 16), max_tokens=40, priority=Priority.BACKGROUND)
    h.step()
    h.add("c", prompt_of(3, 4), max_tokens=2)
    out = h.step()
    while not out.preempted_request_ids:
        assert "c" not in {c.request_id for c in out.chunks}
        out = h.step()
    assert out.preempted_request_ids == ("b",)
    assert [c.request_id for c in out.chunks] == ["a"]  # c would fit, but blocks are short
    assert [c.request_id for c in h.step().chunks] == ["a", "c"]


def test_preemption_under_tight_kv_reproduces_unconstrained_tokens() -> None:
    h = make(num_blocks=12, budget=48, max_num_seqs=8)  # 176 tokens of KV
    rng = random.Random(3)
    expected: dict[str, list[int]] = {}
    for i in range(10):
        prompt = prompt_of(100 + i, rng.randint(20, 60))
        max_tokens = rng.randint(20, 60)
        priority = rng.choice(list(Priority))
        h.add(f"r{i}", prompt, max_tokens=max_tokens, priority=priority)
        expected[f"r{i}"] = reference(prompt, max_tokens)
    h.run()
    assert h.sched.stats().num_preemptions_total > 0
    assert h.outputs == expected
    assert_baseline(h.kv.usage())


def test_sequence_that_cannot_fit_alone_finishes_with_length() -> None:
    h = make(num_blocks=5)  # 64 tokens of KV
    h.add("big", prompt_of(1, 10), max_tokens=200)
    h.run()
    assert h.reasons == {"big": FinishReason.LENGTH}
    assert h.outputs["big"] == reference(prompt_of(1, 10), 55)
    assert h.sched.stats().num_preemptions_total == 0
    assert_baseline(h.kv.usage())


def test_waiting_sequence_that_nothing_can_make_room_for_finishes_with_length() -> None:
    h = make(num_blocks=5)
    held = h.kv.allocate(3)  # KV held outside this scheduler
    assert held is not None
    h.add("r", prompt_of(1, 20))
    out = h.step()
    assert [(f.request_id, f.finish_reason) for f in out.finished] == [("r", FinishReason.LENGTH)]
    assert not h.sched.has_unfinished()


def test_overloaded_when_waiting_queue_is_full() -> None:
    h = make(max_waiting=2)
    h.add("a", [5, 6])
    h.add("b", [5, 7])
    with pytest.raises(OverloadedError):
        h.add("c", [5, 8])
    h.step()  # both admitted: the queue is empty again
    h.add("c", [5, 8])
    assert h.sched.stats().num_waiting == 1


def test_refused_requests() -> None:
    h = make(num_blocks=3, max_model_len=40)  # 32 tokens of KV
    with pytest.raises(PromptTooLongError):
        h.add("ctx", prompt_of(1, 40))  # no room left to generate
    with pytest.raises(PromptTooLongError):
        h.add("kv", prompt_of(1, 33))  # fits the window, not the KV budget
    with pytest.raises(RequestError):
        h.add("empty", [])
    h.add("ok", prompt_of(1, 32))
    with pytest.raises(RequestError):
        h.add("ok", prompt_of(2, 3))


def test_stop_conditions() -> None:
    prompt = prompt_of(5, 10)
    ref = reference(prompt, 50)
    h = make(max_model_len=30, eos_token_ids=frozenset({ref[1]}))
    h.add("eos", prompt, max_tokens=50)
    h.add("ignore", prompt, max_tokens=4, ignore_eos=True)
    h.add("stop_id", prompt, max_tokens=50, stop_token_ids=(ref[0],))
    h.add("window", prompt, max_tokens=50, ignore_eos=True)
    h.run()
    assert h.reasons == {
        "eos": FinishReason.STOP,
        "ignore": FinishReason.LENGTH,
        "stop_id": FinishReason.STOP,
        "window": FinishReason.LENGTH,
    }
    assert h.outputs["eos"] == ref[:2]
    assert h.outputs["ignore"] == ref[:4]
    assert h.outputs["stop_id"] == ref[:1]
    assert h.outputs["window"] == ref[:20]


def test_finish_request_frees_at_once() -> None:
    h = make()
    h.add("r", prompt_of(1, 40), max_tokens=50)
    h.step()
    h.sched.finish_request("r", FinishReason.STOP)
    assert h.sched.get_sequence("r") is None
    assert_baseline(h.kv.usage())
    out = h.sched.schedule()
    assert out.chunks == () and out.finished == ()


def test_abort_of_a_request_finished_before_the_next_step_is_dropped() -> None:
    h = make()
    h.add("r", prompt_of(1, 40), max_tokens=50)
    h.step()
    h.sched.abort_request("r")
    h.sched.finish_request("r", FinishReason.STOP)  # a stop string matched meanwhile
    out = h.sched.schedule()
    assert out.finished == ()
    assert not h.sched.has_unfinished()


def _abort_state_setup(h: Harness, state: str) -> None:
    if state == "waiting":
        h.add("x", prompt_of(1, 40), max_tokens=50)
    elif state == "mid_prefill":
        h.add("x", prompt_of(1, 60), max_tokens=50)
        h.step()  # budget 16: 16 of 60 prompt tokens computed
        assert h.sched.get_sequence("x").num_computed_tokens == 16  # type: ignore[union-attr]
    elif state == "decoding":
        h.add("x", prompt_of(1, 10), max_tokens=50)
        for _ in range(3):
            h.step()
    elif state == "preempted":
        h.add("x", prompt_of(1, 14), max_tokens=50, priority=Priority.BACKGROUND)
        h.add("y", prompt_of(2, 14), max_tokens=30)
        while "x" not in h.step().preempted_request_ids:
            pass
    elif state == "finished":
        h.add("x", prompt_of(1, 10), max_tokens=2)
        h.run()


@pytest.mark.parametrize("state", ["waiting", "mid_prefill", "decoding", "preempted", "finished"])
def test_abort_in_every_state_frees_blocks(state: str) -> None:
    h = make(num_blocks=5, budget=16)  # 4 usable blocks: room for a preemption
    _abort_state_setup(h, state)
    seq = h.sched.get_sequence("x")
    assert (seq is None) == (state == "finished")
    h.sched.abort_request("x")
    h.sched.abort_request("unknown")
    out = h.step()
    cancelled = [f for f in out.finished if f.finish_reason is FinishReason.CANCELLED]
    if state == "finished":
        assert cancelled == []
    else:
        assert [f.request_id for f in cancelled] == ["x"]
        assert seq is not None and seq.status is SequenceStatus.FINISHED
        assert seq.block_ids == []
        assert cancelled[0].num_output_tokens == len(h.outputs["x"])
    assert "x" not in {c.request_id for c in out.chunks}
    assert h.sched.get_sequence("x") is None
    h.run()
    assert_baseline(h.kv.usage())


def test_shared_prefix_is_not_recomputed() -> None:
    h = make()
    prefix = prompt_of(1, 200)
    a = [*prefix, 1001, 1002, 1003, 1004, 1005]
    b = [*prefix, 2001, 2002, 2003, 2004, 2005]
    h.add("a", a, max_tokens=6)
    h.step()
    h.add("b", b, max_tokens=6)
    out = h.step()  # a is still decoding: its blocks are shared, not copied
    chunk = next(c for c in out.chunks if c.request_id == "b")
    assert chunk.start_position == 192
    assert chunk.token_ids == tuple(b[192:])
    assert chunk.seq.num_cached_tokens == 192
    a_blocks = h.sched.get_sequence("a").block_ids  # type: ignore[union-attr]
    assert chunk.block_ids[:12] == tuple(a_blocks[:12])
    assert h.sched.stats().num_prefix_hit_tokens_total == 192
    h.run()
    assert h.outputs["a"] == reference(a, 6)
    assert h.outputs["b"] == reference(b, 6)


def test_identical_prompt_still_recomputes_its_last_token() -> None:
    h = make()
    prompt = prompt_of(1, 32)
    h.add("a", prompt, max_tokens=2)
    h.run()
    h.add("b", prompt, max_tokens=2)
    out = h.step()
    assert out.chunks[0].start_position == 16
    assert out.chunks[0].sample
    h.run()
    assert h.outputs["b"] == reference(prompt, 2)


def _pressure(h: Harness, seed: int) -> None:
    """Two long unrelated requests that push every unpinned block out of the cache."""
    for i in range(2):
        h.add(f"filler{seed}-{i}", prompt_of(seed + i, 200), max_tokens=2)
        h.run()


@pytest.mark.parametrize("session_id", ["s", None])
def test_session_second_turn_prefills_only_new_tokens(session_id: str | None) -> None:
    h = make(num_blocks=17, max_model_len=512)  # 16 usable blocks
    turn1 = prompt_of(1, 40)
    h.add("t1", turn1, max_tokens=10, session_id=session_id)
    h.run()
    history = [*turn1, *h.outputs["t1"]]  # 50 tokens: KV of 49 computed, 3 full blocks
    assert h.kv.session_num_tokens("s") == (48 if session_id else None)
    _pressure(h, 50)
    turn2 = [*history, *prompt_of(2, 7)]
    h.add("t2", turn2, max_tokens=5, session_id=session_id)
    out = h.step()
    chunk = out.chunks[0]
    if session_id is None:
        assert chunk.start_position == 0  # evicted by the fillers
    else:
        assert chunk.start_position == 48
        assert chunk.token_ids == tuple(turn2[48:])  # 2 of the partial block + 7 new
        assert chunk.seq.num_cached_tokens == 48
    h.run()
    assert h.outputs["t2"] == reference(turn2, 5)


def test_session_expires_after_ttl() -> None:
    clock = FakeClock()
    h = make(clock=clock, session_ttl_s=60.0)
    h.add("t1", prompt_of(1, 40), max_tokens=2, session_id="s")
    h.run()
    assert h.kv.usage().num_pinned_by_sessions == 2
    clock.now += 59.0
    h.sched.schedule()
    assert h.kv.session_num_tokens("s") == 32
    clock.now += 2.0
    h.sched.schedule()
    assert h.kv.session_num_tokens("s") is None
    assert_baseline(h.kv.usage())


def test_pressure_releases_least_recently_used_session() -> None:
    h = make(num_blocks=17, max_session_share=1.0, max_model_len=512)
    for name in ("s1", "s2"):
        h.add(name, prompt_of(ord(name[1]), 64), max_tokens=1, session_id=name)
        h.run()
    assert h.kv.usage().num_pinned_by_sessions == 8
    h.add("big", prompt_of(9, 190), max_tokens=1)  # 12 blocks: 8 free + 4 of one session
    h.run()
    assert h.kv.session_num_tokens("s1") is None
    assert h.kv.session_num_tokens("s2") == 64
    assert h.sched.stats().num_preemptions_total == 0


def test_random_aborts_leave_kv_at_baseline() -> None:
    rng = random.Random(20240601)
    h = make(
        num_blocks=33,
        budget=128,
        max_num_seqs=16,
        max_waiting=500,
        eos_token_ids=frozenset({EOS}),
        model_eos=EOS,
    )
    prefixes = [prompt_of(900 + i, rng.randint(16, 48)) for i in range(4)]
    plan: list[tuple[int, int, str, list[int], int]] = []  # add step, abort step, id, ...
    for i in range(500):
        prompt = [*rng.choice(prefixes), *prompt_of(i, rng.randint(1, 40))]
        add_at = i // 5
        plan.append((add_at, add_at + rng.randint(0, 80), f"r{i}", prompt, rng.randint(1, 40)))
    step = 0
    while step <= plan[-1][0] or h.sched.has_unfinished():
        for add_at, _, request_id, prompt, max_tokens in plan:
            if add_at == step:
                session_id = f"s{int(request_id[1:]) % 7}" if rng.random() < 0.1 else None
                priority = rng.choice(list(Priority))
                h.add(
                    request_id,
                    prompt,
                    max_tokens=max_tokens,
                    priority=priority,
                    session_id=session_id,
                    prefill_only=rng.random() < 0.1,
                )
        for _, abort_at, request_id, _, _ in plan:
            if abort_at == step:
                h.sched.abort_request(request_id)
        h.step()
        step += 1
    assert len(h.reasons) == 500
    # Every way to end but ERROR, which only a failing forward or sampler produces.
    assert set(h.reasons.values()) == set(FinishReason) - {FinishReason.ERROR}
    assert h.sched.stats().num_preemptions_total > 0
    for _, _, request_id, prompt, max_tokens in plan:
        expected = reference(prompt, max_tokens, eos_token_id=EOS)
        assert h.outputs[request_id] == expected[: len(h.outputs[request_id])]
    for i in range(7):
        h.kv.release_session(f"s{i}")
    assert_baseline(h.kv.usage())


def test_a_running_background_prefill_yields_to_an_interactive_arrival() -> None:
    # A prefill that warms a session while its player types is speculative: a turn someone
    # waits on is admitted ahead of its remaining chunks, not after them.
    h = make(budget=16)
    h.add("warm", prompt_of(1, 64), max_tokens=1, priority=Priority.BACKGROUND)
    assert [(c.request_id, len(c.token_ids)) for c in h.step().chunks] == [("warm", 16)]
    h.add("say", prompt_of(2, 8), max_tokens=2)
    assert [(c.request_id, len(c.token_ids)) for c in h.step().chunks] == [
        ("say", 8), ("warm", 8)
    ]  # fmt: skip
    assert [(c.request_id, len(c.token_ids)) for c in h.step().chunks] == [
        ("say", 1), ("warm", 15)
    ]  # fmt: skip
    h.run()
    assert h.outputs["say"] == reference(prompt_of(2, 8), 2)
    assert h.outputs["warm"] == reference(prompt_of(1, 64), 1)
