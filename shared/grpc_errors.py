"""The gRPC status of each kind of imgpipe.common.errors: the one table, applied in one
interceptor (with rich details: BadRequest field violations, RetryInfo)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imgpipe.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from imgpipe.common.grpc_interceptors import Context, WrappingInterceptor
from imgpipe.common.public_text import public_text

log = logging.getLogger(__name__)


GRPC_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


# What a caller learns of an error that is not a ServiceError (it is logged in full).
INTERNAL_ERROR = "internal error"


def grpc_code(exc: ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(exc: ServiceError) -> grpc.Status:
    return rpc_status.to_status(status_of(exc))


def status_of(exc: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status of exc, with its rich details."""
    code = grpc_code(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=public_text(exc.message))
    if isinstance(exc, InvalidArgument) and exc.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=public_text(d))
                    for f, d in exc.violations
                ]
            )
        )
        status.details.append(detail)
    if isinstance(exc, ResourceExhausted | Unavailable) and exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=exc.retry_after))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
    return status


class ErrorMappingInterceptor(WrappingInterceptor):
    """Turns ServiceError into its status (with rich details); anything else is INTERNAL."""

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None]:
        return _mapped_errors(context)


@asynccontextmanager
async def _mapped_errors(context: Context) -> AsyncIterator[None]:
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except ServiceError as exc:
        status = to_status(exc)
        await context.abort(status.code, status.details, status.trailing_metadata)
    except Exception:
        log.exception("unhandled error in RPC")
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
