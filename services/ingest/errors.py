"""Ingest's domain errors; imgpipe.common.grpc_errors maps their kinds to gRPC codes."""

from __future__ import annotations

from imgpipe.common.grpc_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)


class RequestNotFound(NotFound):
    """No request has that id."""


class InvalidRequestId(InvalidArgument):
    """request_id must be a UUID."""


class InvalidOption(InvalidArgument):
    """An option is out of range."""


class RequestAlreadyTerminal(FailedPrecondition):
    """The request has already finished."""


class IdempotencyKeyReused(AlreadyExists):
    """That idempotency_key was used with a different CSV or options."""


class DatabaseUnavailable(Unavailable):
    """The database is unavailable; try again."""
