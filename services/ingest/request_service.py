"""The ingest API in domain terms: what Submit, GetStatus, WatchStatus, Cancel and reading the
result CSV do, whichever way they arrive (gRPC or HTTP). Validates input; raises domain errors.

`caller` is the principal of the bearer token (imgpipe.common.auth), "" when tokens are off; a
request is visible only to the caller that created it (others get NOT_FOUND)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from yarl import URL

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.errors import PolicyViolation, StorageError
from imgpipe.common.storage import Storage
from imgpipe.ingest import metrics
from imgpipe.ingest.csv_format import CsvLimits, parse_products
from imgpipe.ingest.errors import (
    InvalidOption,
    InvalidRequestId,
    ResultMissing,
    ResultNotReady,
    StorageUnavailable,
)
from imgpipe.ingest.model import Event, ImageStatus, RequestStatus, Submission, result_csv_key
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.rate_limit import RateLimiter
from imgpipe.ingest.store import Store
from imgpipe.ingest.watch import EventReader, WatchSettings, watch

DEFAULT_QUALITY = 50
MAX_QUALITY = 95
MAX_IDEMPOTENCY_KEY = 256


def parse_request_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequestId(
            f"request_id must be a UUID, not {value[:80]!r}",
            violations=[("request_id", "not a UUID")],
        ) from None


def check_quality(quality: int) -> int:
    if quality == 0:
        return DEFAULT_QUALITY
    if not 1 <= quality <= MAX_QUALITY:
        raise InvalidOption(
            f"options.quality must be 1-{MAX_QUALITY} (0 for the default, {DEFAULT_QUALITY})",
            violations=[("options.quality", f"{quality} is not in 1-{MAX_QUALITY}")],
        )
    return quality


def check_webhook_url(url: str, policy: AddressPolicy) -> str:
    """The same rules as image sources; the address is checked again at delivery."""
    if url:
        try:
            policy.check_url(URL(url))
        except (PolicyViolation, ValueError) as exc:
            raise InvalidOption(
                f"webhook_url is not allowed: {exc}", violations=[("webhook_url", str(exc))]
            ) from None
    return url


def check_idempotency_key(key: str) -> str | None:
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidOption(
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters",
            violations=[("idempotency_key", "too long")],
        )
    return key or None


def check_after_sequence(after_sequence: int) -> int:
    if after_sequence < 0:
        raise InvalidOption(
            "after_sequence must not be negative", violations=[("after_sequence", "negative")]
        )
    return after_sequence


class RequestService:
    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        csv_limits: CsvLimits,
        watch_settings: WatchSettings,
        rate_limiter: RateLimiter,
        address_policy: AddressPolicy,
        storage: Storage,
        executor: Executor,
    ) -> None:
        self._address_policy = address_policy
        self._storage = storage
        self._executor = executor
        self._reader = EventReader(store)
        self._rate_limiter = rate_limiter
        self._store = store
        self._notifier = notifier
        self._csv_limits = csv_limits
        self._watch_settings = watch_settings

    async def submit(
        self, csv: bytes, *, quality: int, webhook_url: str, idempotency_key: str, caller: str
    ) -> Submission:
        self._rate_limiter.check(caller)
        quality = check_quality(quality)
        webhook_url = check_webhook_url(webhook_url, self._address_policy)
        key = check_idempotency_key(idempotency_key)
        products = await asyncio.to_thread(parse_products, csv, self._csv_limits)
        metrics.REQUESTS_SUBMITTED.inc()
        return await self._store.submit(
            products,
            quality=quality,
            webhook_url=webhook_url,
            idempotency_key=key,
            csv_sha256=hashlib.sha256(csv).digest(),
            owner=caller,
        )

    async def status(
        self, request_id: str, *, caller: str
    ) -> tuple[RequestStatus, list[ImageStatus]]:
        rid = parse_request_id(request_id)
        status = await self._store.status(rid, caller)
        return status, await self._store.images(rid)

    async def result_csv(self, request_id: str, *, caller: str) -> tuple[str, bytes]:
        """The result CSV of a terminal request: its object key and its bytes."""
        rid = parse_request_id(request_id)
        current = await self._store.status(rid, caller)  # one row, whatever the request's size
        if not current.state.terminal:
            raise ResultNotReady(
                f"the request is {current.state.value}; its result CSV is written once it is done"
            )
        if not current.result_csv_url:
            raise ResultNotReady("the result CSV is being written; try again in a moment")
        key = result_csv_key(rid)
        loop = asyncio.get_running_loop()
        try:
            return key, await loop.run_in_executor(self._executor, self._storage.get, key)
        except KeyError:
            raise ResultMissing() from None
        except StorageError as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc

    def watch(
        self, request_id: str, after_sequence: int, *, caller: str
    ) -> AsyncIterator[tuple[Event, bool]]:
        rid = parse_request_id(request_id)
        after = check_after_sequence(after_sequence)
        return watch(
            self._store, self._reader, self._notifier, rid, after, self._watch_settings, caller
        )

    async def cancel(self, request_id: str, *, caller: str) -> RequestStatus:
        return await self._store.cancel(parse_request_id(request_id), caller)
