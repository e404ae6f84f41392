"""SessionStore, Authenticator and config loading, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import ChatMessage, ProtocolError, Role
from server.auth import Authenticator, AuthFailureLimiter, bearer_token, is_loopback
from server.config import ApiKey, ConfigError, load_config, parse_env_keys, with_overrides
from server.sessions import Opener, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_open_resume_close_and_tenants() -> None:
    store = SessionStore()
    session, resumed = store.open("a", None, {"system": "Be brief."})
    assert not resumed and session.session_id.startswith("s-")
    assert store.open("a", session.session_id, None) == (session, True)
    with pytest.raises(ProtocolError) as foreign:
        store.get("b", session.session_id)
    assert foreign.value.code.value == "session_not_found"
    new = [ChatMessage(role=Role.USER, content="Hi")]
    assert [m.role for m in session.prompt_messages(new)] == [Role.SYSTEM, Role.USER]
    await store.commit_turn(session, new, "Hello.")
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
    assert full.value.code.value == "session_limit"
    store.open("b", "one", None)


def test_sessions_per_connection_and_address_are_bounded_and_freed_on_close() -> None:
    store = SessionStore(max_per_connection=2, max_per_address=3)
    c1, c2 = (
        Opener(connection_id="c1", address="10.0.0.1"),
        Opener(connection_id="c2", address="10.0.0.1"),
    )
    store.open("t", "a", None, c1)
    store.open("t", "b", None, c1)
    with pytest.raises(ProtocolError, match="this connection") as full:
        store.open("t", "c", None, c1)
    assert full.value.code.value == "session_limit"
    store.open("t", "c", None, c2)
    with pytest.raises(ProtocolError, match="this address"):
        store.open("t", "d", None, c2)
    store.open("t", "d", None, Opener(connection_id="c3", address="10.0.0.2"))
    store.close("t", "a")
    store.open("t", "e", None, c1)  # a closed session frees its place
    assert store.open("t", "b", None, c2)[1]  # resuming is never capped


def test_a_server_made_id_of_an_earlier_run_is_lost_not_silently_empty() -> None:
    earlier, now = SessionStore(), SessionStore()
    made, _ = earlier.open("t", None, None)
    assert made.session_id.startswith(f"s-{earlier.instance_id}-")
    for call in (
        lambda: now.open("t", made.session_id, None),
        lambda: now.get("t", made.session_id),
    ):
        with pytest.raises(ProtocolError) as lost:
            call()
        assert lost.value.code.value == "session_lost"
    own, _ = now.open("t", None, None)
    assert now.open("t", own.session_id, None)[1]
    assert not now.open("t", "my-own-id", None)[1]  # client-chosen ids open as before


def test_wrong_keys_lock_an_address_out_for_the_window() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(max_failures=3, window_s=60, clock=clock)
    for t in (0, 10, 20):
        clock.now = t
        assert limiter.retry_after_s("1.2.3.4") is None
        limiter.record_failure("1.2.3.4")
    assert limiter.retry_after_s("1.2.3.4") == pytest.approx(40)  # until the first ages out
    assert limiter.retry_after_s("5.6.7.8") is None
    clock.now = 61  # the first failure aged out: two left in the window
    assert limiter.retry_after_s("1.2.3.4") is None


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
