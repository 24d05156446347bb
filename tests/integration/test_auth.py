"""Bearer tokens on gRPC: required when configured, health open, requests private to the
token that created them."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgpipe.v1 import ingest_pb2
from support.csv_files import products_csv
from support.ingest_harness import IngestFactory, RunningIngest
from support.rpc_errors import rich_status

CSV = products_csv([["https://img.example/a.jpg"]])


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> RunningIngest:
    env = {
        "IMGPIPE_AUTH_TOKENS": "alpha-token, beta-token",
        "IMGPIPE_SUBMIT_RATE_PER_MINUTE": "6",
        "IMGPIPE_SUBMIT_BURST": "3",
    }
    return await start_ingest(env)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", "alpha-token"),)],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    ingest: RunningIngest, metadata: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=CSV), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in ingest.stub.WatchStatus(
            ingest_pb2.WatchStatusRequest(request_id="x"), metadata=metadata
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_needs_no_token(ingest: RunningIngest) -> None:
    health = health_pb2_grpc.HealthStub(ingest.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_request_is_visible_only_to_its_token(ingest: RunningIngest) -> None:
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=CSV, idempotency_key="k"), metadata=bearer("alpha-token")
    )
    own = await ingest.stub.GetStatus(
        ingest_pb2.GetStatusRequest(request_id=submitted.request_id),
        metadata=bearer("alpha-token"),
    )
    assert own.request_id == submitted.request_id
    for call in (
        ingest.stub.GetStatus(
            ingest_pb2.GetStatusRequest(request_id=submitted.request_id),
            metadata=bearer("beta-token"),
        ),
        ingest.stub.Cancel(
            ingest_pb2.CancelRequest(request_id=submitted.request_id),
            metadata=bearer("beta-token"),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Idempotency keys are per token: the same key from another token is another request.
    other = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=CSV, idempotency_key="k"), metadata=bearer("beta-token")
    )
    assert other.request_id != submitted.request_id


async def test_submit_is_rate_limited_per_token_with_retry_info(ingest: RunningIngest) -> None:
    for _ in range(3):
        await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=CSV), metadata=bearer("alpha-token"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=CSV), metadata=bearer("alpha-token"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(caught.value)
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 10
    # Another token has its own allowance.
    await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=CSV), metadata=bearer("beta-token"))


@pytest.mark.parametrize(
    "token", ["Bearer ét\u00e9".encode(), b"Bearer \xff\xfe", "Bearer 令牌".encode()]
)
async def test_a_non_ascii_bearer_token_is_unauthenticated_not_a_crash(
    ingest: RunningIngest, token: bytes
) -> None:
    """Raw bytes in the header, as a hostile client sends them: 401, not a 500."""
    reader, writer = await asyncio.open_connection("127.0.0.1", ingest.app.http_port)
    writer.write(
        b"GET /v1/requests/00000000-0000-0000-0000-000000000000 HTTP/1.1\r\n"
        b"Host: ingest\r\nConnection: close\r\nAuthorization: " + token + b"\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["error"]["code"] == "UNAUTHENTICATED"


async def test_watchers_opening_at_once_share_no_status_across_tokens(
    ingest: RunningIngest,
) -> None:
    """Watchers opening their streams at once share one status read per token: the other
    token's watchers, interleaved with the owner's, are each NOT_FOUND."""
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=CSV), metadata=bearer("alpha-token")
    )
    request = ingest_pb2.WatchStatusRequest(request_id=submitted.request_id)

    async def first(token: str) -> str:
        try:
            async for message in ingest.stub.WatchStatus(request, metadata=bearer(token)):
                return "snapshot" if message.snapshot else "event"
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "ended"

    tokens = ["alpha-token", "beta-token"] * 50
    outcomes = await asyncio.gather(*(first(token) for token in tokens))
    assert outcomes == ["snapshot", "NOT_FOUND"] * 50
