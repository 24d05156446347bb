"""Admission of Submits by their bytes: a replica holds at most a budget of Submit bodies at
once, and a body is never read before its caller is authenticated.

gRPC receives a unary request whole before any handler runs, so Submit is served as a
client-streaming method on the server side (the wire format is the same): the bytes are
reserved first, then the one message is read. Unauthenticated calls are refused from their
metadata alone (imgpipe.common.auth.AuthInterceptor), before this runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.message import Message

from imgpipe.common.errors import ResourceExhausted
from imgpipe.common.grpc_interceptors import Context
from imgpipe.common.waiting import wait_event

SUBMIT_METHOD = "/imgpipe.v1.IngestService/Submit"
# How long a Submit waits for room before RESOURCE_EXHAUSTED.
ADMISSION_WAIT = 10.0


class SubmitsFull(ResourceExhausted):
    """This replica holds as many Submit bodies as it may; try again in a moment."""


class Reservation:
    """Bytes held for one Submit; shrink() gives back what it turned out not to need."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        if size < self.size:
            self._budget._give_back(self.size - size)
            self.size = size


class ByteBudget:
    """At most `limit` bytes reserved at once; a reservation waits up to `wait` seconds."""

    def __init__(self, limit: int, wait: float = ADMISSION_WAIT) -> None:
        self.limit = limit
        self.reserved = 0
        self._wait = wait
        self._freed = asyncio.Event()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[Reservation]:
        size = min(size, self.limit)  # one Submit as large as the budget still runs, alone
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while self.reserved + size > self.limit:
            self._freed.clear()
            if not await wait_event(self._freed, deadline - loop.time()):
                raise SubmitsFull(retry_after=1.0)
        self.reserved += size
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            self._give_back(reservation.size)

    def _give_back(self, size: int) -> None:
        self.reserved -= size
        self._freed.set()


class SubmitAdmission(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Serves Submit as client-streaming: reserves the largest message's bytes, reads the
    message, keeps what it holds reserved until the call ends."""

    def __init__(self, budget: ByteBudget, max_message_bytes: int) -> None:
        self._budget = budget
        self._max_message_bytes = max_message_bytes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != SUBMIT_METHOD:
            return handler
        unary = handler.unary_unary
        budget, largest = self._budget, self._max_message_bytes

        async def admitted(_requests: Any, context: Context) -> Any:
            async with budget.reserve(largest) as reservation:
                request = await context.read()
                if not isinstance(request, Message):  # the client sent none
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                reservation.shrink(request.ByteSize())
                return await unary(request, context)

        return grpc.stream_unary_rpc_method_handler(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
