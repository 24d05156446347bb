"""An in-process ingest on ephemeral ports, as the integration tests start it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from imgpipe.ingest.app import IngestApp
from imgpipe.ingest.settings import Settings
from imgpipe.processor.main import ProcessorApp
from imgpipe.processor.settings import Settings as ProcessorSettings
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc
from support.batch import TERMINAL
from support.eventually import eventually

# A processor target where nothing listens.
UNREACHABLE = "127.0.0.1:9"
FAST = {
    "IMGPIPE_POLL_INTERVAL": "0.2",
    "IMGPIPE_SWEEP_INTERVAL": "0.2",
    "IMGPIPE_WATCH_POLL_INTERVAL": "0.5",
    "IMGPIPE_RETRY_BASE_SECONDS": "0.05",
    "IMGPIPE_RETRY_CAP_SECONDS": "0.2",
    "IMGPIPE_GRACE_SECONDS": "5",
}


@dataclass
class RunningIngest:
    app: IngestApp
    stub: ingest_pb2_grpc.IngestServiceAsyncStub
    channel: grpc.aio.Channel
    processor_target: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc.port}"

    async def status(self, request_id: str) -> ingest_pb2.GetStatusResponse:
        return await self.stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id))

    async def terminal_status(
        self, request_id: str, *, with_result: bool = False
    ) -> ingest_pb2.GetStatusResponse:
        """The status once the request is terminal (and, with_result, its result CSV
        written: a cancel makes a request terminal before that)."""
        return await eventually(
            lambda: self.status(request_id),
            lambda s: s.state in TERMINAL and (s.result_csv_url != "" or not with_result),
            what=f"request {request_id} terminal",
            within=60,
        )


@contextlib.asynccontextmanager
async def running_ingest(env: Mapping[str, str]) -> AsyncIterator[RunningIngest]:
    settings = Settings.from_env(
        {
            "IMGPIPE_GRPC_ADDR": "127.0.0.1:0",
            "IMGPIPE_HTTP_ADDR": "127.0.0.1:0",
            "IMGPIPE_LOG_LEVEL": "WARNING",
            **FAST,
            **env,
        }
    )
    app = IngestApp(settings)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc.port}")
    try:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        yield RunningIngest(app, stub, channel, settings.processor_target)
    finally:
        await channel.close(None)
        await app.stop()


@contextlib.asynccontextmanager
async def running_processor(env: Mapping[str, str]) -> AsyncIterator[str]:
    """An in-process processor on an ephemeral port; yields its gRPC target."""
    settings = ProcessorSettings.from_env(
        {
            "IMGPIPE_GRPC_ADDR": "127.0.0.1:0",
            "IMGPIPE_HTTP_ADDR": "127.0.0.1:0",
            "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
            "IMGPIPE_LOG_LEVEL": "WARNING",
            **env,
        }
    )
    app = ProcessorApp(settings)
    try:
        await app.start()
        yield f"127.0.0.1:{app.grpc_port}"
    finally:
        await app.stop()


class IngestFactory:
    """Starts in-process ingests for one test, on its database, storing into its objects/
    folder; each with a processor of its own beside it when asked, otherwise with a
    processor target where nothing listens (images are retried, never processed). All
    are stopped, in reverse order, when the test ends: the `start_ingest` fixture."""

    def __init__(self, stack: contextlib.AsyncExitStack, database_url: str, objects: Path):
        self._stack = stack
        self._defaults = {
            "DATABASE_URL": database_url,
            "IMGPIPE_STORAGE_URL": objects.as_uri(),
            "IMGPIPE_PROCESSOR_TARGET": UNREACHABLE,
        }

    async def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        processor: bool = False,
        processor_env: Mapping[str, str] | None = None,
    ) -> RunningIngest:
        settings = {**self._defaults, **(env or {})}
        if processor:
            storage = {"IMGPIPE_STORAGE_URL": settings["IMGPIPE_STORAGE_URL"]}
            target = await self._stack.enter_async_context(
                running_processor({**storage, **(processor_env or {})})
            )
            settings["IMGPIPE_PROCESSOR_TARGET"] = target
        return await self._stack.enter_async_context(running_ingest(settings))
