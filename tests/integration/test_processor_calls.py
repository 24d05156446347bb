"""ProcessorCalls against a real gRPC server on loopback: images handed over together go
as one ProcessImages call, and each gets the answer a ProcessImage call of its own would
have had; processors that do not know ProcessImages get one image a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from imgpipe.common.errors import ServiceError
from imgpipe.common.grpc_errors import ErrorMappingInterceptor, status_of
from imgpipe.ingest.processor_calls import ProcessorCalls
from imgpipe.ingest.sources import throttled_for
from imgpipe.processor.errors import SourceNotFound, SourceThrottled
from imgpipe.v1 import processor_pb2, processor_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def answer(request: processor_pb2.ProcessImageRequest) -> processor_pb2.ProcessImageResponse:
    """By the source's name: ok, throttled (RetryInfo of 7 s) or gone."""
    name = request.source_url.rsplit("/", 1)[-1]
    if name.startswith("throttled"):
        raise SourceThrottled(f"{request.source_url} answered 429", 7.0)
    if name.startswith("gone"):
        raise SourceNotFound(f"{request.source_url} answered 404")
    return processor_pb2.ProcessImageResponse(output_key=request.output_key, width=len(name))


class Processor(processor_pb2_grpc.ProcessorServiceServicer):
    """Records each call as ("one" | "many", the names of its sources)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def ProcessImage(
        self, request: processor_pb2.ProcessImageRequest, context: Context
    ) -> processor_pb2.ProcessImageResponse:
        self.calls.append(("one", [request.source_url]))
        return answer(request)

    async def ProcessImages(
        self, request: processor_pb2.ProcessImagesRequest, context: Context
    ) -> AsyncIterator[processor_pb2.ProcessImagesResponse]:
        self.calls.append(("many", [image.source_url for image in request.images]))
        self.arrived.set()
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        for index in reversed(range(len(request.images))):  # any order
            try:
                result = answer(request.images[index])
            except ServiceError as exc:
                status = processor_pb2.ImageStatus.FromString(status_of(exc).SerializeToString())
                yield processor_pb2.ProcessImagesResponse(index=index, status=status)
            else:
                yield processor_pb2.ProcessImagesResponse(index=index, result=result)


class OlderProcessor(Processor):
    """A processor of a version before ProcessImages."""

    async def ProcessImages(  # type: ignore[override]
        self, request: processor_pb2.ProcessImagesRequest, context: Context
    ) -> None:
        self.calls.append(("many", [image.source_url for image in request.images]))
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


Serve = Callable[[Processor, int], Awaitable[ProcessorCalls]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """ProcessorCalls of the given batch, to the given servicer on a real server."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(servicer: Processor, batch: int) -> ProcessorCalls:
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
        processor_pb2_grpc.add_ProcessorServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return ProcessorCalls(processor_pb2_grpc.ProcessorServiceStub(channel), lambda: batch)

    yield start
    for channel in channels:
        await channel.close(None)
    for server in servers:
        await server.stop(None)


def image(name: str) -> processor_pb2.ProcessImageRequest:
    return processor_pb2.ProcessImageRequest(
        source_url=f"http://source.test/{name}", output_key=f"r/{name}.jpg"
    )


async def hand_over(calls: ProcessorCalls, names: list[str]) -> list[Any]:
    """Hands the images over in one turn of the loop; their answers or errors, in order."""
    return await asyncio.gather(
        *(calls.process(image(n), within=10) for n in names), return_exceptions=True
    )


def names(calls: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    return [(kind, [url.rsplit("/", 1)[-1] for url in urls]) for kind, urls in calls]


async def test_images_handed_over_together_are_one_call_and_each_gets_its_own_answer(
    serve: Serve,
) -> None:
    processor = Processor()
    calls = await serve(processor, 8)

    answers = await hand_over(calls, ["a", "throttled", "gone", "bb"])

    assert names(processor.calls) == [("many", ["a", "throttled", "gone", "bb"])]
    assert (answers[0].output_key, answers[0].width) == ("r/a.jpg", 1)
    assert (answers[3].output_key, answers[3].width) == ("r/bb.jpg", 2)
    throttled, gone = answers[1], answers[2]
    assert isinstance(throttled, grpc.aio.AioRpcError)
    assert throttled.code() == grpc.StatusCode.UNAVAILABLE
    assert throttled_for(throttled) == 7.0  # the RetryInfo arrives as it does from a call
    assert isinstance(gone, grpc.aio.AioRpcError)
    assert gone.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gone.details() == "http://source.test/gone answered 404"
    assert throttled_for(gone) is None


async def test_a_call_carries_at_most_a_batch_and_an_image_alone_is_a_call_of_its_own(
    serve: Serve,
) -> None:
    processor = Processor()
    calls = await serve(processor, 4)

    answers = await hand_over(calls, [f"i{n}" for n in range(10)])
    alone = await calls.process(image("alone"), within=10)

    assert [a.output_key for a in answers] == [f"r/i{n}.jpg" for n in range(10)]
    assert alone.output_key == "r/alone.jpg"
    # The three calls run at once, and reach the server in any order.
    assert sorted((kind, len(urls)) for kind, urls in processor.calls) == [
        ("many", 2),
        ("many", 4),
        ("many", 4),
        ("one", 1),
    ]


async def test_a_processor_without_process_images_gets_one_image_a_call(serve: Serve) -> None:
    processor = OlderProcessor()
    calls = await serve(processor, 8)

    first = await hand_over(calls, ["a", "gone", "c"])
    later = await hand_over(calls, ["d", "e"])

    assert [a.output_key for a in (first[0], first[2], *later)] == [
        "r/a.jpg",
        "r/c.jpg",
        "r/d.jpg",
        "r/e.jpg",
    ]
    assert isinstance(first[1], grpc.aio.AioRpcError)
    assert first[1].code() == grpc.StatusCode.FAILED_PRECONDITION
    # Asked once; then one image a call, and not asked again for a while.
    assert names(processor.calls) == [
        ("many", ["a", "gone", "c"]),
        ("one", ["a"]),
        ("one", ["gone"]),
        ("one", ["c"]),
        ("one", ["d"]),
        ("one", ["e"]),
    ]


async def test_a_call_goes_on_while_one_of_its_images_is_waited_for_and_no_longer(
    serve: Serve,
) -> None:
    processor = Processor()
    processor.hold = asyncio.Event()
    calls = await serve(processor, 8)
    first = [asyncio.create_task(calls.process(image(n), within=30)) for n in "abc"]
    await asyncio.wait_for(processor.arrived.wait(), timeout=10)
    first[0].cancel()
    first[1].cancel()
    processor.hold.set()
    assert (await first[2]).output_key == "r/c.jpg"  # its call went on

    processor.hold.clear()
    processor.arrived.clear()
    second = [asyncio.create_task(calls.process(image(n), within=30)) for n in "de"]
    await asyncio.wait_for(processor.arrived.wait(), timeout=10)
    for task in second:
        task.cancel()

    await asyncio.wait_for(processor.cancelled.wait(), timeout=10)
    assert names(processor.calls) == [("many", ["a", "b", "c"]), ("many", ["d", "e"])]
