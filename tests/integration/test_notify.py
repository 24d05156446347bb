"""NOTIFY comes from triggers on the tables that change: a statement that appends events
wakes that request's watchers, one that queues outbox rows wakes the workers of that kind."""

from __future__ import annotations

import asyncio

import asyncpg

from imgpipe.ingest import postgres
from imgpipe.ingest.csv_format import parse_products
from imgpipe.ingest.notifications import EVENTS, OUTBOX
from imgpipe.ingest.store import Store

CSV = b"S. No.,Product Name,Input Image Urls\n1,Mug,https://cdn.example/mug.jpg\n"


async def test_appending_events_and_queuing_outbox_rows_notify(database_url: str) -> None:
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def heard(_conn: object, _pid: int, channel: str, payload: object) -> None:
        received.put_nowait((channel, str(payload)))

    listener = await asyncpg.connect(database_url)
    pool = await postgres.create_pool(database_url)
    try:
        for channel in (EVENTS, OUTBOX):
            await listener.add_listener(channel, heard)
        store = Store(pool)
        submission = await store.submit(
            parse_products(CSV), quality=50, webhook_url="", idempotency_key=None, csv_sha256=b""
        )
        request_id = str(submission.request_id)
        async with asyncio.timeout(10):
            assert await received.get() == (EVENTS, request_id)  # the QUEUED event

        await store.cancel(submission.request_id)
        heard_after_cancel: set[tuple[str, str]] = set()
        async with asyncio.timeout(10):
            while len(heard_after_cancel) < 2:
                heard_after_cancel.add(await received.get())
        assert heard_after_cancel == {(EVENTS, request_id), (OUTBOX, "result_csv")}
    finally:
        await pool.close()
        await listener.close()
