"""Checks on decoded msgpack/JSON values: whole-tree limits and typed field readers. Pure.

Everything here raises ProtocolError with a field path (e.g. "sampling.temperature") and no
request id; the codec attaches the id once it has read it.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TypeVar

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import Limits

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Convert = Callable[[object, str], T]

# msgpack can carry every int in this range; an int outside it could not be re-encoded.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_PLUGIN_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def invalid(path: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"{path}: {message}", field=path)


def over_limit(path: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"{path}: {message}", field=path)


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


Where = tuple[object, ...]  # (parent's Where, key, in a list?) or () for the frame: a lazy path


def _path(where: Where) -> str:
    """The field path of a lazy Where, built only for an error message."""
    keys: list[tuple[object, bool]] = []
    while where:
        where, key, in_list = where  # type: ignore[assignment]
        keys.append((key, bool(in_list)))
    path = ""
    for key, in_list in reversed(keys):
        path = _join(path, key) if in_list else (f"{path}.{key}" if path else str(key))
    return path


def check_tree(
    root: dict[object, object],
    limits: Limits,
    *,
    int_keys: bool = True,
    unicode_checked: bool = False,
) -> None:
    """Bound nesting, sizes and value kinds of a whole decoded frame, in one pass, without
    recursion.

    `int_keys`: msgpack int map keys pass (logit_bias; the field readers decide); a plugin
    payload takes none, since JSON has none. `unicode_checked`: the caller knows that no
    string can hold a lone surrogate (msgpack decodes UTF-8 strictly; a JSON text with no
    surrogate in it or in its escapes), so strings are not encoded again to find one. Paths
    are built only for an error: a large plugin payload costs one visit per value.
    """
    max_depth, max_items = limits.max_depth, limits.max_items
    max_key_chars, max_string_chars = limits.max_key_chars, limits.max_string_chars
    stack: list[tuple[object, int, Where]] = [(root, 1, ())]
    while stack:
        node, depth, where = stack.pop()
        if depth > max_depth:
            raise over_limit(_path(where), f"nested deeper than {max_depth}")
        pairs: Iterable[tuple[object, object]]
        if isinstance(node, dict):
            is_map, pairs = True, node.items()
        else:
            assert isinstance(node, list)
            is_map, pairs = False, enumerate(node)
        if len(node) > max_items:
            raise over_limit(_path(where) or "frame", f"more than {max_items} entries")
        for key, value in pairs:
            if is_map:
                if type(key) is str:
                    if len(key) > max_key_chars or not unicode_checked:
                        _check_string(key, _path((where, key, False)), max_key_chars)
                elif type(key) is not int or not int_keys:
                    raise invalid(_path(where) or "frame", "map keys must be strings")
            if isinstance(value, str):
                if len(value) > max_string_chars or not unicode_checked:
                    _check_string(value, _path((where, key, not is_map)), max_string_chars)
            elif isinstance(value, dict | list):
                stack.append((value, depth + 1, (where, key, not is_map)))
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise invalid(_path((where, key, not is_map)), "numbers must be finite")
            elif not (value is None or isinstance(value, bool)) and not (
                isinstance(value, int) and _INT_MIN <= value <= _INT_MAX
            ):
                _check_scalar(value, _path((where, key, not is_map)), limits)


def _check_scalar(value: object, path: str, limits: Limits) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise invalid(path, "integer out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(path, "numbers must be finite")
    elif isinstance(value, str):
        _check_string(value, path, limits.max_string_chars)
    else:
        raise invalid(path, f"{type(value).__name__} values are not allowed")


def _check_string(value: str, path: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise over_limit(path, f"longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(path, "not valid Unicode (lone surrogate)") from None


# --- field readers -------------------------------------------------------------------------


def required(raw: dict[object, object], path: str, name: str, convert: Convert[T]) -> T:
    value = raw.get(name)
    if value is None:
        raise invalid(_join(path, name), "required")
    return convert(value, _join(path, name))


def optional(raw: dict[object, object], path: str, name: str, convert: Convert[T]) -> T | None:
    """An absent field and a null one both read as None."""
    value = raw.get(name)
    return None if value is None else convert(value, _join(path, name))


def string(*, max_chars: int, non_empty: bool = False) -> Convert[str]:
    def convert(value: object, path: str) -> str:
        if not isinstance(value, str):
            raise invalid(path, "must be a string")
        if non_empty and not value:
            raise invalid(path, "must not be empty")
        if len(value) > max_chars:
            raise over_limit(path, f"longer than {max_chars} characters")
        return value

    return convert


def identifier(*, max_chars: int) -> Convert[str]:
    """Request and session ids: 1..max_chars characters, no control characters."""
    read = string(max_chars=max_chars, non_empty=True)

    def convert(value: object, path: str) -> str:
        text = read(value, path)
        if any(unicodedata.category(ch) == "Cc" for ch in text):
            raise invalid(path, "must not contain control characters")
        return text

    return convert


def integer(*, lo: int, hi: int) -> Convert[int]:
    def convert(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(path, "must be an integer")
        if not lo <= value <= hi:
            raise invalid(path, f"must be in [{lo}, {hi}]")
        return value

    return convert


def number(*, lo: float, hi: float, lo_open: bool = False) -> Convert[float]:
    """A float; ints are accepted because JSON writers drop the ".0"."""

    def convert(value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(path, "must be a number")
        number = float(value)
        above_lo = number > lo if lo_open else number >= lo
        if not (above_lo and number <= hi):
            raise invalid(path, f"must be in {'(' if lo_open else '['}{lo}, {hi}]")
        return number

    return convert


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(path, "must be true or false")
    return value


def choice(enum_type: type[E]) -> Convert[E]:
    def convert(value: object, path: str) -> E:
        for member in enum_type:
            if isinstance(value, str) and member.value == value:
                return member
        names = ", ".join(repr(member.value) for member in enum_type)
        raise invalid(path, f"must be one of {names}")

    return convert


def mapping(value: object, path: str) -> dict[object, object]:
    if not isinstance(value, dict):
        raise invalid(path, "must be a map")
    return value


def array(*, max_items: int, min_items: int = 0) -> Convert[list[object]]:
    def convert(value: object, path: str) -> list[object]:
        if not isinstance(value, list):
            raise invalid(path, "must be a list")
        if len(value) < min_items:
            raise invalid(path, f"must have at least {min_items} entries")
        if len(value) > max_items:
            raise over_limit(path, f"more than {max_items} entries")
        return value

    return convert


def list_of(
    convert_item: Convert[T], *, max_items: int, min_items: int = 0
) -> Convert[tuple[T, ...]]:
    read = array(max_items=max_items, min_items=min_items)

    def convert(value: object, path: str) -> tuple[T, ...]:
        return tuple(convert_item(item, f"{path}[{i}]") for i, item in enumerate(read(value, path)))

    return convert


def is_plugin_type(frame_type: str) -> bool:
    """A namespaced type ("npc.say") that is not in a namespace the core reserves."""
    return _PLUGIN_TYPE.fullmatch(frame_type) is not None


def json_compatible(value: object, path: str) -> None:
    """Plugin payloads must survive both encodings: no int map keys (JSON has none)."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        node, node_path = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise invalid(node_path, "map keys must be strings")
                stack.append((child, _join(node_path, key)))
        elif isinstance(node, list):
            stack.extend((child, f"{node_path}[{i}]") for i, child in enumerate(node))
