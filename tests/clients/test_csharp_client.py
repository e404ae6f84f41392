"""The C# client (clients/csharp) built with Mono's mcs: its codec against protocol/vectors, and
the client against a real tiny-model server."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import fast_config, running_server, url_of
from tiny import TinyConfig, random_hf_tensors, write_gguf

ROOT = Path(__file__).resolve().parents[2]
CSHARP = ROOT / "clients" / "csharp"
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=4096)  # a sample card's prompt fits (the tokens are bytes)
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


def build(out: Path, test: str) -> Path:
    mcs = shutil.which("mcs")
    assert mcs is not None, "mcs is needed (make setup installs Debian's mono-mcs)"
    exe = out / f"{test}.exe"
    sources = [*sorted((CSHARP / "Banterbox").glob("*.cs")), CSHARP / "Tests" / f"{test}.cs"]
    built = subprocess.run(
        [mcs, "-nologo", "-warnaserror", f"-out:{exe}", *map(str, sources)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return exe


async def run_mono(exe: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "mono", str(exe), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    report = out.decode(errors="replace")
    sys.stdout.write(report)
    assert proc.returncode == 0, report[-6000:]
    assert report.rstrip().endswith(" 0 failed"), report[-3000:]
    return report


async def test_codec_against_the_vectors(tmp_path: Path) -> None:
    await run_mono(build(tmp_path, "VectorTests"), str(ROOT / "protocol" / "vectors"))


async def test_client_against_a_live_server(tmp_path: Path, model: Path) -> None:
    exe = build(tmp_path, "LiveTests")
    config = fast_config(
        plugins={"enabled": ["chat", "npc", "moderation"]}, engine={"kv_cache_mib": 64}
    )
    async with running_server(model, config) as server:
        await run_mono(exe, env={**os.environ, "BANTERBOX_URL": url_of(server)})
