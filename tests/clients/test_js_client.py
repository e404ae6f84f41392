"""The JavaScript client (clients/js) under node's test runner, against a real tiny-model server."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from server_harness import fast_config, running_server, url_of
from tiny import TinyConfig, random_hf_tensors, write_gguf

ROOT = Path(__file__).resolve().parents[2]
NODE_TIMEOUT_S = 300

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Room for a sample card's prompt: the tiny model's tokens are bytes.
    config = TinyConfig(max_position=4096)
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


async def test_js_client_passes_against_a_live_server(model: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node (v20+) is needed for the JS client's tests"
    config = fast_config(
        plugins={"enabled": ["chat", "npc", "moderation"]}, engine={"kv_cache_mib": 64}
    )
    async with running_server(model, config) as server:
        env = {**os.environ, "BANTERBOX_URL": url_of(server)}
        # Node 20's WebSocket is behind a flag (a global from Node 22 on).
        args = ["--experimental-websocket", "--no-warnings", "--test", "clients/js/test/"]
        proc = await asyncio.create_subprocess_exec(
            node, *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    report = out.decode(errors="replace")
    sys.stdout.write(report)
    assert proc.returncode == 0, report[-6000:]
    assert "# fail 0" in report and "# SKIP" not in report, report[-3000:]
    assert re.search(r"^ok \d+ - a live server$", report, re.MULTILINE), report[-3000:]
