"""SessionStore, Authenticator and config loading, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import ChatMessage, ProtocolError, Role
from server.auth import Authenticator, bearer_token, is_loopback
from server.config import ApiKey, ConfigError, load_config, parse_env_keys, with_overrides
from server.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_open_resume_close_and_tenants() -> None:
    store = SessionStore()
    session, resumed = store.open("a", None, {"system": "Be brief."})
    assert not resumed and session.session_id.startswith("s-")
    assert store.open("a", session.session_id, None) == (session, True)
    with pytest.raises(ProtocolError) as foreign:
        store.get("b", session.session_id)
    assert foreign.value.code.value == "session_not_found"
    new = [ChatMessage(role=Role.USER, content="Hi")]
    assert [m.role for m in session.prompt_messages(new)] == [Role.SYSTEM, Role.USER]
    store.complete_turn(session, new, "Hello.")
    assert session.num_turns == 1 and len(session.messages) == 2
    store.close("a", session.session_id)
    with pytest.raises(ProtocolError):
        store.get("a", session.session_id)


def test_idle_sessions_expire_but_not_busy_ones() -> None:
    clock = Clock()
    store = SessionStore(idle_ttl_s=10, clock=clock)
    store.open("a", "idle", None)
    busy, _ = store.open("a", "busy", None)
    busy.busy = True
    clock.now = 11
    assert [s.session_id for s in store.expire()] == ["idle"]
    assert len(store) == 1


def test_sessions_per_tenant_are_bounded() -> None:
    store = SessionStore(max_per_tenant=1)
    store.open("a", "one", None)
    with pytest.raises(ProtocolError) as full:
        store.open("a", "two", None)
    assert full.value.code.value == "too_many_requests"
    store.open("b", "one", None)


def test_authenticator() -> None:
    key = ApiKey(key="secret", tenant="t", scopes=frozenset({"generate"}))
    auth = Authenticator([key])
    principal = auth.authenticate("secret")
    assert principal is not None and principal.tenant == "t" and principal.may("generate")
    assert not principal.may("admin")
    assert auth.authenticate("nope") is None and auth.authenticate(None) is None
    assert Authenticator([]).authenticate(None) is not None  # auth off
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_config_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[limits]\nmax_frame_bytes = 4096\n[sessions]\nidle_ttl_s = 5\n"
        "[plugins]\nenabled = []\n[plugins.settings.chat]\nmax_tokens = 9\n"
    )
    config = load_config(path)
    assert config.limits.max_frame_bytes == 4096 and config.max_message_bytes == 16384
    assert config.sessions.idle_ttl_s == 5.0
    assert config.plugins.enabled == () and config.plugins.settings["chat"]["max_tokens"] == 9
    assert with_overrides(config, {"server.port": 1, "engine.threads": None}).server.port == 1
    for text, match in (
        ("[server]\nprot = 1\n", "server.prot: unknown"),
        ('[server]\nport = "x"\n', "server.port: expected int"),
        ("[server]\nwrite_deadline_s = 0\n", "write_deadline_s must be > 0"),
        ("[limits]\nmax_depth = 0\n", "max_depth"),
        ('[[auth.keys]]\nkey = "k"\ntenant = "t"\nscopes = ["root"]\n', "unknown scope"),
        ("[nope]\n", "unknown section"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_config(path)
    with pytest.raises(ConfigError):
        parse_env_keys("only:two")
