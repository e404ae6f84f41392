"""Character cards: the TOML format checked into frozen `Card`s. Pure: no plugin context.

Reading card files is its only I/O.

One file per character; the card's id is the file name without `.toml`. Every problem is one
line, `CardError("FILE: FIELD: PROBLEM")`. The format (all strings unless said):

    name = "Brom"                        # required
    role = "village blacksmith"          # required
    persona = "Gruff, proud, fair."      # required: who the character is
    backstory = "..."                    # optional
    style = "Short sentences, ..."       # optional: how it speaks
    greeting = "..."                     # optional: its first line to a new player
    examples = ["...", ...]              # optional example lines; may hold event markup
    goals = ["...", ...]                 # optional
    refuses = ["the king's plans", ...]  # optional: topics it will not discuss
    [knowledge]
    facts = ["...", ...]                 # always in the prompt
    [[knowledge.lore]]                   # in the prompt only when a keyword was said lately
    keywords = ["dragon", "wyrm"]
    text = "..."
    [emotions]                           # the emotions it may show: name = valence in [-1, 1]
    happy = 0.6                          # (how showing it moves its affinity to the player)
    [actions.give_item]                  # the actions it may take: name = identifier
    description = "hand over an item"    # optional
    params = { item = ["sword", "horseshoe"] }  # name = "str" | "int" | "bool" | [choices]
    [safety]                             # when the moderation plugin is loaded (all optional)
    input = true                         # moderate the player's lines
    output = true                        # moderate the replies
    channel = "npc"                      # the moderation channel whose policy applies
    refusal = "Brom folds his arms."     # the in-character answer to a blocked line
    replacement = "Brom grunts."         # what replaces a reply that fails moderation
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Argument values travel inside `[action:name(key=value)]`: none of `,)]=[` or a newline.
CHOICE_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _'.-]{0,39}")
_TOP_LEVEL = frozenset(
    {"name", "role", "persona", "backstory", "style", "greeting", "examples", "goals"}
    | {"refuses", "knowledge", "emotions", "actions", "safety"}
)
_SAFETY = frozenset({"input", "output", "channel", "refusal", "replacement"})


class CardError(ValueError):
    """An invalid card: str(error) is one line naming the file, the field and the problem."""


class ParamKind(enum.StrEnum):
    STR = "str"  # free text of CHOICE_VALUE's alphabet
    INT = "int"
    BOOL = "bool"
    CHOICE = "choice"  # one of the card's listed strings


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    name: str
    kind: ParamKind
    choices: tuple[str, ...] = ()  # for CHOICE only


@dataclass(frozen=True, kw_only=True)
class ActionSpec:
    name: str
    description: str = ""
    params: tuple[ParamSpec, ...] = ()  # in the card's order, which is the markup's order


@dataclass(frozen=True, kw_only=True)
class LoreEntry:
    keywords: tuple[str, ...]  # lower case; matched as whole words
    text: str


@dataclass(frozen=True, kw_only=True)
class Safety:
    """How the card's lines pass through the moderation plugin, when it is loaded."""

    input: bool = True
    output: bool = True
    channel: str = "npc"
    refusal: str = ""  # "": a line made from the card's name
    replacement: str = ""


@dataclass(frozen=True, kw_only=True)
class Card:
    card_id: str  # the file name without .toml, or the id given to npc.define
    name: str
    role: str
    persona: str
    backstory: str = ""
    style: str = ""
    greeting: str = ""
    examples: tuple[str, ...] = ()
    goals: tuple[str, ...] = ()
    refuses: tuple[str, ...] = ()
    facts: tuple[str, ...] = ()
    lore: tuple[LoreEntry, ...] = ()
    emotions: tuple[tuple[str, float], ...] = ()  # (name, valence)
    actions: tuple[ActionSpec, ...] = ()
    safety: Safety = Safety()

    def valence(self, emotion: str) -> float:
        return dict(self.emotions).get(emotion, 0.0)

    def action(self, name: str) -> ActionSpec | None:
        return next((a for a in self.actions if a.name == name), None)


def load_card(path: Path, *, max_bytes: int = 65536) -> Card:
    """The card in PATH; its id is the file's stem."""
    data = path.read_bytes()
    if len(data) > max_bytes:
        raise CardError(f"{path.name}: (file): over {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError(f"{path.name}: (file): not UTF-8") from None
    return parse_card(text, card_id=path.stem, source=path.name)


def load_cards(folder: Path) -> dict[str, Card]:
    """Every *.toml card in FOLDER by id; CardError on the first invalid one."""
    if not folder.is_dir():
        raise CardError(f"{folder.name}: (folder): not a directory")
    return {path.stem: load_card(path) for path in sorted(folder.glob("*.toml"))}


def parse_card(text: str, *, card_id: str, source: str) -> Card:
    """Parse and check one card's TOML text; SOURCE names it in errors (a file name)."""
    reader = _Reader(source)
    if not IDENTIFIER.fullmatch(card_id):
        raise CardError(f"{source}: (id): {card_id!r} is not a lower-case identifier")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{source}: (toml): {str(exc).splitlines()[0]}") from None
    reader.no_unknown(table, _TOP_LEVEL, "")
    knowledge = reader.table(table, "knowledge")
    reader.no_unknown(knowledge, frozenset({"facts", "lore"}), "knowledge.")
    return Card(
        card_id=card_id,
        name=reader.text(table, "name", required=True),
        role=reader.text(table, "role", required=True),
        persona=reader.text(table, "persona", required=True),
        backstory=reader.text(table, "backstory"),
        style=reader.text(table, "style"),
        greeting=reader.text(table, "greeting"),
        examples=reader.texts(table, "examples"),
        goals=reader.texts(table, "goals"),
        refuses=reader.texts(table, "refuses"),
        facts=reader.texts(knowledge, "facts", prefix="knowledge."),
        lore=reader.lore(knowledge.get("lore", [])),
        emotions=reader.emotions(reader.table(table, "emotions")),
        actions=reader.actions(reader.table(table, "actions")),
        safety=reader.safety(reader.table(table, "safety")),
    )


class _Reader:
    """Field readers that raise CardError naming the source file and the field's path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str) -> CardError:
        return CardError(f"{self.source}: {field}: {problem}")

    def no_unknown(self, table: Mapping[str, object], known: frozenset[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(f"{prefix}{key}", "unknown field")

    def table(
        self, table: Mapping[str, object], key: str, *, prefix: str = ""
    ) -> Mapping[str, object]:
        value = table.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{prefix}{key}", "must be a table")
        return value

    def text(self, table: Mapping[str, object], key: str, *, required: bool = False) -> str:
        value = table.get(key)
        if value is None:
            if required:
                raise self.fail(key, "required")
            return ""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value.strip()

    def texts(self, table: Mapping[str, object], key: str, *, prefix: str = "") -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list):
            raise self.fail(f"{prefix}{key}", "must be a list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{prefix}{key}[{index}]", "must be a non-empty string")
        return tuple(item.strip() for item in value)

    def safety(self, table: Mapping[str, object]) -> Safety:
        self.no_unknown(table, _SAFETY, "safety.")
        for key in ("input", "output"):
            if not isinstance(table.get(key, True), bool):
                raise self.fail(f"safety.{key}", "must be true or false")
        channel = table.get("channel", "npc")
        if not isinstance(channel, str) or not IDENTIFIER.fullmatch(channel):
            raise self.fail("safety.channel", "must be a lower-case identifier")
        return Safety(
            input=bool(table.get("input", True)),
            output=bool(table.get("output", True)),
            channel=channel,
            refusal=self.text(table, "refusal"),
            replacement=self.text(table, "replacement"),
        )

    def lore(self, entries: object) -> tuple[LoreEntry, ...]:
        if not isinstance(entries, list):
            raise self.fail("knowledge.lore", "must be an array of tables ([[knowledge.lore]])")
        found: list[LoreEntry] = []
        for index, entry in enumerate(entries):
            field = f"knowledge.lore[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(field, "must be a table")
            self.no_unknown(entry, frozenset({"keywords", "text"}), f"{field}.")
            keywords = self.texts(entry, "keywords", prefix=f"{field}.")
            if not keywords:
                raise self.fail(f"{field}.keywords", "needs at least one keyword")
            text = self.text(entry, "text", required=True)
            found.append(LoreEntry(keywords=tuple(k.lower() for k in keywords), text=text))
        return tuple(found)

    def emotions(self, table: Mapping[str, object]) -> tuple[tuple[str, float], ...]:
        found: list[tuple[str, float]] = []
        for name, valence in table.items():
            field = f"emotions.{name}"
            if not IDENTIFIER.fullmatch(name):
                raise self.fail(field, "name must be a lower-case identifier")
            if isinstance(valence, bool) or not isinstance(valence, int | float):
                raise self.fail(field, "valence must be a number in [-1, 1]")
            if not -1.0 <= valence <= 1.0:
                raise self.fail(field, f"valence {valence} is outside [-1, 1]")
            found.append((name, float(valence)))
        return tuple(found)

    def actions(self, table: Mapping[str, object]) -> tuple[ActionSpec, ...]:
        found: list[ActionSpec] = []
        for name, spec in table.items():
            field = f"actions.{name}"
            if not IDENTIFIER.fullmatch(name):
                raise self.fail(field, "name must be a lower-case identifier")
            if not isinstance(spec, dict):
                raise self.fail(field, "must be a table")
            self.no_unknown(spec, frozenset({"description", "params"}), f"{field}.")
            params = self.table(spec, "params", prefix=f"{field}.")
            found.append(
                ActionSpec(
                    name=name,
                    description=self.text(spec, "description"),
                    params=tuple(
                        self.param(f"{field}.params.{k}", k, v) for k, v in params.items()
                    ),
                )
            )
        return tuple(found)

    def param(self, field: str, name: str, kind: object) -> ParamSpec:
        if not IDENTIFIER.fullmatch(name):
            raise self.fail(field, "name must be a lower-case identifier")
        if isinstance(kind, list):
            if not kind:
                raise self.fail(field, "a choice needs at least one value")
            for index, value in enumerate(kind):
                if not isinstance(value, str) or not CHOICE_VALUE.fullmatch(value):
                    raise self.fail(
                        f"{field}[{index}]", "must be 1-40 letters, digits, space or _'.-"
                    )
            return ParamSpec(name=name, kind=ParamKind.CHOICE, choices=tuple(kind))
        if kind in ("str", "int", "bool"):
            return ParamSpec(name=name, kind=ParamKind(kind))
        raise self.fail(field, 'must be "str", "int", "bool" or a list of choices')
