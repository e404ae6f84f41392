"""World variables (`npc.state`): the tenant's game state that prompts can reference.

Kept in the plugin's store under WORLD_KEY; plugins.api and protocol only.
"""

from __future__ import annotations

from collections.abc import Mapping

from plugins.api import PluginContext, Store
from protocol.payload import PayloadReader, mapping

from .records import WORLD_KEY
from .wire import frame, invalid

MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 200


async def world_vars(store: Store) -> Mapping[str, str]:
    raw = await store.get(WORLD_KEY)
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, str)}


async def set_state(read: PayloadReader, ctx: PluginContext) -> None:
    """`npc.state` {vars?}: change the variables (an empty string deletes one), answer all."""
    changes = read.optional("vars", mapping) or {}
    world = dict(await world_vars(ctx.store))
    for key, value in changes.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_NAME_CHARS:
            raise invalid(read.request_id, "vars", "names must be 1-64 character strings")
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise invalid(read.request_id, f"vars.{key}", "must be a string of <= 200")
        if value:
            world[key] = value
        else:
            world.pop(key, None)
    if changes:
        await ctx.store.set(WORLD_KEY, dict(world))
    await ctx.send(frame("npc.state", read.request_id, vars=world))
