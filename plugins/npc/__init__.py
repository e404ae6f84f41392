"""NPC dialogue: cards, typed events, memory, barge-in, typing prefill, scenes. No server.

Imports plugins.api and protocol only; protocol/SPEC.md section 13 has the frames.
"""

from plugins.npc.plugin import NpcPlugin

__all__ = ["NpcPlugin"]
