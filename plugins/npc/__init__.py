"""NPC dialogue: character cards, typed emotion/action events, memory, barge-in, prefill while
typing. Imports plugins.api and protocol only; protocol/SPEC.md ("NPC dialogue") has the frames.
"""

from plugins.npc.plugin import NpcPlugin

__all__ = ["NpcPlugin"]
