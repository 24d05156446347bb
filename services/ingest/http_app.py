"""Ingest's HTTP side (aiohttp): health, metrics, and the objects of file:// storage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.storage import FileStorage, Storage


def build_http_app(
    storage: Storage, executor: Executor, is_ready: Callable[[], bool]
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready = is_ready()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_object(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(executor, storage.get, key)
        except (KeyError, ValueError):
            raise web.HTTPNotFound() from None
        content_type = "text/csv" if key.endswith(".csv") else "image/jpeg"
        return web.Response(body=data, content_type=content_type)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if isinstance(storage, FileStorage):
        app.router.add_get("/objects/{key:.+}", get_object)
    return app
