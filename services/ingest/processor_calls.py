"""Calls to the processors, gathered: the images the dispatcher hands over in one turn of
the event loop (a claim's images as their calls come free) go to a processor as one
ProcessImages call of up to `batch()` images, which spares ingest and the processor the
cost of a call per image. Each image still gets what a ProcessImage call of its own gives:
its response, or an AioRpcError with its own status and details (a throttled source's
RetryInfo), so the dispatcher handles both alike.

An image handed over alone goes as ProcessImage. So does every image for a while after a
processor did not know ProcessImages (UNIMPLEMENTED: an older version, in a rolling
upgrade). A batch of 1 (with tracing on, say, where every image's trace holds its own
call) never gathers. The dispatcher's batch follows its call limit (CallLimit.group).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from imgpipe.v1 import processor_pb2, processor_pb2_grpc

log = logging.getLogger(__name__)

# After an UNIMPLEMENTED, how long images go one to a call before ProcessImages is tried
# again (seconds).
ONE_BY_ONE_AFTER_UNIMPLEMENTED = 60.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class _Handed:
    request: processor_pb2.ProcessImageRequest
    answer: asyncio.Future[processor_pb2.ProcessImageResponse]
    deadline: float  # on the monotonic clock


class ProcessorCalls:
    def __init__(
        self, stub: processor_pb2_grpc.ProcessorServiceAsyncStub, batch: Callable[[], int]
    ) -> None:
        self._stub = stub
        self._batch = batch
        self._handed: list[_Handed] = []
        self._gather: asyncio.Handle | None = None
        self._one_by_one_until = 0.0
        self._calls: set[asyncio.Task[None]] = set()

    async def process(
        self, request: processor_pb2.ProcessImageRequest, within: float
    ) -> processor_pb2.ProcessImageResponse:
        """What ProcessImage(request, timeout=within) answers; raises its AioRpcError."""
        batch = self._batch()
        if batch <= 1 or time.monotonic() < self._one_by_one_until:
            return await self._stub.ProcessImage(request, timeout=within)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[processor_pb2.ProcessImageResponse] = loop.create_future()
        self._handed.append(_Handed(request, answer, time.monotonic() + within))
        if len(self._handed) >= batch:
            self._send()
        elif self._gather is None:
            # Images handed over later in this turn of the loop join the same call.
            self._gather = loop.call_soon(self._send)
        return await answer  # cancelling the wait cancels the answer

    def _send(self) -> None:
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None
        handed, self._handed = self._handed, []
        if not handed:
            return
        call = asyncio.create_task(self._call(handed))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

        def abandoned(_: object) -> None:
            # Nobody waits for the call's images any more (a drain cancelled them).
            answers = [h.answer for h in handed]
            if all(a.done() for a in answers) and any(a.cancelled() for a in answers):
                call.cancel()

        for h in handed:
            h.answer.add_done_callback(abandoned)

    async def _call(self, handed: list[_Handed]) -> None:
        try:
            if len(handed) == 1:
                await self._one(handed[0])
            else:
                await self._many(handed)
        finally:
            left_out = grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="the processor's answer left this image out",
                debug_error_string="",
            )
            for h in handed:
                if not h.answer.done():
                    h.answer.set_exception(_copy(left_out))

    async def _many(self, handed: list[_Handed]) -> None:
        timeout = max(h.deadline for h in handed) - time.monotonic()
        request = processor_pb2.ProcessImagesRequest(images=[h.request for h in handed])
        try:
            async for answer in self._stub.ProcessImages(request, timeout=timeout):
                if not 0 <= answer.index < len(handed):
                    continue
                future = handed[answer.index].answer
                if future.done():
                    continue
                if answer.HasField("result"):
                    future.set_result(answer.result)
                else:
                    future.set_exception(image_error(answer.status))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info(
                    "a processor does not know ProcessImages: one image to a call for a while",
                    extra={"seconds": ONE_BY_ONE_AFTER_UNIMPLEMENTED},
                )
                self._one_by_one_until = time.monotonic() + ONE_BY_ONE_AFTER_UNIMPLEMENTED
                await asyncio.gather(*(self._one(h) for h in handed if not h.answer.done()))
                return
            for h in handed:
                if not h.answer.done():
                    h.answer.set_exception(_copy(exc))

    async def _one(self, handed: _Handed) -> None:
        try:
            response = await self._stub.ProcessImage(
                handed.request, timeout=handed.deadline - time.monotonic()
            )
        except grpc.aio.AioRpcError as exc:
            if not handed.answer.done():
                handed.answer.set_exception(exc)
        else:
            if not handed.answer.done():
                handed.answer.set_result(response)


def image_error(status: processor_pb2.ImageStatus) -> grpc.aio.AioRpcError:
    """One image's status as the error of a ProcessImage call: its code, its message, and
    the status itself in the trailers, where grpc_status finds its details."""
    return grpc.aio.AioRpcError(
        _CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString())),
        details=status.message,
        debug_error_string="",
    )


def _copy(exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The same error for another image (an exception raised in several tasks would
    gather their tracebacks)."""
    return grpc.aio.AioRpcError(
        exc.code(),
        exc.initial_metadata(),
        exc.trailing_metadata(),  # type: ignore[arg-type]  # Metadata: the stubs type RpcError's
        details=exc.details(),
        debug_error_string=exc.debug_error_string(),
    )
