"""`python -m clients.irc`: the IRC bridge's command line. The only place that reads argv and
the environment (BANTERBOX_API_KEY, IRC_PASSWORD: secrets stay out of the process list)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os

from .bridge import BridgeSettings, IrcBridge


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clients.irc", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the Banterbox server")
    parser.add_argument("--irc", default="127.0.0.1:6667", help="HOST:PORT of the IRC server")
    parser.add_argument("--nick", default="banterbox")
    parser.add_argument("--channel", action="append", required=True, help="#name (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="log verdicts, act on none")
    args = parser.parse_args(argv)
    host, _, port = args.irc.rpartition(":")
    settings = BridgeSettings(
        banterbox_url=args.url,
        api_key=os.environ.get("BANTERBOX_API_KEY"),
        irc_host=host or "127.0.0.1",
        irc_port=int(port),
        nick=args.nick,
        password=os.environ.get("IRC_PASSWORD"),
        channels=tuple(c if c.startswith("#") else f"#{c}" for c in args.channel),
        dry_run=args.dry_run,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(IrcBridge(settings).run())


if __name__ == "__main__":
    main()
