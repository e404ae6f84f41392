"""Hostile client frames for `bench fuzz` and the in-suite fuzz test: seeded, no I/O, no server.

Step `index` of seed `seed` is always the same frames (each step has its own Random) for the
same limits, vocabulary size and protocol/vectors, so a failure names a step that replays
alone. A step is one to three WebSocket messages sent back to back, each a `Shot` that says
whether it must be answered and by which request id.
"""

from __future__ import annotations

import enum
import json
import math
import random
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgpack

import protocol
from protocol import Limits

VECTORS = Path(protocol.__file__).parent / "vectors"
SURROGATES = ("\ud800", "\udc00", "\udfff", "\ud83d")
# Floats and ints that have broken samplers and codecs: underflow to 0 in float32, overflow,
# signed zero, the edges of int32/int64 and beyond msgpack's range (JSON only).
EXTREME_FLOATS = (1e-50, 1e-40, 1e-45, 5e-324, 1e-300, 1e308, -1e308, -0.0, 0.0, 1e-7)
NON_FINITE = (math.nan, math.inf, -math.inf)
EXTREME_INTS = (
    0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
    -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**400,
)  # fmt: skip
# Token ids around the vocabularies of the tiny test model (259) and SmolLM2 (49152).
TOKEN_IDS = (0, 2, 198, 258, 259, 260, 49151, 49152, 49153, 65535, 151936, 2**31 - 1, 2**31)
SAMPLING_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "logit_bias",
)  # fmt: skip
# Spec-legal values at the edges of each sampling field's range.
LEGAL_EXTREMES: Mapping[str, tuple[object, ...]] = MappingProxyType(
    {
        "temperature": (1e-50, 1e-40, 5e-324, 1e-300, 1e-7, 100.0, 0, -0.0),
        "top_p": (5e-324, 1e-50, 1e-300, 1.0),
        "top_k": (1, 2**31 - 1, 0),
        "min_p": (1.0, 5e-324, 1e-50, 0.999999),
        "repetition_penalty": (1e-300, 5e-324, 1e-50, 1e-40, 100.0),
        "presence_penalty": (-2.0, 2.0, 5e-324, -0.0),
        "frequency_penalty": (-2.0, 2.0, 5e-324, -0.0),
        "seed": (0, 2**63 - 1),
    }
)
SESSION_POOL = tuple(f"fz-{i}" for i in range(6))
PLUGIN_TYPES = ("chat.say", "npc.say", "mod.check", "session.nope", "a.b")
# Answered at once, in order; any other request (generate, score, plugins) may answer later.
SYNC_TYPES = frozenset({"hello", "session.open", "session.resume", "session.close", "cancel"})
CORE_TYPES = ("hello", "session.open", "session.resume", "session.close", "generate", "cancel")


class Expect(enum.Enum):
    ANSWER = "answer"  # at least one frame comes back for it
    MAYBE = "maybe"  # e.g. a cancel of a request that may be running: no answer is correct too


@dataclass(frozen=True, kw_only=True)
class Shot:
    """One WebSocket message of a step."""

    data: bytes | str
    label: str  # what kind of frame this is, for tallies and failure messages
    request_id: str | None  # the id its answers echo, when the frame carries a clean one
    expect: Expect = Expect.ANSWER
    streams: bool = False  # an engine or plugin request: answers may follow later frames' answers

    def describe(self, *, max_chars: int = 300) -> str:
        text = repr(self.data)
        if len(text) > max_chars:  # a 1 MiB frame would bury the message that names it
            text = f"{text[:max_chars]}... ({len(self.data)} {type(self.data).__name__} long)"
        return f"{self.label}: {text}"


@dataclass(frozen=True, kw_only=True)
class Step:
    """Messages sent back to back; `fresh` ones go on a new connection that skipped hello."""

    seed: int
    index: int
    shots: tuple[Shot, ...]
    fresh: bool = False

    def describe(self) -> str:
        where = "a fresh connection without hello" if self.fresh else "a connection after hello"
        lines = [f"step {self.index} of seed {self.seed}, on {where}:"]
        return "\n  ".join([*lines, *(shot.describe() for shot in self.shots)])


def clean_id(value: object, *, max_chars: int) -> str | None:
    """The id the server can read and echo as is: what protocol.codec peeks, minus surrogates."""
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        return None
    return value


def encode(obj: object, encoding: str) -> bytes | str:
    """msgpack (surrogates passed through as invalid UTF-8) or JSON (NaN written as NaN)."""
    if encoding == "msgpack":
        try:
            packed: bytes = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass")
            return packed
        except (OverflowError, TypeError, ValueError):
            pass  # ints beyond 64 bits, or int and str keys mixed: only JSON can say those
    return json.dumps(obj, default=_json_default, ensure_ascii=True)


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # as the server's parser: NaN and Infinity refused


def _load_bases() -> list[dict[str, Any]]:
    bases = []
    for path in sorted(VECTORS.glob("client-*.json")):
        frame = json.loads(path.read_text("utf-8"))
        if frame["type"] == "npc.say":  # keep a plugin frame that a default server has
            frame = {"type": "chat.say", "id": frame["id"], "text": frame["text"]}
        bases.append(frame)
    return bases


def _load_invalid() -> list[bytes | str]:
    return [
        path.read_text("utf-8") if path.suffix == ".json" else path.read_bytes()
        for path in sorted((VECTORS / "invalid").iterdir())
        if path.name != "expected.json"
    ]


class FrameGenerator:
    """Step `index` of a seed, for a server with these limits (from its welcome)."""

    def __init__(self, seed: int, *, limits: Limits, vocab_size: int | None = None) -> None:
        self.seed = seed
        self.limits = limits
        self._bases = _load_bases()
        self._invalid = _load_invalid()
        self._token_ids: tuple[int, ...] = TOKEN_IDS
        if vocab_size is not None:
            self._token_ids += (vocab_size - 1, vocab_size, vocab_size + 1, vocab_size * 2)
        kinds: list[tuple[Callable[[random.Random, int], Step], int]] = [
            (self._valid, 12),
            (self._mutated, 30),
            (self._extreme_sampling, 14),
            (self._surrogates, 8),
            (self._nested, 3),
            (self._near_limits, 5),
            (self._garbage, 7),
            (self._sessions, 10),
            (self._cancels, 5),
            (self._before_hello, 6),
        ]
        self._kinds = [kind for kind, _ in kinds]
        self._weights = [weight for _, weight in kinds]

    def step(self, index: int) -> Step:
        rng = random.Random(self.seed * 1_000_003 + index)
        (kind,) = rng.choices(self._kinds, self._weights)
        return kind(rng, index)

    # --- building blocks ---------------------------------------------------------------------

    def _id(self, index: int, part: int = 0) -> str:
        return f"f{index}.{part}"

    def _shot(
        self,
        rng: random.Random,
        frame: object,
        label: str,
        *,
        encoding: str | None = None,
        expect: Expect = Expect.ANSWER,
    ) -> Shot:
        data = encode(frame, encoding or rng.choice(("msgpack", "json")))
        view = self._server_view(data)
        frame_type = view.get("type") if view is not None else None
        request_id = None
        if view is not None and frame_type != "hello":  # a hello is no request: errors say null
            request_id = clean_id(view.get("id"), max_chars=self.limits.max_request_id_chars)
        streams = not (isinstance(frame_type, str) and frame_type in SYNC_TYPES)
        return Shot(data=data, label=label, request_id=request_id, expect=expect, streams=streams)

    def _server_view(self, data: bytes | str) -> dict[object, object] | None:
        """The map the server decodes from data (bytes turned hex in JSON, say), if it can."""
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_frame_bytes:
            return None
        try:
            if isinstance(data, str):
                obj = json.loads(data, parse_constant=_no_constant)
            else:
                obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, RecursionError, msgpack.UnpackException):
            return None
        return obj if isinstance(obj, dict) else None

    def _step(self, index: int, *shots: Shot, fresh: bool = False) -> Step:
        return Step(seed=self.seed, index=index, shots=shots, fresh=fresh)

    def _text(self, rng: random.Random, max_chars: int = 12) -> str:
        alphabet = "ab \n\t\x00\x7f\u200bé€🗡️\ufffe\U0010ffff"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_chars)))

    def _scalar(self, rng: random.Random) -> object:
        makers: tuple[Callable[[], object], ...] = (
            lambda: rng.choice((None, True, False)),
            lambda: rng.choice(EXTREME_INTS),
            lambda: rng.choice(EXTREME_FLOATS + NON_FINITE),
            lambda: rng.randint(-1000, 1000),
            lambda: rng.uniform(-200, 200),
            lambda: rng.randbytes(rng.randint(0, 6)),
            lambda: rng.choice(SURROGATES) + self._text(rng, 3),
            lambda: self._text(rng),
        )
        return makers[min(rng.randrange(9), 7)]()

    def _value(self, rng: random.Random, depth: int = 0) -> object:
        pick = rng.randrange(10)
        if depth > 3 or pick < 7:
            return self._scalar(rng)
        if pick < 9:
            return [self._value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return {self._key(rng): self._value(rng, depth + 1) for _ in range(rng.randint(0, 3))}

    def _key(self, rng: random.Random) -> object:
        makers: tuple[Callable[[], object], ...] = (
            lambda: rng.choice(SURROGATES),
            lambda: rng.choice((0, 1, -1, 2**40)),
            lambda: rng.choice(("type", "id", "prompt", "sampling", *SAMPLING_FIELDS)),
            lambda: self._text(rng, 6),
        )
        return makers[min(rng.randrange(6), 3)]()

    def _number(self, rng: random.Random) -> object:
        kinds = (EXTREME_INTS, NON_FINITE, EXTREME_FLOATS, EXTREME_FLOATS)
        return rng.choice(kinds[rng.randrange(4)])

    def _base(self, rng: random.Random, index: int, part: int = 0) -> dict[str, Any]:
        """A valid client frame, cheap to serve: a short prompt, few tokens, pooled sessions."""
        frame: dict[str, Any] = json.loads(json.dumps(rng.choice(self._bases)))
        if "id" in frame:
            frame["id"] = self._id(index, part)
        if "session_id" in frame:
            frame["session_id"] = rng.choice(SESSION_POOL)
        if frame["type"] == "generate":
            frame["max_tokens"] = rng.randint(1, 24)
            if rng.random() < 0.5:
                frame.pop("session_id", None)
                frame.pop("messages", None)
                frame["prompt"] = self._text(rng, 16) or "hi"
        if frame["type"] == "chat.say":
            frame["max_tokens"] = rng.randint(1, 8)
        return frame

    def _generate(self, rng: random.Random, index: int, part: int = 0) -> dict[str, Any]:
        return {
            "type": "generate",
            "id": self._id(index, part),
            "prompt": rng.choice(("hi", "Once upon a time", "é🗡️")),
            "max_tokens": rng.randint(1, 16),
        }

    # --- kinds of step -----------------------------------------------------------------------

    def _valid(self, rng: random.Random, index: int) -> Step:
        return self._step(index, self._shot(rng, self._base(rng, index), "valid"))

    def _mutated(self, rng: random.Random, index: int) -> Step:
        frame = self._base(rng, index)
        paths = [self._mutate(rng, frame) for _ in range(rng.randint(1, 3))]
        return self._step(index, self._shot(rng, frame, "mutated:" + ",".join(paths)))

    def _mutate(self, rng: random.Random, frame: dict[str, Any]) -> str:
        """Change one field anywhere in the tree; the path of what changed."""
        node: Any = frame
        path = ""
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                if isinstance(node, dict):
                    node[self._key(rng)] = self._value(rng)
                else:
                    node.append(self._value(rng))
                return f"+{path}"
            key = rng.choice(keys)
            child_path = f"{path}.{key}" if path else str(key)
            child = node[key]
            if not isinstance(child, dict | list) or rng.random() < 0.4:
                break
            node, path = child, child_path
        operation = rng.randrange(6)
        if operation == 0 and isinstance(node, dict):
            del node[key]
            return f"-{child_path}"
        if operation == 1 and isinstance(node, dict):
            node[self._key(rng)] = node.pop(key)
            return f"~{child_path}"
        if operation == 2:
            node[key] = [node[key]] if rng.random() < 0.5 else {"x": node[key]}
            return f"[{child_path}]"
        if operation == 3:
            node[key] = self._number(rng)
            return f"#{child_path}"
        node[key] = self._value(rng)
        return f"={child_path}"

    def _extreme_sampling(self, rng: random.Random, index: int) -> Step:
        frame = self._generate(rng, index)
        sampling: dict[object, object] = {}
        for field in rng.sample(SAMPLING_FIELDS, rng.randint(1, 3)):
            if field == "logit_bias":
                token_ids = rng.sample(self._token_ids, rng.randint(1, 3))
                as_int = rng.random() < 0.5  # msgpack int keys, else decimal strings
                sampling[field] = {
                    (t if as_int else str(t)): rng.choice((1.0, -100.0, 100.0, 1e-50, 5e-324))
                    for t in token_ids
                }
            elif rng.random() < 0.7:
                sampling[field] = rng.choice(LEGAL_EXTREMES[field])
            else:
                sampling[field] = self._number(rng)
        if rng.random() < 0.5 and "temperature" not in sampling:
            sampling["temperature"] = rng.choice((1.0, 0.7))
        frame["sampling"] = sampling
        return self._step(index, self._shot(rng, frame, f"extreme:{sorted(map(str, sampling))}"))

    def _surrogates(self, rng: random.Random, index: int) -> Step:
        """A lone surrogate where the server may echo it: id, field names, session ids."""
        surrogate = rng.choice(SURROGATES)
        frame = self._base(rng, index)
        where = rng.randrange(6)
        if where == 0:
            frame = {"type": "cancel", "id": surrogate}
        elif where == 1:
            frame["id"] = rng.choice(("x", "")) + surrogate
        elif where == 2:
            frame[surrogate] = 1
        elif where == 3:
            frame = self._generate(rng, index)
            frame["sampling"] = {surrogate: 1}
        elif where == 4:
            frame = {"type": rng.choice(CORE_TYPES[1:4]), "id": self._id(index)}
            frame["session_id"] = surrogate
        else:
            nested = rng.choice(("metadata", "messages", "sampling", "logit_bias"))
            frame = self._generate(rng, index)
            if nested == "messages":
                frame.pop("prompt")
                frame["messages"] = [{"role": "user", "content": "hi", surrogate: 1}]
            elif nested == "logit_bias":
                frame["sampling"] = {"logit_bias": {surrogate: 1.0}}
            else:
                frame = {
                    "type": "session.open",
                    "id": self._id(index),
                    "metadata": {surrogate: "v"},
                }
        return self._step(index, self._shot(rng, frame, f"surrogate:{where}", encoding="json"))

    def _nested(self, rng: random.Random, index: int) -> Step:
        depth = rng.choice((self.limits.max_depth - 1, self.limits.max_depth, 40, 3000))
        frame = self._generate(rng, index)
        field = rng.choice(("prompt", "sampling", "extra", "messages"))
        if depth > 500:  # past the encoders' recursion limits: write the text by hand
            head = json.dumps(frame)[:-1]
            data = f'{head}, "{field}": {"[" * depth}{"]" * depth}}}'
            return self._step(index, Shot(data=data, label=f"nested:{depth}", request_id=None))
        value: object = rng.choice(([], {}, 1))
        for level in range(depth):
            value = [value] if level % 2 else {"k": value}
        frame[field] = value
        return self._step(index, self._shot(rng, frame, f"nested:{depth}"))

    def _near_limits(self, rng: random.Random, index: int) -> Step:
        lim = self.limits
        over = rng.choice((0, 1))
        frame = self._generate(rng, index)
        field = rng.randrange(10)
        if field == 0:
            frame["prompt"] = "a" * min(lim.max_string_chars + over, lim.max_frame_bytes * 4 + 16)
        elif field == 1:
            frame["id"] = "i" * (lim.max_request_id_chars + over)
        elif field == 2:
            frame = {"type": "session.open", "id": self._id(index)}
            frame["session_id"] = "s" * (lim.max_session_id_chars + over)
        elif field == 3:
            frame["k" * (lim.max_key_chars + over)] = 1
        elif field == 4:
            frame["stop"] = ["x"] * (lim.max_stop_strings + over)
        elif field == 5:
            frame["sampling"] = {
                "logit_bias": {str(i): 0.5 for i in range(lim.max_logit_bias + over)}
            }
        elif field == 6:
            frame.pop("prompt")
            frame["messages"] = [{"role": "user", "content": "x"}] * (lim.max_messages + over)
            # Decoded in full, then refused before the engine: thousands of prompt tokens
            # would take a real model seconds each and starve the rest of the run.
            frame["session_id"] = "fz-none"
        elif field == 9:  # past the WebSocket layer's own limit (4x): a 1009 close, or an error
            frame["prompt"] = "o" * (lim.max_frame_bytes * 4 + 1)
        elif field == 7:
            frame = {"type": "hello", "protocol": 1, "client": "c" * (lim.max_name_chars + over)}
        else:
            frame["prompt"] = "p"
            frame["pad"] = ""
            size = len(json.dumps(frame))
            frame["pad"] = "z" * (lim.max_frame_bytes - size + over)
            return self._step(index, self._shot(rng, frame, f"frame-bytes+{over}", encoding="json"))
        return self._step(index, self._shot(rng, frame, f"limit:{field}+{over}"))

    def _garbage(self, rng: random.Random, index: int) -> Step:
        pick = rng.randrange(5)
        if pick == 0:
            data: bytes | str = rng.randbytes(rng.randint(0, 64))
        elif pick == 1:
            data = self._text(rng, 40)
        elif pick == 2:
            data = rng.choice(self._invalid)
        elif pick == 3:
            data = encode(self._value(rng), rng.choice(("msgpack", "json")))
        else:
            types = (*CORE_TYPES, *PLUGIN_TYPES, "welcome", "delta", "", "x" * 65)
            frame: dict[str, object] = {"type": rng.choice(types), "id": self._id(index)}
            frame.update({str(self._key(rng)): self._value(rng) for _ in range(rng.randint(0, 4))})
            return self._step(index, self._shot(rng, frame, "random-map"))
        return self._step(index, Shot(data=data, label=f"garbage:{pick}", request_id=None))

    def _sessions(self, rng: random.Random, index: int) -> Step:
        """open/resume/close in odd orders, turns on sessions, a close while a turn runs."""
        session_id = rng.choice(SESSION_POOL)
        if rng.random() < 0.3:
            # A session of its own: a pooled id reopened later would hide a leaked pin.
            session_id = f"fz-{index}"
            actions = ["open", "turn", "close"]
        else:
            actions = [rng.choice(("open", "resume", "close", "turn")) for _ in range(3)]
            actions = actions[: rng.randint(1, 3)]
        shots = []
        for part, action in enumerate(actions):
            frame: dict[str, Any] = {"type": f"session.{action}", "id": self._id(index, part)}
            if action == "turn":
                content = rng.choice(("hi", "and then?"))
                frame |= {"type": "generate", "messages": [{"role": "user", "content": content}]}
                frame["max_tokens"] = rng.randint(2, 24)
            if action != "open" or rng.random() < 0.8:  # else the server picks the id
                frame["session_id"] = session_id
            shots.append(self._shot(rng, frame, f"session:{action}"))
        return self._step(index, *shots)

    def _cancels(self, rng: random.Random, index: int) -> Step:
        if rng.random() < 0.5:  # a request of this step's own: generate, then cancel it
            generate = self._generate(rng, index)
            generate["max_tokens"] = 200
            cancel = {"type": "cancel", "id": generate["id"]}
            return self._step(
                index,
                self._shot(rng, generate, "cancel:own-generate"),
                self._shot(rng, cancel, "cancel:own", expect=Expect.MAYBE),
            )
        # An id never used, one of an earlier step (maybe running, maybe on another connection).
        target, expect = rng.choice(
            ((f"nope-{index}", Expect.ANSWER), ("", Expect.ANSWER), (None, Expect.MAYBE))
        )
        target = target if target is not None else self._id(index - rng.randint(1, 40))
        cancel = {"type": "cancel", "id": target}
        return self._step(index, self._shot(rng, cancel, "cancel:other", expect=expect))

    def _before_hello(self, rng: random.Random, index: int) -> Step:
        """A connection that never says hello, or says a mutated one."""
        if rng.random() < 0.5:
            frame = self._base(rng, index)
            if frame["type"] == "hello":
                frame["protocol"] = rng.choice((0, 2, "1", 1.0, 2**31, None, True))
            return self._step(index, self._shot(rng, frame, "pre-hello"), fresh=True)
        hello: dict[str, Any] = {"type": "hello", "protocol": 1}
        if rng.random() < 0.5:
            self._mutate(rng, hello)
        follow = self._shot(rng, self._generate(rng, index, 1), "after-hello")
        return self._step(index, self._shot(rng, hello, "hello"), follow, fresh=True)
