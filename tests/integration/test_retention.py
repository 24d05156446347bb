"""Retention and deletion against real PostgreSQL, a real processor and an S3 server:
DeleteRequest (gRPC and HTTP) and the retention sweep remove a request's rows and objects
and leave other requests' intact."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import grpc
import pytest

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.common.storage import Storage
from imgpipe.v1 import ingest_pb2
from support.batch import TERMINAL
from support.csv_files import batch_csv
from support.ingest_harness import IngestFactory, RunningIngest

# Each table with a request's rows, by the column that names the request.
TABLES = {
    "requests": "id",
    "products": "request_id",
    "images": "request_id",
    "events": "request_id",
    "outbox": "request_id",
}


@pytest.fixture
async def ingest(start_ingest: IngestFactory, s3_env: dict[str, str]) -> RunningIngest:
    env = {
        **s3_env,
        "IMGPIPE_AUTH_TOKENS": "alpha-token,beta-token",
        # The sweep runs when a test says so.
        "IMGPIPE_RETENTION_INTERVAL": "3600",
    }
    return await start_ingest(env, processor=True, processor_env=s3_env)


def bearer(token: str = "alpha-token") -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def finished_request(ingest: RunningIngest, server: ImageServer, name: str) -> str:
    body = sample(64, 48, "JPEG", seed=3)
    urls = [server.add(f"/{name}/{n}.jpg", body) for n in range(3)]
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(urls, per_row=2)), metadata=bearer()
    )
    for _ in range(600):
        status = await ingest.stub.GetStatus(
            ingest_pb2.GetStatusRequest(request_id=submitted.request_id), metadata=bearer()
        )
        if status.state in TERMINAL and status.result_csv_url:
            return submitted.request_id
        await asyncio.sleep(0.05)
    raise TimeoutError(submitted.request_id)


async def object_keys(database_url: str, request_id: str) -> list[str]:
    """The request's images and its result CSV (stored at an unguessable key)."""
    conn = await asyncpg.connect(database_url)
    try:
        result_csv = await conn.fetchval(
            "SELECT result_csv_url FROM requests WHERE id = $1", uuid.UUID(request_id)
        )
    finally:
        await conn.close()
    images = [f"{request_id}/1-0.jpg", f"{request_id}/1-1.jpg", f"{request_id}/2-0.jpg"]
    return [*images, result_csv]


async def stored(storage: Storage, keys: list[str]) -> list[str]:
    def present(key: str) -> bool:
        try:
            storage.get(key)
        except KeyError:
            return False
        return True

    return [k for k in keys if await asyncio.to_thread(present, k)]


async def row_counts(database_url: str, request_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            table: await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid.UUID(request_id)
            )
            for table, column in TABLES.items()
        }
    finally:
        await conn.close()


async def test_delete_request_removes_rows_and_objects_and_nothing_else(
    ingest: RunningIngest, image_server: ImageServer, storage: Storage, database_url: str
) -> None:
    doomed = await finished_request(ingest, image_server, "doomed")
    kept = await finished_request(ingest, image_server, "kept")
    doomed_keys = await object_keys(database_url, doomed)
    kept_keys = await object_keys(database_url, kept)
    assert await stored(storage, doomed_keys) == doomed_keys

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.DeleteRequest(
            ingest_pb2.DeleteRequestRequest(request_id=doomed), metadata=bearer("beta-token")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # not the owner: nothing happens
    assert await stored(storage, doomed_keys) == doomed_keys

    await ingest.stub.DeleteRequest(
        ingest_pb2.DeleteRequestRequest(request_id=doomed), metadata=bearer()
    )
    assert await stored(storage, doomed_keys) == []
    assert set((await row_counts(database_url, doomed)).values()) == {0}
    for call in (
        ingest.stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=doomed), metadata=bearer()),
        ingest.stub.DeleteRequest(
            ingest_pb2.DeleteRequestRequest(request_id=doomed), metadata=bearer()
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    assert await stored(storage, kept_keys) == kept_keys
    assert all(n > 0 for n in (await row_counts(database_url, kept)).values())

    # The final pass over the deleted request's objects runs and ends its purge row.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE object_purges SET available_at = now(), final_at = now()")
        assert await ingest.app.retention.sweep() == (0, 1)
        assert await conn.fetchval("SELECT count(*) FROM object_purges") == 0
    finally:
        await conn.close()


async def test_delete_over_http_cancels_a_running_request(
    ingest: RunningIngest, image_server: ImageServer, storage: Storage, database_url: str
) -> None:
    body = sample(64, 48, "JPEG", seed=4)
    # Slow sources: the request is still running when it is deleted.
    urls = [image_server.add(f"/slow/{n}.jpg", body, delay=0.5) for n in range(40)]
    submitted = await ingest.stub.Submit(
        ingest_pb2.SubmitRequest(csv=batch_csv(urls)), metadata=bearer()
    )
    url = f"http://127.0.0.1:{ingest.app.http_port}/v1/requests/{submitted.request_id}"
    headers = {"Authorization": "Bearer alpha-token"}
    async with aiohttp.ClientSession() as http:
        async with http.delete(url, headers=headers) as response:
            assert response.status == 204
        for _ in range(2):
            async with http.delete(url, headers=headers) as response:
                assert response.status == 404
        async with http.get(url, headers=headers) as response:
            assert response.status == 404
    assert set((await row_counts(database_url, submitted.request_id)).values()) == {0}


async def test_retention_sweep_deletes_only_requests_past_the_period(
    ingest: RunningIngest, image_server: ImageServer, storage: Storage, database_url: str
) -> None:
    old = await finished_request(ingest, image_server, "old")
    recent = await finished_request(ingest, image_server, "recent")
    old_keys = await object_keys(database_url, old)
    recent_keys = await object_keys(database_url, recent)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE requests SET completed_at = now() - interval '31 days' WHERE id = $1",
            uuid.UUID(old),
        )
        deleted, _ = await ingest.app.retention.sweep()
    finally:
        await conn.close()
    assert deleted == 1
    assert set((await row_counts(database_url, old)).values()) == {0}
    assert await stored(storage, old_keys) == []
    assert all(n > 0 for n in (await row_counts(database_url, recent)).values())
    assert await stored(storage, recent_keys) == recent_keys
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ingest.stub.GetStatus(ingest_pb2.GetStatusRequest(request_id=old), metadata=bearer())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
