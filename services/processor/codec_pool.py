"""Codec worker processes: every image is decoded and encoded in a child process that the
processor can kill.

A worker takes one image at a time over a pipe, with the memory the processor has admitted
for its decode against the process's one MemoryBudget (the estimate from the header, read
in the processor already); it asks for more before decoding when its own estimate is
larger, and answers with the JPEG or the error. Each worker runs under limits of its own:
RLIMIT_CPU, set before each image to the CPU the worker has used plus
DecodeSettings.cpu_seconds (past that the kernel ends it with SIGXCPU: OverCpuBudget,
permanent), and RLIMIT_AS of the codec memory budget plus WORKER_BASE_BYTES (a decode the
estimate got wrong fails with MemoryError in that worker instead of taking the pod).

When the call waiting on a worker is cancelled (its deadline passed, or ingest cancelled
it) the worker is killed and replaced, so its CPU is free at once. A worker that dies
otherwise (a native decoder's crash on hostile bytes, the OOM killer, kill -9) is replaced
and the image tried once more in the new one; a second death fails it (DecoderCrashed).

Large decodes (an estimate over a quarter of the budget, MemoryBudget.large) take at most
all workers but one and none of the budget's reserve for small decodes, so that small
images wait neither for a worker nor for memory behind them.

Workers are forked by multiprocessing's fork server, which imports this module (and the
main module) once: a new worker starts in milliseconds, with none of the processor's
threads or sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import math
import multiprocessing
import os
import resource
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from imgpipe.processor import metrics
from imgpipe.processor.allocator import resident_bytes, trim, tune_malloc
from imgpipe.processor.budget import MIB, MemoryBudget, check_fits
from imgpipe.processor.compress import Compressed, compress, limit_pillow
from imgpipe.processor.errors import DecoderCrashed, OverCpuBudget
from imgpipe.processor.formats import PILLOW_PLUGINS
from imgpipe.processor.settings import DecodeSettings
from imgpipe.processor.worker_pipe import WorkerGone, WorkerPipe

# Address space a worker needs beyond its decode: the interpreter, Pillow, the source and
# output bytes.
WORKER_BASE_BYTES = 512 * MIB
# A worker gives its heap's free memory back to the kernel after an image when it is
# resident for more than this beyond what it was when it started; less, it keeps for the
# next image (no page faults to map it again).
TRIM_AFTER_BYTES = 64 * MIB
ATTEMPTS = 2
# Linux's fcntl to resize a pipe, and the size: /proc/sys/fs/pipe-max-size's default, what an
# unprivileged process may ask for.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1024 * 1024


# -- in the worker ----------------------------------------------------------------------------


def _serve(inbox: Connection, outbox: Connection, limits: DecodeSettings) -> None:
    """A worker's life: images in, JPEGs (or errors) out, until the inbox closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the processor decides when workers stop
    tune_malloc()
    limit_pillow(limits.max_pixels)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    address_space = limits.memory_bytes + WORKER_BASE_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (address_space, resource.RLIM_INFINITY))
    started = resident_bytes()

    admitted = 0

    @contextmanager
    def admit(size: int) -> Iterator[None]:
        check_fits(size, limits.memory_bytes)
        if size > admitted:
            outbox.send(size)
            inbox.recv()
        yield

    while True:
        try:
            data, quality, admitted, digest = inbox.recv()
        except EOFError:
            return
        used = sum(os.times()[:2])
        resource.setrlimit(
            resource.RLIMIT_CPU, (math.ceil(used + limits.cpu_seconds), resource.RLIM_INFINITY)
        )
        reply: Compressed | BaseException
        try:
            reply = compress(data, quality, limits, admit)
            if digest:
                reply = dataclasses.replace(reply, source_sha256=hashlib.sha256(data).digest())
        except Exception as exc:
            traceback.clear_frames(exc.__traceback__)
            reply = exc.with_traceback(None)
        del data
        outbox.send(reply)
        del reply
        if resident_bytes() > started + TRIM_AFTER_BYTES:
            trim()


# -- in the processor -------------------------------------------------------------------------


def _widen(end: Connection) -> None:
    """A pipe of PIPE_BYTES where Linux allows it: a source of a few MB crosses in a few
    writes, each waking the other side, where a socket pair took many (1 MB sent and
    answered: 1.0 ms of the sender's CPU before, 0.3 ms, measured). Left as it is where the
    kernel refuses."""
    with suppress(OSError):
        fcntl.fcntl(end.fileno(), F_SETPIPE_SZ, PIPE_BYTES)


class CodecWorker:
    """One worker process and the pipes to it, driven by the event loop; one caller at a
    time (the pool's). A worker killed or dead is replaced before its next image, in a
    thread (starting a process waits on the fork server)."""

    def __init__(
        self, context: ForkServerContext, limits: DecodeSettings, budget: MemoryBudget
    ) -> None:
        self._context = context
        self._limits = limits
        self._budget = budget
        # True from the moment its image is admitted until the reply or its death.
        self.decoding = False
        # Killed or dead: replaced before its next image.
        self._stale = False
        self._replacing: asyncio.Future[int | None] | None = None
        self._process, self._pipe = self._start()

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def _start(self) -> tuple[BaseProcess, WorkerPipe]:
        inbox, to_worker = self._context.Pipe(duplex=False)
        from_worker, outbox = self._context.Pipe(duplex=False)
        for end in (to_worker, outbox):
            _widen(end)
        process = self._context.Process(
            target=_serve, args=(inbox, outbox, self._limits), name="imgpipe-codec", daemon=True
        )
        process.start()
        inbox.close()
        outbox.close()
        return process, WorkerPipe(to_worker, from_worker)

    async def run(self, data: bytes, quality: int, estimate: int, digest: bool) -> Compressed:
        """The image compressed; estimate: its decode's memory as the processor reckons it
        (0 if unknown), admitted before the worker gets the image; digest: whether the
        worker also hashes the source (Compressed.source_sha256). Cancelling the call kills
        the worker, so its CPU is free at once."""
        for attempt in range(1, ATTEMPTS + 1):
            if self._stale:
                await self._replace()
            try:
                return await self._attempt(data, quality, estimate, digest)
            except WorkerGone:
                self._stale = True
            except asyncio.CancelledError:
                self._kill()
                metrics.CODEC_RESTARTS.labels("cancelled").inc()
                raise
            exitcode = await self._replace()
            if exitcode == -signal.SIGXCPU:
                metrics.CODEC_RESTARTS.labels("cpu_budget").inc()
                raise OverCpuBudget(
                    f"decoding the image took more than the codec CPU budget of "
                    f"{self._limits.cpu_seconds} s"
                )
            metrics.CODEC_RESTARTS.labels("died").inc()
            if attempt == ATTEMPTS:
                raise DecoderCrashed(f"the codec worker died on the image twice (exit {exitcode})")
        raise AssertionError("unreachable")

    async def _attempt(self, data: bytes, quality: int, estimate: int, digest: bool) -> Compressed:
        """One image in the current worker: admitted for estimate, then for what it asks
        beyond that (a size), then the JPEG or the error it raised, which is raised here."""
        admitted = 0
        try:
            if estimate:
                await self._admit(estimate)
                admitted = estimate
            await self._pipe.send((data, quality, admitted, digest))
            reply = await self._pipe.receive()
            while type(reply) is int:
                if admitted:
                    self._budget.release(admitted)
                    admitted = 0
                await self._admit(reply)
                admitted = reply
                await self._pipe.send(True)
                reply = await self._pipe.receive()
        finally:
            self.decoding = False
            if admitted:
                self._budget.release(admitted)
        if isinstance(reply, BaseException):
            raise reply
        if not isinstance(reply, Compressed):
            raise TypeError(f"a codec worker answered {type(reply).__name__}")
        return reply

    async def _admit(self, size: int) -> None:
        await self._budget.acquire(size)
        self.decoding = True

    def _kill(self) -> None:
        self._stale = True
        self._process.kill()

    async def _replace(self) -> int | None:
        """Reaps the worker (killing it if need be) and starts another; the old one's exit
        code. It runs on when the caller is cancelled; a caller meanwhile waits for it."""
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.ensure_future(asyncio.to_thread(self._restart))
        return await asyncio.shield(self._replacing)

    def _restart(self) -> int | None:
        """Blocking: runs in a thread."""
        old = self._process
        old.kill()
        old.join()
        self._pipe.close()
        self._process, self._pipe = self._start()
        self._stale = False
        return old.exitcode

    def close(self) -> None:
        """Blocking: closes the pipes (the worker exits at EOF) and waits for the worker."""
        self._pipe.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


class CodecPool:
    """`workers` codec worker processes; compress() waits for an idle one, and a large
    decode for one of the workers large decodes may take."""

    def __init__(self, workers: int, limits: DecodeSettings) -> None:
        context = multiprocessing.get_context("forkserver")
        # Imported once in the fork server, not in each worker as it starts: the console
        # script's module (a worker runs the script again, whose imports are then done;
        # "__main__" itself is no use here, as the fork server never gets the main module's
        # path to preload it) and the decoders' Pillow plugins. A worker starts in about
        # 30 ms instead of 0.5-1 s.
        context.set_forkserver_preload(["imgpipe.processor.main", __name__, *PILLOW_PLUGINS])
        self.budget = MemoryBudget(limits.memory_bytes)
        self.workers = [CodecWorker(context, limits, self.budget) for _ in range(workers)]
        self._idle: asyncio.Queue[CodecWorker] = asyncio.Queue()
        for worker in self.workers:
            self._idle.put_nowait(worker)
        self._large = asyncio.Semaphore(max(1, workers - 1))

    async def compress(
        self, data: bytes, quality: int, estimate: int | None = None, *, digest: bool = False
    ) -> Compressed:
        """The image as a JPEG, from a worker; cancelling the call kills that worker.
        estimate: the decode's memory, when known before (compress.check_header); digest:
        the worker hashes the source too, where the processor would need a thread to keep
        its event loop going (Compressed.source_sha256)."""
        if estimate is not None and self.budget.large(estimate):
            async with self._large:
                return await self._compress(data, quality, estimate, digest)
        return await self._compress(data, quality, estimate or 0, digest)

    async def _compress(self, data: bytes, quality: int, estimate: int, digest: bool) -> Compressed:
        worker = await self._idle.get()
        try:
            return await worker.run(data, quality, estimate, digest)
        finally:
            self._idle.put_nowait(worker)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        for worker in self.workers:
            worker.close()
