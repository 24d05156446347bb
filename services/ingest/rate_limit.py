"""The Submit rate limit: a token bucket per principal, kept in PostgreSQL, so it holds
across every ingest replica (not per process)."""

from __future__ import annotations

from imgpipe.ingest.errors import SubmitRateExceeded
from imgpipe.ingest.store import Store
from imgpipe.ingest.tenants import TenantLimits


class RateLimiter:
    """`submit_rate_per_minute` calls a minute per principal, in bursts of up to
    `submit_burst`; a rate of 0 turns it off."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def check(self, principal: str, limits: TenantLimits) -> None:
        per_second = limits.submit_rate_per_minute / 60.0
        if per_second <= 0:
            return
        tokens, denied = await self._store.take_submit_token(
            principal, per_second, limits.submit_burst
        )
        if denied:
            wait = (1 - tokens) / per_second
            raise SubmitRateExceeded(
                f"too many Submit calls; try again in {wait:.1f} s", retry_after=wait
            )
