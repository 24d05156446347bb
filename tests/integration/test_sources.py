"""Polite fetching and work not done twice, with a real processor, an S3 server and a
loopback source that throttles and answers conditional GETs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from devstack.sample_images import sample
from imgpipe.common.storage import Storage
from imgpipe.v1 import ingest_pb2, requests_pb2
from support.batch import TERMINAL
from support.csv_files import batch_csv
from support.ingest_harness import IngestFactory, RunningIngest
from support.source_server import SourceServer


@pytest.fixture
async def source() -> AsyncIterator[SourceServer]:
    async with SourceServer().serving() as server:
        yield server


@pytest.fixture
async def ingest(start_ingest: IngestFactory, s3_env: dict[str, str]) -> RunningIngest:
    env = {
        **s3_env,
        # One attempt: an attempt spent on a throttled source would fail the image.
        "IMGPIPE_RETRY_MAX_ATTEMPTS": "1",
        "IMGPIPE_RETENTION_INTERVAL": "3600",
    }
    return await start_ingest(env, processor=True, processor_env=s3_env)


async def run(ingest: RunningIngest, csv: bytes) -> ingest_pb2.GetStatusResponse:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=csv))
    for _ in range(1200):
        status = await ingest.stub.GetStatus(
            ingest_pb2.GetStatusRequest(request_id=submitted.request_id)
        )
        if status.state in TERMINAL and status.result_csv_url:
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(submitted.request_id)


def images(status: ingest_pb2.GetStatusResponse) -> list[requests_pb2.Image]:
    return [image for product in status.products for image in product.images]


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_throttling_host_delays_images_without_spending_attempts(
    ingest: RunningIngest, source: SourceServer, database_url: str
) -> None:
    body = sample(64, 48, "JPEG", seed=5)
    urls = [source.add(f"/t/{n}.jpg", body) for n in range(3)]
    source.throttled = {"/t/0.jpg": 2, "/t/1.jpg": 1}
    status = await run(ingest, batch_csv(urls))

    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert [image.attempts for image in images(status)] == [1, 1, 1]
    assert len(source.seen("/t/0.jpg")) == 3  # two 429s, then the image
    assert all("imgpipe" in h["User-Agent"] for _, h in source.requests)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT host FROM host_backoffs") == "127.0.0.1"
    finally:
        await conn.close()


async def test_a_resubmitted_catalogue_is_fetched_conditionally_and_copied(
    ingest: RunningIngest, source: SourceServer, storage: Storage
) -> None:
    urls = [source.add(f"/c/{n}.jpg", sample(64, 48, "JPEG", seed=n)) for n in range(4)]
    csv = batch_csv(urls)
    first = await run(ingest, csv)
    assert first.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert not any("If-None-Match" in h for _, h in source.requests)
    reused_before = counted("imgpipe_processor_images_total", outcome="reused")
    encoded_before = counted("imgpipe_processor_images_total", outcome="succeeded")

    second = await run(ingest, csv)

    assert second.state == requests_pb2.REQUEST_STATE_COMPLETED
    # The source saw a conditional GET for each image, and the processor encoded nothing.
    for url in urls:
        path = url.split(":", 2)[2].partition("/")[2]
        assert "If-None-Match" in source.seen(f"/{path}")[-1]
    assert counted("imgpipe_processor_images_total", outcome="reused") - reused_before == 4
    assert counted("imgpipe_processor_images_total", outcome="succeeded") == encoded_before
    # The new keys exist, with the same bytes as the first run's.
    for product in second.products:
        for index in range(len(product.images)):
            key = f"{product.serial_number}-{index}.jpg"
            new = await asyncio.to_thread(storage.get, f"{second.request_id}/{key}")
            old = await asyncio.to_thread(storage.get, f"{first.request_id}/{key}")
            assert new == old


async def test_same_bytes_without_validators_are_copied_and_a_purged_original_is_encoded_anew(
    ingest: RunningIngest, source: SourceServer, storage: Storage
) -> None:
    source.etags = False
    urls = [source.add(f"/s/{n}.jpg", sample(64, 48, "JPEG", seed=10 + n)) for n in range(2)]
    csv = batch_csv(urls)
    first = await run(ingest, csv)
    reused_before = counted("imgpipe_processor_images_total", outcome="reused")
    second = await run(ingest, csv)
    assert counted("imgpipe_processor_images_total", outcome="reused") - reused_before == 2

    # Deleting the newer request (whose outputs are remembered) breaks nothing later on.
    await ingest.stub.DeleteRequest(ingest_pb2.DeleteRequestRequest(request_id=second.request_id))
    encoded_before = counted("imgpipe_processor_images_total", outcome="succeeded")
    third = await run(ingest, csv)
    assert third.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert counted("imgpipe_processor_images_total", outcome="succeeded") - encoded_before == 2
    assert all(image.output_bytes > 0 for image in images(third))
    assert first.state == requests_pb2.REQUEST_STATE_COMPLETED
    key = f"{first.products[0].serial_number}-0.jpg"
    await asyncio.to_thread(storage.get, f"{first.request_id}/{key}")
