"""The processor's ends of a codec worker's two pipes, driven by the event loop: no thread
waits on a worker, and an image crosses to a worker and back without a thread hop.

Messages are framed as multiprocessing.Connection frames them, since the worker's ends are
Connections: a 4-byte big-endian length, then the pickle. (Connection marks a message of
2 GiB or more with a length of -1; sources are capped far below that, and a JPEG at most
a few times their size.)
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# Up to this size, the frame's header and pickle go in one write.
JOINED_WRITE_BYTES = 64 * 1024
_LENGTH = struct.Struct("!i")


class WorkerGone(Exception):
    """The worker's end of a pipe is closed: it died or was killed."""


class WorkerPipe:
    def __init__(self, to_worker: Connection, from_worker: Connection) -> None:
        self._to_worker = to_worker
        self._from_worker = from_worker
        for end in (to_worker, from_worker):
            os.set_blocking(end.fileno(), False)

    async def send(self, message: object) -> None:
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        header = _LENGTH.pack(len(payload))
        if len(payload) <= JOINED_WRITE_BYTES:
            await self._write(header + payload)
        else:
            await self._write(header)
            await self._write(payload)

    async def receive(self) -> object:
        (size,) = _LENGTH.unpack(await self._read(_LENGTH.size))
        return pickle.loads(await self._read(size))

    def close(self) -> None:
        self._to_worker.close()
        self._from_worker.close()

    async def _write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        fd = self._to_worker.fileno()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await _ready(loop.add_writer, loop.remove_writer, fd)
            except OSError as exc:  # EPIPE: the worker is gone
                raise WorkerGone from exc

    async def _read(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        fd = self._from_worker.fileno()
        chunks = []
        while size:
            try:
                chunk = os.read(fd, size)
            except BlockingIOError:
                await _ready(loop.add_reader, loop.remove_reader, fd)
                continue
            except OSError as exc:
                raise WorkerGone from exc
            if not chunk:
                raise WorkerGone
            chunks.append(chunk)
            size -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _ready(watch: Callable[..., Any], unwatch: Callable[[int], object], fd: int) -> None:
    """Until fd is ready (watch: the loop's add_reader or add_writer)."""
    ready = asyncio.get_running_loop().create_future()
    watch(fd, _resolve, ready)
    try:
        await ready
    finally:
        unwatch(fd)


def _resolve(ready: asyncio.Future[None]) -> None:
    # The loop may call back again before the waiting task has run and unwatched.
    if not ready.done():
        ready.set_result(None)
