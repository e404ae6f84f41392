"""A data directory that fills up or turns read-only under a running server (a real tmpfs):
session work answers store_unavailable, stateless turns stream on, /readyz says so, and all
comes back when the disk does."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    NO_EOS,
    fast_config,
    http_get,
    poll,
    running_server,
    url_of,
    write_tiny_model,
)

from server.client import BanterboxClient, BanterboxError

HI = [{"role": "user", "content": "Hi."}]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (root may mount; a plain chmod would not stop root)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def fill(folder: Path) -> Path:
    """Write until the disk is full; the file to delete to free it again."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
            os.fsync(out.fileno())
    return filler


async def readyz(port: int) -> tuple[int, str]:
    status, _, body = await http_get(port, "/readyz")
    return status, body


async def assert_stateless_turns_stream(url: str) -> None:
    async with BanterboxClient.connect(url) as client:
        stream = client.generate(prompt="still here?", max_tokens=4, sampling=NO_EOS)
        assert (await stream.collect()).finish_reason.value == "length"


async def test_a_read_only_data_dir_refuses_session_work_and_streams_the_rest(
    tmp_path: Path, tmpfs: Path
) -> None:
    model = write_tiny_model(tmp_path)
    config = fast_config(store={"url": f"sqlite://{tmpfs}/data/banterbox.db",
                                "health_interval_s": 0.1})  # fmt: skip
    async with (
        running_server(model, config) as server,
        BanterboxClient.connect(url_of(server)) as client,
    ):
        await client.open_session("npc-1")
        await client.generate(messages=HI, session_id="npc-1", max_tokens=4).collect()
    # Linux refuses to remount a filesystem read-only while a file on it is open for
    # writing, so the server meets the read-only directory at its next start (a volume
    # mounted wrong), and it turns writable under the running server.
    remount(tmpfs, "ro")
    async with running_server(model, config) as server:
        url = url_of(server)
        await poll(lambda: not server.store.available, timeout_s=10)
        assert (await readyz(server.port)) == (503, "store unavailable\n")
        await assert_stateless_turns_stream(url)
        async with BanterboxClient.connect(url) as client:
            with pytest.raises(BanterboxError) as refused:
                await client.resume_session("npc-1")
            assert (refused.value.code, refused.value.retryable) == ("store_unavailable", True)
            remount(tmpfs, "rw")
            await poll(lambda: server.store.available, timeout_s=10)
            assert (await readyz(server.port))[0] == 200
            assert (await client.resume_session("npc-1")).num_turns == 1
            await client.generate(messages=HI, session_id="npc-1", max_tokens=4).collect()
            assert (await client.resume_session("npc-1")).num_turns == 2


async def test_a_full_disk_refuses_session_work_and_recovers(tmp_path: Path, tmpfs: Path) -> None:
    config = fast_config(store={"url": f"sqlite://{tmpfs}/banterbox.db",
                                "health_interval_s": 0.1})  # fmt: skip
    async with running_server(write_tiny_model(tmp_path), config) as server:
        url = url_of(server)
        async with BanterboxClient.connect(url) as client:
            await client.open_session("npc-1")
            await client.generate(messages=HI, session_id="npc-1", max_tokens=4).collect()
            filler = fill(tmpfs)
            # Each commit appends pages to the WAL: a full disk cannot take them.
            stream = client.generate(messages=HI, session_id="npc-1", max_tokens=4)
            with pytest.raises(BanterboxError) as refused:
                await stream.collect()
            assert (refused.value.code, refused.value.retryable) == ("store_unavailable", True)
            assert stream.deltas  # it streamed; only the done, the promise, was withheld
            with pytest.raises(BanterboxError, match="store_unavailable"):
                await client.open_session("npc-2")
            await poll(lambda: not server.store.available, timeout_s=10)
            assert (await readyz(server.port)) == (503, "store unavailable\n")
            await assert_stateless_turns_stream(url)
            filler.unlink()
            await poll(lambda: server.store.available, timeout_s=10)
            assert (await client.open_session("npc-2")).resumed is False
            assert (await client.resume_session("npc-1")).num_turns == 1  # refused: not kept
            await client.generate(messages=HI, session_id="npc-1", max_tokens=4).collect()


async def test_an_unusable_data_dir_at_start_still_serves_stateless_turns(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the data directory should be")
    config = fast_config(store={"url": f"sqlite://{tmp_path}/not-a-dir/data/banterbox.db",
                                "health_interval_s": 0.1})  # fmt: skip
    async with running_server(write_tiny_model(tmp_path), config) as server:
        await poll(lambda: not server.store.available, timeout_s=10)
        assert (await readyz(server.port)) == (503, "store unavailable\n")
        await assert_stateless_turns_stream(url_of(server))
