"""The Submit rate limit: a token bucket per caller."""

from __future__ import annotations

import pytest

from imgpipe.ingest.errors import SubmitRateExceeded
from imgpipe.ingest.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bursts_then_refills_at_the_rate_per_caller() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(SubmitRateExceeded) as caught:
        limiter.check("a")
    assert caught.value.retry_after == pytest.approx(1.0)
    limiter.check("b")  # another caller has a bucket of its own
    clock.now += 1.0
    limiter.check("a")
    with pytest.raises(SubmitRateExceeded):
        limiter.check("a")


def test_zero_turns_it_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=1)
    for _ in range(100):
        limiter.check("a")
