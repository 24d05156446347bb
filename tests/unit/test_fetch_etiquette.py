"""Retry-After as throttling source hosts send it."""

from __future__ import annotations

from datetime import UTC, datetime

from imgpipe.processor.fetch import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, retry_after


def test_retry_after_in_seconds_or_as_a_date_within_bounds() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) == DEFAULT_RETRY_AFTER
    assert retry_after("soon") == DEFAULT_RETRY_AFTER
    assert retry_after("999999") == MAX_RETRY_AFTER
    assert retry_after("0") == 1.0
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert retry_after("Wed, 02 Dec 2026 12:00:42 GMT", now) == 42.0
