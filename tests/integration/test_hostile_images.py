"""Bombs and tricks through a real processor: the console script `imgpipe-processor` as a
subprocess, called over gRPC, fetching from a hostile loopback source.

Every image fails with the right code within its timeout, the processor stays SERVING and
still works, and its peak RSS (VmHWM) stays under RSS_BOUND. Sources are on loopback, so
the processor runs with private networks allowed; the SSRF guard has its own test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import hostile_payloads as payloads
from devstack.ports import free_port
from devstack.sample_images import sample
from imgpipe.v1 import processor_pb2, processor_pb2_grpc
from support.eventually import eventually

MIB = 1024 * 1024
MAX_SOURCE_BYTES = 8 * MIB
TOTAL_TIMEOUT = 3.0
READ_TIMEOUT = 1.5  # longer than the 1 s between the trickling source's bytes
# The processor's peak resident memory over the whole test (VmHWM of it, its fork server
# and its 2 codec workers, added up): about 60 + 35 + 2 x 40 MB of baseline, and the
# decodes in flight may take CODEC_MEMORY_MIB together (20 truncated 6 MP JPEGs at once are
# admitted a few at a time). The 100k x 100k bomb decoded would take 30 GB, the 9000 x 9000
# progressive CMYK about 1 GB, and a failed decode whose 18 MB of pixels outlived its call
# would, over the repeats, take 360 MB more.
CODEC_MEMORY_MIB = 128
RSS_BOUND_MB = 200 + CODEC_MEMORY_MIB
TRUNCATED_REPEATS = 20
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Case:
    path: str
    code: grpc.StatusCode
    says: str


CASES = [
    Case("/bomb.png", FAILED_PRECONDITION, "too many pixels"),
    Case("/ten-thousand-frames.gif", FAILED_PRECONDITION, "more than 1000 frames"),
    Case("/truncated.jpg", FAILED_PRECONDITION, "corrupt or truncated JPEG"),
    Case("/page.jpg", FAILED_PRECONDITION, "an HTML page, not a JPEG"),
    Case("/photoshop.jpg", FAILED_PRECONDITION, "Photoshop document (PSD)"),
    Case("/postscript.jpg", FAILED_PRECONDITION, "PostScript (EPS)"),
    Case("/gzip-bomb.jpg", FAILED_PRECONDITION, "gzip-compressed data"),
    Case("/scan-bomb.jpg", FAILED_PRECONDITION, "scans, more than the limit of 100"),
    Case("/cmyk.jpg", FAILED_PRECONDITION, f"the codec memory budget of {CODEC_MEMORY_MIB} MiB"),
    Case("/rle.bmp", FAILED_PRECONDITION, "RLE8-compressed; only uncompressed BMP"),
    Case("/flood", FAILED_PRECONDITION, f"larger than {MAX_SOURCE_BYTES} bytes"),
    Case("/endless", UNAVAILABLE, "timed out"),
    Case("/one-byte-a-second.jpg", UNAVAILABLE, "timed out"),
]


class HostileSource:
    """Static hostile files, plus bodies that never end or trickle."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.port = 0
        self.files: dict[str, tuple[bytes, dict[str, str]]] = {
            "/bomb.png": (payloads.png_header_only(100_000, 100_000), {}),
            "/ten-thousand-frames.gif": (payloads.gif_with_frames(10_000), {}),
            "/truncated.jpg": (payloads.truncated_jpeg(3000, 2000), {}),
            "/page.jpg": (b"<!DOCTYPE html><html><body>Moved</body></html>", {}),
            "/photoshop.jpg": (payloads.psd(), {}),
            "/postscript.jpg": (payloads.eps(), {}),
            # 64 MiB once inflated, 8 times the byte cap.
            "/gzip-bomb.jpg": (payloads.gzip_of_zeros(64), {"Content-Encoding": "gzip"}),
            "/scan-bomb.jpg": (payloads.scan_bomb(8000, 8000, 5000), {}),
            "/cmyk.jpg": (payloads.progressive_cmyk(9000, 9000), {}),
            "/rle.bmp": (payloads.rle_bmp(8000, 8000), {}),
            "/photo.jpg": (sample(320, 240, "JPEG"), {}),
        }
        app = web.Application()
        app.router.add_get("/flood", self.flood)
        app.router.add_get("/endless", self.endless)
        app.router.add_get("/one-byte-a-second.jpg", self.one_byte_a_second)
        app.router.add_get("/{name}", self.static)
        self.runner = web.AppRunner(app, access_log=None)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def static(self, request: web.Request) -> web.Response:
        body, headers = self.files[request.path]
        return web.Response(body=body, headers={"Content-Type": "image/jpeg", **headers})

    async def flood(self, request: web.Request) -> web.StreamResponse:
        """A body without a length that never ends, sent as fast as it is read."""
        return await self._stream(request, b"\xff" * 65536, pause=0)

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """A body that never ends, slowly enough to stay under the byte cap."""
        return await self._stream(request, b"\xff" * 1024, pause=0.05)

    async def one_byte_a_second(self, request: web.Request) -> web.StreamResponse:
        body = self.files["/photo.jpg"][0]
        response = web.StreamResponse(
            headers={"Content-Type": "image/jpeg", "Content-Length": str(len(body))}
        )
        await response.prepare(request)
        for byte in body:
            if not await self._send(response, bytes([byte]), pause=1.0):
                break
        return response

    async def _stream(self, request: web.Request, chunk: bytes, pause: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while await self._send(response, chunk, pause):
            pass
        return response

    async def _send(self, response: web.StreamResponse, data: bytes, pause: float) -> bool:
        """Writes data then waits pause seconds; False once the client has gone or the
        server stops."""
        try:
            await response.write(data)
        except ConnectionError:
            return False
        if pause:
            await asyncio.sleep(pause)
        return not self.stopping.is_set()


@pytest.fixture
async def hostile() -> AsyncIterator[HostileSource]:
    source = HostileSource()
    await source.runner.setup()
    await web.TCPSite(source.runner, "127.0.0.1", 0).start()
    source.port = int(source.runner.addresses[0][1])
    try:
        yield source
    finally:
        source.stopping.set()
        await source.runner.cleanup()


@dataclass
class ProcessorProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    log: Path

    def peak_rss_mb(self) -> float:
        """The peak resident set sizes (VmHWM) of the processor, its fork server and its
        codec workers, added up: at least the peak of the whole, since their peaks need not
        coincide."""
        return sum(_peak_rss_mb(pid) for pid in _family(self.process.pid))


def _family(pid: int) -> list[int]:
    """pid and every process descending from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(") ", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    family, queue = [], [pid]
    while queue:
        current = queue.pop()
        family.append(current)
        queue += children.get(current, [])
    return family


def _peak_rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.fixture
def processor_process(tmp_path: Path) -> Iterator[ProcessorProcess]:
    script = Path(sys.executable).with_name("imgpipe-processor")
    if not script.exists():
        pytest.skip(f"the console script is not installed: {script}")
    grpc_port = free_port()
    env = {
        **os.environ,
        "IMGPIPE_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "IMGPIPE_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "IMGPIPE_STORAGE_URL": (tmp_path / "out").as_uri(),
        "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "IMGPIPE_MAX_SOURCE_BYTES": str(MAX_SOURCE_BYTES),
        "IMGPIPE_FETCH_CONNECT_TIMEOUT": "1",
        "IMGPIPE_FETCH_READ_TIMEOUT": str(READ_TIMEOUT),
        "IMGPIPE_FETCH_TOTAL_TIMEOUT": str(TOTAL_TIMEOUT),
        "IMGPIPE_WORKERS": "2",
        "IMGPIPE_CODEC_MEMORY_BYTES": str(CODEC_MEMORY_MIB * MIB),
        "IMGPIPE_MAX_IN_FLIGHT": "64",
        "IMGPIPE_GRACE_SECONDS": "2",
        "IMGPIPE_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "processor.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([str(script)], env=env, stderr=stderr)
    try:
        yield ProcessorProcess(process, grpc_port, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_serving(health: health_pb2_grpc.HealthStub, processor: ProcessorProcess) -> None:
    async def check() -> health_pb2.HealthCheckResponse:
        assert processor.process.poll() is None, processor.log.read_text()
        return await health.Check(health_pb2.HealthCheckRequest(), timeout=1)

    await eventually(
        check,
        lambda answer: answer.status == health_pb2.HealthCheckResponse.SERVING,
        what="the processor serving",
        ignoring=(grpc.aio.AioRpcError,),
    )


async def process(
    stub: processor_pb2_grpc.ProcessorServiceAsyncStub, source_url: str
) -> tuple[grpc.StatusCode, str]:
    """The status code and message of one call. Its deadline is well past the processor's
    own fetch timeout, so a source that never ends must be cut off by the processor."""
    try:
        await stub.ProcessImage(
            processor_pb2.ProcessImageRequest(
                source_url=source_url, output_key=f"{uuid.uuid4()}/1-0.jpg"
            ),
            timeout=TOTAL_TIMEOUT + 10,
        )
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_bombs_and_tricks_fail_cleanly(
    processor_process: ProcessorProcess, hostile: HostileSource
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{processor_process.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = processor_pb2_grpc.ProcessorServiceStub(channel)
        await wait_serving(health, processor_process)

        calls = [hostile.url(case.path) for case in CASES]
        calls += [hostile.url("/truncated.jpg")] * (TRUNCATED_REPEATS - 1)
        outcomes = await asyncio.gather(*(process(stub, url) for url in calls))

        for case, (code, details) in zip(CASES, outcomes, strict=False):
            assert code == case.code, (case.path, code, details)
            assert case.says in details, (case.path, details)
        for code, details in outcomes[len(CASES) :]:
            assert (code, "truncated" in details) == (FAILED_PRECONDITION, True), details

        # Still serving, and still doing its job.
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        code, details = await process(stub, hostile.url("/photo.jpg"))
        assert code == grpc.StatusCode.OK, details

    peak = processor_process.peak_rss_mb()
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"
    processor_process.process.send_signal(signal.SIGTERM)
    assert processor_process.process.wait(timeout=15) == 0, processor_process.log.read_text()
