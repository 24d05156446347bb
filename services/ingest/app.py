"""Ingest's parts, wired onto the common service runner (imgpipe.common.service).

Started in this order and stopped in exactly the reverse: the I/O threads, storage, the
database pool (migrated), the processor channel, the webhook session, the LISTEN
connection, then the gRPC and HTTP sides, then the workers (dispatcher, result CSVs,
webhooks) and the database watch, and last "serving". So a stop first reports not
serving, lets the workers hand back what they hold, drains HTTP and gRPC, and only then
closes the pool they used; a start that fails part-way stops what had started.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import asyncpg

from imgpipe.common.auth import AuthInterceptor, TokenAuth
from imgpipe.common.backoff import Backoff
from imgpipe.common.service import Service
from imgpipe.common.storage import open_storage
from imgpipe.ingest import postgres
from imgpipe.ingest.admission import ByteBudget, SubmitAdmission
from imgpipe.ingest.dispatcher import Dispatcher, processor_channel
from imgpipe.ingest.http_app import build_http_app
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.outbox import RESULT_CSV, WEBHOOK, OutboxWorker, ResultCsvWriter
from imgpipe.ingest.rate_limit import RateLimiter
from imgpipe.ingest.request_service import RequestService
from imgpipe.ingest.retention import ObjectPurger, RetentionSweeper
from imgpipe.ingest.servicer import SERVICE, IngestServicer, add_ingest_service
from imgpipe.ingest.settings import Settings
from imgpipe.ingest.store import CONNECTION_ERRORS, Store
from imgpipe.ingest.webhook_secrets import WebhookSecrets
from imgpipe.ingest.webhooks import WebhookSender

log = logging.getLogger(__name__)

# Waits between attempts to reach the database at start: some 30 s in all.
CONNECT_RETRY = Backoff(first=1.0, cap=1.0, jitter=0.0)
CONNECT_ATTEMPTS = 30
DATABASE_WATCH_INTERVAL = 2.0  # seconds


async def connect_with_retry(dsn: str, attempts: int = CONNECT_ATTEMPTS) -> asyncpg.Pool:
    for attempt in range(1, attempts + 1):
        try:
            return await postgres.create_pool(dsn)
        except CONNECTION_ERRORS as exc:
            if attempt == attempts:
                raise
            log.warning("database not reachable yet", extra={"error": str(exc)})
            await asyncio.sleep(CONNECT_RETRY.delay(attempt))
    raise AssertionError("unreachable")


class IngestApp:
    """Everything one ingest process runs; tests start it in-process on port 0."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service("ingest", settings.common)
        self.storage = open_storage(
            settings.common.storage_url, settings.common.s3, settings.common.public_base_url
        )
        self.notifier = Notifier(settings.database_url)
        self.auth = TokenAuth(settings.tenants.credentials())

    @property
    def http_port(self) -> int:
        return self.service.http_port

    async def start(self) -> None:
        """Starts every part; call stop() afterwards even when this raises."""
        settings, service = self.settings, self.service
        self.executor = service.executor("ingest-io", 8)
        await asyncio.get_running_loop().run_in_executor(self.executor, self.storage.ensure_ready)
        self.pool = await connect_with_retry(settings.database_url)
        service.on_stop("database-pool", self.pool.close)
        async with self.pool.acquire() as conn:
            await postgres.migrate(conn)
        self.store = Store(self.pool)
        self.webhook_secrets = WebhookSecrets(self.store, settings.webhooks.secret)
        channel = processor_channel(settings.processor_target, settings.processor_tls)
        service.on_stop("processor-channel", lambda: channel.close(None))
        webhook_session = aiohttp.ClientSession(
            connector=settings.address_policy.connector(limit=settings.webhooks.concurrency),
            auto_decompress=False,
        )
        service.on_stop("webhook-session", webhook_session.close)
        service.background("notifier", self.notifier.run())

        purger = ObjectPurger(self.storage, self.executor)
        self.requests = RequestService(
            self.store,
            self.notifier,
            settings.csv_limits,
            settings.watch,
            RateLimiter(self.store),
            settings.tenants,
            self.webhook_secrets,
            settings.address_policy,
            ByteBudget(settings.submit_bytes_in_flight),
            self.storage,
            purger,
            settings.retention.final_purge_after,
        )
        self.grpc = await service.serve_grpc(
            [
                (
                    add_ingest_service,
                    IngestServicer(self.requests),
                    SERVICE,
                )
            ],
            interceptors=[
                AuthInterceptor(self.auth),
                SubmitAdmission(
                    self.requests.submit_budget, settings.common.grpc.max_message_bytes
                ),
            ],
        )
        await service.serve_http(
            build_http_app(
                self.requests,
                self.auth,
                self.storage,
                self.executor,
                max_csv_bytes=settings.csv_limits.max_bytes,
            )
        )

        self.dispatcher = Dispatcher(
            self.store,
            channel,
            self.notifier,
            settings.owner,
            settings.dispatch,
            settings.tenants.shares(settings.dispatch.host_max_in_flight),
        )
        service.background("dispatcher", self.dispatcher.run())
        service.on_stop("dispatcher-drain", self._drain)
        result_csv = ResultCsvWriter(self.store, self.storage, self.executor)
        attempts = settings.outbox_max_attempts
        service.background(
            "result-csv",
            OutboxWorker(
                self.store, self.notifier, RESULT_CSV, result_csv, max_attempts=attempts
            ).run(),
        )
        sender = WebhookSender(
            self.store,
            webhook_session,
            settings.webhooks,
            settings.address_policy,
            self.storage.url_for,
            self.webhook_secrets,
        )
        service.background(
            "webhooks",
            OutboxWorker(
                self.store,
                self.notifier,
                WEBHOOK,
                sender,
                max_attempts=attempts,
                concurrency=settings.webhooks.concurrency,
                lease_seconds=settings.webhooks.lease_seconds,
            ).run(),
        )
        self.retention = RetentionSweeper(self.store, purger, settings.retention)
        service.background("retention", self.retention.run())
        service.background("database-watch", self._watch_database())
        await service.start_serving()

    @property
    def ready(self) -> bool:
        return self.service.ready

    async def _drain(self) -> None:
        """Calls in flight get what is left of the grace period; the rest is handed back.
        The dispatcher's task (recorder and sweeper) is cancelled next, by its own part."""
        await self.dispatcher.drain(self.service.time_left())

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached."""
        interval = DATABASE_WATCH_INTERVAL
        while True:
            await asyncio.sleep(interval)
            try:
                await self.pool.fetchval("SELECT 1", timeout=interval)
                reachable = True
            except CONNECTION_ERRORS:  # TimeoutError is an OSError
                reachable = False
            if reachable != self.service.ready:
                log.warning("database reachable" if reachable else "database unreachable")
                await self.service.set_serving(reachable)

    async def stop(self) -> None:
        await self.service.stop()
