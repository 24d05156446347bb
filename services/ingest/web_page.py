"""The web page at `/`: plain HTML, CSS and one JavaScript module shipped in the package
(web/), no build step and nothing fetched from elsewhere. The files carry no data, so they
are served to anyone; everything the page shows comes from the /v1 routes, with the token
the person types in (kept in the tab's sessionStorage, sent as a bearer header)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

FILES = {
    "/": ("index.html", "text/html"),
    "/ui/page.css": ("page.css", "text/css"),
    "/ui/page.js": ("page.js", "text/javascript"),
}
PATHS = frozenset(FILES)
# Only this origin's own files and API; no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page_routes(app: web.Application, *, auth: bool) -> None:
    """Serves the page's files; `auth` tells the page to ask for a token."""
    folder = resources.files("imgpipe.ingest").joinpath("web")
    for path, (name, content_type) in FILES.items():
        text = folder.joinpath(name).read_text(encoding="utf-8")
        if name == "index.html":
            text = text.replace(
                'data-auth="{auth}"', f'data-auth="{"required" if auth else "off"}"'
            )
        app.router.add_get(path, _handler(text.encode(), content_type))


def _handler(body: bytes, content_type: str) -> Handler:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS
        )

    return serve
