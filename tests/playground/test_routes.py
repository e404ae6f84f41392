"""The playground's HTTP routes on a real server: its fixed files with their types, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_harness import http_get, raw_client, running_server, write_tiny_model

from server.playground import ROUTES

NOT_FILES = (
    "/../pyproject.toml",
    "/playground/../app.py",
    "/%2e%2e/server/app.py",
    "/sdk/",
    "/sdk/test/codec.test.js",
    "/index.html",
    "/playground/",
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def test_every_file_is_served_with_its_type(model: Path) -> None:
    async with running_server(model) as server:
        for path, (file, content_type) in ROUTES.items():
            status, found, body = await http_get(server.port, path)
            assert (status, found) == (200, content_type), path
            assert body == file.read_text(), path
        status, _, page = await http_get(server.port, "/?x=1")
        assert status == 200 and '<script type="module" src="/playground/app.js">' in page


async def test_other_paths_are_not_files_and_sockets_to_root_still_work(model: Path) -> None:
    async with running_server(model) as server:
        for path in NOT_FILES:
            status, _, body = await http_get(server.port, path)
            assert status == 426, (path, status, body[:80])
        async with raw_client(server, encoding="json") as ws:
            assert ws.response is not None and ws.response.status_code == 101
