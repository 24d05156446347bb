"""How a failed attempt ends: the one table of transient and permanent failures."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from imgpipe.common.backoff import Backoff
from imgpipe.common.public_text import public_text
from imgpipe.ingest.model import ImageState, Outcome

# Retrying cannot help: the source is gone, is not an image, is too large, is blocked, or
# the call itself was wrong.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# The processor was full and did not start: back off, and the attempt does not count.
BUSY = grpc.StatusCode.RESOURCE_EXHAUSTED
# Everything else (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNKNOWN, ...) may
# pass: retried with backoff up to max_attempts.

# How long an image, and the dispatcher, are left alone after a processor was full
# (0.1-0.5 s), or when no processor could be reached at all (0.5-2 s).
BUSY_BACKOFF = Backoff(first=0.5, cap=0.5, jitter=0.8)
UNREACHED_BACKOFF = Backoff(first=2.0, cap=2.0, jitter=0.75)


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 2.0
    cap_seconds: float = 30.0
    max_attempts: int = 5

    @property
    def backoff(self) -> Backoff:
        """Exponential backoff with full jitter between attempts."""
        return Backoff(first=self.base_seconds, cap=self.cap_seconds)

    def after_error(
        self,
        code: grpc.StatusCode,
        details: str,
        attempt: int,
        *,
        reached: bool = True,
        throttled_for: float | None = None,
    ) -> Outcome:
        """reached: the call got to a processor (False when none could be connected to).
        throttled_for: the source host asked to be left alone that long (429/503)."""
        # details may come from the channel itself, naming processors' addresses.
        error = f"{code.name}: {public_text(details)}" if details else code.name
        if throttled_for is not None:
            # The host's pace, not the image's fault: delayed, never failed, for that.
            return Outcome(
                ImageState.QUEUED,
                error=f"{error} (source host throttling; not counted as an attempt)",
                retry_after=throttled_for,
                refund_attempt=True,
            )
        if code == BUSY or not reached:
            # Full, or no processor up at all: work is delayed, never failed, for that.
            return Outcome(
                ImageState.QUEUED,
                error=f"{error} (not counted as an attempt)",
                retry_after=(BUSY_BACKOFF if reached else UNREACHED_BACKOFF).delay(1),
                refund_attempt=True,
            )
        if code in PERMANENT:
            return Outcome(ImageState.FAILED, error=f"{error} (attempt {attempt}, not retried)")
        if attempt >= self.max_attempts:
            return Outcome(ImageState.FAILED, error=f"{error} (gave up after {attempt} attempts)")
        return Outcome(
            ImageState.QUEUED,
            error=f"{error} (attempt {attempt})",
            retry_after=self.backoff.delay(attempt),
        )

    def after_lost_lease(self, attempt: int) -> Outcome:
        """The attempt's holder vanished (lease expired)."""
        return self.after_error(
            grpc.StatusCode.DEADLINE_EXCEEDED, "lease expired before a result came back", attempt
        )
