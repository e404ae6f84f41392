"""Bytes of store values and session records, shared by the backends. Pure: no I/O.

JSON is written with `ensure_ascii` so that any Python string, lone surrogates included,
comes back exactly; the transcript text is UTF-8 with surrogates passed through, and token ids
are packed little-endian uint32 (a 2,048-token transcript is 8 KiB, not 12 KiB of JSON).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from types import MappingProxyType

from .base import JSONValue, SessionRecord, StoreValueError

_MAX_TTL_S = 10 * 365 * 86400.0  # Redis' PEXPIRE takes any int; a decade is "forever" enough


def dump_value(value: JSONValue) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreValueError(f"not a JSON-compatible value: {exc}") from None


def load_value(raw: str | bytes) -> JSONValue:
    value: JSONValue = json.loads(raw)
    return value


def check_key(key: str, *, what: str = "key") -> str:
    if not isinstance(key, str):
        raise StoreValueError(f"{what} must be a string, got {type(key).__name__}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreValueError(f"{what} must be valid text (no lone surrogates)") from None
    return key


def check_ttl(ttl_s: float | None) -> float | None:
    if ttl_s is None:
        return None
    if not isinstance(ttl_s, int | float) or isinstance(ttl_s, bool) or not math.isfinite(ttl_s):
        raise StoreValueError(f"ttl_s must be a finite number, got {ttl_s!r}")
    if ttl_s <= 0:
        raise StoreValueError(f"ttl_s must be > 0, got {ttl_s}")
    return min(float(ttl_s), _MAX_TTL_S)


def check_amount(amount: int) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise StoreValueError(f"amount must be an int, got {amount!r}")
    if not -(2**63) <= amount < 2**63:
        raise StoreValueError("amount must fit in 64 bits")
    return amount


def add_int(current: JSONValue, amount: int, *, key: str) -> int:
    """`current + amount` for `incr`: integers only, 64-bit as in Redis."""
    if not isinstance(current, int) or isinstance(current, bool):
        raise StoreValueError(f"incr of {key!r}: the value is not an integer")
    total = current + amount
    if not -(2**63) <= total < 2**63:
        raise StoreValueError(f"incr of {key!r}: the counter would overflow 64 bits")
    return total


def check_max_len(max_len: int | None) -> int | None:
    if max_len is not None and (
        not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0
    ):
        raise StoreValueError(f"max_len must be a positive int, got {max_len!r}")
    return max_len


def inclusive_slice(start: int, stop: int) -> slice:
    """LRANGE's inclusive `start..stop` (negatives from the end) as a Python slice."""
    for name, index in (("start", start), ("stop", stop)):
        if not isinstance(index, int) or isinstance(index, bool):
            raise StoreValueError(f"{name} must be an int, got {index!r}")
    return slice(start, None if stop == -1 else stop + 1)


def pack_ids(token_ids: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(token_ids)}I", *token_ids)


def unpack_ids(raw: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(raw) // 4}I", raw)


def encode_session(record: SessionRecord) -> dict[str, bytes]:
    """The record as named byte fields (SQLite columns, Redis hash fields)."""
    return {
        "metadata": dump_value(dict(record.metadata)).encode(),
        "messages": dump_value([list(m) for m in record.messages]).encode(),
        "transcript_text": record.transcript_text.encode("utf-8", "surrogatepass"),
        "transcript_ids": pack_ids(record.transcript_token_ids),
        "num_turns": str(record.num_turns).encode(),
        "last_used": repr(record.last_used).encode(),
        "expires_at": repr(record.expires_at).encode(),
    }


def decode_session(tenant: str, session_id: str, fields: Mapping[str, bytes]) -> SessionRecord:
    metadata = json.loads(fields["metadata"])
    messages = json.loads(fields["messages"])
    return SessionRecord(
        tenant=tenant,
        session_id=session_id,
        metadata=MappingProxyType({str(k): str(v) for k, v in metadata.items()}),
        messages=tuple((str(role), str(content)) for role, content in messages),
        transcript_text=fields["transcript_text"].decode("utf-8", "surrogatepass"),
        transcript_token_ids=unpack_ids(fields["transcript_ids"]),
        num_turns=int(fields["num_turns"]),
        last_used=float(fields["last_used"]),
        expires_at=float(fields["expires_at"]),
    )
