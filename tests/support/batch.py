"""Helpers for end-to-end runs: a batch of slow-ish sources, submit, poll, inspect."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import asyncpg
import grpc

from devstack.image_server import ImageServer
from devstack.sample_images import sample
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2
from support.eventually import eventually_blocking

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


def stub(target: str) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel(target))


def submit(target: str, csv: bytes) -> str:
    return stub(target).Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=30).request_id


def status(target: str, request_id: str) -> ingest_pb2.GetStatusResponse:
    return stub(target).GetStatus(ingest_pb2.GetStatusRequest(request_id=request_id), timeout=10)


def done_count(target: str, request_id: str) -> int:
    p = status(target, request_id).progress
    return p.succeeded_images + p.failed_images + p.cancelled_images


def wait_done(target: str, request_id: str, at_least: int) -> None:
    """Until at least that many images of the request are done."""
    eventually_blocking(
        lambda: done_count(target, request_id),
        lambda done: done >= at_least,
        what=f"{at_least} images of {request_id} done",
        within=60,
    )


def wait_terminal(
    target: str, request_id: str, timeout: float = 90
) -> ingest_pb2.GetStatusResponse:
    return eventually_blocking(
        lambda: status(target, request_id),
        lambda s: s.state in TERMINAL,
        what=f"request {request_id} terminal",
        within=timeout,
        ignoring=(grpc.RpcError,),  # ingest restarting
    )


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


# The stored result CSV's key ends in a random part (model.result_csv_key): unguessable.
_RESULT_CSV_KEY = re.compile(r"/result-[0-9a-f]{32}\.csv$")
RESULT_CSV_MASK = "/result-*.csv"


def masked_result_csv(key: str) -> str:
    """The key with the result CSV's random part replaced by `*`; other keys unchanged."""
    return _RESULT_CSV_KEY.sub(RESULT_CSV_MASK, key)


def object_path(url: str) -> str:
    """BUCKET/KEY of an unsigned s3:// URL (the stored result CSV's) or of a path-style
    presigned one (GetStatus signs when read): equal when both name the same object."""
    if not url:
        return ""
    parts = urlsplit(url)
    return parts.netloc + parts.path if parts.scheme == "s3" else parts.path.lstrip("/")
