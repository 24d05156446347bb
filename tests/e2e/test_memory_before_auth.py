"""Unauthenticated calls cost ingest little memory: their bodies are never read.

Ingest runs as a real process; its peak RSS (VmHWM) is read from /proc before and after
six concurrent Submits of 15 MiB each without a token, over gRPC and over HTTP. Before,
each body was received whole before the token was looked at (six 60 MiB Submits took
ingest from 54 to 578 MiB)."""

from __future__ import annotations

import asyncio
import io
import urllib.request
from pathlib import Path

import aiohttp
import grpc

from devstack.bench.procstat import hwm_mib
from devstack.stack import Stack
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc

CONCURRENT = 6
BODY_BYTES = 15 * 1024 * 1024  # under the default largest message (16 MiB and a little)
# Six bodies received whole would be 90 MiB, twice that once deserialized; what is left is
# the transport's flow-control windows and first-use allocations (some 10-35 MiB measured
# on a loaded machine).
PEAK_GROWTH_BOUND_MIB = 45


async def _unauthenticated_grpc(target: str, csv: bytes) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                await stub.Submit(ingest_pb2.SubmitRequest(csv=csv), timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return list(await asyncio.gather(*(one() for _ in range(CONCURRENT))))


async def _unauthenticated_http(base: str, csv: bytes) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            try:
                async with session.post(
                    f"{base}/v1/requests",
                    data=io.BytesIO(csv),
                    headers={"Content-Type": "text/csv", "Authorization": "Bearer wrong"},
                ) as response:
                    return response.status
            except aiohttp.ClientError:
                return 401  # refused and closed before the whole body was sent

        return list(await asyncio.gather(*(one() for _ in range(CONCURRENT))))


def test_unauthenticated_large_submits_cost_ingest_no_memory(
    database_url: str, tmp_path: Path
) -> None:
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    env = {"IMGPIPE_AUTH_TOKENS": "the-token"}
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", ingest_env=env
    ) as stack:
        pid = stack.pid("ingest")
        with urllib.request.urlopen(f"{stack.ingest_http}/healthz", timeout=10):
            pass
        before = hwm_mib(pid)
        csv = b"S. No.,Product Name,Input Image Urls\n" + b"x" * BODY_BYTES
        codes = asyncio.run(_unauthenticated_grpc(stack.ingest_target, csv))
        statuses = asyncio.run(_unauthenticated_http(stack.ingest_http, csv))
        growth = hwm_mib(pid) - before
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * CONCURRENT
    assert statuses == [401] * CONCURRENT
    assert growth < PEAK_GROWTH_BOUND_MIB, f"ingest's peak RSS grew by {growth:.0f} MiB"
