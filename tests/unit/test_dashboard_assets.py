"""The gateway's dashboard files: versioned by content, the page pointing at its version, and
served with the right types, caching and security headers (the browser itself is driven in
tests/e2e/test_dashboard.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import assets

PAGE = (
    b'<link rel="stylesheet" href="/dashboard/static/style.css">'
    b'<script src="/dashboard/static/app.js"></script>'
)


def write(directory: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (directory / name).write_bytes(body)
    return directory


def test_the_page_names_the_version_of_the_files(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": PAGE, "app.js": b"export {};", "style.css": b"body {}", "notes.txt": b"x"})
    dashboard = assets.load(tmp_path)
    assert len(dashboard.version) == 16
    assert (
        dashboard.page
        == (
            f'<link rel="stylesheet" href="/dashboard/{dashboard.version}/style.css">'
            f'<script src="/dashboard/{dashboard.version}/app.js"></script>'
        ).encode()
    )
    assert set(dashboard.assets) == {"app.js", "style.css"}  # not the page, not other files
    assert dashboard.assets["app.js"].content_type == "text/javascript; charset=utf-8"


def test_any_change_to_a_file_is_a_new_version(tmp_path: Path) -> None:
    write(tmp_path, {"index.html": PAGE, "app.js": b"export {};"})
    before = assets.load(tmp_path).version
    assert assets.load(tmp_path).version == before
    write(tmp_path, {"app.js": b"export const changed = 1;"})
    assert assets.load(tmp_path).version != before


def test_the_shipped_dashboard_loads() -> None:
    dashboard = assets.load()
    assert {"app.js", "api.js", "dom.js", "charts.js", "style.css"} <= set(dashboard.assets)
    assert b"/dashboard/static/" not in dashboard.page
    named = re.findall(rb'"/dashboard/([0-9a-f]{16})/([a-z]+\.(?:js|css))"', dashboard.page)
    assert {version.decode() for version, _ in named} == {dashboard.version}
    assert {b"app.js", b"style.css"} <= {name for _, name in named}
    assert {name.decode() for _, name in named} <= set(dashboard.assets)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], str]]:
    write(tmp_path, {"index.html": PAGE, "app.js": b"export {};", "style.css": b"body {}"})
    dashboard = assets.load(tmp_path)
    app = web.Application()
    assets.add_routes(app.router, dashboard)
    async with TestClient(TestServer(app)) as client:
        yield client, dashboard.version


async def test_the_page_is_revalidated_and_its_files_cached_for_good(
    client: tuple[TestClient[web.Request, web.Application], str],
) -> None:
    http, version = client
    page = await http.get("/dashboard")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert version in await page.text()
    again = await http.get("/dashboard/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status == 304
    script = await http.get(f"/dashboard/{version}/app.js")
    assert script.status == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert await script.read() == b"export {};"


@pytest.mark.parametrize(
    "path",
    ["/dashboard/{version}/nope.js", "/dashboard/0123456789abcdef/app.js", "/dashboard/{version}/index.html"],
)
async def test_another_version_or_file_is_not_found(
    client: tuple[TestClient[web.Request, web.Application], str], path: str
) -> None:
    http, version = client
    answer = await http.get(path.format(version=version))
    assert answer.status == 404
