"""Floors: what grpc.aio and aiohttp themselves cost on this machine, each in a process of
its own with nothing of imgpipe's around them, on the services' event loop (uvloop).

Under WatchStatus: a bare grpc.aio server streaming the same pre-serialised bytes to many
streams, with no database, no watch logic and no serialiser. Under ProcessImage: a bare
grpc.aio server answering unary calls with the same bytes, and an aiohttp client fetching a
source from the loopback image server."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import uvloop

from devstack.bench import procstat

SERVICE = "bench.Floor"
STREAM = f"/{SERVICE}/Stream"
CALL = f"/{SERVICE}/Call"
# About the size of one WatchStatus message about an image.
MESSAGE = b"\x08\x2a\x10\x02\x1a\x06\x08\x3c\x10\x2a\x18\x00" + b"x" * 120
UNARY_CONCURRENCY = 8  # calls in flight, as ingest keeps a processor busy


async def _serve(count: int, port: Any) -> None:
    """Stream: count MESSAGEs; Call: one MESSAGE. No serialiser either way."""

    async def stream(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield MESSAGE

    async def call(_request: bytes, _context: Any) -> bytes:
        return MESSAGE

    server = grpc.aio.server()
    handlers = {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Call": grpc.unary_unary_rpc_method_handler(call),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port.value = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.wait_for_termination()


def _server(count: int, port: Any) -> None:
    uvloop.run(_serve(count, port))


@contextmanager
def _floor_server(count: int) -> Iterator[tuple[str, int]]:
    """The bare server in a process of its own: its target and pid."""
    spawn = multiprocessing.get_context("spawn")
    port = spawn.Value("i", 0)
    server = spawn.Process(target=_server, args=(count, port), daemon=True)
    server.start()
    try:
        while port.value == 0 and server.is_alive():
            server.join(0.05)
        yield f"127.0.0.1:{port.value}", server.pid or 0
    finally:
        server.kill()
        server.join()


async def _receive(target: str, streams: int) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(STREAM, None, None)

        async def one() -> int:
            return sum([1 async for _ in call(b"")])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def server_us_per_message(streams: int, messages: int) -> float:
    """Server CPU µs per message, `streams` streams of `messages` messages each."""
    with _floor_server(messages) as (target, pid):
        before = procstat.cpu_seconds(pid)
        received = asyncio.run(_receive(target, streams))
        return 1e6 * (procstat.cpu_seconds(pid) - before) / received


async def _call(target: str, calls: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(CALL, None, None)
        slots = asyncio.Semaphore(UNARY_CONCURRENCY)

        async def one() -> None:
            async with slots:
                await call(b"")

        await asyncio.gather(*(one() for _ in range(calls)))


def unary_server_us_per_call(calls: int) -> float:
    """Server CPU µs per unary call, UNARY_CONCURRENCY at once."""
    with _floor_server(0) as (target, pid):
        asyncio.run(_call(target, UNARY_CONCURRENCY))  # connected and warm
        before = procstat.cpu_seconds(pid)
        asyncio.run(_call(target, calls))
        return 1e6 * (procstat.cpu_seconds(pid) - before) / calls


async def _fetch(url: str, fetches: int) -> float:
    import aiohttp  # the processor's client, imported in the child only

    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.get(url) as response:
                await response.read()

        await one()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        before = usage.ru_utime + usage.ru_stime
        slots = asyncio.Semaphore(UNARY_CONCURRENCY)

        async def limited() -> None:
            async with slots:
                await one()

        await asyncio.gather(*(limited() for _ in range(fetches)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return 1e6 * (usage.ru_utime + usage.ru_stime - before) / fetches


def _fetcher(url: str, fetches: int, result: Any) -> None:
    result.value = uvloop.run(_fetch(url, fetches))


def fetch_client_us(url: str, fetches: int) -> float:
    """Client CPU µs per aiohttp GET of url (read whole), UNARY_CONCURRENCY at once."""
    spawn = multiprocessing.get_context("spawn")
    result = spawn.Value("d", 0.0)
    client = spawn.Process(target=_fetcher, args=(url, fetches, result), daemon=True)
    client.start()
    client.join()
    return float(result.value)
