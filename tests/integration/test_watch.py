"""WatchStatus: exact (every event once, in order, no gaps), resumable at any point,
served by any replica, cheap for many watchers and for watchers that stop reading."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import grpc
import pytest

from devstack.bench.harness import ParkedProcessor
from devstack.image_server import ImageServer
from devstack.postgres import PostgresServer, PrivateCluster
from devstack.sample_images import sample
from imgpipe.ingest.model import ImageState, Outcome
from imgpipe.ingest.store import Lease
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
    # Created, started, then an outcome per image (a claim is no event), then terminal.
    assert live[-1].sequence == 1 + 1 + 12 + 1
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


async def test_200_watchers_receive_byte_identical_streams(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 20)))
    request = ingest_pb2.WatchStatusRequest(request_id=submitted.request_id, after_sequence=1)
    channels = [grpc.aio.insecure_channel(ingest.target) for _ in range(4)]
    try:
        # No parsing: each watcher keeps the bytes it was sent.
        calls = [
            channels[n % 4].unary_stream(
                "/imgpipe.v1.IngestService/WatchStatus",
                request_serializer=ingest_pb2.WatchStatusRequest.SerializeToString,
                response_deserializer=bytes,
            )
            for n in range(200)
        ]

        async def raw(
            call: grpc.aio.UnaryStreamMultiCallable[ingest_pb2.WatchStatusRequest, bytes],
        ) -> list[bytes]:
            return [message async for message in call(request)]

        streams = await asyncio.gather(*(raw(call) for call in calls))
    finally:
        for channel in channels:
            await channel.close(None)
    assert all(stream == streams[0] for stream in streams)
    assert_exact([Message.FromString(data) for data in streams[0]], 2)
    assert ingest.app.notifier.watcher_count == 0


async def test_a_watcher_that_stops_reading_delays_no_one_and_catches_up(
    ingest: RunningIngest, image_server: ImageServer
) -> None:
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 500)))
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


async def test_resume_inside_a_coalesced_batch_gives_exactly_the_rest(
    start_ingest: IngestFactory, database_url: str
) -> None:
    urls = [f"https://img.example/{n}.jpg" for n in range(4)]
    with ParkedProcessor() as parked:
        ingest = await start_ingest({**IN_FLIGHT, "IMGPIPE_PROCESSOR_TARGET": parked.target})
        submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch_csv(urls)))
        rid = uuid.UUID(submitted.request_id)
        conn = await asyncpg.connect(database_url)
        try:

            async def leased() -> list[asyncpg.Record]:
                return await conn.fetch(
                    "SELECT id, attempts, lease_owner FROM images"
                    " WHERE state = 'PROCESSING' ORDER BY idx"
                )

            held = await eventually(
                leased, lambda rows: len(rows) == 4, what="every image held, parked"
            )
            live = ingest.stub.WatchStatus(
                ingest_pb2.WatchStatusRequest(request_id=submitted.request_id)
            )
            snapshot = await live.read()
            assert isinstance(snapshot, Message)
            assert snapshot.snapshot and snapshot.sequence == 2  # created, started
            results = [
                (
                    Lease(r["id"], r["attempts"], r["lease_owner"]),
                    Outcome(ImageState.SUCCEEDED, output_key=f"out/{n}.jpg"),
                )
                for n, r in enumerate(held)
            ]
            assert await ingest.app.store.finish_many(results) == [True] * 4
            rest: list[Message] = []
            while isinstance(message := await live.read(), Message):  # until EOF
                rest.append(message)
            batch_times = await conn.fetch(
                "SELECT DISTINCT created_at FROM events"
                " WHERE request_id = $1 AND sequence BETWEEN 3 AND 6",
                rid,
            )
        finally:
            await conn.close()
    assert len(batch_times) == 1  # events 3-6 came from one statement
    assert [m.sequence for m in rest] == [3, 4, 5, 6, 7]
    assert_exact(rest, 3)
    assert [m.progress.succeeded_images for m in rest[:4]] == [1, 2, 3, 4]
    assert rest[-1].state == requests_pb2.REQUEST_STATE_COMPLETED
    history = await collect(ingest.stub, submitted.request_id, 2)
    assert without_snapshot_flag(history) == without_snapshot_flag(rest)
    for k in (3, 4, 5, 6):  # inside and at the end of the batch
        resumed = await collect(ingest.stub, submitted.request_id, k)
        assert [m.sequence for m in resumed] == list(range(k + 1, 8))
        assert without_snapshot_flag(resumed) == without_snapshot_flag(rest[k - 2 :])


async def test_watchers_behind_the_feeds_window_read_their_own_pages_and_miss_nothing(
    start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    # A window of one event: a watcher that is not at the newest event reads from the
    # table, as one that stops reading must.
    ingest = await start_ingest({**IN_FLIGHT, "IMGPIPE_WATCH_WINDOW": "1"}, processor=True)
    submitted = await ingest.stub.Submit(ingest_pb2.SubmitRequest(csv=batch(image_server, 500)))
    stalled = ingest.stub.WatchStatus(
        ingest_pb2.WatchStatusRequest(request_id=submitted.request_id, after_sequence=1)
    )
    first = await stalled.read()
    assert isinstance(first, Message)
    live = await collect(ingest.stub, submitted.request_id, after=1)
    rest = []
    while isinstance(message := await stalled.read(), Message):
        rest.append(message)
    assert_exact([first, *rest], 2)
    assert_exact(live, 2)
    assert without_snapshot_flag([first, *rest]) == without_snapshot_flag(live)
    assert live[-1].state == requests_pb2.REQUEST_STATE_COMPLETED


async def test_a_watch_ends_unavailable_while_the_database_is_down_and_resumes_after(
    pg_server: PostgresServer, start_ingest: IngestFactory, image_server: ImageServer
) -> None:
    if not isinstance(pg_server, PrivateCluster):
        pytest.skip("needs the private PostgreSQL cluster (DATABASE_URL was given)")
    ingest = await start_ingest({**IN_FLIGHT, "IMGPIPE_WATCH_POLL_INTERVAL": "0.1"}, processor=True)
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch(image_server, 20, delay=0.1))
    )
    call = ingest.stub.WatchStatus(ingest_pb2.WatchStatusRequest(request_id=submitted.request_id))
    snapshot = await call.read()
    assert isinstance(snapshot, Message) and snapshot.snapshot
    got = [snapshot]
    await asyncio.to_thread(pg_server.stop)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while isinstance(message := await call.read(), Message):
                got.append(message)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await asyncio.to_thread(pg_server.start)
    rest = await eventually(
        lambda: collect(ingest.stub, submitted.request_id, after=got[-1].sequence),
        what="the rest of the events once the database is back",
        ignoring=(grpc.aio.AioRpcError,),
    )
    assert_exact([*got[1:], *rest], got[0].sequence + 1)
    assert rest[-1].state == requests_pb2.REQUEST_STATE_COMPLETED
