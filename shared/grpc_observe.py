"""The RPC log line and metrics of every call: method, peer, code, duration, request id.

Outermost interceptor, so it sees the final status code of every call, mapped or not.
Metric names follow the usual gRPC server conventions (grpc_server_handled_total, ...).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from imgpipe.common.grpc_interceptors import Context, WrappingInterceptor
from imgpipe.common.logs import log_fields

log = logging.getLogger(__name__)

STARTED = Counter(
    "grpc_server_started", "RPCs started on the server.", ["grpc_service", "grpc_method"]
)
HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (for streams: the stream's life).",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
# Health checks come every few seconds from every probe: counted, not logged.
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ObservingInterceptor(WrappingInterceptor):
    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None]:
        return self._observed(method, request, context)

    @asynccontextmanager
    async def _observed(self, method: str, request: Any, context: Context) -> AsyncIterator[None]:
        service, _, name = method.lstrip("/").rpartition("/")
        STARTED.labels(service, name).inc()
        fields: dict[str, Any] = {"method": method, "peer": context.peer()}
        request_id = getattr(request, "request_id", "")
        if request_id:
            fields["request_id"] = request_id
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        with log_fields(**fields):
            try:
                yield
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                seconds = time.perf_counter() - started
                HANDLED.labels(service, name, code.name).inc()
                HANDLING_SECONDS.labels(service, name).observe(seconds)
                if not method.startswith(QUIET_PREFIXES):
                    log.info(
                        "rpc",
                        extra={"code": code.name, "duration_ms": round(seconds * 1000, 2)},
                    )
