"""Leases, the fence and the sweeper, on a real PostgreSQL, step by step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from imgpipe.ingest import postgres
from imgpipe.ingest.csv_format import Product
from imgpipe.ingest.dispatcher import Dispatcher, DispatchSettings, processor_channel
from imgpipe.ingest.model import (
    Claim,
    Event,
    ImageState,
    Outcome,
    RequestState,
    SourceMemory,
)
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.processor_tls import ProcessorTls
from imgpipe.ingest.retry_policy import RetryPolicy
from imgpipe.ingest.store import Lease, Store, lease_of
from imgpipe.ingest.tenants import EQUAL_SHARES
from imgpipe.ingest.watch import EventReader

PRODUCTS = [
    Product(1, "Shoe", ("https://img.example/a.jpg", "https://img.example/b.jpg")),
    Product(2, "Hat", ("https://img.example/c.jpg",)),
]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await postgres.create_pool(database_url)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def submit(store: Store) -> None:
    await store.submit(PRODUCTS, quality=50, webhook_url="", idempotency_key=None, csv_sha256=b"x")


async def image_row(database_url: str, image_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM images WHERE id = $1", image_id)
    finally:
        await conn.close()
    assert row is not None, f"no image {image_id}"
    return row


async def expire(database_url: str, image_id: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE images SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            image_id,
        )
    finally:
        await conn.close()


def sweeper(store: Store, database_url: str, max_attempts: int = 5) -> Dispatcher:
    settings = DispatchSettings(retry=RetryPolicy(base_seconds=0, max_attempts=max_attempts))
    # The channel is never used: sweep() only touches the database.
    return Dispatcher(
        store,
        processor_channel("127.0.0.1:9", ProcessorTls()),
        Notifier(database_url),
        "sweeper",
        settings,
        EQUAL_SHARES,
    )


async def test_claims_take_images_in_input_order_with_a_lease(store: Store) -> None:
    await submit(store)
    claims = await store.claim("owner-a", 10, lease_seconds=30)
    assert [(c.serial_number, c.index, c.attempt) for c in claims] == [
        (1, 0, 1),
        (1, 1, 1),
        (2, 0, 1),
    ]
    assert await store.claim("owner-b", 10, lease_seconds=30) == []


async def test_a_stale_attempt_is_fenced_off(store: Store, database_url: str) -> None:
    await submit(store)
    first = (await store.claim("owner-a", 1, lease_seconds=30))[0]
    await expire(database_url, first.image_id)
    assert await sweeper(store, database_url).sweep() == 1
    second = (await store.claim("owner-b", 1, lease_seconds=30))[0]
    assert (second.image_id, second.attempt) == (first.image_id, 2)

    late = Outcome(ImageState.SUCCEEDED, output_key="stale/1-0.jpg")
    assert not await store.finish(lease_of(first), late)
    current = Outcome(ImageState.SUCCEEDED, output_key="current/1-0.jpg")
    assert await store.finish(lease_of(second), current)
    assert not await store.finish(lease_of(second), current)  # only once

    row = await image_row(database_url, first.image_id)
    assert (row["state"], row["output_url"], row["attempts"]) == (
        "SUCCEEDED",
        "current/1-0.jpg",
        2,
    )


async def test_sweeper_requeues_expired_fails_exhausted_and_leaves_fresh_alone(
    store: Store, database_url: str
) -> None:
    await submit(store)
    expired, exhausted, fresh = await store.claim("owner-a", 3, lease_seconds=30)
    await expire(database_url, expired.image_id)
    await expire(database_url, exhausted.image_id)
    conn = await asyncpg.connect(database_url)
    await conn.execute("UPDATE images SET attempts = 3 WHERE id = $1", exhausted.image_id)
    await conn.close()

    assert await sweeper(store, database_url, max_attempts=3).sweep() == 2

    requeued = await image_row(database_url, expired.image_id)
    assert (requeued["state"], requeued["attempts"], requeued["lease_owner"]) == (
        "QUEUED",
        1,
        None,
    )
    assert "lease expired" in requeued["error"]
    failed = await image_row(database_url, exhausted.image_id)
    assert failed["state"] == "FAILED"
    assert "gave up after 3 attempts" in failed["error"]
    untouched = await image_row(database_url, fresh.image_id)
    assert (untouched["state"], untouched["lease_owner"]) == ("PROCESSING", "owner-a")


async def test_events_are_numbered_without_gaps(store: Store) -> None:
    await submit(store)
    claims = await store.claim("owner-a", 3, lease_seconds=30)
    for claim in claims:
        await store.finish(lease_of(claim), Outcome(ImageState.FAILED, error="boom"))
    request_id = claims[0].request_id
    events = await store.events_after(request_id, 0, 100, total=3)
    # Created, started (a claim is no event of its own), then one outcome per image.
    assert [e.sequence for e in events] == list(range(1, 6))
    assert (await store.status(request_id)).sequence == 5
    assert [e.state for e in events[:2]] == [RequestState.QUEUED, RequestState.PROCESSING]
    assert [e.image.state for e in events if e.image] == [ImageState.FAILED] * 3
    assert [e.progress.failed for e in events] == [0, 0, 1, 2, 3]


async def test_watchers_reading_the_same_page_at_once_share_one_query(store: Store) -> None:
    await submit(store)
    claims = await store.claim("owner-a", 3, lease_seconds=30)
    await store.finish_many([(lease_of(c), Outcome(ImageState.FAILED)) for c in claims])
    request_id = claims[0].request_id

    class CountingStore(Store):
        reads = 0

        async def events_after(
            self, request_id: uuid.UUID, after: int, limit: int, total: int
        ) -> list[Event]:
            CountingStore.reads += 1
            return await super().events_after(request_id, after, limit, total)

    counting = CountingStore(store._pool)
    reader = EventReader(counting)
    pages = await asyncio.gather(*(reader.events_after(request_id, 1, 100, 3) for _ in range(50)))
    assert CountingStore.reads == 1
    assert all(page == pages[0] for page in pages)
    assert [e.sequence for e in pages[0]] == [2, 3, 4, 5]
    await reader.events_after(request_id, 2, 100, 3)  # another page: another query
    assert CountingStore.reads == 2


async def test_one_batch_applies_current_leases_and_skips_stale_ones_row_by_row(
    store: Store, database_url: str
) -> None:
    await submit(store)
    await submit(store)
    claims = await store.claim("owner-a", 6, lease_seconds=30)
    first, second = sorted({c.request_id for c in claims})
    conn = await asyncpg.connect(database_url)
    notified: list[str] = []
    arrived = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        notified.append(str(payload))
        arrived.set()

    await conn.add_listener("imgpipe_events", on_notify)
    try:
        held = {
            (r["request_id"], r["serial_number"], r["idx"]): Lease(r["id"], 1, "owner-a")
            for r in await conn.fetch("SELECT * FROM images WHERE state = 'PROCESSING'")
        }
        stale = held[(first, 1, 0)]
        await expire(database_url, stale.image_id)
        assert await sweeper(store, database_url).sweep() == 1
        (retaken,) = await store.claim("owner-b", 1, lease_seconds=30)
        current = lease_of(retaken)
        assert (current.image_id, current.attempt) == (stale.image_id, 2)
        notified.clear()
        arrived.clear()

        def ok(key: str) -> Outcome:
            return Outcome(ImageState.SUCCEEDED, output_key=key)

        batch = [
            (held[(second, 2, 0)], ok("current/second-2-0")),
            (stale, ok("stale/first-1-0")),
            (held[(first, 1, 1)], Outcome(ImageState.FAILED, error="boom")),
            (current, ok("current/first-1-0")),
            (Lease(held[(first, 2, 0)].image_id, 1, "owner-z"), ok("stale/owner")),
            (Lease(held[(second, 1, 1)].image_id, 2, "owner-a"), ok("stale/attempt")),
            (held[(second, 1, 0)], ok("current/second-1-0")),
        ]
        assert await store.finish_many(batch) == [True, False, True, True, False, False, True]
        assert not any(await store.finish_many(batch))  # each applies once

        states = {
            (r["request_id"], r["serial_number"], r["idx"]): (r["state"], r["output_url"])
            for r in await conn.fetch("SELECT * FROM images")
        }
        await asyncio.wait_for(arrived.wait(), 10)
        await conn.execute("SELECT 1")  # every notification of the batch has arrived by now
    finally:
        await conn.close()
    assert states == {
        (first, 1, 0): ("SUCCEEDED", "current/first-1-0"),
        (first, 1, 1): ("FAILED", ""),
        (first, 2, 0): ("PROCESSING", ""),
        (second, 1, 0): ("SUCCEEDED", "current/second-1-0"),
        (second, 1, 1): ("PROCESSING", ""),
        (second, 2, 0): ("SUCCEEDED", "current/second-2-0"),
    }
    # One NOTIFY per request for the whole batch, not one per row.
    assert sorted(notified) == sorted([str(first), str(second)])
    # Each request's events: gap-free, in image order, with running progress.
    first_events = await store.events_after(first, 0, 100, total=3)
    assert [
        (e.sequence, e.image and (e.image.serial_number, e.image.index)) for e in first_events
    ] == [
        (1, None),
        (2, None),
        (3, (1, 0)),  # the expired lease, back in the queue
        (4, (1, 0)),
        (5, (1, 1)),
    ]
    assert [(e.progress.succeeded, e.progress.failed) for e in first_events[3:]] == [(1, 0), (1, 1)]
    second_events = await store.events_after(second, 0, 100, total=3)
    assert [e.sequence for e in second_events] == [1, 2, 3, 4]
    assert [(e.image.serial_number, e.image.index) for e in second_events[2:] if e.image] == [
        (1, 0),
        (2, 0),
    ]
    assert [e.progress.succeeded for e in second_events] == [0, 0, 1, 2]
    assert (await store.status(second)).sequence == 4


async def test_a_batch_remembers_the_sources_of_applied_successes_once_each(
    store: Store, database_url: str
) -> None:
    twice = "https://img.example/same.jpg"
    shoe = [Product(1, "Shoe", (twice, twice, "https://img.example/other.jpg"))]

    async def submit_and_claim(csv_sha256: bytes) -> list[Claim]:
        await store.submit(
            shoe, quality=50, webhook_url="", idempotency_key=None, csv_sha256=csv_sha256
        )
        return await store.claim("owner-a", 3, lease_seconds=30)

    first, second, other = await submit_and_claim(b"x")

    def learned(key: str, digest: bytes) -> Outcome:
        memory = SourceMemory('"e1"', "", digest, 4, 3)
        return Outcome(ImageState.SUCCEEDED, output_key=key, output_bytes=9, source=memory)

    stale = Lease(other.image_id, other.attempt, "owner-z")
    applied = await store.finish_many(
        [
            (lease_of(first), learned("k/1-0.jpg", b"\x01")),
            (lease_of(second), learned("k/1-1.jpg", b"\x02")),
            (stale, learned("k/1-2.jpg", b"\x03")),
        ]
    )
    assert applied == [True, True, False]
    assert first.previous is None  # nothing was remembered yet
    again = await submit_and_claim(b"y")
    # A claim brings what is remembered of each source: the same source twice in one
    # batch was remembered once, the later image's; the stale row taught nothing.
    remembered = [c.previous for c in again]
    assert [(p.output_key, p.content_sha256) if p else None for p in remembered] == [
        ("k/1-1.jpg", b"\x02"),
        ("k/1-1.jpg", b"\x02"),
        None,
    ]
    assert remembered[0] is not None and remembered[0].etag == '"e1"'
