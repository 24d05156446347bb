"""Webhooks: signed, retried with one delivery id, delivered to a receiver that comes up
late, and visible in GetStatus."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devstack.image_server import ImageServer
from devstack.ports import free_port
from devstack.sample_images import sample
from imgpipe.v1 import ingest_pb2
from support.batch import TERMINAL
from support.csv_files import batch_csv
from support.eventually import eventually
from support.ingest_harness import IngestFactory, RunningIngest
from support.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"a secret of 24 bytes....").decode()


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> RunningIngest:
    env = {
        "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "IMGPIPE_WEBHOOK_SECRET": SECRET,
        "IMGPIPE_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "IMGPIPE_WEBHOOK_RETRY_CAP_SECONDS": "0.5",
        "IMGPIPE_WEBHOOK_TIMEOUT": "2",
    }
    return await start_ingest(env, processor=True)


async def submit(ingest: RunningIngest, image_server: ImageServer, webhook_url: str) -> str:
    url = image_server.add("/a.jpg", sample(64, 48, "JPEG"))
    response = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv([url]), webhook_url=webhook_url)
    )
    return response.request_id


async def wait_for_webhook_state(
    ingest: RunningIngest, request_id: str, state: ingest_pb2.WebhookDelivery.State.ValueType
) -> ingest_pb2.GetStatusResponse:
    return await eventually(
        lambda: ingest.status(request_id),
        lambda s: s.webhook.state == state,
        what=f"webhook {state}",
    )


async def test_retried_with_one_delivery_id_and_signed(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    receiver = Receiver(free_port(), script=[500, 500])
    async with receiver.serving():
        request_id = await submit(ingest, image_server, receiver.url)
        await asyncio.wait_for(receiver.delivered.wait(), 30)
        final = await wait_for_webhook_state(
            ingest, request_id, ingest_pb2.WebhookDelivery.STATE_DELIVERED
        )

    assert len(receiver.calls) == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.calls}
    assert ids == {final.webhook.delivery_id}
    headers, body = receiver.calls[-1]
    # An independent verifier (the Standard Webhooks library) accepts the signature.
    verified = Webhook(SECRET).verify(body, headers)
    assert verified["request_id"] == request_id
    assert verified["state"] == "REQUEST_STATE_COMPLETED"
    assert verified["progress"]["succeeded_images"] == 1
    assert verified["result_csv_url"] == final.result_csv_url
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"COMPLETED", b"FAILED"), headers)
    assert final.webhook.attempts == 3
    assert final.webhook.url == receiver.url
    assert final.webhook.HasField("delivered_time")


async def test_a_receiver_that_comes_up_late_still_gets_it(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    receiver = Receiver(free_port())
    request_id = await submit(ingest, image_server, receiver.url)
    current = await eventually(
        lambda: ingest.status(request_id),
        lambda s: s.state in TERMINAL and s.webhook.attempts >= 2,
        what="terminal, and two delivery attempts",
    )
    assert current.webhook.state == ingest_pb2.WebhookDelivery.STATE_PENDING
    assert "cannot connect" in current.webhook.last_error
    async with receiver.serving():
        await asyncio.wait_for(receiver.delivered.wait(), 30)
        await wait_for_webhook_state(ingest, request_id, ingest_pb2.WebhookDelivery.STATE_DELIVERED)
    assert len(receiver.calls) == 1


async def test_a_4xx_answer_ends_the_delivery(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    receiver = Receiver(free_port(), script=[410])
    async with receiver.serving():
        request_id = await submit(ingest, image_server, receiver.url)
        final = await wait_for_webhook_state(
            ingest, request_id, ingest_pb2.WebhookDelivery.STATE_FAILED
        )
    assert len(receiver.calls) == 1
    assert "HTTP 410" in final.webhook.last_error
    assert json.loads(receiver.calls[0][1])["request_id"] == request_id


@dataclass
class Tarpit:
    """A webhook endpoint that takes requests and never answers (until released)."""

    port: int
    open: int = 0
    most_open: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/never"

    async def handle(self, request: web.Request) -> web.Response:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        return web.Response(status=200)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_post("/never", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield
        finally:
            self.release.set()
            await runner.cleanup()


async def test_an_endpoint_that_never_answers_delays_nobody_else(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    """Before, deliveries were made one at a time with a timeout each: four to a tarpit,
    with a 60 s timeout, held everyone else's webhook for four minutes."""
    ingest = await start_ingest(
        {
            "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
            "IMGPIPE_WEBHOOK_TIMEOUT": "60",
            "IMGPIPE_WEBHOOK_PER_ENDPOINT": "2",
            "IMGPIPE_WEBHOOK_CONCURRENCY": "8",
        },
        processor=True,
    )
    tarpit, receiver = Tarpit(free_port()), Receiver(free_port())
    async with tarpit.serving(), receiver.serving():
        held = [await submit(ingest, image_server, tarpit.url) for _ in range(4)]
        for request_id in held:
            await ingest.terminal_status(request_id)
        await eventually(
            lambda: asyncio.sleep(0, tarpit.open), lambda n: n == 2, what="2 at the tarpit"
        )
        request_id = await submit(ingest, image_server, receiver.url)
        # Delivered while the tarpit still holds its two (of four) deliveries open.
        await wait_for_webhook_state(ingest, request_id, ingest_pb2.WebhookDelivery.STATE_DELIVERED)
        assert tarpit.open == 2
        assert tarpit.most_open == 2  # the per-endpoint limit
        for waiting in held:
            status = await ingest.status(waiting)
            assert status.webhook.state == ingest_pb2.WebhookDelivery.STATE_PENDING
