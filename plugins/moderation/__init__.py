"""Live-stream chat moderation (issue 12): rules, spam filters, per-user state, a classifier, an
LLM judge, actions and an audit log. Imports plugins.api and protocol only.

The frames are in protocol/SPEC.md ("Moderation plugin"); the cascade's order is in
cascade.py; every module names what it must not touch.
"""

from .plugin import ModerationPlugin

__all__ = ["ModerationPlugin"]
