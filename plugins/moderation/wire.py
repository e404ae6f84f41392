"""The mod.* frames: payloads read into plain data, answers built. Imports protocol only.

Every refusal is a ProtocolError naming the field (invalid_field, or limit_exceeded for a
batch or a text over its limit), so a bot always gets a typed error with the request's id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn, TypeVar

from protocol import ErrorCode, PluginFrame, ProtocolError

from .cascade import Message
from .verdict import Verdict

T = TypeVar("T")
MAX_ROLES = 16
_NO_ROLES: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class WireLimits:
    max_batch_messages: int = 1000  # messages in one mod.check_batch
    max_text_chars: int = 4000  # one message's text; longer is refused, not truncated
    max_channel_chars: int = 128
    max_audit_entries: int = 1000  # the most one mod.audit answer lists


class FrameReader:
    """Reads one client frame's fields, raising ProtocolError with the request id."""

    def __init__(self, frame: PluginFrame, limits: WireLimits) -> None:
        self.frame = frame
        self.request_id = frame.request_id or ""
        self.limits = limits

    def fail(self, field: str, message: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> NoReturn:
        raise ProtocolError(code, f"{field}: {message}", request_id=self.request_id, field=field)

    def get(
        self, payload: Mapping[str, object], name: str, kind: type[T], *, where: str = ""
    ) -> T | None:
        value = payload.get(name)
        field = f"{where}{name}"
        if value is None:
            return None
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
            self.fail(field, f"must be a {kind.__name__}")
        return value

    def need(self, payload: Mapping[str, object], name: str, kind: type[T], where: str = "") -> T:
        value = self.get(payload, name, kind, where=where)
        if value is None or value == "":
            self.fail(f"{where}{name}", "required")
        return value

    def channel(self) -> str:
        channel = self.need(self.frame.payload, "channel", str)
        if len(channel) > self.limits.max_channel_chars:
            self.fail("channel", f"over {self.limits.max_channel_chars} chars")
        return channel

    def message(self, payload: Mapping[str, object], where: str = "") -> Message:
        user = self.need(payload, "user", Mapping, where)  # type: ignore[type-abstract]
        roles = self.get(user, "roles", list, where=f"{where}user.") or []
        if len(roles) > MAX_ROLES or not all(isinstance(r, str) for r in roles):
            self.fail(f"{where}user.roles", f"a list of at most {MAX_ROLES} strings")
        text = self.get(payload, "text", str, where=where)
        if text is None:
            self.fail(f"{where}text", "required")
        if len(text) > self.limits.max_text_chars:
            limit = self.limits.max_text_chars
            self.fail(f"{where}text", f"over {limit} chars", ErrorCode.LIMIT_EXCEEDED)
        return Message(
            message_id=self.need(payload, "message_id", str, where),
            user_id=self.need(user, "id", str, f"{where}user."),
            user_name=self.get(user, "name", str, where=f"{where}user.") or "",
            roles=frozenset(roles),
            text=text,
        )

    def messages(self) -> list[Message]:
        raw = self.need(self.frame.payload, "messages", list)
        if len(raw) > self.limits.max_batch_messages:
            limit = self.limits.max_batch_messages
            self.fail("messages", f"over {limit} messages", ErrorCode.LIMIT_EXCEEDED)
        out = []
        for n, item in enumerate(raw):
            message = self._plain_message(item)
            if message is None:  # something to refuse: the careful reader names it
                if not isinstance(item, Mapping):
                    self.fail(f"messages[{n}]", "must be a map")
                message = self.message(item, f"messages[{n}].")
            out.append(message)
        return out

    def _plain_message(self, item: object) -> Message | None:
        """A batch entry read with a handful of type tests when it is a well-formed one (the
        bulk of a batch); None for anything else, which `message` then reads or refuses."""
        if type(item) is not dict:
            return None
        user, text, message_id = item.get("user"), item.get("text"), item.get("message_id")
        if type(user) is not dict or type(text) is not str or type(message_id) is not str:
            return None
        user_id, name, roles = user.get("id"), user.get("name", ""), user.get("roles")
        if type(user_id) is not str or not user_id or not message_id:
            return None
        if type(name) is not str or len(text) > self.limits.max_text_chars:
            return None
        if roles is not None and (
            type(roles) is not list
            or len(roles) > MAX_ROLES
            or not all(type(role) is str for role in roles)
        ):
            return None
        return Message(
            message_id=message_id,
            user_id=user_id,
            user_name=name,
            roles=frozenset(roles) if roles else _NO_ROLES,
            text=text,
        )

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.get(self.frame.payload, name, str) or default
        if value is None or value not in choices:
            self.fail(name, f"one of {list(choices)}")
        return value


def answer(frame_type: str, request_id: str | None, **payload: object) -> PluginFrame:
    return PluginFrame(type=frame_type, request_id=request_id, payload=MappingProxyType(payload))


def verdict_payload(message_id: str, verdict: Verdict) -> dict[str, object]:
    return {"message_id": message_id, **verdict.to_wire()}
