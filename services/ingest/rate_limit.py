"""A per-caller token bucket on Submit (per ingest replica)."""

from __future__ import annotations

import time
from collections.abc import Callable

from imgpipe.ingest.errors import SubmitRateExceeded


class RateLimiter:
    """`per_minute` calls a minute per caller, in bursts of up to `burst`; 0 turns it off."""

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, updated)

    def check(self, caller: str) -> None:
        if self._rate <= 0:
            return
        now = self._clock()
        tokens, updated = self._buckets.get(caller, (self._burst, now))
        tokens = min(self._burst, tokens + (now - updated) * self._rate)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            wait = (1 - tokens) / self._rate
            raise SubmitRateExceeded(
                f"too many Submit calls; try again in {wait:.1f} s", retry_after=wait
            )
        self._buckets[caller] = (tokens - 1, now)
