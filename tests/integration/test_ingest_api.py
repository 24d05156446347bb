"""IngestService against a real PostgreSQL: Submit, GetStatus, WatchStatus, Cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import asyncpg
import grpc
import pytest

from imgpipe.v1 import ingest_pb2, requests_pb2
from support.csv_files import BAD_ROWS, TWO_PRODUCTS
from support.ingest_harness import IngestFactory, RunningIngest
from support.rpc_errors import field_violations


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> RunningIngest:
    # No processor: images are retried, never processed, in these tests.
    return await start_ingest({"IMGPIPE_RETRY_BASE_SECONDS": "30"})


async def count_requests(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM requests"))
    finally:
        await conn.close()


async def test_submit_then_status_lists_products_and_images_in_input_order(
    ingest: RunningIngest,
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=TWO_PRODUCTS))
    assert (submitted.product_count, submitted.image_count) == (2, 3)

    status = await ingest.stub.GetStatus(
        ingest_pb2.GetStatusRequest(request_id=submitted.request_id)
    )
    assert status.request_id == submitted.request_id
    assert [(p.serial_number, p.product_name) for p in status.products] == [
        (1, "Product 1"),
        (2, "Product 2"),
    ]
    assert [[i.input_url for i in p.images] for p in status.products] == [
        ["https://img.example/a.jpg", "https://img.example/b.jpg"],
        ["https://img.example/c.jpg"],
    ]
    assert status.progress.total_images == 3
    assert status.options.quality == 50
    assert status.state in (
        requests_pb2.REQUEST_STATE_QUEUED,
        requests_pb2.REQUEST_STATE_PROCESSING,
    )
    assert status.create_time.seconds > 0
    assert status.result_csv_url == ""


async def test_bad_csv_stores_nothing_and_names_each_bad_row(
    ingest: RunningIngest, database_url: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=BAD_ROWS))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [
        "csv.row[3].serial_number",
        "csv.row[4].input_image_urls",
    ]
    assert await count_requests(database_url) == 0


@pytest.mark.parametrize("quality", [-1, 96, 1000])
async def test_quality_out_of_range_is_invalid_argument(
    ingest: RunningIngest, quality: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(
                csv=TWO_PRODUCTS, options=requests_pb2.CompressionOptions(quality=quality)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["options.quality"]


async def test_same_idempotency_key_gives_the_same_request_even_at_once(
    ingest: RunningIngest, database_url: str
) -> None:
    request = ingest_pb2.SubmitRequest(csv=TWO_PRODUCTS, idempotency_key="order-42")
    responses = await asyncio.gather(*(ingest.stub.Submit(request) for _ in range(8)))
    assert len({r.request_id for r in responses}) == 1
    assert await count_requests(database_url) == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(
                csv=TWO_PRODUCTS + b"3,Bag,https://x.example/d.jpg\r\n", idempotency_key="order-42"
            )
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_id", "code"),
    [
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_unknown_or_malformed_ids(
    ingest: RunningIngest, request_id: str, code: grpc.StatusCode
) -> None:
    calls: list[Awaitable[object]] = [
        ingest.stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id)),
        ingest.stub.Cancel(ingest_pb2.CancelRequest(request_id=request_id)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in ingest.stub.WatchStatus(
            ingest_pb2.WatchStatusRequest(request_id=request_id)
        ):
            pass
    assert caught.value.code() == code


async def test_cancel_ends_the_request_and_its_watch(ingest: RunningIngest) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=TWO_PRODUCTS))
    cancelled = await ingest.stub.Cancel(ingest_pb2.CancelRequest(request_id=submitted.request_id))
    assert cancelled.state == requests_pb2.REQUEST_STATE_CANCELLED
    assert cancelled.progress.cancelled_images == 3

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Cancel(ingest_pb2.CancelRequest(request_id=submitted.request_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    messages = [
        m
        async for m in ingest.stub.WatchStatus(
            ingest_pb2.WatchStatusRequest(request_id=submitted.request_id)
        )
    ]
    assert len(messages) == 1
    assert messages[0].snapshot
    assert messages[0].state == requests_pb2.REQUEST_STATE_CANCELLED

    # The full history, replayed: created, maybe claims and retries, then the cancel, last.
    history = [
        m
        async for m in ingest.stub.WatchStatus(
            ingest_pb2.WatchStatusRequest(request_id=submitted.request_id, after_sequence=0)
        )
    ]
    replay = [
        m
        async for m in ingest.stub.WatchStatus(
            ingest_pb2.WatchStatusRequest(request_id=submitted.request_id, after_sequence=1)
        )
    ]
    assert history[-1].sequence == replay[-1].sequence
    assert [m.sequence for m in replay] == list(range(2, replay[-1].sequence + 1))
    assert replay[-1].state == requests_pb2.REQUEST_STATE_CANCELLED
    assert all(m.state != requests_pb2.REQUEST_STATE_CANCELLED for m in replay[:-1])

    # The result CSV of a cancelled request is still written (every output empty).
    status = await ingest.terminal_status(submitted.request_id, with_result=True)
    # Under the request's prefix, but not at a key an output's URL gives away.
    assert f"/{submitted.request_id}/result-" in status.result_csv_url


@pytest.mark.parametrize(
    "webhook_url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/hook",
        "http://user:pw@hooks.example/",
        "ftp://hooks.example/",
        "https://hooks.example:8443/",
        "not a url",
    ],
)
async def test_webhook_urls_pass_the_source_address_rules(
    ingest: RunningIngest, webhook_url: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(csv=TWO_PRODUCTS, webhook_url=webhook_url)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["webhook_url"]
