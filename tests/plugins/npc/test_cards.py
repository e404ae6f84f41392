"""Character cards: the shipped samples load, and every invalid card fails with one line that
names the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.npc.cards import CardError, ParamKind, load_card, load_cards, parse_card

SAMPLES = Path(__file__).parents[3] / "plugins" / "npc" / "cards"

MINIMAL = 'name = "Ada"\nrole = "a guard"\npersona = "Stern."\n'


def test_the_three_samples_load_with_their_ids() -> None:
    cards = load_cards(SAMPLES)
    assert sorted(cards) == ["blacksmith", "quest_giver", "rival"]
    brom = cards["blacksmith"]
    assert brom.name == "Brom" and brom.card_id == "blacksmith"
    assert dict(brom.emotions)["angry"] == -0.8
    price = brom.action("set_price")
    assert price is not None
    assert [(p.name, p.kind) for p in price.params] == [
        ("item", ParamKind.CHOICE),
        ("silver", ParamKind.INT),
    ]
    assert brom.lore[0].keywords == ("dragon", "wyrm")
    walk = cards["rival"].action("walk_away")
    assert walk is not None and walk.params == ()


def test_a_minimal_card_needs_only_name_role_persona() -> None:
    card = parse_card(MINIMAL, card_id="guard", source="guard.toml")
    assert (card.name, card.emotions, card.actions, card.lore) == ("Ada", (), (), ())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "guard.toml: name: required"),
        ('name = 3\nrole = "r"\npersona = "p"', "guard.toml: name: must be a non-empty string"),
        (MINIMAL + "moods = []", "guard.toml: moods: unknown field"),
        (MINIMAL + "examples = ['a', 2]", "guard.toml: examples[1]: must be a non-empty string"),
        (MINIMAL + "[emotions]\nHappy = 0.5", "guard.toml: emotions.Happy: name must be a lower"),
        (MINIMAL + "[emotions]\nhappy = 2", "guard.toml: emotions.happy: valence 2 is outside"),
        (MINIMAL + "[emotions]\nhappy = 'x'", "guard.toml: emotions.happy: valence must be"),
        (
            MINIMAL + "[actions.give]\nparams = { item = 'float' }",
            'guard.toml: actions.give.params.item: must be "str", "int", "bool" or a list',
        ),
        (
            MINIMAL + "[actions.give]\nparams = { item = ['a,b'] }",
            "guard.toml: actions.give.params.item[0]: must be 1-40 letters",
        ),
        (
            MINIMAL + "[actions.give]\nparams = { item = [] }",
            "guard.toml: actions.give.params.item: a choice needs",
        ),
        (MINIMAL + "[actions.give]\ncolor = 1", "guard.toml: actions.give.color: unknown field"),
        (
            MINIMAL + "[[knowledge.lore]]\ntext = 'x'",
            "guard.toml: knowledge.lore[0].keywords: needs at",
        ),
        (MINIMAL + "[knowledge]\nfacts = 'x'", "guard.toml: knowledge.facts: must be a list"),
        (MINIMAL + "name = 'twice'", "guard.toml: (toml): "),
    ],
)
def test_invalid_cards_fail_in_one_line(extra: str, message: str) -> None:
    with pytest.raises(CardError) as error:
        parse_card(extra, card_id="guard", source="guard.toml")
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "Bad Name.toml"
    bad.write_text(MINIMAL)
    with pytest.raises(CardError, match=r"^Bad Name.toml: \(id\): "):
        load_card(bad)
    big = tmp_path / "big.toml"
    big.write_text(MINIMAL + "#" * 100)
    with pytest.raises(CardError, match=r"^big.toml: \(file\): over 64 bytes"):
        load_card(big, max_bytes=64)
    with pytest.raises(CardError, match="not a directory"):
        load_cards(tmp_path / "missing")
