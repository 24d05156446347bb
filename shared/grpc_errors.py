"""Domain errors and their gRPC status codes: the one table, applied in one interceptor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imgpipe.common.grpc_interceptors import Context, WrappingInterceptor

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error a servicer may raise on purpose; the docstring is the message."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(ServiceError):
    """The request is malformed."""

    def __init__(
        self, message: str | None = None, violations: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.violations = list(violations)


class NotFound(ServiceError):
    """Not found."""


class AlreadyExists(ServiceError):
    """Already exists."""


class FailedPrecondition(ServiceError):
    """The operation cannot be done in the current state."""


class ResourceExhausted(ServiceError):
    """Too much at once; try again later."""

    def __init__(self, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """Temporarily unavailable; try again."""


class Unauthenticated(ServiceError):
    """A valid bearer token is required."""


GRPC_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def grpc_code(exc: ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(exc: ServiceError) -> grpc.Status:
    code = grpc_code(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=exc.message)
    if isinstance(exc, InvalidArgument) and exc.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in exc.violations
                ]
            )
        )
        status.details.append(detail)
    if isinstance(exc, ResourceExhausted) and exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=exc.retry_after))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
    return rpc_status.to_status(status)


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
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
