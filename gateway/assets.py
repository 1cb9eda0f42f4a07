"""The dashboard's files (gateway/dashboard/), served by the gateway next to the API it reads.

`/dashboard` is the page, revalidated on every visit (ETag). Its scripts and styles are served
under `/dashboard/<version>/<file>`, where the version is a hash of every file: they are cached
for good (a browser fetches each once per version), and a new gateway never mixes old and new
modules, since the page it serves names the new version. The files are read once, at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

DIRECTORY = Path(__file__).parent / "dashboard"
PAGE = "index.html"
# In index.html, where the versioned path goes: /dashboard/static/app.js → /dashboard/<version>/app.js.
PLACEHOLDER = b"/dashboard/static/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page runs only its own scripts and styles, talks only to this origin, is never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Dashboard:
    version: str
    page: bytes
    page_etag: str
    assets: dict[str, Asset]


def load(directory: Path = DIRECTORY) -> Dashboard:
    """The dashboard's files, the page pointing at this version of them."""
    files = {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in CONTENT_TYPES
    }
    digest = hashlib.sha256()
    for name, body in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    version = digest.hexdigest()[:16]
    page = files.pop(PAGE).replace(PLACEHOLDER, f"/dashboard/{version}/".encode())
    assets = {name: Asset(body, CONTENT_TYPES[Path(name).suffix]) for name, body in files.items()}
    return Dashboard(version, page, f'"{version}"', assets)


def add_routes(router: web.UrlDispatcher, dashboard: Dashboard) -> None:
    router.add_get("/dashboard", page_handler(dashboard))
    router.add_get("/dashboard/", page_handler(dashboard))
    router.add_get("/dashboard/{version}/{name}", asset_handler(dashboard))


def page_handler(dashboard: Dashboard) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {**SECURITY_HEADERS, "Cache-Control": PAGE_CACHE, "ETag": dashboard.page_etag}
        if dashboard.page_etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = CONTENT_TYPES[".html"]
        return web.Response(body=dashboard.page, headers=headers)

    return handle


def asset_handler(dashboard: Dashboard) -> Handler:
    """A file of this version; any other version or name is not found (a 404 in the JSON error
    shape, like any unknown path)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        found = dashboard.assets.get(request.match_info["name"])
        if found is None or request.match_info["version"] != dashboard.version:
            raise web.HTTPNotFound()
        headers = {**SECURITY_HEADERS, "Cache-Control": ASSET_CACHE, "Content-Type": found.content_type}
        return web.Response(body=found.body, headers=headers)

    return handle
