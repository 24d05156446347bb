"""ProcessorService in-process on port 0, called through a real channel: a real S3 server
(moto), a loopback image server and a hostile source server of our own."""

from __future__ import annotations

import asyncio
import io
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from devstack.image_server import ImageServer
from devstack.ports import free_port
from devstack.sample_images import sample
from imgpipe.common.config import S3Settings
from imgpipe.common.errors import SettingsError, StorageError
from imgpipe.common.service import add_ops_routes
from imgpipe.common.storage import open_storage
from imgpipe.ingest.processor_calls import image_error
from imgpipe.ingest.sources import throttled_for
from imgpipe.processor.main import ProcessorApp
from imgpipe.processor.servicer import MAX_IMAGES_PER_CALL
from imgpipe.processor.settings import FetchSettings, Settings
from imgpipe.v1 import processor_pb2, processor_pb2_grpc, requests_pb2
from support.rpc_errors import field_violations

PNG = sample(160, 120, "PNG")


def new_key() -> str:
    return f"{uuid.uuid4()}/1-0.jpg"


@dataclass
class Processor:
    app: ProcessorApp
    channel: grpc.aio.Channel
    stub: processor_pb2_grpc.ProcessorServiceAsyncStub

    async def process(
        self, source_url: str, output_key: str | None = None, quality: int = 0
    ) -> processor_pb2.ProcessImageResponse:
        return await self.stub.ProcessImage(
            processor_pb2.ProcessImageRequest(
                source_url=source_url,
                output_key=output_key or new_key(),
                options=requests_pb2.CompressionOptions(quality=quality),
            ),
            timeout=10,
        )

    async def fails(
        self, source_url: str, output_key: str | None = None, quality: int = 0
    ) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.process(source_url, output_key, quality)
        return caught.value


StartProcessor = Callable[[dict[str, str]], Awaitable[Processor]]


@pytest.fixture
async def start_processor() -> AsyncIterator[StartProcessor]:
    """Starts processors with the given environment on loopback port 0; stops them after."""
    async with AsyncExitStack() as stack:

        async def start(env: dict[str, str]) -> Processor:
            settings = Settings.from_env(
                {
                    "IMGPIPE_GRPC_ADDR": "127.0.0.1:0",
                    "IMGPIPE_HTTP_ADDR": "127.0.0.1:0",
                    "IMGPIPE_GRACE_SECONDS": "1",
                    "IMGPIPE_WORKERS": "2",
                    **env,
                }
            )
            app = ProcessorApp(settings)
            stack.push_async_callback(app.stop)
            await app.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
            stack.push_async_callback(channel.close, None)
            return Processor(app, channel, processor_pb2_grpc.ProcessorServiceStub(channel))

        yield start


@pytest.fixture
async def processor(
    start_processor: StartProcessor, s3_env: dict[str, str]
) -> AsyncIterator[Processor]:
    yield await start_processor({**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true"})


class HostileSource:
    """Routes the image server cannot play: slow, redirecting, streamed without a length."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.port = 0
        app = web.Application()
        app.router.add_get("/slow.png", self.slow)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/to-file", self.to_file)
        app.router.add_get("/streamed", self.streamed)
        self.runner = web.AppRunner(app, access_log=None)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def slow(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        self.arrived.set()
        await self.release.wait()
        return web.Response(body=PNG, content_type="image/png")

    async def loop(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        raise web.HTTPFound("/loop")

    async def to_file(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def streamed(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\0" * 1024)
        await response.write_eof()
        return response


@pytest.fixture
async def hostile() -> AsyncIterator[HostileSource]:
    source = HostileSource()
    await source.runner.setup()
    site = web.TCPSite(source.runner, "127.0.0.1", 0)
    await site.start()
    source.port = int(source.runner.addresses[0][1])
    try:
        yield source
    finally:
        source.release.set()
        await source.runner.cleanup()


async def test_success_stores_a_jpeg_in_s3(
    processor: Processor, image_server: ImageServer, s3_env: dict[str, str]
) -> None:
    source = image_server.add("/photo.png", PNG)
    key = new_key()

    response = await processor.process(source, key)

    assert response.output_key == key
    assert response.content_type == "image/jpeg"
    assert response.source_format == "PNG"
    assert (response.width, response.height) == (160, 120)
    assert response.input_bytes == len(PNG)
    storage = open_storage(s3_env["IMGPIPE_STORAGE_URL"], S3Settings.from_env(s3_env))
    stored = await asyncio.to_thread(storage.get, key)
    assert response.output_bytes == len(stored)
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.size) == ("JPEG", (160, 120))
    assert key in response.output_url
    async with aiohttp.ClientSession() as http, http.get(response.output_url) as fetched:
        assert (fetched.status, fetched.content_type) == (200, "image/jpeg")
        assert await fetched.read() == stored


async def test_a_put_that_s3_refuses_is_a_storage_error_with_its_code(
    s3_env: dict[str, str],
) -> None:
    storage = open_storage("s3://imgpipe-no-such-bucket", S3Settings.from_env(s3_env))
    try:
        with pytest.raises(StorageError, match=r"put r/1-0\.jpg: HTTP 404 NoSuchBucket"):
            await storage.put("r/1-0.jpg", b"jpeg", "image/jpeg")
    finally:
        await storage.close()


async def test_file_storage(
    start_processor: StartProcessor, image_server: ImageServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    processor = await start_processor(
        {"IMGPIPE_STORAGE_URL": out.as_uri(), "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true"}
    )
    key = new_key()

    response = await processor.process(image_server.add("/a.jpg", sample(64, 48, "JPEG")), key)

    stored = out / key
    assert response.output_url == stored.as_uri()
    assert response.output_bytes == stored.stat().st_size
    with Image.open(stored) as image:
        assert image.size == (64, 48)
    # The request's folder deleted (DeleteRequest, retention): the next object makes it again.
    shutil.rmtree(stored.parent)
    await processor.process(image_server.add("/b.jpg", sample(32, 24, "JPEG")), key)
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no partial file left


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, grpc.StatusCode.FAILED_PRECONDITION),
        (410, grpc.StatusCode.FAILED_PRECONDITION),
        (403, grpc.StatusCode.FAILED_PRECONDITION),
        (500, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (429, grpc.StatusCode.UNAVAILABLE),
        (408, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_source_status_codes(
    processor: Processor, image_server: ImageServer, status: int, code: grpc.StatusCode
) -> None:
    source = image_server.add("/flaky.png", PNG)
    image_server.fail_first("/flaky.png", status)

    error = await processor.fails(source)

    assert error.code() == code
    assert str(status) in (error.details() or "")
    # The scripted failure is spent: the same call now succeeds.
    assert (await processor.process(source)).width == 160


async def test_unreachable_source_is_unavailable(processor: Processor) -> None:
    error = await processor.fails(f"http://127.0.0.1:{free_port()}/gone.png")
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_not_an_image_is_permanent(processor: Processor, image_server: ImageServer) -> None:
    source = image_server.add("/page.jpg", b"<html><body>soon</body></html>", "text/html")
    error = await processor.fails(source)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a JPEG" in (error.details() or "")


async def test_bad_arguments(processor: Processor, image_server: ImageServer) -> None:
    source = image_server.add("/ok.png", PNG)

    error = await processor.fails(source, quality=96)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["options.quality"]

    error = await processor.fails(source, quality=-1, output_key="../escape.jpg")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["output_key", "options.quality"]

    for key in ["/abs.jpg", "a//b.jpg", "a/./b.jpg", "a/../b.jpg", ".hidden.jpg"]:
        error = await processor.fails(source, output_key=key)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, key

    for url in ["ftp://127.0.0.1/a.png", "not a url", "", "http://user:pw@127.0.0.1/a.png"]:
        error = await processor.fails(url)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "pw" not in (error.details() or "")
    assert sum(image_server.hits.values()) == 0


async def test_private_sources_are_blocked_by_default(
    start_processor: StartProcessor, image_server: ImageServer, tmp_path: Path
) -> None:
    processor = await start_processor({"IMGPIPE_STORAGE_URL": tmp_path.as_uri()})
    image_server.add("/photo.png", PNG)
    port = image_server.port

    for source in [
        f"http://127.0.0.1:{port}/photo.png",
        f"http://localhost:{port}/photo.png",
        f"http://[::ffff:127.0.0.1]:{port}/photo.png",
        f"http://[::1]:{port}/photo.png",
        f"http://0.0.0.0:{port}/photo.png",
        f"http://2130706433:{port}/photo.png",
        f"http://0x7f.1:{port}/photo.png",
        f"http://api.localhost:{port}/photo.png",
    ]:
        error = await processor.fails(source)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, source
        assert "non-public" in (error.details() or ""), source
    assert sum(image_server.hits.values()) == 0


async def test_only_allowed_ports_are_fetched(
    start_processor: StartProcessor, image_server: ImageServer, tmp_path: Path
) -> None:
    processor = await start_processor(
        {
            "IMGPIPE_STORAGE_URL": tmp_path.as_uri(),
            "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true",
            "IMGPIPE_ALLOWED_PORTS": "80, 443",
        }
    )
    error = await processor.fails(image_server.add("/photo.png", PNG))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"port {image_server.port}; allowed ports: 80, 443" in (error.details() or "")
    assert sum(image_server.hits.values()) == 0


def test_allowed_ports_setting() -> None:
    base = {"IMGPIPE_STORAGE_URL": "file:///tmp/out"}
    assert FetchSettings.from_env(base).policy.allowed_ports == frozenset({80, 443})
    local = {**base, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true"}
    assert FetchSettings.from_env(local).policy.allowed_ports is None
    only_8080 = FetchSettings.from_env({**local, "IMGPIPE_ALLOWED_PORTS": "8080"})
    assert only_8080.policy.allowed_ports == frozenset({8080})
    for bad in ["http", "80;443", "0", "65536", ","]:
        with pytest.raises(SettingsError, match="IMGPIPE_ALLOWED_PORTS"):
            FetchSettings.from_env({**base, "IMGPIPE_ALLOWED_PORTS": bad})


async def test_a_body_over_the_byte_cap_is_permanent(
    start_processor: StartProcessor,
    s3_env: dict[str, str],
    image_server: ImageServer,
    hostile: HostileSource,
) -> None:
    processor = await start_processor(
        {**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true", "IMGPIPE_MAX_SOURCE_BYTES": "4096"}
    )
    with_length = image_server.add("/big.png", PNG)
    for source in [with_length, hostile.url("/streamed")]:
        error = await processor.fails(source)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, source
        assert "larger than 4096 bytes" in (error.details() or "")


async def test_redirects_are_limited_and_rechecked(
    start_processor: StartProcessor, s3_env: dict[str, str], hostile: HostileSource
) -> None:
    processor = await start_processor(
        {**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true", "IMGPIPE_MAX_REDIRECTS": "3"}
    )

    error = await processor.fails(hostile.url("/loop"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "more than 3" in (error.details() or "")
    assert hostile.hits["/loop"] == 4

    error = await processor.fails(hostile.url("/to-file"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "file:///etc/passwd" in (error.details() or "")


async def test_a_full_processor_refuses_at_once(
    start_processor: StartProcessor, s3_env: dict[str, str], hostile: HostileSource
) -> None:
    processor = await start_processor(
        {**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true", "IMGPIPE_MAX_IN_FLIGHT": "1"}
    )
    first = asyncio.create_task(processor.process(hostile.url("/slow.png")))
    await hostile.arrived.wait()

    error = await processor.fails(hostile.url("/slow.png"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hostile.hits["/slow.png"] == 1

    hostile.release.set()
    assert (await first).width == 160


async def test_a_source_too_slow_to_answer_is_unavailable(
    start_processor: StartProcessor, s3_env: dict[str, str], hostile: HostileSource
) -> None:
    processor = await start_processor(
        {**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true", "IMGPIPE_FETCH_READ_TIMEOUT": "0.2"}
    )
    error = await processor.fails(hostile.url("/slow.png"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "timed out" in (error.details() or "")


async def test_health_and_http_side(processor: Processor) -> None:
    health = health_pb2_grpc.HealthStub(processor.channel)
    for service in ["", "imgpipe.v1.ProcessorService"]:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    base = f"http://127.0.0.1:{processor.app.http_port}"
    async with aiohttp.ClientSession() as http:
        for path in ["/healthz", "/readyz"]:
            async with http.get(base + path) as response:
                assert response.status == 200, path
        async with http.get(base + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
    for name in ["imgpipe_processor_images_total", "imgpipe_processor_compress_seconds"]:
        assert name in text


async def test_readyz_is_503_when_not_serving() -> None:
    app = web.Application()
    add_ops_routes(app, lambda: False)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200


async def test_stopping_drains_the_calls_in_flight(
    start_processor: StartProcessor, s3_env: dict[str, str], hostile: HostileSource
) -> None:
    processor = await start_processor(
        {**s3_env, "IMGPIPE_ALLOW_PRIVATE_NETWORKS": "true", "IMGPIPE_GRACE_SECONDS": "10"}
    )
    first = asyncio.create_task(processor.process(hostile.url("/slow.png")))
    await hostile.arrived.wait()

    stopping = asyncio.create_task(processor.app.stop())
    async with aiohttp.ClientSession() as http:
        readyz = f"http://127.0.0.1:{processor.app.http_port}/readyz"
        async with http.get(readyz) as response:
            assert response.status == 503
    hostile.release.set()

    assert (await first).width == 160
    await stopping


async def test_process_images_answers_each_image_as_process_image_would(
    processor: Processor, image_server: ImageServer, s3_env: dict[str, str]
) -> None:
    good = image_server.add("/batch.png", PNG)
    throttled = image_server.add("/batch-busy.png", PNG)
    image_server.fail_first("/batch-busy.png", 429)
    keys = [new_key() for _ in range(4)]
    sources = [good, image_server.url("/batch-missing.png"), good, throttled]
    keys[2] = "../outside.jpg"
    request = processor_pb2.ProcessImagesRequest(
        images=[
            processor_pb2.ProcessImageRequest(source_url=s, output_key=k)
            for s, k in zip(sources, keys, strict=True)
        ]
    )

    answers = [a async for a in processor.stub.ProcessImages(request, timeout=10)]

    assert sorted(a.index for a in answers) == [0, 1, 2, 3]  # each image once
    by_index = {a.index: a for a in answers}
    assert by_index[0].WhichOneof("outcome") == "result"
    assert (by_index[0].result.output_key, by_index[0].result.width) == (keys[0], 160)
    storage = open_storage(s3_env["IMGPIPE_STORAGE_URL"], S3Settings.from_env(s3_env))
    stored = await asyncio.to_thread(storage.get, keys[0])
    assert by_index[0].result.output_bytes == len(stored)
    # The failures are ProcessImage's statuses, details included.
    errors = {i: image_error(by_index[i].status) for i in (1, 2, 3)}
    assert errors[1].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "404" in (errors[1].details() or "")
    assert errors[2].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(errors[2]) == ["output_key"]
    assert errors[3].code() == grpc.StatusCode.UNAVAILABLE
    assert throttled_for(errors[3]) == 30.0  # 429 without a Retry-After: the default wait


@pytest.mark.parametrize("count", [0, MAX_IMAGES_PER_CALL + 1])
async def test_process_images_refuses_a_call_of_no_or_too_many_images(
    processor: Processor, image_server: ImageServer, count: int
) -> None:
    source = image_server.add("/never.png", PNG)
    images = [
        processor_pb2.ProcessImageRequest(source_url=source, output_key=new_key())
        for _ in range(count)
    ]
    call = processor.stub.ProcessImages(
        processor_pb2.ProcessImagesRequest(images=images), timeout=10
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [a async for a in call]

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["images"]
    assert image_server.hits["/never.png"] == 0
