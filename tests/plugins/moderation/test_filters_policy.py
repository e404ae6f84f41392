"""Spam filters and channel policies: each filter's measure, limit, exemptions; typed errors."""

from __future__ import annotations

import dataclasses

import pytest

from plugins.moderation.filters import (
    DEFAULT_FILTERS,
    FilterContext,
    FilterSettings,
    links_of,
    run_filters,
)
from plugins.moderation.policy import ChannelPolicy, PolicyError, parse_policy, policy_to_wire
from plugins.moderation.rules import CompiledChannel
from plugins.moderation.verdict import Action

NOBODY: frozenset[str] = frozenset()


def fired(
    text: str, context: FilterContext | None = None, roles: frozenset[str] = NOBODY
) -> list[str]:
    found = run_filters(text, DEFAULT_FILTERS, roles, context or FilterContext())
    return [f.reason.name for f in found]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("THIS STREAM IS THE BEST STREAM EVER", "caps"),
        ("!!!!!!@@@@@@######$$$$", "symbols"),
        ("Kappa " * 11, "emotes"),
        ("🔥" * 11, "emotes"),
        ("free skins at www.scam.ru/x", "links"),
        ("spam spam spam spam spam spam spam", "repetitions"),
        ("h̷̢̛̛e̸̡̛l̵̨̛l̴̢̛ơ̶̧", "zalgo"),
        ("a b " * 201, "length"),
    ],
)
def test_each_filter_fires(text: str, name: str) -> None:
    assert name in fired(text)


@pytest.mark.parametrize(
    "text", ["GG", "LETS GOOOOOOOO", "KEKW KEKW", "that was clean!", "nice https://youtube.com/x"]
)
def test_ordinary_chat_passes(text: str) -> None:
    context = FilterContext(link_allow=("youtube.com",))
    assert fired(text, context) == []


def test_min_length_exemptions_and_silent() -> None:
    assert fired("WOW") == []  # under caps' min_length
    assert fired("THIS STREAM IS THE BEST STREAM EVER", roles=frozenset({"moderator"})) == []
    assert fired("see clips.twitch.tv/abc", FilterContext(link_allow=("twitch.tv",))) == []
    assert fired("see evil.com", FilterContext(link_permitted=True)) == []
    silent = {"caps": FilterSettings(limit=10, silent=True, action=Action.TIMEOUT, duration_s=30)}
    (finding,) = run_filters("HELLO there", silent, NOBODY, FilterContext())
    assert finding.silent and finding.action is Action.TIMEOUT and finding.duration_s == 30
    assert "over the limit of 10%" in finding.reason.detail
    assert links_of("go to https://www.Example.com/path and bit.ly/x") == ["example.com", "bit.ly"]


def test_policy_round_trips_and_merges_over_defaults() -> None:
    policy = parse_policy(
        {
            "blocked_terms": ["noob", "re:free\\s+skins"],
            "filters": {"caps": {"limit": 50, "exempt_roles": ["vip"]}},
            "categories": {"taunt": 4, "hate": {"action": "ban"}},
            "escalation": {"timeouts_s": [1, 2]},
            "judge": {"policy": "No spoilers.", "mode": "all"},
        }
    )
    assert policy.filters["caps"].limit == 50 and policy.filters["caps"].min_length == 20
    assert policy.filters["caps"].exempt_roles == {"vip"}
    assert policy.categories["taunt"].level == 4
    assert policy.categories["hate"].action is Action.BAN
    assert parse_policy(policy_to_wire(policy)) == policy
    assert parse_policy({}) == ChannelPolicy()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"filters": {"caps": {"limit": "a"}}}, "filters.caps.limit"),
        ({"filters": {"nope": {}}}, "filters.nope"),
        ({"filters": {"caps": {"bogus": 1}}}, "filters.caps.bogus"),
        ({"categories": {"taunt": 7}}, "categories.taunt.level"),
        ({"categories": {"weather": 1}}, "categories.weather"),
        ({"escalation": {"timeouts_s": [0]}}, "escalation.timeouts_s"),
        ({"blocked_action": "nuke"}, "blocked_action"),
        ({"judge": {"mode": "sometimes"}}, "judge.mode"),
        ({"slow_mode_s": -1}, "slow_mode_s"),
        ({"blocked_terms": "noob"}, "blocked_terms"),
    ],
)
def test_bad_policies_name_their_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(raw)
    assert error.value.field == field


def test_compiling_refuses_a_bad_regex_by_its_list() -> None:
    policy = dataclasses.replace(ChannelPolicy(), blocked_terms=("re:(a)\\1",))
    with pytest.raises(PolicyError) as error:
        CompiledChannel.compile(policy)
    assert error.value.field == "blocked_terms"
