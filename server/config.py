"""Server configuration: frozen dataclasses, loaded from TOML, overridden by CLI flags. No I/O
beyond reading the given file; never reads argv or the environment.

Every setting, its TOML key, CLI flag and default (the one place defaults are documented):

| TOML key | CLI flag | Default | Meaning |
|---|---|---|---|
| server.host | --host | 127.0.0.1 | bind address; auth may be off only on loopback |
| server.port | --port | 8765 | WebSocket + HTTP port (0: any free port) |
| server.max_connections | --max-connections | 256 | authenticated WebSockets; more get 503 |
| server.hello_timeout_s | | 5.0 | no hello by then: close 1008 |
| server.max_unauthenticated | | 64 | sockets not past hello, all addresses; more get 503 |
| server.max_unauthenticated_per_address | | 8 | the same, per source address; more get 429 |
| server.max_auth_failures_per_address | | 10 | wrong keys per window, then rate_limited |
| server.auth_failure_window_s | | 60.0 | the window of that count and of the lockout |
| server.max_inflight_per_connection | --max-inflight | 16 | → too_many_requests |
| server.max_prompt_tokens | --max-prompt-tokens | 0 | 0: the context window → prompt_too_long |
| server.default_max_tokens | --default-max-tokens | 256 | when generate.max_tokens is absent |
| server.write_deadline_s | --write-deadline | 5.0 | a send blocked longer closes with 1008 |
| server.write_limit_bytes | --write-limit | 65536 | write buffer high-water mark |
| server.socket_send_buffer_bytes | | 0 | kernel send buffer per socket (0: OS) |
| server.close_timeout_s | | 5.0 | closing handshake wait, then drop |
| server.shutdown_grace_s | --shutdown-grace | 10.0 | SIGTERM: turns may finish this long |
| server.ping_interval_s | | 20.0 | keepalive pings (0: none) |
| limits.max_frame_bytes | --max-frame-bytes | 1048576 | → frame_too_large; 4× this: close 1009 |
| limits.* | | protocol.Limits | the other limits of SPEC.md §8, by name |
| engine.device | --device | "cpu" | cpu, cuda or cuda:N |
| engine.dtype | --dtype | "auto" | CPU: GGUF blocks packed, fp32 math; CUDA: bf16; or float32 |
| engine.quantize | --quantize | "none" | q8_0, q4_0, q4_1: float weights packed at load (CPU) |
| engine.threads | --threads | 0 | torch threads (0: torch's choice) |
| engine.kv_cache_mib | --kv-cache-mib | 2048 | KV memory budget |
| engine.block_size | | 16 | tokens per KV block |
| engine.max_num_seqs | --max-num-seqs | 64 | sequences running at once |
| engine.max_num_batched_tokens | --max-num-batched-tokens | 512 | tokens per engine step |
| engine.max_waiting | --max-waiting | 256 | queued requests; beyond → overloaded |
| engine.max_model_len | | 0 | context window (0: the model's) |
| engine.session_ttl_s | --session-ttl | 600.0 | an idle session's KV is kept this long |
| sessions.idle_ttl_s | --session-ttl | 600.0 | an idle session is forgotten after this |
| sessions.max_per_tenant | | 1024 | open sessions per tenant |
| sessions.max_per_connection | | 256 | open sessions one connection opened → session_limit |
| sessions.max_per_address | | 512 | open sessions opened from one address → session_limit |
| store.url | --store | "" | "": SQLite in data_dir; sqlite:///PATH, memory://, redis://H:P/DB |
| store.data_dir | --data-dir | "" | the CLI's default: $XDG_DATA_HOME/banterbox |
| store.sqlite_synchronous | | "FULL" | FULL: a done survives power loss; NORMAL: a kill -9 |
| store.health_interval_s | | 5.0 | how often a write probes the store (/readyz) |
| auth.keys | env BANTERBOX_API_KEYS | [] | [[auth.keys]] key, tenant, scopes |
| plugins.enabled | | ["chat", "npc", "moderation"] | entry points of banterbox.plugins |
| plugins.settings.NAME | | {} | table handed to plugin NAME |

Scopes: generate, moderate, admin, metrics (GET /metrics needs a key with admin or metrics
when auth is on, as "Authorization: Bearer KEY"). `BANTERBOX_API_KEYS` is
"key:tenant:scope1+scope2,..." and adds to the file's keys. Without any key, auth is off,
which the server allows only on a loopback address.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from protocol import Limits

from .engine.config import EngineConfig

SCOPES = frozenset({"generate", "moderate", "admin", "metrics"})
_STORE_SCHEMES = frozenset({"memory", "sqlite", "redis", "rediss", "unix"})


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the setting."""


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 256  # authenticated; sockets before hello have their own caps
    hello_timeout_s: float = 5.0
    max_unauthenticated: int = 64
    max_unauthenticated_per_address: int = 8
    max_auth_failures_per_address: int = 10
    auth_failure_window_s: float = 60.0
    max_inflight_per_connection: int = 16
    max_prompt_tokens: int = 0  # 0: the model's context window
    default_max_tokens: int = 256
    write_deadline_s: float = 5.0
    write_limit_bytes: int = 65536
    socket_send_buffer_bytes: int = 0  # 0: the OS default (Linux autotunes up to MiBs)
    close_timeout_s: float = 5.0
    shutdown_grace_s: float = 10.0
    ping_interval_s: float = 20.0  # 0 disables keepalive pings


_ENGINE_DEFAULTS = EngineConfig()


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """The [engine] table. Defaults are EngineConfig's: one source for both."""

    device: str = _ENGINE_DEFAULTS.device
    dtype: str = _ENGINE_DEFAULTS.dtype
    quantize: str = _ENGINE_DEFAULTS.quantize
    threads: int = _ENGINE_DEFAULTS.num_threads
    kv_cache_mib: int = _ENGINE_DEFAULTS.kv_cache_mib
    block_size: int = _ENGINE_DEFAULTS.block_size
    max_num_seqs: int = _ENGINE_DEFAULTS.max_num_seqs
    max_num_batched_tokens: int = _ENGINE_DEFAULTS.max_num_batched_tokens
    max_waiting: int = _ENGINE_DEFAULTS.max_waiting
    max_model_len: int = _ENGINE_DEFAULTS.max_model_len
    session_ttl_s: float = _ENGINE_DEFAULTS.session_ttl_s

    def to_engine_config(self) -> EngineConfig:
        return EngineConfig(
            device=self.device,
            dtype=self.dtype,
            quantize=self.quantize,
            num_threads=self.threads,
            kv_cache_mib=self.kv_cache_mib,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_waiting=self.max_waiting,
            max_model_len=self.max_model_len,
            session_ttl_s=self.session_ttl_s,
        )


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    idle_ttl_s: float = 600.0
    max_per_tenant: int = 1024
    max_per_connection: int = 256
    max_per_address: int = 512


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """Where sessions and the plugin store live. With neither `url` nor `data_dir` (a library
    caller that gave none; the CLI always resolves a data_dir), the memory store."""

    url: str = ""
    data_dir: str = ""
    sqlite_synchronous: str = "FULL"
    health_interval_s: float = 5.0

    @property
    def resolved_url(self) -> str:
        if self.url:
            return self.url
        if self.data_dir:
            return f"sqlite://{Path(self.data_dir).absolute() / 'banterbox.db'}"
        return "memory://"


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    key: str = field(repr=False)
    tenant: str
    scopes: frozenset[str]


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


def _no_settings() -> Mapping[str, Mapping[str, object]]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class PluginSettings:
    # What `make serve` users came for: NPC dialogue and chat moderation next to plain chat.
    enabled: tuple[str, ...] = ("chat", "npc", "moderation")
    settings: Mapping[str, Mapping[str, object]] = field(default_factory=_no_settings)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    server: NetworkSettings = field(default_factory=NetworkSettings)
    limits: Limits = field(default_factory=Limits)
    engine: EngineSettings = field(default_factory=EngineSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    store: StoreSettings = field(default_factory=StoreSettings)

    def __post_init__(self) -> None:
        positive = {
            "server.max_connections": self.server.max_connections,
            "server.max_inflight_per_connection": self.server.max_inflight_per_connection,
            "server.default_max_tokens": self.server.default_max_tokens,
            "server.write_deadline_s": self.server.write_deadline_s,
            "server.write_limit_bytes": self.server.write_limit_bytes,
            "server.close_timeout_s": self.server.close_timeout_s,
            "sessions.idle_ttl_s": self.sessions.idle_ttl_s,
            "sessions.max_per_tenant": self.sessions.max_per_tenant,
            "store.health_interval_s": self.store.health_interval_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        non_negative = {
            "server.port": self.server.port,
            "server.max_prompt_tokens": self.server.max_prompt_tokens,
            "server.shutdown_grace_s": self.server.shutdown_grace_s,
            "server.socket_send_buffer_bytes": self.server.socket_send_buffer_bytes,
            "server.ping_interval_s": self.server.ping_interval_s,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.store.sqlite_synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigError("store.sqlite_synchronous must be FULL, NORMAL or EXTRA")
        scheme, sep, _ = self.store.url.partition("://")
        if self.store.url and (not sep or scheme not in _STORE_SCHEMES):
            raise ConfigError(
                f"store.url {self.store.url!r}: expected memory://, sqlite:///PATH or redis://..."
            )

    @property
    def max_message_bytes(self) -> int:
        """The WebSocket layer's own message bound: frames between max_frame_bytes and this
        get a `frame_too_large` error frame; larger ones a 1009 close."""
        return 4 * self.limits.max_frame_bytes


_SECTIONS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "server": NetworkSettings,
        "limits": Limits,
        "engine": EngineSettings,
        "sessions": SessionSettings,
        "store": StoreSettings,
    }
)


def _typed(section: str, cls: type[Any], raw: Mapping[str, object]) -> dict[str, object]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, object] = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"{section}.{name}: unknown setting")
        default = getattr(cls(), name)
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise ConfigError(f"{section}.{name}: expected {expected.__name__}, got {value!r}")
        out[name] = value
    return out


def parse_api_key(key: str, tenant: str, scopes: object, *, where: str) -> ApiKey:
    if not key or not tenant:
        raise ConfigError(f"{where}: key and tenant must be non-empty")
    if not isinstance(scopes, list | tuple | frozenset) or not all(
        isinstance(s, str) for s in scopes
    ):
        raise ConfigError(f"{where}.scopes: expected a list of strings")
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ConfigError(f"{where}.scopes: unknown scope(s) {sorted(unknown)}")
    return ApiKey(key=key, tenant=tenant, scopes=frozenset(scopes))


def parse_env_keys(text: str) -> tuple[ApiKey, ...]:
    """Keys from BANTERBOX_API_KEYS: "key:tenant:scope1+scope2,..." (empty entries skipped)."""
    keys = []
    for index, entry in enumerate(part.strip() for part in text.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigError(f"BANTERBOX_API_KEYS entry {index}: expected key:tenant:scopes")
        key, tenant, scopes = parts
        where = f"BANTERBOX_API_KEYS entry {index}"
        keys.append(parse_api_key(key, tenant, scopes.split("+"), where=where))
    return tuple(keys)


def _auth(raw: object) -> AuthSettings:
    if not isinstance(raw, Mapping) or set(raw) - {"keys"}:
        raise ConfigError("auth: expected a table with only `keys`")
    entries = raw.get("keys", [])
    if not isinstance(entries, list):
        raise ConfigError("auth.keys: expected an array of tables")
    keys = []
    for index, entry in enumerate(entries):
        where = f"auth.keys[{index}]"
        if not isinstance(entry, Mapping) or set(entry) - {"key", "tenant", "scopes"}:
            raise ConfigError(f"{where}: expected a table of key, tenant, scopes")
        key, tenant = entry.get("key"), entry.get("tenant")
        if not isinstance(key, str) or not isinstance(tenant, str):
            raise ConfigError(f"{where}: key and tenant must be strings")
        keys.append(parse_api_key(key, tenant, entry.get("scopes", []), where=where))
    return AuthSettings(keys=tuple(keys))


def _plugins(raw: object) -> PluginSettings:
    if not isinstance(raw, Mapping) or set(raw) - {"enabled", "settings"}:
        raise ConfigError("plugins: expected a table with `enabled` and `settings`")
    enabled = raw.get("enabled", ["chat"])
    if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
        raise ConfigError("plugins.enabled: expected a list of plugin names")
    settings = raw.get("settings", {})
    if not isinstance(settings, Mapping) or not all(
        isinstance(v, Mapping) for v in settings.values()
    ):
        raise ConfigError("plugins.settings: expected a table of tables")
    frozen = {name: MappingProxyType(dict(table)) for name, table in settings.items()}
    return PluginSettings(enabled=tuple(enabled), settings=MappingProxyType(frozen))


def config_from_mapping(raw: Mapping[str, object]) -> ServerConfig:
    unknown = set(raw) - {*_SECTIONS, "auth", "plugins"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}")
    parts: dict[str, object] = {}
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{section}: expected a table")
        try:
            parts[section] = cls(**_typed(section, cls, table))
        except ValueError as exc:
            raise ConfigError(f"{section}: {exc}") from exc
    if "auth" in raw:
        parts["auth"] = _auth(raw["auth"])
    if "plugins" in raw:
        parts["plugins"] = _plugins(raw["plugins"])
    return ServerConfig(**parts)  # type: ignore[arg-type]


def load_config(path: Path | None) -> ServerConfig:
    """The config of a TOML file, or the defaults when path is None."""
    if path is None:
        return ServerConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return config_from_mapping(raw)


def with_overrides(config: ServerConfig, overrides: Mapping[str, object]) -> ServerConfig:
    """`config` with dotted settings replaced ("server.port": 9000); None values are skipped."""
    sections: dict[str, dict[str, object]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        sections.setdefault(section, {})[name] = value
    replaced: dict[str, Any] = {}
    for section, values in sections.items():
        current = getattr(config, section)
        typed = _typed(section, type(current), values)
        try:
            replaced[section] = dataclasses.replace(current, **typed)
        except ValueError as exc:
            raise ConfigError(f"{section}: {exc}") from exc
    return dataclasses.replace(config, **replaced)
