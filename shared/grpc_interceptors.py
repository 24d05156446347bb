"""Server interceptors as async context managers around each call's behaviour.

grpc.aio runs a handler in its own task, so work that must see the call (a contextvar,
a try/except, a timer) wraps the behaviour rather than running in intercept_service.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Context = grpc.aio.ServicerContext[Any, Any]


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Subclasses say what to wrap each call in; None leaves the method alone."""

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[Any] | None:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        single = handler.unary_unary or handler.stream_unary
        if single is not None:
            # A stream_unary handler here is a unary method whose server reads the request
            # itself (imgpipe.ingest.admission): it is not known when the scope opens.
            reads_itself = handler.unary_unary is None

            async def single_wrapper(request: Any, context: Context) -> Any:
                scope = self.around(method, None if reads_itself else request, context)
                if scope is None:
                    return await single(request, context)
                async with scope:
                    return await single(request, context)

            make = (
                grpc.stream_unary_rpc_method_handler
                if reads_itself
                else grpc.unary_unary_rpc_method_handler
            )
            return make(
                single_wrapper,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream: Callable[..., AsyncIterator[Any] | Awaitable[None]] = handler.unary_stream

            async def stream_wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
                # One generator per interceptor: every message passes through each.
                async with self.around(method, request, context) or contextlib.nullcontext():
                    produced = stream(request, context)
                    if inspect.isawaitable(produced):
                        # A handler that sends with context.write() (grpc's own Health.Watch)
                        # is a coroutine, not an async generator.
                        await produced
                        return
                    async for message in produced:
                        yield message

            return grpc.unary_stream_rpc_method_handler(
                stream_wrapper,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
