"""Server-Sent Events over aiohttp, fed by an async iterator.

Nothing is sent until the iterator yields or a tick passes, so an error raised at once (an
unknown request) still becomes a plain JSON error; an iterator that ends before yielding
anything answers 204, which also tells a browser's EventSource to stop reconnecting. Once
streaming, a comment line keeps idle connections open, and a client that went away (seen
within a tick) or the server shutting down ends the stream and closes the iterator, which
frees whatever it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from imgpipe.common.errors import ServiceError
from imgpipe.ingest.errors import ShuttingDown

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies such as nginx must not buffer the stream
}
KEEPALIVE = b": keep-alive\n\n"
MAX_TICK = 1.0  # seconds between checks that the client is still there


@dataclass(frozen=True)
class ServerEvent:
    id: str
    event: str
    data: str

    def encode(self) -> bytes:
        lines = [f"id: {self.id}", f"event: {self.event}"]
        lines += [f"data: {line}" for line in self.data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()


async def stream_events(
    request: web.Request,
    events: AsyncIterator[bytes],
    *,
    keepalive: float,
    closing: asyncio.Event,
) -> web.StreamResponse:
    """Sends every event of `events` (each a ServerEvent's encoding, which many streams
    may share) as it comes; see the module's docstring."""
    loop = asyncio.get_running_loop()
    tick = min(MAX_TICK, keepalive)
    response: web.StreamResponse | None = None
    pending: asyncio.Future[bytes] = asyncio.ensure_future(anext(events))
    closed = asyncio.ensure_future(closing.wait())
    last_write = loop.time()
    try:
        while True:
            wait = tick if response is None else min(tick, keepalive - (loop.time() - last_write))
            waiting: set[asyncio.Future[Any]] = {pending, closed}
            await asyncio.wait(waiting, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
            if pending.done():
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return response or web.Response(status=204)
                except Exception as exc:
                    if response is None:
                        raise
                    _log_ended(request, exc)
                    return response
                response = response or await _prepare(request)
                await response.write(event)
                last_write = loop.time()
                pending = asyncio.ensure_future(anext(events))
                continue
            if closing.is_set():
                if response is None:
                    raise ShuttingDown()
                return response
            if request.transport is None or request.transport.is_closing():
                return response or web.Response(status=204)  # nobody is listening
            if response is None:
                response = await _prepare(request)
            if loop.time() - last_write >= keepalive:
                await response.write(KEEPALIVE)
                last_write = loop.time()
    except ConnectionResetError:  # the client went away while we wrote
        return response or web.Response(status=204)
    finally:
        closed.cancel()
        await _close(pending, events)


async def _prepare(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=HEADERS)
    await response.prepare(request)
    return response


def _log_ended(request: web.Request, exc: BaseException) -> None:
    if isinstance(exc, ServiceError):
        log.warning("event stream ended: %s", exc.message, extra={"path": request.path})
    else:
        log.error("event stream failed", exc_info=exc, extra={"path": request.path})


async def _close(pending: asyncio.Future[Any], events: AsyncIterator[Any]) -> None:
    """Stops the iterator whatever it is doing, so that its `finally` blocks run now."""
    pending.cancel()
    await asyncio.wait({pending})  # raises nothing but our own cancellation
    if not pending.cancelled():
        pending.exception()  # retrieved, so asyncio does not log it
    await aclose_quietly(events)


async def aclose_quietly(iterator: AsyncIterator[Any]) -> None:
    """Closes an async generator (runs its `finally` blocks now); other iterators are left."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
