"""Player lines and NPC replies through the moderation plugin. plugins.api and protocol only.

The npc plugin never imports the moderation plugin: it declares `mod.check` in its `calls`
and the server hands the check to whichever plugin handles that frame type (plugins.api
`ctx.call`), for the same tenant. A card's `[safety]` table says which lines go through it
and on which moderation channel. The verdict never reaches the player: a blocked line gets
the card's in-character refusal, a failed reply the card's replacement line.
"""

from __future__ import annotations

import itertools
from types import MappingProxyType

from plugins.api import PluginContext
from protocol import PluginFrame

from .cards import Card

MOD_CHECK = "mod.check"
MAX_CHECK_CHARS = 4000  # the moderation plugin's text limit


class Moderation:
    def __init__(self) -> None:
        self._ids = itertools.count()

    @staticmethod
    def applies(ctx: PluginContext, card: Card, *, output: bool) -> bool:
        wanted = card.safety.output if output else card.safety.input
        return wanted and ctx.can_call(MOD_CHECK)

    async def allowed(
        self, ctx: PluginContext, request_id: str, card: Card, user: str, text: str
    ) -> bool:
        """Whether the channel's policy lets TEXT by USER through; a check that answers no
        verdict counts as blocked (fail closed)."""
        payload = {
            "channel": card.safety.channel,
            "message_id": f"npc-{next(self._ids)}",
            "user": {"id": user},
            "text": text[-MAX_CHECK_CHARS:],
        }
        check = PluginFrame(
            type=MOD_CHECK, request_id=request_id, payload=MappingProxyType(payload)
        )
        for answer in await ctx.call(check):
            if isinstance(answer, PluginFrame) and answer.type == "mod.verdict":
                return answer.payload.get("action") == "allow"
        return False


def refusal(card: Card) -> str:
    return card.safety.refusal or f"{card.name} shakes their head: that is not for talking about."


def replacement(card: Card) -> str:
    return card.safety.replacement or f"{card.name} stops and thinks better of it."
