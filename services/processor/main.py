"""The processor process: start, serve, and on SIGTERM drain and stop.

ProcessorApp holds the lifecycle, so tests run the very same parts in-process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

from aiohttp import web

from imgpipe.common.config import process_env, split_host_port
from imgpipe.common.errors import SettingsError
from imgpipe.common.grpc_server import GrpcServer, stop_event_on_signals
from imgpipe.common.logs import setup_logging
from imgpipe.common.storage import open_storage
from imgpipe.processor.codec_pool import CodecPool
from imgpipe.processor.fetch import Fetcher
from imgpipe.processor.http_app import make_http_app
from imgpipe.processor.pipeline import Pipeline
from imgpipe.processor.servicer import SERVICE_NAME, ProcessorServicer
from imgpipe.processor.settings import Settings
from imgpipe.v1 import processor_pb2_grpc

log = logging.getLogger(__name__)


class ProcessorApp:
    """Executors, storage, HTTP side, fetcher and gRPC server, started in that order and
    stopped in reverse: health NOT_SERVING, drain within the grace period, close pools."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serving = False
        self.grpc_port = 0
        self.http_port = 0
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        """Starts every part; call stop() afterwards even when this raises."""
        settings, stack = self.settings, self._stack
        codec = CodecPool(settings.workers, settings.decode)
        stack.push_async_callback(codec.close)
        # Storage calls wait on the network: their own threads, one per call in flight, so
        # they never hold up compression nor wait behind it.
        storage_executor = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="storage")
        stack.push_async_callback(asyncio.to_thread, storage_executor.shutdown)
        common = settings.common
        storage = open_storage(common.storage_url, common.s3, common.public_base_url)
        await asyncio.get_running_loop().run_in_executor(storage_executor, storage.ensure_ready)

        runner = web.AppRunner(make_http_app(lambda: self.serving), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        host, port = split_host_port(common.http_addr)
        await web.TCPSite(runner, host, port).start()
        self.http_port = int(runner.addresses[0][1])

        fetcher = Fetcher(settings.fetch, max_connections=settings.max_in_flight)
        stack.push_async_callback(fetcher.close)
        pipeline = Pipeline(
            fetcher,
            storage,
            codec=codec,
            storage_executor=storage_executor,
            max_in_flight=settings.max_in_flight,
        )
        server = GrpcServer(
            common.grpc_addr,
            [
                (
                    processor_pb2_grpc.add_ProcessorServiceServicer_to_server,
                    ProcessorServicer(pipeline),
                    SERVICE_NAME,
                )
            ],
            settings=common.grpc,
        )
        self.grpc_port = server.port
        stack.push_async_callback(server.stop, common.grace_seconds)
        await server.start()
        await server.set_serving(True)
        self.serving = True

    async def stop(self) -> None:
        self.serving = False
        await self._stack.aclose()


async def serve(settings: Settings) -> None:
    stop = stop_event_on_signals()
    app = ProcessorApp(settings)
    try:
        await app.start()
        log.info(
            "processor serving", extra={"grpc_port": app.grpc_port, "http_port": app.http_port}
        )
        await stop.wait()
        log.info("processor stopping", extra={"grace_seconds": settings.common.grace_seconds})
    finally:
        await app.stop()
    log.info("processor stopped")


def main() -> None:
    try:
        settings = Settings.from_env(process_env())
    except SettingsError as exc:
        sys.exit(f"imgpipe-processor: {exc}")
    setup_logging(settings.common.log_level)
    try:
        asyncio.run(serve(settings))
    except Exception:
        log.exception("processor failed")
        sys.exit(1)
