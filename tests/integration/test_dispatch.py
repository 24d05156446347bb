"""The dispatcher with a real processor: fairness across requests, calls adapted to what the
processors take, and LISTEN/NOTIFY surviving the loss of its connection."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from prometheus_client import REGISTRY

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.ingest.dispatcher import LEASE_RAN_OUT
from imgpipe.ingest.notifications import LISTENER_APPLICATION_NAME
from imgpipe.v1 import ingest_pb2, requests_pb2
from support.csv_files import batch_csv
from support.eventually import eventually
from support.ingest_harness import IngestFactory, RunningIngest


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> RunningIngest:
    return await start_ingest({"IMGPIPE_MAX_IN_FLIGHT": "2"}, processor=True)


def serve(server: ImageServer, prefix: str, count: int, delay: float) -> list[str]:
    body = sample(64, 48, "JPEG", seed=1)
    return [server.add(f"/{prefix}/{n}.jpg", body, delay=delay) for n in range(count)]


async def test_a_small_request_is_not_starved_by_a_large_one(
    ingest: RunningIngest, image_server: ImageServer, database_url: str
) -> None:
    big = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(serve(image_server, "big", 200, 0.02)))
    )
    await eventually(  # the big request is well under way
        lambda: ingest.status(big.request_id),
        lambda s: s.progress.succeeded_images >= 10,
        what="ten images of the big request done",
    )
    small = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(serve(image_server, "small", 5, 0.02)))
    )
    status = await ingest.terminal_status(small.request_id)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED

    conn = await asyncpg.connect(database_url)
    try:
        # Images of the big request done between the small one's arrival and its last.
        overtaken = await conn.fetchval(
            """
            SELECT count(*) FROM events b
            WHERE b.request_id = $1 AND b.image_state IS NOT NULL
              AND b.created_at > (SELECT created_at FROM requests WHERE id = $2)
              AND b.created_at <= (SELECT max(created_at) FROM events
                                   WHERE request_id = $2 AND image_state IS NOT NULL)
            """,
            big.request_id,
            small.request_id,
        )
        big_done = await conn.fetchval(
            "SELECT count(*) FROM images WHERE request_id = $1 AND state = 'SUCCEEDED'",
            big.request_id,
        )
    finally:
        await conn.close()
    # Round-robin: one big claim per small claim, plus what was held (2 in flight and a
    # batch of 2 ahead) when the small one arrived and when its last image was claimed.
    assert overtaken <= 5 + 4 + 4
    assert big_done < 200  # the small request finished while the big one was still running


async def test_dispatch_and_watch_survive_the_listen_connection_being_killed(
    ingest: RunningIngest, image_server: ImageServer, database_url: str
) -> None:
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(serve(image_server, "b", 40, 0.03)))
    )
    received: list[ingest_pb2.WatchStatusResponse] = []

    async def watch() -> None:
        request = ingest_pb2.WatchStatusRequest(request_id=submitted.request_id)
        async for message in ingest.stub.WatchStatus(request):
            received.append(message)

    async def messages() -> int:
        return len(received)

    watcher = asyncio.create_task(watch())
    admin = await asyncpg.connect(database_url)
    try:
        await eventually(messages, what="the watch's snapshot")
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            LISTENER_APPLICATION_NAME,
        )
        assert killed == 1
        await asyncio.wait_for(watcher, 60)
        reconnected = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            LISTENER_APPLICATION_NAME,
        )
    finally:
        await admin.close()
    assert reconnected == 1
    assert received[-1].state == requests_pb2.REQUEST_STATE_COMPLETED
    sequences = [m.sequence for m in received]
    assert sequences == list(range(sequences[0], sequences[-1] + 1))
    assert received[-1].progress.succeeded_images == 40


async def completed_on_first_attempts(
    ingest: RunningIngest, image_server: ImageServer, prefix: str, count: int, delay: float
) -> ingest_pb2.GetStatusResponse:
    """A request of count images served after delay seconds each, once it is done: every
    image succeeded, on its first attempt."""
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(serve(image_server, prefix, count, delay)))
    )
    status = await ingest.terminal_status(submitted.request_id)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert {i.attempts for p in status.products for i in p.images} == {1}
    return status


async def test_a_full_processor_is_asked_again_in_memory_not_through_the_queue(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    ingest = await start_ingest(
        {"IMGPIPE_MAX_IN_FLIGHT": "6"},
        processor=True,
        processor_env={"IMGPIPE_MAX_IN_FLIGHT": "1"},
    )
    status = await completed_on_first_attempts(ingest, image_server, "full", 12, 0.05)
    # Created, started, one outcome per image, terminal: no requeue events.
    assert status.sequence == 1 + 1 + 12 + 1


def _counted(counter: str, **labels: str) -> float:
    """An ingest counter's value so far (this process's registry: its ingests are in it)."""
    return REGISTRY.get_sample_value(f"imgpipe_ingest_{counter}_total", labels) or 0.0


async def test_images_finishing_one_by_one_do_not_each_cost_a_claim(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    """60 images, all claimed at once (no cap), finishing 50 ms apart: each finished image
    wakes the dispatcher (a cap might have room now), but after claims that found nothing
    it waits longer each time before claiming again, up to the poll interval (1 s)."""
    uncapped = {"IMGPIPE_HOST_MAX_IN_FLIGHT": "0", "IMGPIPE_POLL_INTERVAL": "1"}
    room = {"IMGPIPE_MAX_IN_FLIGHT": "64"}
    ingest = await start_ingest({**room, **uncapped}, processor=True, processor_env=room)
    body = sample(64, 48, "JPEG", seed=1)
    images = 60
    urls = [image_server.add(f"/spread/{n}.jpg", body, delay=0.05 * (n + 1)) for n in range(images)]
    before = _counted("claims", found="none")
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch_csv(urls)))
    status = await ingest.terminal_status(submitted.request_id)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    # One wake for each record statement (about one an image) would be a claim each.
    assert _counted("claims", found="none") - before < images / 2


async def test_calls_come_down_to_what_a_smaller_fleet_takes(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    """Ingest may make 16 calls at once, the one processor takes 1: after the first
    refusals, ingest calls about one at a time, so few calls are refused."""
    ingest = await start_ingest(
        {"IMGPIPE_MAX_IN_FLIGHT": "16"},
        processor=True,
        processor_env={"IMGPIPE_MAX_IN_FLIGHT": "1"},
    )
    before = _counted("image_outcomes", outcome="busy")
    images = 40
    await completed_on_first_attempts(ingest, image_server, "fleet", images, 0.01)
    # The 15 calls of the first round, then a probe for more now and then.
    assert _counted("image_outcomes", outcome="busy") - before < images


async def test_an_image_whose_lease_runs_out_waiting_for_a_call_goes_back_unspent(
    start_ingest: IngestFactory, image_server: ImageServer, database_url: str
) -> None:
    """Ingest claims for 4 calls and a batch ahead (8 images); the processor takes one
    image at a time, each half a second: the images at the back would outwait their 2 s
    leases, so they go back to the queue when their leases run short, not spending an
    attempt, and come back."""
    short_leases = {"IMGPIPE_LEASE_SECONDS": "2", "IMGPIPE_SWEEP_INTERVAL": "0.1"}
    ingest = await start_ingest(
        {"IMGPIPE_MAX_IN_FLIGHT": "4", **short_leases},
        processor=True,
        processor_env={"IMGPIPE_MAX_IN_FLIGHT": "1"},
    )
    status = await completed_on_first_attempts(ingest, image_server, "queue", 8, 0.5)
    conn = await asyncpg.connect(database_url)
    try:
        handed_back = await conn.fetchval(
            "SELECT count(*) FROM events WHERE request_id = $1 AND error = $2",
            status.request_id,
            LEASE_RAN_OUT.error,
        )
    finally:
        await conn.close()
    assert handed_back >= 1


async def test_a_claim_held_back_by_the_host_cap_goes_on_as_soon_as_an_image_finishes(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    """With one image of a host in flight at a time and an hour between polls, the
    request still finishes: each finished image wakes the claim it made room for."""
    ingest = await start_ingest(
        {
            "IMGPIPE_MAX_IN_FLIGHT": "4",
            "IMGPIPE_HOST_MAX_IN_FLIGHT": "1",
            "IMGPIPE_POLL_INTERVAL": "3600",
        },
        processor=True,
    )
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(serve(image_server, "capped", 6, 0.0)))
    )
    status = await ingest.terminal_status(submitted.request_id)
    assert status.state == requests_pb2.REQUEST_STATE_COMPLETED
    assert status.progress.succeeded_images == 6
