"""The operator console at `/ui`: one static page (plain JavaScript) that calls `/admin/*`.

The page, its script, its stylesheet and the vendored chart library hold no data, so the edge
serves them to a browser without credentials (the login form needs them); every number on the
page comes from `/admin/*`, which only the master key reaches. A request that does carry
credentials to `/ui` must carry the master key (`middleware.Edge`, `console_prefixes`).

The files are read once from the package (`static/`, package data), served from a fixed table:
no path from the URL ever reaches the file system.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from router.errors import NotFound

PREFIX = "/ui"
PAGES = ("overview", "requests", "keys", "policies", "playground")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# The page runs only its own files: no inline script or style, no other origin, no framing.
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    out = {}
    for f in files(__package__).joinpath("static").iterdir():
        suffix = "." + f.name.rsplit(".", 1)[-1]
        if f.is_file() and suffix in TYPES:
            out[f.name] = (f.read_bytes(), TYPES[suffix])
    return out


def console_routes() -> APIRouter:
    assets = _load()
    api = APIRouter(prefix=PREFIX)

    def serve(name: str) -> Response:
        got = assets.get(name)
        if got is None:
            raise NotFound(f"no console file {name!r}", code="not_found")
        body, media = got
        return Response(body, media_type=media.split(";")[0], headers={**HEADERS, "content-type": media})

    @api.get("", include_in_schema=False)
    async def page():
        return serve("index.html")

    @api.get("/", include_in_schema=False)
    async def slash():
        return RedirectResponse(PREFIX, status_code=308)

    @api.get("/{page}", include_in_schema=False)
    async def page_at(page: str):
        """Each page's own address (`/ui/requests`, ...): the same file, which shows that page."""
        if page not in PAGES:
            raise NotFound(f"no console page {page!r}", code="not_found")
        return serve("index.html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        return serve(name)

    return api
