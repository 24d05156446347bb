"""A loopback source of images that behaves like a CDN: ETags and conditional GETs, and a
throttle (429 with Retry-After) that can be switched on; it records every request."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDictProxy

from devstack.ports import free_port


@dataclass
class SourceServer:
    port: int = field(default_factory=free_port)
    images: dict[str, bytes] = field(default_factory=dict)
    etags: bool = True
    # Requests answered 429 (with retry_after) before this path is served normally.
    throttled: dict[str, int] = field(default_factory=dict)
    retry_after: str = "1"
    requests: list[tuple[str, CIMultiDictProxy[str]]] = field(default_factory=list)

    def add(self, path: str, body: bytes) -> str:
        self.images[path] = body
        return f"http://127.0.0.1:{self.port}{path}"

    def seen(self, path: str) -> list[CIMultiDictProxy[str]]:
        return [headers for p, headers in self.requests if p == path]

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.requests.append((path, request.headers))
        if self.throttled.get(path, 0) > 0:
            self.throttled[path] -= 1
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        body = self.images.get(path)
        if body is None:
            return web.Response(status=404)
        headers = {"Content-Type": "image/jpeg"}
        if self.etags:
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, headers=headers)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SourceServer]:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()
