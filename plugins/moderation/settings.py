"""The plugin's server-side settings, `[plugins.settings.moderation]`. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True, kw_only=True)
class ModerationSettings:
    batch_window_ms: float = 2.0  # how long a classifier call waits for more messages
    max_classifier_batch: int = 2048  # a fuller batch goes at once
    judge_timeout_s: float = 2.0  # a judge call past this degrades to the fast layers
    judge_max_inflight: int = 64  # messages the judge may score at once, over all channels
    max_batch_messages: int = 1000  # messages in one mod.check_batch
    max_text_chars: int = 4000  # one message's text
    # A channel's policy is read from the store at most this often per replica (a check
    # reads none): a change made on this replica applies at once, on another within this.
    policy_refresh_s: float = 1.0
    # A GGUF file (or HF folder) the server loads beside its own model, in an engine of its
    # own, for the LLM judge ("" : the judge scores on the server's model). The judge's
    # reasons name the model that ruled.
    judge_model: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> ModerationSettings:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, float | int | str] = {}
        for key, value in raw.items():
            if key not in known:
                raise ValueError(f"moderation.{key}: unknown setting; known: {sorted(known)}")
            if key == "judge_model":
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"moderation.judge_model must be a path, got {value!r}")
                values[key] = value
                continue
            default = getattr(cls(), key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"moderation.{key} must be a number > 0, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise ValueError(f"moderation.{key} must be an integer, got {value!r}")
            values[key] = value
        return cls(**values)  # type: ignore[arg-type]
