"""Helpers for end-to-end runs: a batch of slow-ish sources, submit, poll, inspect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import grpc

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2

TERMINAL = {
    requests_pb2.REQUEST_STATE_COMPLETED,
    requests_pb2.REQUEST_STATE_PARTIALLY_COMPLETED,
    requests_pb2.REQUEST_STATE_FAILED,
    requests_pb2.REQUEST_STATE_CANCELLED,
}

# Short leases and fast retries, so faults are recovered from in seconds.
FAULT_ENV = {
    "IMGPIPE_LEASE_SECONDS": "4",
    "IMGPIPE_CALL_TIMEOUT": "3",
    "IMGPIPE_SWEEP_INTERVAL": "0.5",
    "IMGPIPE_POLL_INTERVAL": "0.3",
    "IMGPIPE_WATCH_POLL_INTERVAL": "0.5",
    "IMGPIPE_RETRY_BASE_SECONDS": "0.2",
    "IMGPIPE_RETRY_CAP_SECONDS": "2",
    "IMGPIPE_RETRY_MAX_ATTEMPTS": "20",
    "IMGPIPE_MAX_IN_FLIGHT": "8",
    "IMGPIPE_GRACE_SECONDS": "5",
    "IMGPIPE_LOG_LEVEL": "WARNING",
}


def serve_batch(server: ImageServer, count: int, delay: float = 0.05) -> list[str]:
    """count distinct URLs (one path each, so hits count calls per image)."""
    body = sample(160, 120, "JPEG", seed=7)
    return [server.add(f"/batch/{n}.jpg", body, delay=delay) for n in range(count)]


def batch_csv(urls: list[str], per_row: int = 4) -> bytes:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for row, start in enumerate(range(0, len(urls), per_row), start=1):
        cell = ",".join(urls[start : start + per_row])
        lines.append(f'{row},Item {row},"{cell}"')
    return ("\n".join(lines) + "\n").encode()


def stub(target: str) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel(target))


def submit(target: str, csv: bytes) -> str:
    return stub(target).Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=30).request_id


def status(target: str, request_id: str) -> ingest_pb2.GetStatusResponse:
    return stub(target).GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id), timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def done_count(target: str, request_id: str) -> int:
    p = status(target, request_id).progress
    return p.succeeded_images + p.failed_images + p.cancelled_images


def wait_terminal(
    target: str, request_id: str, timeout: float = 90
) -> ingest_pb2.GetStatusResponse:
    last: list[ingest_pb2.GetStatusResponse] = []

    def terminal() -> bool:
        try:
            last[:] = [status(target, request_id)]
        except grpc.RpcError:
            return False  # ingest restarting
        return last[0].state in TERMINAL

    wait_until(terminal, timeout, f"request {request_id} terminal")
    return last[0]


def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def terminal_events_per_image(dsn: str, request_id: str) -> dict[tuple[int, int], int]:
    rows = query(
        dsn,
        "SELECT serial_number, idx, count(*) AS n FROM events WHERE request_id = $1"
        " AND image_state IN ('SUCCEEDED', 'FAILED', 'CANCELLED') GROUP BY 1, 2",
        request_id,
    )
    return {(r["serial_number"], r["idx"]): r["n"] for r in rows}
