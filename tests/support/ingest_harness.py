"""An in-process ingest on ephemeral ports, as the integration tests start it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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
async def running_ingest(env: dict[str, str]) -> AsyncIterator[RunningIngest]:
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
        yield RunningIngest(app, ingest_pb2_grpc.IngestServiceStub(channel), channel)
    finally:
        await channel.close(None)
        await app.stop()


@contextlib.asynccontextmanager
async def running_processor(env: dict[str, str]) -> AsyncIterator[str]:
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


@contextlib.asynccontextmanager
async def running_pipeline(
    database_url: str,
    objects: Path,
    ingest_env: dict[str, str] | None = None,
    processor_env: dict[str, str] | None = None,
) -> AsyncIterator[RunningIngest]:
    """An in-process processor and an ingest that calls it, storing into objects/."""
    storage = {"IMGPIPE_STORAGE_URL": objects.as_uri()}
    async with running_processor({**storage, **(processor_env or {})}) as target:
        env = {
            **storage,
            "DATABASE_URL": database_url,
            "IMGPIPE_PROCESSOR_TARGET": target,
            **(ingest_env or {}),
        }
        async with running_ingest(env) as running:
            yield running
