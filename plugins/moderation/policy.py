"""A channel's moderation policy: plain data, read from and written to the wire. Pure.

`parse_policy` checks every field and raises PolicyError naming the field; fields left out
take the defaults documented here, so `{}` is the default policy. Terms are compiled (and
bad regexes refused) by rules.py, not here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from .filters import DEFAULT_EXEMPT, DEFAULT_FILTERS, FILTER_NAMES, FilterSettings
from .lexicon import CATEGORIES
from .verdict import Action

T = TypeVar("T")
LEVEL_THRESHOLDS = (2.0, 0.9, 0.75, 0.6, 0.45)  # AutoMod-style level -> the score that fires
JUDGE_MODES = ("off", "uncertain", "all")


class PolicyError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True, kw_only=True)
class CategorySetting:
    level: int  # 0 off ... 4 strictest; LEVEL_THRESHOLDS gives the score each level fires at
    action: Action = Action.HOLD

    @property
    def threshold(self) -> float:
        return LEVEL_THRESHOLDS[self.level]


@dataclass(frozen=True, kw_only=True)
class WindowRule:
    """At most `limit` events per `window_s` (0 turns it off); beyond, `action`."""

    limit: int
    window_s: float
    action: Action = Action.DELETE
    duration_s: int = 0


@dataclass(frozen=True, kw_only=True)
class Escalation:
    enabled: bool = True  # off: actions stand as the layers chose them
    timeouts_s: tuple[int, ...] = (5, 60, 600)  # n-th strike's timeout; past the end, a ban
    decay_s: float = 900.0  # one strike forgiven per this many quiet seconds
    ban: bool = True  # past the last timeout: ban (else the last timeout again)


@dataclass(frozen=True, kw_only=True)
class JudgeSettings:
    policy: str = ""  # the channel's rules in plain words; empty: no judge
    mode: str = "uncertain"  # off | uncertain (between the fast layers' bands) | all
    threshold: float = 0.5  # P(yes) at which the judge holds a message
    uncertain_low: float = 0.2  # fast-layer scores in [low, high) go to the judge
    uncertain_high: float = 0.75


DEFAULT_LEVELS = MappingProxyType(
    {"profanity": 1, "hate": 4, "sexual": 3, "self_harm": 4, "family": 3, "insult": 3,
     "taunt": 2, "harassment": 3}
)  # fmt: skip
_DEFAULT_ACTIONS = {"hate": Action.DELETE, "self_harm": Action.DELETE}


def _default_categories() -> Mapping[str, CategorySetting]:
    return MappingProxyType(
        {
            name: CategorySetting(level=level, action=_DEFAULT_ACTIONS.get(name, Action.HOLD))
            for name, level in DEFAULT_LEVELS.items()
        }
    )


@dataclass(frozen=True, kw_only=True)
class ChannelPolicy:
    blocked_terms: tuple[str, ...] = ()  # plain, `*` wildcard, or "re:" + an re2 regex
    permitted_terms: tuple[str, ...] = ()  # cut out before blocked terms and the lexicon run
    blocked_action: Action = Action.DELETE
    blocked_duration_s: int = 0
    filters: Mapping[str, FilterSettings] = field(default_factory=lambda: DEFAULT_FILTERS)
    link_allow: tuple[str, ...] = ()
    emotes: tuple[str, ...] = ()  # the channel's own emote names, on top of the global ones
    categories: Mapping[str, CategorySetting] = field(default_factory=_default_categories)
    slow_mode_s: float = 0.0  # a user's messages at least this far apart (0: off)
    unique_chat_s: float = 0.0  # no message repeated by anyone within this window (0: off)
    flood: WindowRule = WindowRule(limit=10, window_s=10.0, action=Action.TIMEOUT, duration_s=60)
    duplicates: WindowRule = WindowRule(limit=2, window_s=30.0)
    escalation: Escalation = Escalation()
    exempt_roles: frozenset[str] = DEFAULT_EXEMPT  # skip rules, state and classifier
    hold_s: float = 120.0  # a held message not reviewed by then expires (denied)
    judge: JudgeSettings = JudgeSettings()
    # Policy by example: with review decisions, they train the channel's own classifier.
    examples_allowed: tuple[str, ...] = ()
    examples_disallowed: tuple[str, ...] = ()
    examples_threshold: float = 0.9  # P(disallowed) at which that classifier holds a message


def parse_policy(raw: Mapping[str, object]) -> ChannelPolicy:
    known = {f.name for f in dataclasses.fields(ChannelPolicy)}
    for key in raw:
        if key not in known:
            raise PolicyError(str(key), "unknown policy field")
    base = ChannelPolicy()
    filters = dict(base.filters)
    for name, value in _map(raw, "filters").items():
        if name not in FILTER_NAMES:
            raise PolicyError(f"filters.{name}", f"unknown filter; one of {FILTER_NAMES}")
        filters[name] = _dataclass(FilterSettings, filters[name], value, f"filters.{name}")
    categories = dict(base.categories)
    for name, value in _map(raw, "categories").items():
        if name not in CATEGORIES:
            raise PolicyError(f"categories.{name}", f"unknown category; one of {CATEGORIES}")
        if isinstance(value, int) and not isinstance(value, bool):
            value = {"level": value}
        where = f"categories.{name}"
        categories[name] = _dataclass(CategorySetting, categories[name], value, where)
        if not 0 <= categories[name].level <= 4:
            raise PolicyError(f"categories.{name}.level", "must be 0 to 4")
    judge = _dataclass(JudgeSettings, base.judge, _map(raw, "judge"), "judge")
    if judge.mode not in JUDGE_MODES:
        raise PolicyError("judge.mode", f"one of {JUDGE_MODES}")
    return dataclasses.replace(
        base,
        blocked_terms=_strings(raw, "blocked_terms", base.blocked_terms),
        permitted_terms=_strings(raw, "permitted_terms", base.permitted_terms),
        blocked_action=_action(raw.get("blocked_action", base.blocked_action), "blocked_action"),
        blocked_duration_s=_number(raw, "blocked_duration_s", int, base.blocked_duration_s),
        filters=MappingProxyType(filters),
        link_allow=tuple(d.lower() for d in _strings(raw, "link_allow", base.link_allow)),
        emotes=_strings(raw, "emotes", base.emotes),
        categories=MappingProxyType(categories),
        slow_mode_s=_number(raw, "slow_mode_s", float, base.slow_mode_s),
        unique_chat_s=_number(raw, "unique_chat_s", float, base.unique_chat_s),
        flood=_dataclass(WindowRule, base.flood, _map(raw, "flood"), "flood"),
        duplicates=_dataclass(WindowRule, base.duplicates, _map(raw, "duplicates"), "duplicates"),
        escalation=_dataclass(Escalation, base.escalation, _map(raw, "escalation"), "escalation"),
        exempt_roles=frozenset(_strings(raw, "exempt_roles", tuple(base.exempt_roles))),
        hold_s=_number(raw, "hold_s", float, base.hold_s),
        judge=judge,
        examples_allowed=_strings(raw, "examples_allowed", base.examples_allowed),
        examples_disallowed=_strings(raw, "examples_disallowed", base.examples_disallowed),
        examples_threshold=_number(raw, "examples_threshold", float, base.examples_threshold),
    )


def policy_to_wire(policy: ChannelPolicy) -> dict[str, object]:
    wire = _wire(policy)
    assert isinstance(wire, dict)
    return wire


def _wire(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _wire(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple | list):
        return [_wire(v) for v in value]
    if isinstance(value, Action):
        return value.value
    return value


def _get(raw: Mapping[str, object], name: str, kind: type[T], default: T) -> T:
    value = raw.get(name, default)
    if not isinstance(value, kind):
        raise PolicyError(name, f"must be a {getattr(kind, '__name__', kind)}")
    return value


def _map(raw: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise PolicyError(name, "must be a map")
    return value


def _strings(raw: Mapping[str, object], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = raw.get(name, default)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(name, "must be a list of non-empty strings")
    return tuple(value)


def _number(raw: Mapping[str, object], name: str, kind: type[T], default: T) -> T:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PolicyError(name, "must be a number >= 0")
    if kind is int and not isinstance(value, int):
        raise PolicyError(name, "must be an integer")
    return kind(value)  # type: ignore[call-arg]


def _action(value: object, name: str) -> Action:
    if isinstance(value, str) and value in Action.__members__.values():
        return Action(value)
    raise PolicyError(name, f"one of {[a.value for a in Action]}")


def _dataclass(kind: type[T], base: T, raw: object, prefix: str) -> T:
    """`base` with the fields `raw` gives, each checked against the type of its default."""
    if not isinstance(raw, Mapping):
        raise PolicyError(prefix, "must be a map")
    changes: dict[str, object] = {}
    fields = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    for key, value in raw.items():
        name = f"{prefix}.{key}"
        if key not in fields:
            raise PolicyError(name, "unknown field")
        current = getattr(base, key)
        if isinstance(current, Action):
            changes[key] = _action(value, name)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise PolicyError(name, "must be true or false")
            changes[key] = value
        elif isinstance(current, int | float):
            changes[key] = _number({name: value}, name, type(current), current)
        elif isinstance(current, tuple) and current and isinstance(current[0], int):
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise PolicyError(name, "must be a list of positive integers")
            changes[key] = tuple(value)
        elif isinstance(current, frozenset | tuple):
            try:
                changes[key] = type(current)(_strings({key: value}, key, ()))
            except PolicyError as exc:
                raise PolicyError(name, str(exc).partition(": ")[2]) from None
        elif isinstance(current, str):
            if not isinstance(value, str):
                raise PolicyError(name, "must be a string")
            changes[key] = value
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]
