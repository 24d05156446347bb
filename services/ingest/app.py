"""Ingest's lifecycle: start, serve, and on stop drain within the grace period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import asyncpg
from aiohttp import web

from imgpipe.common.auth import AuthInterceptor, TokenAuth
from imgpipe.common.config import split_host_port
from imgpipe.common.grpc_server import GrpcServer
from imgpipe.common.storage import open_storage
from imgpipe.ingest import postgres
from imgpipe.ingest.dispatcher import Dispatcher, processor_channel
from imgpipe.ingest.http_app import build_http_app
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.outbox import RESULT_CSV, WEBHOOK, OutboxWorker, ResultCsvWriter
from imgpipe.ingest.rate_limit import RateLimiter
from imgpipe.ingest.request_service import RequestService
from imgpipe.ingest.servicer import IngestServicer
from imgpipe.ingest.settings import Settings
from imgpipe.ingest.store import CONNECTION_ERRORS, Store
from imgpipe.ingest.webhooks import WebhookSender
from imgpipe.v1 import ingest_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "imgpipe.v1.IngestService"


async def connect_with_retry(dsn: str, attempts: int = 30) -> asyncpg.Pool:
    for attempt in range(1, attempts + 1):
        try:
            return await postgres.create_pool(dsn)
        except CONNECTION_ERRORS as exc:
            if attempt == attempts:
                raise
            log.warning("database not reachable yet", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


class IngestApp:
    """Everything one ingest process runs; tests start it in-process on port 0."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest-io")
        self.storage = open_storage(
            settings.common.storage_url, settings.common.s3, settings.common.public_base_url
        )
        self.notifier = Notifier(settings.database_url)
        self.auth = TokenAuth(settings.auth_tokens)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False

    async def start(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.storage.ensure_ready)
        self.pool = await connect_with_retry(settings.database_url)
        async with self.pool.acquire() as conn:
            await postgres.migrate(conn)
        self.store = Store(self.pool)
        self.channel = processor_channel(settings.processor_target)
        self.dispatcher = Dispatcher(
            self.store, self.channel, self.notifier, settings.owner, settings.dispatch
        )
        self.webhook_session = aiohttp.ClientSession(
            connector=settings.address_policy.connector(limit=50),
            auto_decompress=False,
        )
        result_csv = OutboxWorker(
            self.store,
            self.notifier,
            RESULT_CSV,
            ResultCsvWriter(self.store, self.storage, self.executor),
        )
        webhooks = OutboxWorker(
            self.store,
            self.notifier,
            WEBHOOK,
            WebhookSender(
                self.store, self.webhook_session, settings.webhooks, settings.address_policy
            ),
        )
        self._tasks = [
            asyncio.create_task(self.notifier.run(), name="notifier"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(result_csv.run(), name="result-csv"),
            asyncio.create_task(webhooks.run(), name="webhooks"),
        ]
        self.requests = RequestService(
            self.store,
            self.notifier,
            settings.csv_limits,
            settings.watch,
            RateLimiter(settings.submit_rate_per_minute, settings.submit_burst),
            settings.address_policy,
        )
        servicer = IngestServicer(self.requests)
        self.grpc = GrpcServer(
            settings.common.grpc_addr,
            [(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer, SERVICE_NAME)],
            settings=settings.common.grpc,
            interceptors=[AuthInterceptor(self.auth)],
        )
        await self.grpc.start()
        http = build_http_app(
            self.requests,
            self.auth,
            self.storage,
            self.executor,
            lambda: self.ready,
            max_csv_bytes=settings.csv_limits.max_bytes,
        )
        self._http_runner = web.AppRunner(http, access_log=None)
        await self._http_runner.setup()
        host, port = split_host_port(settings.common.http_addr)
        site = web.TCPSite(self._http_runner, host, port)
        await site.start()
        self.http_port = self._http_runner.addresses[0][1]
        await self.grpc.set_serving(True)
        self._ready = True
        self._db_watch = asyncio.create_task(self._watch_database(), name="db-health")
        log.info(
            "ingest serving",
            extra={"grpc_port": self.grpc.port, "http_port": self.http_port},
        )

    @property
    def ready(self) -> bool:
        return self._ready

    async def _watch_database(self, interval: float = 2.0) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.pool.fetchval("SELECT 1", timeout=interval)
                reachable = True
            except CONNECTION_ERRORS:  # TimeoutError is an OSError
                reachable = False
            if reachable != self._ready:
                log.warning("database reachable" if reachable else "database unreachable")
                self._ready = reachable
                await self.grpc.set_serving(reachable)

    async def stop(self) -> None:
        grace = self.settings.common.grace_seconds
        self._db_watch.cancel()  # health stays NOT_SERVING from here on
        self._ready = False
        await self.grpc.set_serving(False)
        self.dispatcher.stop_claiming()
        await asyncio.gather(self.grpc.stop(grace), self.dispatcher.drain(grace))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.channel.close(None)
        await self.webhook_session.close()
        await self.pool.close()
        await self._http_runner.cleanup()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("ingest stopped")
