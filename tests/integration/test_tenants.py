"""Tenants: a tokens file of hashed tokens beside IMGPIPE_AUTH_TOKENS, a queued-images quota
per tenant, the Submit rate limit across two ingest replicas, and webhook secrets of each
tenant's own, rotated with an overlap."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devstack.ports import free_port
from imgpipe.v1 import ingest_pb2
from support.ingest_harness import RunningIngest, running_ingest
from support.rpc_errors import rich_status
from support.webhook_receiver import Receiver


def csv_of(images: int) -> bytes:
    urls = ",".join(f"https://img.example/{n}.jpg" for n in range(images))
    return f'S. No.,Product Name,Input Image Urls\n1,Shoe,"{urls}"\n'.encode()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def ingest_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    tokens_file = tmp_path / "tenants.toml"
    tokens_file.write_text(
        f"""
[tenants.alpha]
token_sha256 = ["{sha256_hex("alpha-1")}", "{sha256_hex("alpha-2")}"]
max_queued = 5

[tenants.beta]
token_sha256 = "{sha256_hex("beta-1")}"
submit_rate_per_minute = 60
submit_burst = 3
"""
    )
    return {
        "DATABASE_URL": database_url,
        "IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects",
        # Nothing listens there: images stay queued.
        "IMGPIPE_PROCESSOR_TARGET": "127.0.0.1:9",
        "IMGPIPE_RETRY_BASE_SECONDS": "30",
        "IMGPIPE_AUTH_TOKENS": "legacy-token",
        "IMGPIPE_AUTH_TOKENS_FILE": str(tokens_file),
        "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "IMGPIPE_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    }


@pytest.fixture
async def ingest(ingest_env: dict[str, str]) -> AsyncIterator[RunningIngest]:
    async with running_ingest(ingest_env) as running:
        yield running


async def test_tokens_of_the_file_and_of_the_setting_authenticate(ingest: RunningIngest) -> None:
    for token in ("alpha-1", "alpha-2", "beta-1", "legacy-token"):
        await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=csv_of(1)), metadata=bearer(token))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(csv=csv_of(1)), metadata=bearer(sha256_hex("alpha-1"))
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_both_tokens_of_a_tenant_see_its_requests_others_do_not(
    ingest: RunningIngest,
) -> None:
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=csv_of(1)), metadata=bearer("alpha-1")
    )
    request = ingest_pb2.GetStatusRequest(request_id=submitted.request_id)
    await ingest.stub.GetStatus(request, metadata=bearer("alpha-2"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.GetStatus(request, metadata=bearer("beta-1"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def retry_delay(exc: grpc.aio.AioRpcError) -> float:
    for detail in rich_status(exc).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo")


async def test_a_tenant_over_its_queued_quota_is_refused_under_it_accepted(
    ingest: RunningIngest,
) -> None:
    await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=csv_of(3)), metadata=bearer("alpha-1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(csv=csv_of(3)), metadata=bearer("alpha-2")
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(caught.value) > 0
    # Another tenant is not affected; under the quota, alpha is accepted.
    await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=csv_of(3)), metadata=bearer("beta-1"))
    accepted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=csv_of(2)), metadata=bearer("alpha-1")
    )
    assert accepted.image_count == 2
    # Cancelled images are finished: the quota has room again.
    await ingest.stub.Cancel(
        ingest_pb2.CancelRequest(request_id=accepted.request_id), metadata=bearer("alpha-1")
    )
    await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=csv_of(2)), metadata=bearer("alpha-1"))


async def test_the_rate_limit_holds_across_two_replicas(ingest_env: dict[str, str]) -> None:
    async with running_ingest(ingest_env) as one, running_ingest(ingest_env) as two:
        outcomes = []
        for replica in (one, two, one, two, one):
            try:
                await replica.stub.Submit(
                    ingest_pb2.SubmitRequest(csv=csv_of(1)), metadata=bearer("beta-1")
                )
                outcomes.append("ok")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert 0 < retry_delay(exc) <= 1.0
                outcomes.append("refused")
    # A burst of 3 for the tenant in all, whichever replica answers.
    assert outcomes == ["ok", "ok", "ok", "refused", "refused"]


async def secrets_of(ingest: RunningIngest, token: str) -> list[str]:
    response = await ingest.stub.GetWebhookSecrets(
        ingest_pb2.GetWebhookSecretsRequest(), metadata=bearer(token)
    )
    return [s.secret for s in response.secrets]


async def delivery(ingest: RunningIngest, token: str) -> tuple[bytes, dict[str, str]]:
    """A webhook delivery of a request of token's tenant (cancelled, so it ends at once)."""
    receiver = Receiver(free_port())
    async with receiver.serving():
        submitted = await ingest.stub.Submit(
            ingest_pb2.SubmitRequest(csv=csv_of(1), webhook_url=receiver.url),
            metadata=bearer(token),
        )
        await ingest.stub.Cancel(
            ingest_pb2.CancelRequest(request_id=submitted.request_id), metadata=bearer(token)
        )
        await asyncio.wait_for(receiver.delivered.wait(), 30)
    headers, body = receiver.calls[-1]
    return body, {k.lower(): v for k, v in headers.items()}


async def test_a_delivery_for_one_tenant_fails_verification_with_anothers_secret(
    ingest: RunningIngest,
) -> None:
    alpha, beta = await secrets_of(ingest, "alpha-1"), await secrets_of(ingest, "beta-1")
    assert len(alpha) == len(beta) == 1
    assert alpha[0].startswith("whsec_")
    assert alpha != beta
    assert await secrets_of(ingest, "alpha-2") == alpha  # the tenant's, not the token's

    body, headers = await delivery(ingest, "alpha-1")
    Webhook(alpha[0]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(beta[0]).verify(body, headers)


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    ingest: RunningIngest,
) -> None:
    (old,) = await secrets_of(ingest, "alpha-1")
    rotated = await ingest.stub.RotateWebhookSecret(
        ingest_pb2.RotateWebhookSecretRequest(overlap=duration_pb2.Duration(seconds=3600)),
        metadata=bearer("alpha-1"),
    )
    new = rotated.secrets[0].secret
    assert [s.secret for s in rotated.secrets] == [new, old]
    assert not rotated.secrets[0].HasField("expire_time")
    assert rotated.secrets[1].HasField("expire_time")

    body, headers = await delivery(ingest, "alpha-1")
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)

    # With no overlap the old secret stops signing at once.
    again = await ingest.stub.RotateWebhookSecret(
        ingest_pb2.RotateWebhookSecretRequest(overlap=duration_pb2.Duration(seconds=0)),
        metadata=bearer("alpha-1"),
    )
    assert [s.secret for s in again.secrets][1:] == [old]  # old's own overlap still runs
    newest = again.secrets[0].secret
    assert new not in [s.secret for s in again.secrets]
    body, headers = await delivery(ingest, "alpha-1")
    Webhook(newest).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body, headers)


async def test_secrets_over_http(ingest: RunningIngest) -> None:
    base = f"http://127.0.0.1:{ingest.app.http_port}/v1/webhook-secrets"
    headers = {"Authorization": "Bearer beta-1"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers=headers) as response:
            assert response.status == 200
            first = (await response.json())["secrets"]
        async with http.post(f"{base}/rotate?overlap_seconds=60", headers=headers) as response:
            assert response.status == 200
            rotated = (await response.json())["secrets"]
    assert [s["secret"] for s in rotated][1:] == [first[0]["secret"]]
    assert "expire_time" not in rotated[0]
