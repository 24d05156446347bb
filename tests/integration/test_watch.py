"""WatchStatus: exact (every event once, in order, no gaps), resumable at any point,
served by any replica, cheap for many watchers and for watchers that stop reading."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2
from support.batch import TERMINAL
from support.csv_files import batch_csv
from support.eventually import eventually
from support.ingest_harness import IngestFactory, RunningIngest

Message = ingest_pb2.WatchStatusResponse


IN_FLIGHT = {"IMGPIPE_MAX_IN_FLIGHT": "4"}


@pytest.fixture
async def ingest(start_ingest: IngestFactory) -> RunningIngest:
    return await start_ingest(IN_FLIGHT, processor=True)


def batch(server: ImageServer, count: int, delay: float = 0.01) -> bytes:
    body = sample(48, 32, "JPEG", seed=3)
    return batch_csv([server.add(f"/w/{n}.jpg", body, delay=delay) for n in range(count)])


async def collect(
    stub: ingest_pb2_grpc.IngestServiceAsyncStub, request_id: str, after: int = 0
) -> list[Message]:
    request = ingest_pb2.WatchStatusRequest(request_id=request_id, after_sequence=after)
    return [message async for message in stub.WatchStatus(request)]


def without_snapshot_flag(messages: list[Message]) -> list[bytes]:
    out = []
    for message in messages:
        copy = Message()
        copy.CopyFrom(message)
        copy.snapshot = False
        out.append(copy.SerializeToString(deterministic=True))
    return out


def assert_exact(messages: list[Message], first: int) -> None:
    assert [m.sequence for m in messages] == list(range(first, first + len(messages)))
    assert [m.state in TERMINAL for m in messages] == [False] * (len(messages) - 1) + [True]


async def test_live_watch_then_every_resume_point_gives_the_same_suffix(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 12)))
    live = await collect(ingest.stub, submitted.request_id)
    assert live[0].snapshot
    assert_exact(live, live[0].sequence)
    # Created, then a claim and an outcome per image, then the terminal event.
    assert live[-1].sequence == 1 + 2 * 12 + 1
    assert live[-1].state == requests_pb2.REQUEST_STATE_COMPLETED
    assert live[-1].result_csv_url
    assert live[-1].progress.succeeded_images == 12

    history = await collect(ingest.stub, submitted.request_id, 1)
    assert_exact(history, 2)
    for k in range(1, live[-1].sequence):
        resumed = await collect(ingest.stub, submitted.request_id, k)
        assert without_snapshot_flag(resumed) == without_snapshot_flag(history[k - 1 :])
    # Resuming at the terminal sequence of a finished request sends nothing and ends.
    assert await collect(ingest.stub, submitted.request_id, live[-1].sequence) == []
    # A watch of a finished request from the start is its terminal snapshot alone.
    (snapshot,) = await collect(ingest.stub, submitted.request_id)
    assert snapshot.snapshot and snapshot.sequence == live[-1].sequence
    assert snapshot.result_csv_url == live[-1].result_csv_url


async def test_two_replicas_submit_on_one_and_watch_on_the_other(
    ingest: RunningIngest, start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    second = await start_ingest({**IN_FLIGHT, "IMGPIPE_PROCESSOR_TARGET": ingest.processor_target})
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 10)))
    messages = await collect(second.stub, submitted.request_id, after=1)
    assert_exact(messages, 2)
    assert messages[-1].state == requests_pb2.REQUEST_STATE_COMPLETED


async def test_200_concurrent_watchers_receive_the_identical_sequence(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 20)))
    channels = [grpc.aio.insecure_channel(ingest.target) for _ in range(4)]
    try:
        stubs = [ingest_pb2_grpc.IngestServiceStub(channels[n % 4]) for n in range(200)]
        results = await asyncio.gather(*(collect(s, submitted.request_id, 1) for s in stubs))
    finally:
        for channel in channels:
            await channel.close(None)
    reference = without_snapshot_flag(results[0])
    assert_exact(results[0], 2)
    assert all(without_snapshot_flag(r) == reference for r in results)
    assert ingest.app.notifier.watcher_count == 0  # every watcher let go


async def test_a_watcher_that_stops_reading_delays_no_one_and_catches_up(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 250)))
    stalled = ingest.stub.WatchStatus(
        ingest_pb2.WatchStatusRequest(request_id=submitted.request_id, after_sequence=1)
    )
    first = await stalled.read()  # then nothing is read while ~500 events happen
    assert isinstance(first, ingest_pb2.WatchStatusResponse)
    reader = await collect(ingest.stub, submitted.request_id, after=1)
    assert reader[-1].state == requests_pb2.REQUEST_STATE_COMPLETED
    rest = []
    # read() answers grpc.aio.EOF, not a message, once the stream has ended.
    while isinstance(message := await stalled.read(), ingest_pb2.WatchStatusResponse):
        rest.append(message)
    assert_exact([first, *rest], 2)
    assert len(rest) + 1 == len(reader) > 500


async def test_a_watcher_that_goes_away_frees_what_it_held(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch(image_server, 40, delay=0.2))
    )
    call = ingest.stub.WatchStatus(ingest_pb2.WatchStatusRequest(request_id=submitted.request_id))
    await call.read()

    async def watchers() -> int:
        return ingest.app.notifier.watcher_count

    await eventually(watchers, lambda n: n == 1, what="one watcher")
    call.cancel()
    await eventually(watchers, lambda n: n == 0, what="no watcher")
    with contextlib.suppress(grpc.aio.AioRpcError):
        await ingest.stub.Cancel(ingest_pb2.CancelRequest(request_id=submitted.request_id))
