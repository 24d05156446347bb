"""The floor under WatchStatus: a bare grpc.aio server streaming the same pre-serialised
bytes to many streams, with no database, no watch logic and no serialiser, in a process
of its own; its CPU per message is what grpc.aio itself costs on this machine."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from typing import Any

import grpc

from devstack.bench import procstat

METHOD = "/bench.Floor/Stream"
# About the size of one WatchStatus message about an image.
MESSAGE = b"\x08\x2a\x10\x02\x1a\x06\x08\x3c\x10\x2a\x18\x00" + b"x" * 120


async def _serve(count: int, port: Any) -> None:
    async def stream(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield MESSAGE

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(stream)
    service = grpc.method_handlers_generic_handler(METHOD.split("/")[1], {"Stream": handler})
    server.add_generic_rpc_handlers((service,))
    port.value = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.wait_for_termination()


def _server(count: int, port: Any) -> None:
    asyncio.run(_serve(count, port))


async def _receive(target: str, streams: int) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_stream(METHOD, None, None)

        async def one() -> int:
            return sum([1 async for _ in call(b"")])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def server_us_per_message(streams: int, messages: int) -> float:
    """Server CPU µs per message, `streams` streams of `messages` messages each."""
    spawn = multiprocessing.get_context("spawn")
    port = spawn.Value("i", 0)
    server = spawn.Process(target=_server, args=(messages, port), daemon=True)
    server.start()
    try:
        while port.value == 0 and server.is_alive():
            server.join(0.05)
        pid = server.pid or 0
        before = procstat.cpu_seconds(pid)
        received = asyncio.run(_receive(f"127.0.0.1:{port.value}", streams))
        return 1e6 * (procstat.cpu_seconds(pid) - before) / received
    finally:
        server.kill()
        server.join()
