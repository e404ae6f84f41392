"""Tests for the batched sampler: greedy, seeds, filters, penalties, bias, distribution."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from server.engine.sampler import SamplingState, adjust_logits, sample
from server.engine.types import SamplingParams

VOCAB = 64


def _logits(num_rows: int, *, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, VOCAB, generator=gen) * 3.0


def _state(
    *, prompt: Sequence[int] = (), output: Sequence[int] = (), **params: Any
) -> SamplingState:
    return SamplingState(SamplingParams(**params), prompt_token_ids=prompt, output_token_ids=output)


def _run(state_params: dict[str, Any], *, num_steps: int, seed: int = 1) -> list[int]:
    state = _state(**state_params)
    tokens = []
    for step in range(num_steps):
        (token_id,) = sample(_logits(1, seed=seed + step), [state])
        state.append(token_id)
        tokens.append(token_id)
    return tokens


def test_greedy_batch_equals_argmax() -> None:
    logits = _logits(5)
    states = [_state() for _ in range(5)]
    assert all(state.plain_greedy for state in states)
    assert sample(logits, states) == logits.argmax(dim=-1).tolist()


def test_greedy_rows_in_a_mixed_batch_equal_argmax() -> None:
    logits = _logits(4)
    states = [_state(), _state(temperature=1.0, seed=3), _state(), _state(temperature=0.7)]
    token_ids = sample(logits, states)
    expected = logits.argmax(dim=-1).tolist()
    assert token_ids[0] == expected[0]
    assert token_ids[2] == expected[2]


def test_sample_does_not_modify_the_callers_logits() -> None:
    logits = _logits(2)
    before = logits.clone()
    states = [
        _state(temperature=1.0, top_k=5, logit_bias={1: 5.0}),
        _state(presence_penalty=1.0, output=(2, 3)),
    ]
    sample(logits, states)
    assert torch.equal(logits, before)


def test_same_seed_gives_same_tokens() -> None:
    params: dict[str, Any] = {"temperature": 1.0, "seed": 1234}
    assert _run(params, num_steps=30) == _run(params, num_steps=30)


def test_same_seed_same_tokens_whatever_shares_the_batch() -> None:
    seeded = {"temperature": 0.9, "top_p": 0.95, "seed": 42}
    alone = _state(**seeded)
    batched = _state(**seeded)
    others = [_state(temperature=1.0), _state(temperature=1.3, top_k=10, seed=7), _state()]
    alone_tokens, batched_tokens = [], []
    for step in range(25):
        step_logits = _logits(1, seed=100 + step)
        (token_id,) = sample(step_logits, [alone])
        alone.append(token_id)
        alone_tokens.append(token_id)
        # The seeded row moves around the batch, next to random rows that draw too.
        batch = [*others[: step % 4], batched, *others[step % 4 :]]
        row = step % 4
        batch_logits = _logits(len(batch), seed=500 + step)
        batch_logits[row] = step_logits[0]
        token_ids = sample(batch_logits, batch)
        batched.append(token_ids[row])
        batched_tokens.append(token_ids[row])
    assert batched_tokens == alone_tokens


def test_different_seeds_differ() -> None:
    flat = {"temperature": 5.0}
    assert _run({**flat, "seed": 1}, num_steps=40) != _run({**flat, "seed": 2}, num_steps=40)


def test_unseeded_states_get_different_streams() -> None:
    assert _state(temperature=1.0).seed != _state(temperature=1.0).seed


def test_top_k_one_equals_greedy() -> None:
    logits = _logits(6)
    states = [_state(temperature=2.0, top_k=1, seed=i) for i in range(6)]
    assert sample(logits, states) == logits.argmax(dim=-1).tolist()


def test_tiny_top_p_equals_greedy() -> None:
    logits = _logits(6)
    states = [_state(temperature=1.5, top_p=1e-6, seed=i) for i in range(6)]
    assert sample(logits, states) == logits.argmax(dim=-1).tolist()


def test_top_k_keeps_only_the_k_best() -> None:
    logits = _logits(1)
    best = set(logits[0].topk(3).indices.tolist())
    state = _state(temperature=10.0, top_k=3, seed=9)
    drawn = {sample(logits, [state])[0] for _ in range(200)}
    assert drawn <= best
    assert len(drawn) > 1


def _drawn_set(logits: torch.Tensor, state: SamplingState, *, num_draws: int = 400) -> set[int]:
    return {sample(logits, [state])[0] for _ in range(num_draws)}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # Mass ranked above token 2 is 0.8 > 0.75, so the nucleus is tokens 0 and 1.
    assert _drawn_set(logits, _state(temperature=1.0, top_p=0.75, seed=1)) == {0, 1}


def test_top_p_applies_to_what_top_k_left() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # Alone, top_p=0.83 keeps token 2 (0.8 ranked above it); after top_k=3 renormalizes,
    # 0.8 / 0.95 = 0.84 is ranked above it and it goes.
    assert _drawn_set(logits, _state(temperature=1.0, top_p=0.83, seed=1)) == {0, 1, 2}
    assert _drawn_set(logits, _state(temperature=1.0, top_k=3, top_p=0.83, seed=1)) == {0, 1}


def test_min_p_filters_unlikely_tokens() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: min_p=0.5 keeps p >= 0.25, so tokens 0 and 1 only.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    state = _state(temperature=1.0, min_p=0.5, seed=5)
    drawn = Counter(sample(logits, [state])[0] for _ in range(300))
    assert set(drawn) == {0, 1}


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    state = _state(repetition_penalty=2.0, prompt=(0,), output=(1,))
    adjusted = adjust_logits(logits, [state])
    assert adjusted.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_presence_and_frequency_penalties_count_output_only() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    state = _state(presence_penalty=0.5, frequency_penalty=0.25, prompt=(3,), output=(1, 2, 2))
    adjusted = adjust_logits(logits, [state])
    # token 1: once → -0.5 - 0.25; token 2: twice → -0.5 - 0.5; prompt token 3 untouched.
    assert adjusted.tolist() == [[2.0, -2.75, 0.0, 0.5]]


def test_penalty_counts_follow_append() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    state = _state(frequency_penalty=1.5)
    assert sample(logits, [state]) == [0]  # builds the counts: nothing output yet
    state.append(0)
    assert adjust_logits(logits, [state]).tolist() == [[0.5, 1.0, 0.5, 0.0]]
    assert sample(logits, [state]) == [1]
    state.append(1)
    state.append(0)
    assert adjust_logits(logits, [state]).tolist() == [[-1.0, -0.5, 0.5, 0.0]]


def test_penalties_apply_only_to_their_own_rows() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0], [2.0, 1.0, 0.5, 0.0]])
    states = [_state(repetition_penalty=4.0, output=(0,)), _state(output=(0,))]
    assert sample(logits, states) == [1, 0]


def test_logit_bias_forces_a_token() -> None:
    logits = _logits(3)
    states = [
        _state(logit_bias={17: 100.0}),
        _state(temperature=1.0, seed=3, logit_bias={5: 100.0}),
        _state(temperature=1.0, top_k=4, seed=4, logit_bias={9: 100.0, 10: -100.0}),
    ]
    assert sample(logits, states) == [17, 5, 9]


def test_logit_bias_can_ban_the_argmax() -> None:
    logits = _logits(1)
    best = int(logits.argmax())
    assert sample(logits, [_state(logit_bias={best: -float("inf")})])[0] != best


def test_temperature_one_matches_a_known_distribution() -> None:
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().unsqueeze(0)
    state = _state(temperature=1.0, seed=2024)
    num_draws = 2000
    drawn = Counter(sample(logits, [state])[0] for _ in range(num_draws))
    for token_id, p in enumerate(probs.tolist()):
        assert drawn[token_id] / num_draws == pytest.approx(p, abs=0.04)


def test_low_temperature_sharpens() -> None:
    logits = torch.tensor([[0.6, 0.3, 0.1]]).log()
    state = _state(temperature=0.1, seed=11)
    drawn = Counter(sample(logits, [state])[0] for _ in range(200))
    assert drawn[0] >= 195


def test_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match="B=2"):
        sample(_logits(3), [_state(), _state()])
