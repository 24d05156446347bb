"""A loopback TCP proxy that a test can cut: every open connection is closed at once, as a
network that drops them would. It records what clients send (HTTP request heads and
bodies), so a test can wait to see how a client came back."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

HEAD_BYTES = 4096


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.heads: list[str] = []  # what clients sent, chunk by chunk, decoded
        self.port = 0
        self._sent = asyncio.Condition()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()

    async def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """The first match of pattern in what clients sent, once there is one."""
        async with self._sent:
            while True:
                for head in self.heads:
                    if match := pattern.search(head):
                        return match
                await self._sent.wait()

    def drop(self) -> None:
        """Closes every connection open now, both ways."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, record=True), self._pipe(up_reader, writer)
            )
        finally:
            self._writers -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if record:
                    async with self._sent:
                        self.heads.append(chunk[:HEAD_BYTES].decode("latin-1"))
                        self._sent.notify_all()
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def tcp_proxy(upstream_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
