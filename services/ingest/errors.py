"""Every error of ingest; their kinds (imgpipe.common.errors) pick the gRPC and HTTP status."""

from __future__ import annotations

from imgpipe.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
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


class QueuedQuotaExceeded(ResourceExhausted):
    """The tenant has too many images queued; try again once some are done."""


class IdempotencyKeyReused(AlreadyExists):
    """That idempotency_key was used with a different CSV or options."""


class DatabaseUnavailable(Unavailable):
    """The database is unavailable; try again."""


class CsvError(InvalidArgument):
    """The CSV is invalid."""


class CsvTooLarge(ResourceExhausted):
    """The CSV is too large."""


class SubmitRateExceeded(ResourceExhausted):
    """Too many Submit calls from this caller; try again later."""


class BodyTooLarge(ResourceExhausted):
    """The request body is larger than the limit."""


class ResultNotReady(FailedPrecondition):
    """The result CSV is written once the request is done."""


class StorageUnavailable(Unavailable):
    """Storage is unavailable; try again."""


class ShuttingDown(Unavailable):
    """The server is shutting down; connect again."""


# Outcomes of one webhook attempt, never answered to a caller.


class WebhookFailed(Exception):
    """This webhook attempt failed in a way that may pass; it is retried."""


class WebhookRefused(Exception):
    """The receiver refused the webhook delivery; retrying will not help."""
