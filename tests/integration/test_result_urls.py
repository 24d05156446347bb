"""Output and result-CSV URLs are made when read: the database and the stored result CSV
hold nothing that expires, and GetStatus comes a page at a time.

Before, presigned URLs were made once, when an image was stored, and written into the
database and the result CSV: seven days later every URL a caller read was dead. Against a
real S3 server (moto) and a real processor."""

from __future__ import annotations

import csv
import io
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import boto3
import grpc
import pytest

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.v1 import ingest_pb2, requests_pb2
from support.csv_files import products_csv
from support.eventually import eventually
from support.ingest_harness import IngestFactory, RunningIngest


def signed_at(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Date"][0]


async def fetch(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as response:
        assert response.status == 200, url
        return await response.read()


async def next_second() -> None:
    """Waits until the clock (and so a presigned URL's X-Amz-Date) has moved on."""
    start = int(time.time())
    await eventually(_now, lambda now: now > start, what="the clock's next second")


async def _now() -> int:
    return int(time.time())


@pytest.fixture
async def on_s3(
    start_ingest: IngestFactory, s3_env: dict[str, str], image_server: ImageServer
) -> tuple[RunningIngest, str, list[str]]:
    urls = [image_server.add(f"/urls/{n}.jpg", sample(32, 24, "JPEG", seed=n)) for n in range(3)]
    ingest = await start_ingest(s3_env, processor=True, processor_env=s3_env)
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=products_csv([urls[:2], urls[2:]]))
    )
    status = await ingest.terminal_status(submitted.request_id, with_result=True)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    return ingest, submitted.request_id, urls


async def test_output_urls_are_signed_when_read_and_still_fetch(
    on_s3: tuple[RunningIngest, str, list[str]], database_url: str
) -> None:
    ingest, request_id, _ = on_s3
    first = await ingest.status(request_id)
    await next_second()
    second = await ingest.status(request_id)
    first_urls = [i.output_url for p in first.products for i in p.images]
    second_urls = [i.output_url for p in second.products for i in p.images]
    async with aiohttp.ClientSession() as http:
        for old, new in zip(first_urls, second_urls, strict=True):
            assert signed_at(new) > signed_at(old)  # signed anew when read
            assert await fetch(http, new) == await fetch(http, old)
            assert (await fetch(http, new))[:2] == b"\xff\xd8"  # a JPEG
        assert signed_at(second.result_csv_url) > signed_at(first.result_csv_url)
        stored = (await fetch(http, second.result_csv_url)).decode()
    # What is stored holds no signature: keys in the database, unsigned URLs in the CSV.
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT output_url FROM images UNION ALL SELECT output_url FROM events "
            "UNION ALL SELECT result_csv_url FROM requests UNION ALL "
            "SELECT result_csv_url FROM events"
        )
    finally:
        await conn.close()
    assert {r[0] for r in rows if r[0]} >= {f"{request_id}/1-0.jpg", f"{request_id}/2-0.jpg"}
    assert not [r[0] for r in rows if "://" in r[0] or "X-Amz" in r[0]]
    assert "X-Amz-Signature" not in stored
    assert "s3://" in stored and f"/{request_id}/1-1.jpg" in stored


async def test_the_result_csv_over_http_carries_urls_signed_when_asked_for(
    on_s3: tuple[RunningIngest, str, list[str]],
) -> None:
    ingest, request_id, urls = on_s3
    base = f"http://127.0.0.1:{ingest.app.http_port}"
    async with aiohttp.ClientSession(base) as http:
        first = (await fetch(http, f"/v1/requests/{request_id}/result.csv")).decode()
        await next_second()
        second = (await fetch(http, f"/v1/requests/{request_id}/result.csv")).decode()
        rows = list(csv.reader(io.StringIO(second)))[1:]
        assert [row[2].split(",") for row in rows] == [urls[:2], urls[2:]]
        outputs = [url for row in rows for url in row[3].split(",")]
        old = [url for row in list(csv.reader(io.StringIO(first)))[1:] for url in row[3].split(",")]
        for before, now in zip(old, outputs, strict=True):
            assert signed_at(now) > signed_at(before)
            assert (await fetch(http, now))[:2] == b"\xff\xd8"


async def test_get_status_comes_a_page_at_a_time(
    on_s3: tuple[RunningIngest, str, list[str]],
) -> None:
    ingest, request_id, urls = on_s3
    seen: list[tuple[int, str]] = []
    token = ""
    pages = 0
    while True:
        page = await ingest.stub.GetStatus(
            ingest_pb2.GetStatusRequest(request_id=request_id, page_size=2, page_token=token)
        )
        pages += 1
        assert sum(len(p.images) for p in page.products) <= 2
        seen += [(p.serial_number, i.input_url) for p in page.products for i in p.images]
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    # Product 1 (two images) fills the first page; product 2 is on the second.
    assert seen == [(1, urls[0]), (1, urls[1]), (2, urls[2])]
    # One image a page: product 1 goes on, under its serial number, on the second page.
    one = await ingest.stub.GetStatus(
        ingest_pb2.GetStatusRequest(request_id=request_id, page_size=1)
    )
    two = await ingest.stub.GetStatus(
        ingest_pb2.GetStatusRequest(
            request_id=request_id, page_size=1, page_token=one.next_page_token
        )
    )
    assert [(p.serial_number, len(p.images)) for p in (*one.products, *two.products)] == [
        (1, 1),
        (1, 1),
    ]
    assert two.products[0].images[0].input_url == urls[1]
    for bad in (
        ingest_pb2.GetStatusRequest(request_id=request_id, page_token="not-a-token"),
        ingest_pb2.GetStatusRequest(request_id=request_id, page_size=10_001),
        ingest_pb2.GetStatusRequest(request_id=request_id, page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest.stub.GetStatus(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_outbox_gives_up_on_a_result_csv_and_says_so(
    start_ingest: IngestFactory, s3_env: dict[str, str]
) -> None:
    """Before, a result CSV that could not be stored was retried forever, the request never
    terminal (or, cancelled, never with a result) and nothing said why."""
    ingest = await start_ingest({**s3_env, "IMGPIPE_OUTBOX_MAX_ATTEMPTS": "2"})
    bucket = s3_env["IMGPIPE_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).delete_bucket(Bucket=bucket)  # storage now fails every write
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=products_csv([["https://img.example/a.jpg"]]))
    )
    await ingest.stub.Cancel(ingest_pb2.CancelRequest(request_id=submitted.request_id))
    status = await eventually(
        lambda: ingest.status(submitted.request_id),
        lambda s: s.result_csv_error != "",
        what="the result CSV given up",
    )
    assert status.state == requests_pb2.REQUEST_STATE_CANCELLED
    assert status.result_csv_url == ""
    assert status.result_csv_error.startswith("gave up after 2 attempts: ")
    assert "NoSuchBucket" in status.result_csv_error
