"""`imgpipe-processor`: the processor's parts, wired onto the common service runner.

The HTTP side, the codec worker pool, storage, the fetcher and the gRPC server start in
that order and stop in reverse: not serving, drain within the grace period, close pools.
Tests run the very same ProcessorApp in-process.
"""

from __future__ import annotations

import asyncio
import sys

from imgpipe.common.config import process_env
from imgpipe.common.errors import SettingsError
from imgpipe.common.logs import setup_logging
from imgpipe.common.service import Service, run
from imgpipe.common.storage import open_storage
from imgpipe.processor.codec_pool import CodecPool
from imgpipe.processor.compress import limit_pillow
from imgpipe.processor.fetch import Fetcher
from imgpipe.processor.pipeline import Pipeline
from imgpipe.processor.servicer import SERVICE_NAME, ProcessorServicer
from imgpipe.processor.settings import Settings
from imgpipe.v1 import processor_pb2_grpc


class ProcessorApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service("processor", settings.common)

    @property
    def grpc_port(self) -> int:
        return self.service.grpc_port

    @property
    def http_port(self) -> int:
        return self.service.http_port

    async def start(self) -> None:
        """Starts every part; call stop() afterwards even when this raises."""
        settings, service = self.settings, self.service
        await service.serve_http()
        codec = CodecPool(settings.workers, settings.decode)
        service.on_stop("codec", codec.close)
        # Storage calls but the put wait on the network in threads of their own, one per call
        # in flight, so they never hold up compression nor wait behind it.
        storage_executor = service.executor("storage", settings.max_in_flight)
        common = settings.common
        storage = open_storage(common.storage_url, common.s3, common.public_base_url)
        service.on_stop("storage session", storage.close)
        await asyncio.get_running_loop().run_in_executor(storage_executor, storage.ensure_ready)
        fetcher = Fetcher(settings.fetch, max_connections=settings.max_in_flight)
        service.on_stop("fetcher", fetcher.close)
        pipeline = Pipeline(
            fetcher,
            storage,
            codec=codec,
            storage_executor=storage_executor,
            decode=settings.decode,
            max_in_flight=settings.max_in_flight,
        )
        servicer = ProcessorServicer(pipeline)
        await service.serve_grpc(
            [(processor_pb2_grpc.add_ProcessorServiceServicer_to_server, servicer, SERVICE_NAME)]
        )
        await service.start_serving()

    async def stop(self) -> None:
        await self.service.stop()


def main() -> None:
    try:
        settings = Settings.from_env(process_env())
    except SettingsError as exc:
        sys.exit(f"imgpipe-processor: {exc}")
    setup_logging(settings.common.log_level)
    limit_pillow(settings.decode.max_pixels)  # headers are checked here too
    run(ProcessorApp(settings))
