"""Reply markup: typed events, their inline spans, the card's reply grammar. Pure.

Knows cards, never the plugin context or the wire.

A reply is speech with inline spans, e.g. `Aye. [emotion:proud:0.7] Take it.
[action:give_item(item=sword)]`. The spans are `[emotion:NAME:I]` with I one of 0.0 ... 1.0,
and `[action:NAME(k=v, k2=v2)]` with the card's parameters in the card's order. Speech never
holds `[`, `]` or a line break, so a span is everything from a `[` to the next `]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .cards import ActionSpec, Card, ParamKind, ParamSpec

ArgValue = str | int | bool

# Lexemes of the grammar; a value parsed back must match the same pattern.
SPEECH_PATTERN = r"[^\[\]\n\r]+"
STR_PATTERN = r"[A-Za-z0-9][A-Za-z0-9 _'.-]{0,39}"
INT_PATTERN = r"-?[0-9]{1,9}"
INTENSITY_PATTERN = r"0\.[0-9]|1\.0"
_EMOTION_SPAN = re.compile(r"\[emotion:([a-z][a-z0-9_]*):(" + INTENSITY_PATTERN + r")\]")
_ACTION_SPAN = re.compile(r"\[action:([a-z][a-z0-9_]*)\((.*)\)\]")


def _no_args() -> Mapping[str, ArgValue]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Speech:
    text: str  # never markup


@dataclass(frozen=True, kw_only=True)
class Emotion:
    name: str  # one of the card's emotions
    intensity: float  # in [0, 1]
    offset: int  # characters of speech before it: where in the spoken line it occurs


@dataclass(frozen=True, kw_only=True)
class Action:
    name: str  # one of the card's actions
    args: Mapping[str, ArgValue] = field(default_factory=_no_args)  # typed by the card
    offset: int = 0  # characters of speech before it


Event = Emotion | Action
Piece = Speech | Emotion | Action


def span_of(event: Event) -> str:
    """The markup span of an event: what the model writes and the transcript keeps."""
    if isinstance(event, Emotion):
        return f"[emotion:{event.name}:{event.intensity:.1f}]"
    args = ", ".join(f"{k}={_format_value(v)}" for k, v in event.args.items())
    return f"[action:{event.name}({args})]"


def _format_value(value: ArgValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_span(card: Card, span: str, *, offset: int) -> Event | None:
    """The event a span stands for, or None when the card does not allow it."""
    emotion = _EMOTION_SPAN.fullmatch(span)
    if emotion is not None:
        if emotion[1] not in dict(card.emotions):
            return None
        return Emotion(name=emotion[1], intensity=float(emotion[2]), offset=offset)
    action = _ACTION_SPAN.fullmatch(span)
    spec = card.action(action[1]) if action is not None else None
    if action is None or spec is None:
        return None
    args = _parse_args(spec, action[2])
    return None if args is None else Action(name=spec.name, args=args, offset=offset)


def _parse_args(spec: ActionSpec, text: str) -> Mapping[str, ArgValue] | None:
    parts = text.split(", ") if text else []
    if len(parts) != len(spec.params):
        return None
    args: dict[str, ArgValue] = {}
    for param, part in zip(spec.params, parts, strict=True):
        key, eq, raw = part.partition("=")
        value = _parse_value(param, raw) if eq and key == param.name else None
        if value is None:
            return None
        args[key] = value
    return MappingProxyType(args)


def _parse_value(param: ParamSpec, raw: str) -> ArgValue | None:
    if param.kind is ParamKind.CHOICE:
        return raw if raw in param.choices else None
    if param.kind is ParamKind.INT:
        return int(raw) if re.fullmatch(INT_PATTERN, raw) else None
    if param.kind is ParamKind.BOOL:
        return {"true": True, "false": False}.get(raw)
    return raw if re.fullmatch(STR_PATTERN, raw) else None


def reply_grammar(card: Card, *, lead_emotion: bool = False) -> str:
    """The Lark grammar (llguidance dialect) of every reply the card allows: speech and spans
    whose emotion names, action names and argument values come only from the card. With
    LEAD_EMOTION (and emotions on the card) every reply opens with one: the game always
    knows the face to show for the line."""
    rules = [f"SPEECH: /{SPEECH_PATTERN}/"]
    events: list[str] = []
    if card.emotions:
        names = " | ".join(json.dumps(name) for name, _ in card.emotions)
        rules += [
            'emotion: "[emotion:" EMOTION_NAME ":" INTENSITY "]"',
            f"EMOTION_NAME: {names}",
            f"INTENSITY: /{INTENSITY_PATTERN}/",
        ]
        events.append("emotion")
    if card.actions:
        calls = " | ".join(f"act_{action.name}" for action in card.actions)
        rules += [f'action: "[action:" ({calls}) "]"']
        for action in card.actions:
            rules += _action_rules(action)
        kinds = {param.kind for action in card.actions for param in action.params}
        rules += [rule for kind, rule in _VALUE_RULES.items() if kind in kinds]
        events.append("action")
    if not events:
        return "\n".join(["start: SPEECH?", *rules]) + "\n"
    start = (
        "start: emotion SPEECH? (event SPEECH?)*"
        if lead_emotion and card.emotions
        else ("start: SPEECH? (event SPEECH?)*")
    )
    return "\n".join([start, f"event: {' | '.join(events)}", *rules])


_VALUE_RULES = {
    ParamKind.STR: f"ARG_STR: /{STR_PATTERN}/",
    ParamKind.INT: f"ARG_INT: /{INT_PATTERN}/",
    ParamKind.BOOL: 'ARG_BOOL: "true" | "false"',
}


def _action_rules(action: ActionSpec) -> list[str]:
    rules: list[str] = []
    args: list[str] = []
    for param in action.params:
        if param.kind is ParamKind.CHOICE:
            terminal = f"ARG_{action.name}_{param.name}".upper()
            rules.append(f"{terminal}: {' | '.join(json.dumps(c) for c in param.choices)}")
        else:
            terminal = {ParamKind.STR: "ARG_STR", ParamKind.INT: "ARG_INT"}.get(
                param.kind, "ARG_BOOL"
            )
        args.append(f'"{param.name}=" {terminal}')
    body = ' ", " '.join(args)
    head = json.dumps(f"{action.name}(")
    rule = f'act_{action.name}: {head} {body} ")"' if args else f'act_{action.name}: {head} ")"'
    return [rule, *rules]
