"""The claim shares the fleet: across tenants first (by weight), then across a tenant's
requests; caps a tenant's and a source host's images in flight fleet-wide; holds back a
host that asked to be called less. Counts of claims against a real PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from imgpipe.ingest import postgres
from imgpipe.ingest.csv_format import Product
from imgpipe.ingest.model import Claim, ImageState, Outcome
from imgpipe.ingest.store import Store, lease_of
from imgpipe.ingest.tenants import EQUAL_SHARES, Shares

LEASE = 60.0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    pool = await postgres.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def submit(store: Store, owner: str, images: int, hosts: tuple[str, ...] = ("a",)) -> str:
    urls = [f"https://{hosts[n % len(hosts)]}.example/{owner}/{n}.jpg" for n in range(images)]
    products = [Product(n + 1, f"p{n}", (url,)) for n, url in enumerate(urls)]
    submission = await store.submit(
        products,
        quality=50,
        webhook_url="",
        idempotency_key=None,
        csv_sha256=b"x",
        owner=owner,
    )
    return str(submission.request_id)


async def owners_of(database_url: str, claims: list[Claim]) -> Counter[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT r.owner FROM images i JOIN requests r ON r.id = i.request_id"
            " WHERE i.id = ANY($1::bigint[])",
            [c.image_id for c in claims],
        )
    finally:
        await conn.close()
    return Counter(r["owner"] for r in rows)


def hosts_of(claims: list[Claim]) -> Counter[str]:
    return Counter(c.input_url.split("/")[2] for c in claims)


async def finish(store: Store, claims: list[Claim]) -> None:
    for claim in claims:
        assert await store.finish(lease_of(claim), Outcome(ImageState.SUCCEEDED))


async def test_two_tenants_with_unequal_loads_get_equal_shares(
    store: Store, database_url: str
) -> None:
    for _ in range(4):  # the busy tenant: four requests of 30
        await submit(store, "busy", 30)
    await submit(store, "quiet", 30)  # the quiet one: one request, submitted last

    claimed: Counter[str] = Counter()
    for _ in range(20):  # one slot freeing at a time, as a full dispatcher sees it
        claims = await store.claim("d1", 1, LEASE)
        claimed += await owners_of(database_url, claims)
        await finish(store, claims)
    assert claimed == {"busy": 10, "quiet": 10}  # per request it would be 16 to 4

    batch = await store.claim("d1", 10, LEASE)  # and in a batch
    assert await owners_of(database_url, batch) == {"busy": 5, "quiet": 5}


async def test_a_tenant_of_weight_two_gets_two_shares(store: Store, database_url: str) -> None:
    await submit(store, "gold", 30)
    await submit(store, "plain", 30)
    shares = Shares(owners=("gold",), weights=(2,), caps=(0,))
    batch = await store.claim("d1", 9, LEASE, shares)
    assert await owners_of(database_url, batch) == {"gold": 6, "plain": 3}


async def test_a_tenants_images_in_flight_are_capped_fleet_wide(
    store: Store, database_url: str
) -> None:
    await submit(store, "capped", 20)
    await submit(store, "free", 20)
    shares = Shares(owners=("capped",), weights=(1,), caps=(3,))
    first = await store.claim("d1", 4, LEASE, shares)
    second = await store.claim("d2", 10, LEASE, shares)  # another replica
    assert await owners_of(database_url, first + second) == {"capped": 3, "free": 11}
    assert await store.claim("d2", 10, LEASE, shares) != []  # "free" still has work
    capped = [c for c in first + second if "/capped/" in c.input_url]
    await finish(store, capped[:2])
    more = await store.claim("d1", 10, LEASE, shares)
    assert (await owners_of(database_url, more))["capped"] == 2


async def test_a_source_hosts_fetches_are_capped_fleet_wide(store: Store) -> None:
    await submit(store, "t", 30, hosts=("a", "b", "c"))
    shares = Shares(host_cap=2)
    first = await store.claim("d1", 5, LEASE, shares)
    second = await store.claim("d2", 10, LEASE, shares)
    assert hosts_of(first + second) == {"a.example": 2, "b.example": 2, "c.example": 2}
    assert await store.claim("d1", 10, LEASE, shares) == []
    await finish(store, [c for c in first + second if c.input_url.startswith("https://a.")])
    assert hosts_of(await store.claim("d1", 10, LEASE, shares)) == {"a.example": 2}


async def test_a_throttled_host_is_held_back_and_the_others_go_on(store: Store) -> None:
    await submit(store, "t", 12, hosts=("slow", "fast"))
    probe = await store.claim("d1", 1, LEASE)
    assert hosts_of(probe) == {"slow.example": 1}
    await store.throttle_host(probe[0].image_id, 3600)
    rest = await store.claim("d1", 20, LEASE, EQUAL_SHARES)
    assert hosts_of(rest) == {"fast.example": 6}
