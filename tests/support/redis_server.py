"""The pytest fixture of a real redis-server (bench/procs.py), one per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.procs import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
