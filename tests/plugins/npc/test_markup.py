"""The reply grammar from a card, run through llguidance over a byte vocabulary (no model):
it accepts speech with the card's own events and nothing else; spans parse back to events."""

from __future__ import annotations

from pathlib import Path

import llguidance
import pytest

from plugins.npc.cards import load_cards, parse_card
from plugins.npc.markup import Action, Emotion, parse_span, reply_grammar, span_of

CARDS = load_cards(Path(__file__).parents[3] / "plugins" / "npc" / "cards")
EOS = 256


class _Bytes:
    """The smallest vocabulary llguidance takes: one token per byte, and an EOS."""

    def __init__(self) -> None:
        self.eos_token_id = EOS
        self.bos_token_id = None
        self.tokens = [bytes([i]) for i in range(256)] + [b""]
        self.special_token_ids = [EOS]

    def __call__(self, text: bytes | str) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


TOKENIZER = llguidance.LLTokenizer(
    llguidance.TokenizerWrapper(_Bytes()), n_vocab=257, eos_token=EOS
)


def accepts(grammar: str, reply: str) -> bool:
    matcher = llguidance.LLMatcher(TOKENIZER, llguidance.grammar_from("grammar", grammar))
    assert not matcher.is_error(), matcher.get_error()
    return all(matcher.consume_token(b) for b in reply.encode()) and matcher.is_accepting()


def test_brom_grammar_text() -> None:
    assert reply_grammar(CARDS["blacksmith"]).splitlines() == [
        "start: SPEECH? (event SPEECH?)*",
        "event: emotion | action",
        r"SPEECH: /[^\[\]\n\r]+/",
        'emotion: "[emotion:" EMOTION_NAME ":" INTENSITY "]"',
        'EMOTION_NAME: "neutral" | "proud" | "amused" | "annoyed" | "angry"',
        r"INTENSITY: /0\.[0-9]|1\.0/",
        'action: "[action:" (act_give_item | act_set_price) "]"',
        'act_give_item: "give_item(" "item=" ARG_GIVE_ITEM_ITEM ")"',
        'ARG_GIVE_ITEM_ITEM: "sword" | "shield" | "horseshoe"',
        'act_set_price: "set_price(" "item=" ARG_SET_PRICE_ITEM ", " "silver=" ARG_INT ")"',
        'ARG_SET_PRICE_ITEM: "sword" | "shield" | "horseshoe"',
        "ARG_INT: /-?[0-9]{1,9}/",
    ]


@pytest.mark.parametrize(
    ("card_id", "reply", "ok"),
    [
        ("blacksmith", "", True),
        ("blacksmith", "Mind the sparks.", True),
        ("blacksmith", "Aye. [emotion:proud:0.8] Take it. [action:give_item(item=sword)]", True),
        ("blacksmith", "[action:set_price(item=shield, silver=20)]Twenty.", True),
        ("blacksmith", "[emotion:proud:1.0][emotion:angry:0.0]", True),
        ("blacksmith", "Hm. [emotion:sad:0.5]", False),  # not the card's emotion
        ("blacksmith", "[emotion:proud:1.5]", False),  # intensity above 1
        ("blacksmith", "[emotion:proud]", False),
        ("blacksmith", "[action:give_item(item=axe)]", False),  # not one of the choices
        ("blacksmith", "[action:set_price(item=sword, silver=many)]", False),  # not an int
        ("blacksmith", "[action:set_price(silver=3, item=sword)]", False),  # card order only
        ("blacksmith", "[action:attack(target=you)]", False),  # another card's action
        ("blacksmith", "a ] b", False),
        ("blacksmith", "two\nlines", False),
        ("rival", "Catch me! [action:taunt(target=Old Brom)]", True),
        ("rival", "[action:taunt(target=a, b)]", False),
        ("rival", "Bye. [action:walk_away()]", True),
        ("rival", "[action:challenge(kind=race, stakes=-5)]", True),
        ("quest_giver", "[action:offer_quest(quest=wolf_den, reward=50)]", True),
    ],
)
def test_the_grammar_takes_only_the_cards_events(card_id: str, reply: str, ok: bool) -> None:
    assert accepts(reply_grammar(CARDS[card_id]), reply) is ok


def test_a_lead_emotion_opens_every_reply() -> None:
    grammar = reply_grammar(CARDS["rival"], lead_emotion=True)
    assert grammar.startswith("start: emotion SPEECH? (event SPEECH?)*")
    assert accepts(grammar, "[emotion:smug:0.6] Keep up. [action:walk_away()]")
    assert not accepts(grammar, "Keep up. [emotion:smug:0.6]")
    assert not accepts(grammar, "")
    for card in CARDS.values():
        assert all(accepts(reply_grammar(card, lead_emotion=True), line) for line in card.examples)


def test_a_card_without_events_speaks_plain_text() -> None:
    card = parse_card('name = "A"\nrole = "r"\npersona = "p"', card_id="a", source="a.toml")
    grammar = reply_grammar(card)
    assert accepts(grammar, "Just words.") and not accepts(grammar, "[emotion:x:0.1]")


def test_spans_round_trip_through_events() -> None:
    card = CARDS["blacksmith"]
    price = parse_span(card, "[action:set_price(item=sword, silver=30)]", offset=4)
    assert price == Action(name="set_price", args={"item": "sword", "silver": 30}, offset=4)
    assert span_of(price) == "[action:set_price(item=sword, silver=30)]"
    proud = parse_span(card, "[emotion:proud:0.7]", offset=0)
    assert proud == Emotion(name="proud", intensity=0.7, offset=0)
    assert span_of(proud) == "[emotion:proud:0.7]"
    for bad in ("[emotion:sad:0.5]", "[action:give_item(item=axe)]", "[action:give_item()]"):
        assert parse_span(card, bad, offset=0) is None


def test_every_sample_example_line_is_valid_under_its_grammar() -> None:
    for card in CARDS.values():
        for line in card.examples:
            assert accepts(reply_grammar(card), line), (card.card_id, line)
