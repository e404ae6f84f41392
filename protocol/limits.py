"""Limits the codec enforces on every decoded frame. Pure data: stdlib only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Each limit bounds one thing a peer can make the decoder hold; all must be >= 1."""

    max_frame_bytes: int = 1 << 20  # encoded size of one frame (UTF-8 bytes for JSON text)
    max_depth: int = 16  # nesting of maps and lists; the frame's own map is depth 1
    max_items: int = 4096  # entries in any one list or map
    max_string_chars: int = 262_144  # any one string: prompt, message content, plugin text
    max_key_chars: int = 64  # map keys and frame type names
    max_name_chars: int = 256  # short strings: client, api_key, stop strings, metadata values
    max_request_id_chars: int = 64  # the client-chosen "id" of a request
    max_session_id_chars: int = 128
    max_messages: int = 512  # generate.messages
    max_stop_strings: int = 16  # generate.stop
    max_logit_bias: int = 1024  # generate.sampling.logit_bias entries
    max_metadata_entries: int = 64  # session.open.metadata entries
    max_generate_tokens: int = 8192  # the largest generate.max_tokens accepted
    max_candidates: int = 64  # score.candidates entries, and generate.constraint.choice's

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{field.name} must be an int >= 1, got {value!r}")

    def to_wire(self) -> dict[str, int]:
        """The map sent in welcome.limits."""
        return dataclasses.asdict(self)


DEFAULT_LIMITS = Limits()
