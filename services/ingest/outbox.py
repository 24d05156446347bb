"""Outbox workers: work that must happen once a request is done — writing its result CSV,
calling its webhook — kept as rows, so a crash delays it but never loses it.

One worker per kind, each claiming due rows under a lease (FOR UPDATE SKIP LOCKED), so any
number of ingest replicas share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from concurrent.futures import Executor
from typing import BinaryIO, Protocol, cast

from opentelemetry.context import Context

from imgpipe.common import tracing
from imgpipe.common.backoff import Backoff
from imgpipe.common.errors import StorageError
from imgpipe.common.public_text import public_text
from imgpipe.common.storage import Storage
from imgpipe.common.waiting import wait_event
from imgpipe.ingest.errors import DatabaseUnavailable
from imgpipe.ingest.model import result_csv_key
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.result_csv import result_csv_lines
from imgpipe.ingest.store import OutboxItem, Store

log = logging.getLogger(__name__)

RESULT_CSV = "result_csv"
WEBHOOK = "webhook"
# Waits between attempts to write a result CSV: 2, 4, 8, ... up to a minute.
RESULT_CSV_RETRY = Backoff(first=2.0, cap=60.0, jitter=0.0)
# Bytes of a result CSV kept in memory while it is written; the rest goes to a file.
SPOOL_IN_MEMORY = 1024 * 1024

# Attempts at one outbox item before it is given up (and says so in GetStatus).
MAX_ATTEMPTS = 10


class Handler(Protocol):
    async def __call__(self, item: OutboxItem) -> None:
        """Does the item's work; on a failure that may pass, schedules a retry."""

    async def give_up(self, item: OutboxItem) -> None:
        """Ends the item for good after MAX_ATTEMPTS, with its last error."""


class OutboxWorker:
    """Claims due items of one kind and runs up to `concurrency` of them at once."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        kind: str,
        handle: Handler,
        *,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
        max_attempts: int = MAX_ATTEMPTS,
        concurrency: int = 1,
    ) -> None:
        self._store = store
        self._wake = notifier.outbox[kind]
        self._kind = kind
        self._handle = handle
        self._poll = poll_interval
        self._lease = lease_seconds
        self._max_attempts = max_attempts
        self._concurrency = concurrency
        self._running: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._claim_forever()
        finally:
            for task in self._running:
                task.cancel()

    async def _claim_forever(self) -> None:
        while True:
            if len(self._running) >= self._concurrency:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            try:
                item = await self._store.claim_outbox(self._kind, self._lease)
            except DatabaseUnavailable:
                item = None
            except Exception:
                log.exception("outbox claim failed unexpectedly", extra={"kind": self._kind})
                item = None
            if item is not None:
                task = asyncio.create_task(self._one(item))
                self._running.add(task)
                task.add_done_callback(self._done)
                continue
            await wait_event(self._wake, self._poll)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slot_freed.set()

    async def _one(self, item: OutboxItem) -> None:
        try:
            with tracing.TRACER.start_as_current_span(
                self._kind.replace("_", " "),
                context=Context(),  # a trace of its own per item
                attributes={
                    tracing.REQUEST_ID_ATTRIBUTE: str(item.request_id),
                    "imgpipe.outbox.attempt": item.attempts,
                },
            ):
                await self._one_traced(item)
        except Exception:
            # The row's lease runs out and it is tried again.
            log.exception("outbox item failed", extra={"kind": self._kind})

    async def _one_traced(self, item: OutboxItem) -> None:
        if item.attempts > self._max_attempts:
            await self._handle.give_up(item)
            log.warning(
                "outbox item given up",
                extra={"kind": self._kind, "request_id": str(item.request_id)},
            )
        else:
            await self._handle(item)


class ResultCsvWriter:
    """Writes the result CSV to storage, a product at a time through a spooled file, then
    makes the request terminal."""

    def __init__(self, store: Store, storage: Storage, executor: Executor) -> None:
        self._store = store
        self._storage = storage
        self._executor = executor

    async def __call__(self, item: OutboxItem) -> None:
        extra = {"request_id": str(item.request_id)}
        key = result_csv_key(item.request_id, item.delivery_id)
        loop = asyncio.get_running_loop()
        try:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
                async for line in result_csv_lines(
                    self._store, item.request_id, self._storage.plain_url
                ):
                    spool.write(line)
                length = spool.tell()
                spool.seek(0)
                source = cast(BinaryIO, spool)
                await loop.run_in_executor(
                    self._executor, self._storage.put_file, key, source, length, "text/csv"
                )
            await self._store.finish_request(item, key)
            log.info("result CSV written", extra=extra)
        except (StorageError, DatabaseUnavailable) as exc:
            delay = RESULT_CSV_RETRY.delay(item.attempts)
            log.warning("result CSV failed; will retry", extra={**extra, "error": str(exc)})
            with contextlib.suppress(DatabaseUnavailable):
                await self._store.retry_outbox(item, delay, public_text(str(exc)))

    async def give_up(self, item: OutboxItem) -> None:
        error = f"gave up after {item.attempts - 1} attempts: {item.last_error or 'no error'}"
        await self._store.finish_request(item, "", gave_up=error)
