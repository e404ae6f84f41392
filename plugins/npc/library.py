"""The cards a tenant can talk to: the folder's and its own. Store via plugins.api only.

The folder's cards are shared by every tenant; a tenant's defined cards live in its store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from plugins.api import Store

from .cards import Card, CardError, load_cards, parse_card
from .markup import parse_span

SAMPLE_CARDS = Path(__file__).with_name("cards")
_DEFINED = "card/"  # store key prefix of a tenant's defined cards: their TOML text


def check_examples(card: Card, source: str) -> None:
    """Every span in the card's example lines must be an event the card allows: examples
    teach the model the markup, so a wrong one would teach it a span it can never write."""
    for index, line in enumerate(card.examples):
        rest = line
        while "[" in rest:
            start = rest.index("[")
            end = rest.find("]", start)
            span = rest[start : end + 1] if end >= 0 else rest[start:]
            if parse_span(card, span, offset=0) is None:
                raise CardError(
                    f"{source}: examples[{index}]: {span!r} is not an event of the card"
                )
            rest = rest[end + 1 :] if end >= 0 else ""


def load_folder(folder: Path) -> Mapping[str, Card]:
    cards = load_cards(folder)
    for card in cards.values():
        check_examples(card, f"{card.card_id}.toml")
    return cards


class CardLibrary:
    """Card lookup by id: a tenant's defined card wins over the folder's of the same id."""

    def __init__(self, folder_cards: Mapping[str, Card], *, max_cached: int = 1024) -> None:
        self._folder = dict(folder_cards)
        self._max_cached = max_cached  # parsed defined cards kept, by their TOML text
        self._parsed: dict[tuple[str, str], Card] = {}

    @property
    def folder_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._folder))

    async def get(self, store: Store, card_id: str) -> Card | None:
        text = await store.get(_DEFINED + card_id)
        if isinstance(text, str):
            return self._parse(card_id, text)
        return self._folder.get(card_id)

    async def define(self, store: Store, card_id: str, text: str) -> Card:
        """Check and keep a tenant's card; CardError (one line) when it is invalid."""
        card = self._parse(card_id, text)
        await store.set(_DEFINED + card_id, text)
        return card

    def _parse(self, card_id: str, text: str) -> Card:
        key = (card_id, text)
        card = self._parsed.get(key)
        if card is None:
            source = f"{card_id}.toml"
            card = parse_card(text, card_id=card_id, source=source)
            check_examples(card, source)
            if len(self._parsed) >= self._max_cached:
                self._parsed.clear()  # cheap to refill: a parse is well under a millisecond
            self._parsed[key] = card
        return card
