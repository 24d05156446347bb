"""Outbox workers: work that must happen once a request is done — writing its result CSV,
calling its webhook — kept as rows, so a crash delays it but never loses it.

One worker per kind, each claiming due rows under a lease (FOR UPDATE SKIP LOCKED), so any
number of ingest replicas share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from imgpipe.common.backoff import Backoff
from imgpipe.common.errors import StorageError
from imgpipe.common.storage import Storage
from imgpipe.common.waiting import wait_event
from imgpipe.ingest.csv_format import ResultRow, result_csv
from imgpipe.ingest.errors import DatabaseUnavailable
from imgpipe.ingest.model import ImageState, ImageStatus, result_csv_key
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.store import OutboxItem, Store

log = logging.getLogger(__name__)

RESULT_CSV = "result_csv"
WEBHOOK = "webhook"
# Waits between attempts to write a result CSV: 2, 4, 8, ... up to a minute.
RESULT_CSV_RETRY = Backoff(first=2.0, cap=60.0, jitter=0.0)

Handler = Callable[[OutboxItem], Awaitable[None]]


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        kind: str,
        handle: Handler,
        *,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
    ) -> None:
        self._store = store
        self._wake = notifier.outbox[kind]
        self._kind = kind
        self._handle = handle
        self._poll = poll_interval
        self._lease = lease_seconds

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                item = await self._store.claim_outbox(self._kind, self._lease)
            except DatabaseUnavailable:
                item = None
            except Exception:
                log.exception("outbox claim failed unexpectedly", extra={"kind": self._kind})
                item = None
            if item is not None:
                try:
                    await self._handle(item)
                except Exception:
                    # The row's lease runs out and it is tried again.
                    log.exception("outbox item failed", extra={"kind": self._kind})
                continue
            await wait_event(self._wake, self._poll)


def result_rows(images: list[ImageStatus]) -> list[ResultRow]:
    """Images in input order, grouped back into the input's rows."""
    rows = []
    for serial, group in itertools.groupby(images, key=lambda i: i.serial_number):
        items = list(group)
        rows.append(
            ResultRow(
                serial_number=serial,
                product_name=items[0].product_name,
                input_urls=[i.input_url for i in items],
                output_urls=[
                    i.output_url if i.state is ImageState.SUCCEEDED else "" for i in items
                ],
            )
        )
    return rows


class ResultCsvWriter:
    """Writes the result CSV to storage, then makes the request terminal."""

    def __init__(self, store: Store, storage: Storage, executor: Executor) -> None:
        self._store = store
        self._storage = storage
        self._executor = executor

    async def __call__(self, item: OutboxItem) -> None:
        extra = {"request_id": str(item.request_id)}
        try:
            images = await self._store.images(item.request_id)
            data = result_csv(result_rows(images))
            key = result_csv_key(item.request_id)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._storage.put, key, data, "text/csv")
            url = await loop.run_in_executor(self._executor, self._storage.url_for, key)
            await self._store.finish_request(item, url)
            log.info("result CSV written", extra=extra)
        except (StorageError, DatabaseUnavailable) as exc:
            delay = RESULT_CSV_RETRY.delay(item.attempts)
            log.warning("result CSV failed; will retry", extra={**extra, "error": str(exc)})
            with contextlib.suppress(DatabaseUnavailable):
                await self._store.retry_outbox(item, delay, str(exc))
