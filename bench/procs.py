"""Real processes for fault tests and `python -m bench faults`: a redis-server on a free
loopback port with its data in a folder, and `banterbox serve` as a child that can be killed
with SIGKILL. `make setup` installs redis-server when it is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process. AOF with fsync on every write: a kill -9 of Redis loses no
    acknowledged write either (what the fault tests check)."""

    def __init__(self, folder: Path, *, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (run `make setup`)")
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.folder), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--daemonize", "no", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """kill -9: no shutdown, no final save; what the AOF holds is what survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class ServerProcess:
    """`python -m server.cli serve` on a free port; its log lines are kept in `lines`."""

    def __init__(
        self, model: Path, *, store_url: str, args: Sequence[str] = (), port: int | None = None
    ) -> None:
        self.model = model
        self.store_url = store_url
        self.args = tuple(args)
        self.port = port or free_port()  # fixed across restarts: clients reconnect to it
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 120.0) -> ServerProcess:
        env = {**os.environ, "BANTERBOX_API_KEYS": ""}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--model", str(self.model),
             "--port", str(self.port), "--store", self.store_url, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        listening = threading.Event()
        self._reader = threading.Thread(target=self._read_log, args=(listening,), daemon=True)
        self._reader.start()
        if not listening.wait(timeout_s) or self.process.poll() is not None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        return self

    def _read_log(self, listening: threading.Event) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "listening on ws://" in line:
                listening.set()
        listening.set()  # it exited: start() looks at poll()

    def kill(self) -> None:
        """kill -9: no drain, no shutdown; what the store holds is what survives."""
        if self.process is not None:
            self.process.kill()
            self._reap()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self._reap()

    def _reap(self) -> None:
        assert self.process is not None
        self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)  # it reads to the end of the dead process's log
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
