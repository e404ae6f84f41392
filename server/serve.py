"""`banterbox serve`: flags, config file and BANTERBOX_API_KEYS → a running server until SIGTERM.

With cli.py, the only module that reads argv and the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from plugins.api import ModelError

from .auth import is_loopback
from .config import ConfigError, ServerConfig, load_config, parse_env_keys, with_overrides
from .engine.errors import EngineError
from .plugin_host import PluginLoadError
from .pull import default_model_path

log = logging.getLogger("banterbox.serve")

# flag dest → dotted config setting (see the table in server/config.py)
_OVERRIDES = {
    "host": "server.host",
    "port": "server.port",
    "max_connections": "server.max_connections",
    "max_inflight": "server.max_inflight_per_connection",
    "max_prompt_tokens": "server.max_prompt_tokens",
    "default_max_tokens": "server.default_max_tokens",
    "write_deadline": "server.write_deadline_s",
    "write_limit": "server.write_limit_bytes",
    "shutdown_grace": "server.shutdown_grace_s",
    "max_frame_bytes": "limits.max_frame_bytes",
    "device": "engine.device",
    "threads": "engine.threads",
    "dtype": "engine.dtype",
    "quantize": "engine.quantize",
    "kv_cache_mib": "engine.kv_cache_mib",
    "max_num_seqs": "engine.max_num_seqs",
    "max_num_batched_tokens": "engine.max_num_batched_tokens",
    "max_waiting": "engine.max_waiting",
    "session_ttl": "engine.session_ttl_s",
    "store": "store.url",
    "data_dir": "store.data_dir",
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the --config file, which overrides the defaults (server/config.py)."""
    add = parser.add_argument
    add("--config", type=Path, default=None, help="a TOML config file")
    add("--host", default=None, help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=None, help="port (default 8765; 0: any free port)")
    add("--max-connections", type=int, default=None)
    add("--max-inflight", type=int, default=None, help="requests in flight per connection")
    add("--max-prompt-tokens", type=int, default=None, help="0: the model's context")
    add("--default-max-tokens", type=int, default=None)
    add("--max-frame-bytes", type=int, default=None)
    add("--write-deadline", type=float, default=None, help="seconds a send may block")
    add("--write-limit", type=int, default=None, help="write buffer high-water mark, bytes")
    add("--shutdown-grace", type=float, default=None, help="seconds turns may finish on SIGTERM")
    add("--kv-cache-mib", type=int, default=None)
    add("--max-num-seqs", type=int, default=None)
    add("--max-num-batched-tokens", type=int, default=None)
    add("--max-waiting", type=int, default=None)
    add("--session-ttl", type=float, default=None, help="idle session TTL, seconds")
    add("--store", default=None, help="memory://, sqlite:///PATH or redis://HOST:PORT/DB "
        "(default: SQLite in the data directory)")  # fmt: skip
    add("--data-dir", default=None, help="state directory (default $XDG_DATA_HOME/banterbox)")
    # cli.py gives --device, --threads, --dtype and --quantize fixed defaults; None lets the
    # config file decide.
    parser.set_defaults(device=None, threads=None, dtype=None, quantize=None)


def default_data_dir(env: dict[str, str]) -> Path:
    """$XDG_DATA_HOME/banterbox, or ~/.local/share/banterbox (the XDG default)."""
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "/")) / ".local" / "share")
    return Path(base).absolute() / "banterbox"


def build_config(args: argparse.Namespace, env: dict[str, str]) -> ServerConfig:
    config = with_overrides(
        load_config(args.config),
        {setting: getattr(args, dest, None) for dest, setting in _OVERRIDES.items()},
    )
    if args.session_ttl is not None:
        config = with_overrides(config, {"sessions.idle_ttl_s": args.session_ttl})
    if not config.store.data_dir:
        config = with_overrides(config, {"store.data_dir": str(default_data_dir(env))})
    env_keys = parse_env_keys(env.get("BANTERBOX_API_KEYS", ""))
    if env_keys:
        auth = dataclasses.replace(config.auth, keys=(*config.auth.keys, *env_keys))
        config = dataclasses.replace(config, auth=auth)
    if not config.auth.enabled and not is_loopback(config.server.host):
        raise ConfigError(
            f"no API keys configured: auth may be off only on a loopback address, "
            f"not {config.server.host} (set [[auth.keys]] or BANTERBOX_API_KEYS)"
        )
    return config


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        config = build_config(args, dict(os.environ))
    except ConfigError as exc:
        print(f"banterbox: error: {exc}", file=sys.stderr)
        return 2
    path = args.model if args.model is not None else default_model_path(os.environ)
    try:
        return asyncio.run(_serve(config, path, args.chat_template))
    except (EngineError, ModelError, PluginLoadError, OSError) as exc:
        print(f"banterbox: error: {exc}", file=sys.stderr)
        return 1


async def _serve(config: ServerConfig, path: Path, chat_template: str | None) -> int:
    from .app import BanterboxServer
    from .engine.llm import LLM  # torch is heavy: imported only when serving

    server = BanterboxServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine_config = config.engine.to_engine_config()
    await server.start(lambda: LLM.load(path, engine_config, chat_template=chat_template))
    # What loading made (torch, the model, the plugins' classifiers: the bulk of the heap,
    # and it lives as long as the process) moves out of the cyclic collector's reach: each
    # full collection scanned all of it, a 200-450 ms stop of the event loop every few
    # seconds under chat load, which was every answer's p99.
    gc.freeze()
    host = config.server.host
    log.info("listening on ws://%s:%d (model %s)", host, server.port, server.model_name)
    await stop.wait()
    log.info("shutting down")
    await server.shutdown()
    log.info("stopped")
    return 0
