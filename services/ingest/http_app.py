"""Ingest's HTTP side (aiohttp): the API of http_routes (/v1/..., and the compatibility
aliases /upload and /status), its OpenAPI document, the web page (web_page) and the objects
of file:// storage; the service runner adds health, readiness and metrics.

Errors are JSON (imgpipe.common.http_errors). When tokens are configured, every route but
health and the web page's files (they hold no data) needs `Authorization: Bearer TOKEN`
(/metrics too); the caller's principal goes in imgpipe.common.auth.CALLER, as on gRPC.
/objects/ then serves an object only to the token whose request stored it (the key starts
with the request id), result CSVs included.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from imgpipe.common import tracing
from imgpipe.common.auth import CALLER, TokenAuth
from imgpipe.common.errors import InvalidArgument
from imgpipe.common.http_errors import json_errors_middleware
from imgpipe.common.service import OPS_PATHS
from imgpipe.common.storage import FileStorage, Storage
from imgpipe.ingest import web_page
from imgpipe.ingest.errors import BodyTooLarge, CsvTooLarge
from imgpipe.ingest.http_routes import MULTIPART_OVERHEAD, RequestRoutes
from imgpipe.ingest.openapi import document
from imgpipe.ingest.request_service import RequestService

# Open even with tokens: probes carry none, and the page's files hold no data. /metrics is
# not among them (it needs a token).
OPEN_PATHS = (OPS_PATHS - {"/metrics"}) | web_page.PATHS
SSE_KEEPALIVE = 15.0  # seconds


def _auth_middleware(auth: TokenAuth) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        token = CALLER.set(auth.authenticate(request.headers.get("Authorization")))
        try:
            return await handler(request)
        finally:
            CALLER.reset(token)

    return authenticate


def build_http_app(
    requests: RequestService,
    auth: TokenAuth,
    storage: Storage,
    executor: Executor,
    *,
    max_csv_bytes: int,
    keepalive: float = SSE_KEEPALIVE,
) -> web.Application:
    """keepalive: seconds of silence after which an event stream gets a comment line."""

    async def get_object(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if auth.enabled:
            # The owner's only: another token's object is not there at all (NOT_FOUND).
            request_id, _, _ = key.partition("/")
            try:
                await requests.check_owner(request_id, caller=CALLER.get())
            except InvalidArgument:
                raise web.HTTPNotFound() from None
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(executor, storage.get, key)
        except (KeyError, ValueError):
            raise web.HTTPNotFound() from None
        content_type = "text/csv" if key.endswith(".csv") else "image/jpeg"
        return web.Response(body=data, content_type=content_type)

    serves_objects = isinstance(storage, FileStorage)
    openapi = document(objects=serves_objects, auth=auth.enabled)

    async def openapi_json(_request: web.Request) -> web.Response:
        return web.json_response(openapi)

    app = web.Application(
        client_max_size=max_csv_bytes + MULTIPART_OVERHEAD,
        middlewares=[
            *tracing.http_middlewares(),
            json_errors_middleware(too_large=(CsvTooLarge, BodyTooLarge)),
            _auth_middleware(auth),
        ],
    )
    app.router.add_get("/v1/openapi.json", openapi_json)
    web_page.add_page_routes(app, auth=auth.enabled)
    RequestRoutes(requests, max_csv_bytes=max_csv_bytes, keepalive=keepalive).add_to(app)
    if serves_objects:
        app.router.add_get("/objects/{key:.+}", get_object)
    return app
