"""Ingest's HTTP side against a real PostgreSQL, in-process on port 0: every route, the
error mapping, SSE against gRPC WatchStatus, the result CSV, auth on and off, and the
OpenAPI document against the served routes (and schemathesis against the server)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openapi_spec_validator import validate

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.common.config import S3Settings
from imgpipe.common.service import add_ops_routes
from imgpipe.common.storage import S3Storage
from imgpipe.ingest.http_app import build_http_app
from imgpipe.ingest.http_routes import message_json
from imgpipe.v1 import ingest_pb2
from support.csv_files import BAD_ROWS, RESULT_HEADER, TWO_PRODUCTS
from support.eventually import eventually
from support.ingest_harness import IngestFactory, RunningIngest

MAX_CSV_BYTES = 8192
UNKNOWN_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
TOKEN = "alpha-token"
TERMINAL = {
    "REQUEST_STATE_COMPLETED",
    "REQUEST_STATE_PARTIALLY_COMPLETED",
    "REQUEST_STATE_FAILED",
    "REQUEST_STATE_CANCELLED",
}


@dataclass
class Ingest:
    running: RunningIngest
    http: aiohttp.ClientSession


# No processor unless a test asks for one: images are retried, never processed.
ENV = {
    "IMGPIPE_RETRY_BASE_SECONDS": "30",
    "IMGPIPE_RETRY_CAP_SECONDS": "15",
    "IMGPIPE_MAX_CSV_BYTES": str(MAX_CSV_BYTES),
}


@contextlib.asynccontextmanager
async def over_http(running: RunningIngest) -> AsyncIterator[Ingest]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.app.http_port}") as http:
        yield Ingest(running, http)


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> AsyncIterator[Ingest]:
    async with over_http(await start_ingest(ENV)) as running:
        yield running


@pytest.fixture
async def secured(start_ingest: IngestFactory) -> AsyncIterator[Ingest]:
    env = {**ENV, "IMGPIPE_AUTH_TOKENS": f"{TOKEN},beta-token"}
    async with over_http(await start_ingest(env)) as running:
        yield running


@pytest.fixture
async def pipeline(start_ingest: IngestFactory) -> AsyncIterator[Ingest]:
    """Ingest with a real processor beside it, both on the same file storage."""
    env = {**ENV, "IMGPIPE_RETRY_BASE_SECONDS": "0.05", "IMGPIPE_RETRY_CAP_SECONDS": "0.2"}
    processor_env = {"IMGPIPE_GRACE_SECONDS": "1", "IMGPIPE_WORKERS": "2"}
    async with over_http(
        await start_ingest(env, processor=True, processor_env=processor_env)
    ) as running:
        yield running


def form(csv_bytes: bytes, **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", csv_bytes, filename="products.csv", content_type="text/csv")
    for name, value in fields.items():
        data.add_field(name, value)
    return data


async def submit(ingest: Ingest, csv_bytes: bytes = TWO_PRODUCTS, **fields: str) -> dict[str, Any]:
    async with ingest.http.post("/v1/requests", data=form(csv_bytes, **fields)) as response:
        body = await response.json()
        assert response.status == 202, body
        assert response.headers["Location"] == f"/v1/requests/{body['request_id']}"
        return dict(body)


async def error_of(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert response.status == status, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


def fields_of(error: dict[str, Any]) -> list[str]:
    return [v["field"] for v in error.get("field_violations", [])]


async def grpc_status(ingest: Ingest, request_id: str) -> ingest_pb2.GetStatusResponse:
    return await ingest.running.stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id))


async def grpc_watch(ingest: Ingest, request_id: str, after: int = 0) -> list[dict[str, Any]]:
    call = ingest.running.stub.WatchStatus(
        ingest_pb2.WatchStatusRequest(request_id=request_id, after_sequence=after)
    )
    return [message_json(m) async for m in call]


@dataclass
class Sse:
    status: int
    events: list[dict[str, str]]
    comments: list[str]


async def read_sse(response: aiohttp.ClientResponse) -> Sse:
    """The events (id, event, data) and comments of a text/event-stream, to its end."""
    events: list[dict[str, str]] = []
    comments: list[str] = []
    current: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if current:
                events.append(current)
                current = {}
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = current[name] + "\n" + value if name in current else value
    return Sse(response.status, events, comments)


async def sse(ingest: Ingest, request_id: str, **kwargs: Any) -> Sse:
    async with ingest.http.get(f"/v1/requests/{request_id}/events", **kwargs) as response:
        if response.status == 200:
            assert response.content_type == "text/event-stream"
        return await read_sse(response)


def sse_messages(stream: Sse) -> list[dict[str, Any]]:
    for event in stream.events:
        assert event["event"] == "status"
        assert event["id"] == json.loads(event["data"])["sequence"]
    return [json.loads(e["data"]) for e in stream.events]


async def wait_terminal_with_result(
    ingest: Ingest, request_id: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async def status() -> dict[str, Any]:
        async with ingest.http.get(f"/v1/requests/{request_id}", headers=headers) as response:
            body: dict[str, Any] = await response.json()
        return body

    return await eventually(
        status,
        lambda body: body["state"] in TERMINAL and bool(body["result_csv_url"]),
        what=f"{request_id} terminal with its result CSV",
    )


# -- submit, status, cancel ------------------------------------------------------------------


async def test_multipart_submit_status_and_cancel_answer_what_grpc_answers(
    ingest: Ingest,
) -> None:
    submitted = await submit(ingest, quality="80", idempotency_key="order-1")
    assert submitted == {
        "request_id": submitted["request_id"],
        "product_count": 2,
        "image_count": 3,
    }
    request_id = submitted["request_id"]

    async with ingest.http.get(f"/v1/requests/{request_id}") as response:
        assert response.status == 200
        status = await response.json()
    assert status["state"] in ("REQUEST_STATE_QUEUED", "REQUEST_STATE_PROCESSING")
    assert status["options"] == {"quality": 80}
    assert status["progress"]["total_images"] == 3
    assert [p["serial_number"] for p in status["products"]] == [1, 2]
    assert status["products"][0]["images"][1]["input_url"] == "https://img.example/b.jpg"

    async with ingest.http.post(f"/v1/requests/{request_id}/cancel") as response:
        assert response.status == 200
        cancelled = await response.json()
    assert cancelled["state"] == "REQUEST_STATE_CANCELLED"
    assert cancelled["progress"]["cancelled_images"] == 3

    # Once nothing moves any more, HTTP and gRPC answer the very same message.
    final = await wait_terminal_with_result(ingest, request_id)
    assert final == message_json(await grpc_status(ingest, request_id))


async def test_raw_csv_body_with_options_in_the_query(ingest: Ingest) -> None:
    async with ingest.http.post(
        "/v1/requests",
        data=TWO_PRODUCTS,
        params={"quality": "70", "webhook_url": "https://hooks.example/done"},
        headers={"Content-Type": "text/csv"},
    ) as response:
        assert response.status == 202
        submitted = await response.json()
    status = await grpc_status(ingest, submitted["request_id"])
    assert status.options.quality == 70
    assert submitted["image_count"] == 3


async def test_same_idempotency_key_gives_the_same_request_or_409(ingest: Ingest) -> None:
    first = await submit(ingest, idempotency_key="order-42")
    again = await submit(ingest, idempotency_key="order-42")
    assert again == first
    data = form(TWO_PRODUCTS + b"3,Bag,https://img.example/d.jpg\r\n", idempotency_key="order-42")
    async with ingest.http.post("/v1/requests", data=data) as response:
        await error_of(response, 409, "ALREADY_EXISTS")


# -- errors ----------------------------------------------------------------------------------


async def test_bad_csv_is_400_naming_each_bad_row_like_grpc(ingest: Ingest) -> None:
    async with ingest.http.post("/v1/requests", data=form(BAD_ROWS)) as response:
        error = await error_of(response, 400, "INVALID_ARGUMENT")
    assert fields_of(error) == ["csv.row[3].serial_number", "csv.row[4].input_image_urls"]
    assert all(v["description"] for v in error["field_violations"])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.running.stub.Submit(ingest_pb2.SubmitRequest(csv=BAD_ROWS))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error["message"] == caught.value.details()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quality": "96"}, "options.quality"),
        ({"quality": "high"}, "options.quality"),
        ({"webhook_url": "ftp://hooks.example/"}, "webhook_url"),
        ({"idempotency_key": "k" * 300}, "idempotency_key"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_options_are_400(ingest: Ingest, fields: dict[str, str], field: str) -> None:
    async with ingest.http.post("/v1/requests", data=form(TWO_PRODUCTS, **fields)) as response:
        error = await error_of(response, 400, "INVALID_ARGUMENT")
    assert fields_of(error) == [field]


async def test_a_body_that_is_not_a_csv_form_is_400(ingest: Ingest) -> None:
    no_file = aiohttp.FormData()
    no_file.add_field("quality", "50")
    no_file.add_field("other", b"x", filename="x.bin")
    async with ingest.http.post("/v1/requests", data=no_file) as response:
        assert fields_of(await error_of(response, 400, "INVALID_ARGUMENT")) == ["other"]
    only_quality = aiohttp.FormData({"quality": "50"}, default_to_multipart=True)
    async with ingest.http.post("/v1/requests", data=only_quality) as response:
        assert fields_of(await error_of(response, 400, "INVALID_ARGUMENT")) == ["file"]
    async with ingest.http.post("/v1/requests", json={"csv": "1,2,3"}) as response:
        assert fields_of(await error_of(response, 400, "INVALID_ARGUMENT")) == ["Content-Type"]


async def test_too_large_is_413(ingest: Ingest) -> None:
    big = TWO_PRODUCTS + b"".join(
        f"{n},Item {n},https://img.example/{n}.jpg\r\n".encode() for n in range(3, 400)
    )
    assert len(big) > MAX_CSV_BYTES
    async with ingest.http.post("/v1/requests", data=form(big)) as response:
        await error_of(response, 413, "RESOURCE_EXHAUSTED")
    async with ingest.http.post(
        "/v1/requests", data=big, headers={"Content-Type": "text/csv"}
    ) as response:
        await error_of(response, 413, "RESOURCE_EXHAUSTED")
    # Announced as too large: refused before a byte of it is read.
    huge = b"x" * (MAX_CSV_BYTES + 128 * 1024)
    async with ingest.http.post(
        "/v1/requests", data=huge, headers={"Content-Type": "text/csv"}
    ) as response:
        await error_of(response, 413, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    ("request_id", "status", "code"),
    [("not-a-uuid", 400, "INVALID_ARGUMENT"), (UNKNOWN_ID, 404, "NOT_FOUND")],
)
async def test_unknown_or_malformed_ids(
    ingest: Ingest, request_id: str, status: int, code: str
) -> None:
    for method, path in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/result.csv"),
    ]:
        async with ingest.http.request(method, f"/v1/requests/{request_id}{path}") as response:
            error = await error_of(response, status, code)
        if status == 400:
            assert fields_of(error) == ["request_id"]


async def test_409_for_cancelling_twice_and_for_a_result_not_ready(ingest: Ingest) -> None:
    request_id = (await submit(ingest))["request_id"]
    async with ingest.http.get(f"/v1/requests/{request_id}/result.csv") as response:
        error = await error_of(response, 409, "FAILED_PRECONDITION")
    assert "QUEUED" in error["message"] or "PROCESSING" in error["message"]
    async with ingest.http.post(f"/v1/requests/{request_id}/cancel") as response:
        assert response.status == 200
    async with ingest.http.post(f"/v1/requests/{request_id}/cancel") as response:
        await error_of(response, 409, "FAILED_PRECONDITION")


async def test_unknown_routes_and_methods_are_json_errors(ingest: Ingest) -> None:
    async with ingest.http.get("/v1/nothing-here") as response:
        await error_of(response, 404, "NOT_FOUND")
    async with ingest.http.put(f"/v1/requests/{UNKNOWN_ID}") as response:
        await error_of(response, 405, "UNIMPLEMENTED")
        assert response.headers["Allow"] == "DELETE,GET,HEAD"
    async with ingest.http.head(f"/v1/requests/{UNKNOWN_ID}/events") as response:
        assert response.status == 405


async def test_bad_event_stream_positions_are_400(ingest: Ingest) -> None:
    request_id = (await submit(ingest))["request_id"]
    for headers, params, field in [
        ({"Last-Event-ID": "abc"}, {}, "Last-Event-ID"),
        ({}, {"after_sequence": "-1"}, "after_sequence"),
        ({}, {"after_sequence": str(2**63)}, "after_sequence"),
        # The header wins, but a malformed query is still refused.
        ({"Last-Event-ID": "1"}, {"after_sequence": "x"}, "after_sequence"),
    ]:
        url = f"/v1/requests/{request_id}/events"
        async with ingest.http.get(url, headers=headers, params=params) as response:
            assert fields_of(await error_of(response, 400, "INVALID_ARGUMENT")) == [field]


async def test_an_option_given_twice_is_400(ingest: Ingest) -> None:
    async with ingest.http.post(
        "/v1/requests", data=form(TWO_PRODUCTS, quality="50"), params={"quality": "60"}
    ) as response:
        assert fields_of(await error_of(response, 400, "INVALID_ARGUMENT")) == ["quality"]


async def test_too_many_submits_is_429_with_retry_after(start_ingest: IngestFactory) -> None:
    env = {**ENV, "IMGPIPE_SUBMIT_RATE_PER_MINUTE": "1", "IMGPIPE_SUBMIT_BURST": "1"}
    async with over_http(await start_ingest(env)) as ingest:
        await submit(ingest)
        async with ingest.http.post("/v1/requests", data=form(TWO_PRODUCTS)) as response:
            await error_of(response, 429, "RESOURCE_EXHAUSTED")
            assert 1 <= int(response.headers["Retry-After"]) <= 60


# -- events, result CSV ----------------------------------------------------------------------


async def test_events_and_result_csv_of_a_real_run(
    pipeline: Ingest, image_server: ImageServer
) -> None:
    ok = [image_server.add(f"/p/{i}.jpg", sample(64 + 8 * i, 48, "JPEG", seed=i)) for i in range(4)]
    missing = image_server.url("/gone.jpg")
    data = (
        "S. No.,Product Name,Input Image Urls\r\n"
        f'10,Shoe,"{ok[0]},{ok[1]}"\r\n'
        f"20,Hat,{missing}\r\n"
        f'30,Bag,"{ok[2]}\n{ok[3]}"\r\n'
    ).encode()
    request_id = (await submit(pipeline, data))["request_id"]

    # Live, from the start: a snapshot, then every event up to the terminal one.
    live = sse_messages(await sse(pipeline, request_id))
    assert live[0]["snapshot"] is True
    assert live[-1]["state"] == "REQUEST_STATE_PARTIALLY_COMPLETED"
    assert live[-1]["result_csv_url"]
    sequences = [int(m["sequence"]) for m in live]
    assert sequences == list(range(sequences[0], sequences[-1] + 1))
    # ... the very messages gRPC streams for the same events.
    assert live[1:] == await grpc_watch(pipeline, request_id, after=sequences[0])

    # Resumed: with Last-Event-ID, or ?after_sequence=, exactly the events after it.
    full = await grpc_watch(pipeline, request_id, after=1)
    assert [int(m["sequence"]) for m in full] == list(range(2, sequences[-1] + 1))
    for after in (1, sequences[-1] // 2):
        expected = [m for m in full if int(m["sequence"]) > after]
        resumed = await sse(pipeline, request_id, headers={"Last-Event-ID": str(after)})
        assert sse_messages(resumed) == expected
        by_query = await sse(pipeline, request_id, params={"after_sequence": str(after)})
        assert sse_messages(by_query) == expected
    # Last-Event-ID wins over the query (EventSource keeps the URL it was opened with).
    both = await sse(
        pipeline,
        request_id,
        params={"after_sequence": "1"},
        headers={"Last-Event-ID": str(sequences[-1] - 1)},
    )
    assert sse_messages(both) == full[-1:]
    # Nothing after the terminal event: 204, which stops EventSource from reconnecting.
    done = await sse(pipeline, request_id, headers={"Last-Event-ID": str(sequences[-1])})
    assert (done.status, done.events) == (204, [])
    # Watching a finished request from the start: its terminal snapshot alone.
    again = sse_messages(await sse(pipeline, request_id))
    assert again == await grpc_watch(pipeline, request_id)
    assert len(again) == 1

    async with pipeline.http.get(f"/v1/requests/{request_id}/result.csv") as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        table = list(csv.reader(io.StringIO(await response.text())))
    status = await grpc_status(pipeline, request_id)
    assert table[0] == RESULT_HEADER
    assert [row[0] for row in table[1:]] == ["10", "20", "30"]
    for row, product in zip(table[1:], status.products, strict=True):
        assert row[3].split(",") == [i.output_url for i in product.images]
    assert table[2][3] == ""  # the missing image's output

    # The outputs themselves, through /objects/ (file storage).
    async with pipeline.http.get(f"/objects/{request_id}/10-0.jpg") as response:
        assert response.status == 200
        assert response.content_type == "image/jpeg"


async def test_event_stream_keepalive_and_a_client_going_away(ingest: Ingest) -> None:
    """A quiet stream gets comment lines; a client that leaves frees its watcher."""
    app = ingest.running.app
    request_id = (await submit(ingest))["request_id"]
    quick = build_http_app(
        app.requests,
        app.auth,
        app.storage,
        app.executor,
        max_csv_bytes=MAX_CSV_BYTES,
        keepalive=0.2,
    )
    async with TestServer(quick) as server, aiohttp.ClientSession() as http:
        before = app.notifier.watcher_count
        response = await http.get(server.make_url(f"/v1/requests/{request_id}/events"))
        assert response.status == 200
        first = await read_sse_until_comment(response)
        assert json.loads(first[0]["data"])["snapshot"] is True
        assert app.notifier.watcher_count == before + 1
        response.close()  # the client goes away

        async def watchers() -> int:
            return app.notifier.watcher_count

        await eventually(watchers, lambda n: n == before, what="the watcher freed")

        # A server shutting down ends its streams (clients reconnect elsewhere).
        response = await http.get(server.make_url(f"/v1/requests/{request_id}/events"))
        await read_sse_until_comment(response)
        closing = asyncio.ensure_future(server.close())
        async with asyncio.timeout(5):
            await read_sse(response)
            await closing
        assert app.notifier.watcher_count == before


async def read_sse_until_comment(response: aiohttp.ClientResponse) -> list[dict[str, str]]:
    """Events up to the first keep-alive comment."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with asyncio.timeout(5):
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(": keep-alive"):
                return events
            if not line and current:
                events.append(current)
                current = {}
            elif line:
                name, _, value = line.partition(": ")
                current[name] = value
    raise AssertionError("the stream ended without a keep-alive")


# -- auth ------------------------------------------------------------------------------------


async def test_with_tokens_every_api_route_needs_one(secured: Ingest) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    submitted = await secured.http.post("/v1/requests", data=form(TWO_PRODUCTS), headers=bearer)
    assert submitted.status == 202
    request_id = (await submitted.json())["request_id"]

    for method, path in [
        ("POST", "/v1/requests"),
        ("GET", f"/v1/requests/{request_id}"),
        ("POST", f"/v1/requests/{request_id}/cancel"),
        ("GET", f"/v1/requests/{request_id}/events"),
        ("GET", f"/v1/requests/{request_id}/result.csv"),
        ("GET", "/v1/openapi.json"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with secured.http.request(method, path, headers=headers) as response:
                await error_of(response, 401, "UNAUTHENTICATED")
                assert response.headers["WWW-Authenticate"] == "Bearer"

    async with secured.http.get(f"/v1/requests/{request_id}", headers=bearer) as response:
        assert response.status == 200
    # Another token's request is not there at all, as on gRPC.
    other = {"Authorization": "Bearer beta-token"}
    async with secured.http.get(f"/v1/requests/{request_id}", headers=other) as response:
        await error_of(response, 404, "NOT_FOUND")
    async with secured.http.post(f"/v1/requests/{request_id}/cancel", headers=bearer) as response:
        assert response.status == 200

    for path in ("/healthz", "/readyz"):
        async with secured.http.get(path) as response:
            assert response.status == 200, path
    async with secured.http.get("/metrics") as response:
        await error_of(response, 401, "UNAUTHENTICATED")
    async with secured.http.get("/metrics", headers=bearer) as response:
        assert response.status == 200
    # /objects/ serves the owner only: a result CSV (or any object) of another token's
    # request is refused on every route, as if it did not exist.
    final = await wait_terminal_with_result(secured, request_id, bearer)
    assert final["state"] == "REQUEST_STATE_CANCELLED"
    key = final["result_csv_url"].split("/objects/", 1)[1]
    async with secured.http.get(f"/objects/{key}", headers=bearer) as response:
        assert response.status == 200
    async with secured.http.get(f"/objects/{key}") as response:
        await error_of(response, 401, "UNAUTHENTICATED")
    for path in (f"/objects/{key}", f"/v1/requests/{request_id}/result.csv", "/objects/x/y.jpg"):
        async with secured.http.get(path, headers=other) as response:
            await error_of(response, 404, "NOT_FOUND")


async def test_health_and_metrics(ingest: Ingest) -> None:
    async with ingest.http.get("/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with ingest.http.get("/readyz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ready"})
    async with ingest.http.get("/metrics") as response:
        assert response.status == 200
        assert "imgpipe_ingest_watchers" in await response.text()


# -- the OpenAPI document --------------------------------------------------------------------


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def test_openapi_document_is_valid_and_matches_the_routes(ingest: Ingest) -> None:
    async with ingest.http.get("/v1/openapi.json") as response:
        assert response.status == 200
        doc = await response.json()
    validate(doc)
    assert "security" not in doc  # no tokens configured
    app = ingest.running.app
    assert app.service.http_app is not None
    assert documented_routes(doc) == served_routes(app.service.http_app)
    assert ("GET", "/objects/{key}") in documented_routes(doc)

    # With S3 storage there is no /objects/, in the routes nor in the document.
    s3 = S3Storage("bucket", "", S3Settings("http://127.0.0.1:9", "a", "b", "us-east-1"), None)
    other = build_http_app(app.requests, app.auth, s3, app.executor, max_csv_bytes=MAX_CSV_BYTES)
    add_ops_routes(other, lambda: True)
    async with TestServer(other) as server, aiohttp.ClientSession() as http:
        response = await http.get(server.make_url("/v1/openapi.json"))
        doc = await response.json()
    assert documented_routes(doc) == served_routes(other)
    assert ("GET", "/objects/{key}") not in documented_routes(doc)

    # Every field of the messages, by its .proto name.
    schemas = doc["components"]["schemas"]
    status_fields = set(ingest_pb2.GetStatusResponse.DESCRIPTOR.fields_by_name)
    assert set(schemas["GetStatusResponse"]["properties"]) == status_fields


async def test_openapi_document_with_tokens_says_so(secured: Ingest) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with secured.http.get("/v1/openapi.json", headers=headers) as response:
        doc = await response.json()
    assert doc["security"] == [{"bearer": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.skipif(
    shutil.which("st", path=str(Path(sys.executable).parent)) is None,
    reason="schemathesis is not installed",
)
async def test_schemathesis_finds_nothing(start_ingest: IngestFactory, tmp_path: Path) -> None:
    """Generated requests (valid and not) for every operation, checked against the
    document: no 5xx, only documented statuses, content types and schemas. Images fail at
    their first attempt here, so requests end at once and so do their event streams."""
    env = {
        **ENV,
        "IMGPIPE_AUTH_TOKENS": TOKEN,
        "IMGPIPE_RETRY_MAX_ATTEMPTS": "1",
    }
    running = await start_ingest(env)
    await run_schemathesis(f"http://127.0.0.1:{running.app.http_port}", tmp_path)


async def run_schemathesis(base_url: str, tmp_path: Path) -> None:
    st = str(Path(sys.executable).parent / "st")
    process = await asyncio.create_subprocess_exec(
        st,
        "run",
        f"{base_url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
        "unsupported_method",
        "--max-examples",
        "15",
        # Not its "coverage" phase: on this schema it crashes inside schemathesis 4.32 on
        # CPython 3.11.7 ("SystemError: AST constructor recursion depth mismatch").
        "--phases",
        "examples,fuzzing,stateful",
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, output.decode(errors="replace")[-6000:]
