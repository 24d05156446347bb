"""A request of 100,000 images (the default cap): reading its status a page at a time and
its result CSV costs ingest memory for a page, not for the request.

Before, GetStatus and the result-CSV writer loaded every image of a request at once. Ingest
runs as a real process; its peak RSS (VmHWM, reset through /proc/PID/clear_refs after the
Submit) is read from /proc after every page of GetStatus and the whole result CSV over HTTP
have been read."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import aiohttp
import grpc

from devstack.bench.procstat import hwm_mib, rss_mib
from devstack.stack import Stack
from imgpipe.v1 import ingest_pb2, ingest_pb2_grpc, requests_pb2
from support.csv_files import batch_csv
from support.eventually import eventually_blocking

IMAGES = 100_000
# 100,000 images held at once cost ingest well over 100 MiB (protobuf messages, rows).
READ_GROWTH_BOUND_MIB = 40


async def _read_everything(target: str, http_url: str, request_id: str) -> tuple[int, int]:
    """(images seen through GetStatus pages, rows of the result CSV)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        images, token = 0, ""
        while True:
            page = await stub.GetStatus(
                ingest_pb2.GetStatusRequest(request_id=request_id, page_token=token)
            )
            images += sum(len(p.images) for p in page.products)
            token = page.next_page_token
            if not token:
                break
    rows = 0
    url = f"{http_url}/v1/requests/{request_id}/result.csv"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        async for line in response.content:
            rows += next(csv.reader(io.StringIO(line.decode()))) != []
    return images, rows - 1  # the header


def _submit_and_cancel(target: str, data: bytes) -> str:
    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        submitted = stub.Submit(ingest_pb2.SubmitRequest(csv=data), timeout=120)
        assert submitted.image_count == IMAGES
        stub.Cancel(ingest_pb2.CancelRequest(request_id=submitted.request_id))
        # The result CSV of a cancelled request is written just after the cancel.
        status = eventually_blocking(
            lambda: stub.GetStatus(
                ingest_pb2.GetStatusRequest(request_id=submitted.request_id, page_size=1)
            ),
            lambda s: s.result_csv_url != "",
            what="the result CSV of the cancelled request",
            within=120,
        )
        assert status.state == requests_pb2.REQUEST_STATE_CANCELLED
        return submitted.request_id


def test_status_and_result_csv_of_100000_images_keep_ingest_small(
    database_url: str, tmp_path: Path
) -> None:
    storage = {"IMGPIPE_STORAGE_URL": f"file://{tmp_path}/objects"}
    # Nothing is processed: the request is cancelled at once (its images all CANCELLED).
    env = {"IMGPIPE_PROCESSOR_TARGET": "127.0.0.1:9", "IMGPIPE_MAX_IN_FLIGHT": "1"}
    urls = [f"https://img.example/{n}.jpg" for n in range(IMAGES)]
    with Stack(
        database_url, storage, processors=1, log_dir=tmp_path / "logs", ingest_env=env
    ) as stack:
        pid = stack.pid("ingest")
        request_id = _submit_and_cancel(stack.ingest_target, batch_csv(urls, per_row=1))
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from here
        before = rss_mib(pid)
        images, rows = asyncio.run(
            _read_everything(stack.ingest_target, stack.ingest_http, request_id)
        )
        growth = hwm_mib(pid) - before
    assert (images, rows) == (IMAGES, IMAGES)
    assert growth < READ_GROWTH_BOUND_MIB, f"ingest's peak RSS grew by {growth:.0f} MiB"
