"""The browser playground's static files, served at `/` on the server's own port. Only a fixed
table of files, read on request: no path from the URL ever reaches the filesystem, and nothing
here touches the engine, sessions or sockets."""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

_PAGES = Path(__file__).resolve().parent / "playground"
# The one source of the JavaScript client, beside server/ in the repository and in the wheel
# (package data of `clients`); the playground imports it from /sdk/.
_SDK = Path(__file__).resolve().parent.parent / "clients" / "js"
_HTML = "text/html; charset=utf-8"
_JS = "text/javascript; charset=utf-8"
_CSS = "text/css; charset=utf-8"
ROUTES: dict[str, tuple[Path, str]] = {
    "/": (_PAGES / "index.html", _HTML),
    "/playground/app.js": (_PAGES / "app.js", _JS),
    "/playground/style.css": (_PAGES / "style.css", _CSS),
    "/sdk/banterbox.js": (_SDK / "banterbox.js", _JS),
    "/sdk/frames.js": (_SDK / "frames.js", _JS),
    "/sdk/msgpack.js": (_SDK / "msgpack.js", _JS),
}
# Everything the page needs comes from this origin; its socket goes back to it.
_POLICY = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def find(path: str, *, upgrade: str | None) -> Asset | None:
    """The file a plain GET of `path` asks for; None for other paths and for WebSocket
    upgrades (a client's socket to `/` must still reach the server)."""
    if upgrade is not None or path not in ROUTES:
        return None
    file, content_type = ROUTES[path]
    try:
        return Asset(file.read_bytes(), content_type)
    except FileNotFoundError:  # a file removed from the install: as if never served
        return None


def response(asset: Asset) -> Response:
    headers = Headers(
        [
            ("Date", formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(asset.body))),
            ("Content-Type", asset.content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", _POLICY),
        ]
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, asset.body)
