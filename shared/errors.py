"""Every error of the common package, and the kinds of error a servicer raises on purpose.

Each service's own errors (imgpipe.ingest.errors, imgpipe.processor.errors) derive from the
kinds below. No transport here: imgpipe.common.grpc_errors maps a kind to its gRPC status,
imgpipe.common.http_errors to its HTTP status."""

from __future__ import annotations

from collections.abc import Sequence


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

    def __init__(self, message: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthenticated(ServiceError):
    """A valid bearer token is required."""


# Not answered to callers as such; the code that meets them decides what they mean.


class SettingsError(ValueError):
    """A setting is missing or malformed."""


class StorageError(Exception):
    """The object store failed; retrying may help."""


class PolicyViolation(Exception):
    """A URL or address the policy refuses; the message says which and why."""


class UrlNotAllowed(PolicyViolation):
    """Not an absolute http(s) URL without user info, on a well-formed host and allowed port."""


class AddressNotAllowed(PolicyViolation):
    """A loopback, private, link-local, metadata or otherwise non-public host or address."""
