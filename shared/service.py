"""The one service runner: the lifecycle both services share.

A Service starts a process's parts one at a time and puts each one's stop on an exit
stack, so that stopping is the exact reverse of starting, from any point: a start that
fails part-way stops what had started and no more. It owns what every service has: the
gRPC server (health, reflection, TLS, the error table), the HTTP listener with the
operations routes (/healthz, /readyz, /metrics), readiness, the grace period, thread
pools and background tasks, and the signals. A service's app wires only its own parts.

Each part logs `part started` and `part stopped` with its name, so the order shows in the
logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any, Protocol, TypeVar

import grpc
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from imgpipe.common import tracing
from imgpipe.common.config import CommonSettings, split_host_port
from imgpipe.common.grpc_server import GrpcServer, GrpcService

log = logging.getLogger(__name__)

T = TypeVar("T")

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def add_ops_routes(app: web.Application, is_ready: Callable[[], bool]) -> None:
    """/healthz: 200 while the process is up; /readyz: 200 while serving, else 503 (both
    JSON, {"status": ...}); /metrics: the default Prometheus registry."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready = is_ready()
        return web.json_response(
            {"status": "ready" if ready else "not ready"}, status=200 if ready else 503
        )

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class Service:
    """One process's parts, started in order and stopped in reverse."""

    def __init__(self, name: str, settings: CommonSettings) -> None:
        self.name = name
        self.settings = settings
        self.ready = False
        self.grpc: GrpcServer | None = None
        self.http_port = 0
        self.http_app: web.Application | None = None
        self._stack = AsyncExitStack()
        self._deadline: float | None = None

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc is not None else 0

    @property
    def stopping(self) -> bool:
        return self._deadline is not None

    def time_left(self) -> float:
        """Seconds left of the grace period once stopping began; the whole of it before."""
        if self._deadline is None:
            return self.settings.grace_seconds
        return max(0.0, self._deadline - time.monotonic())

    # -- parts -------------------------------------------------------------------------------

    def on_stop(self, part: str, stop: Callable[[], Awaitable[object]]) -> None:
        """Records a part that has started; `stop` runs when stopping reaches it."""
        log.info("part started", extra={"service": self.name, "part": part})

        async def stopping() -> None:
            try:
                await stop()
            finally:
                log.info("part stopped", extra={"service": self.name, "part": part})

        self._stack.push_async_callback(stopping)

    def executor(self, part: str, workers: int) -> ThreadPoolExecutor:
        """A thread pool, shut down (without waiting for queued work) when stopping."""
        pool = ThreadPoolExecutor(workers, thread_name_prefix=part)

        async def shutdown() -> None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

        self.on_stop(part, shutdown)
        return pool

    def background(self, part: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task that runs until stopping reaches it, then is cancelled."""
        task = asyncio.create_task(work, name=part)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.on_stop(part, cancel)
        return task

    async def serve_grpc(
        self,
        services: Sequence[GrpcService],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
    ) -> GrpcServer:
        """Listens on the gRPC address (TLS when configured); on stop: NOT_SERVING, then
        calls in flight get what is left of the grace period."""
        server = GrpcServer(
            self.settings.grpc_addr,
            services,
            settings=self.settings.grpc,
            interceptors=interceptors,
        )
        await server.start()
        self.grpc = server
        self.on_stop("grpc", lambda: server.stop(self.time_left()))
        return server

    async def serve_http(self, app: web.Application | None = None) -> None:
        """Listens on the HTTP address with the operations routes added to `app` (alone
        when None); on stop, requests in hand get what is left of the grace period."""
        app = app or web.Application()
        add_ops_routes(app, lambda: self.ready)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.grace_seconds)
        await runner.setup()
        try:
            host, port = split_host_port(self.settings.http_addr)
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.http_port = int(runner.addresses[0][1])
        self.http_app = app
        self.on_stop("http", runner.cleanup)

    async def set_serving(self, serving: bool) -> None:
        """Readiness (/readyz) and gRPC health together; never serving again once stopping."""
        serving = serving and not self.stopping
        self.ready = serving
        if self.grpc is not None:
            await self.grpc.set_serving(serving)

    async def start_serving(self) -> None:
        """The last step of a start: ready; the first of a stop: not ready."""
        await self.set_serving(True)
        self.on_stop("serving", lambda: self.set_serving(False))
        log.info(
            f"{self.name} serving",
            extra={"grpc_port": self.grpc_port, "http_port": self.http_port},
        )

    async def stop(self) -> None:
        """Stops every part that started, in reverse order, within the grace period."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.grace_seconds
            log.info(f"{self.name} stopping", extra={"grace_seconds": self.settings.grace_seconds})
        self.ready = False
        await self._stack.aclose()


class App(Protocol):
    """What `run` runs: a service's parts, wired onto a Service."""

    service: Service

    async def start(self) -> None: ...


def stop_event_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(app: App) -> int:
    stop = stop_event_on_signals()
    service = app.service
    starting = asyncio.create_task(app.start(), name="start")
    signalled = asyncio.create_task(stop.wait(), name="signals")
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal during the start: stop what has started
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        if (error := starting.exception()) is not None:
            log.error(f"{service.name} failed to start", exc_info=error)
            return 1
        await signalled
        return 0
    finally:
        signalled.cancel()
        await service.stop()
        log.info(f"{service.name} stopped")


def run(app: App) -> None:
    """Runs app on uvloop's event loop until SIGTERM or SIGINT; exits 0 after a clean
    stop, 1 when it could not start (whatever had started is stopped first). Traces (when
    the OTEL_* settings ask for them) are on for the whole run and flushed at its end."""
    service = app.service
    tracing.start_tracing(service.settings.tracing, f"imgpipe-{service.name}")
    try:
        code = uvloop.run(_serve(app))
    finally:
        tracing.stop_tracing()
    sys.exit(code)
