"""The ingest API in domain terms: what Submit, GetStatus, WatchStatus, Cancel, DeleteRequest
and reading the result CSV do, whichever way they arrive (gRPC or HTTP). Validates input;
raises domain errors.

`caller` is the principal of the bearer token (imgpipe.common.auth), "" when tokens are off; a
request is visible only to the caller that created it (others get NOT_FOUND)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections.abc import AsyncIterator

from opentelemetry import trace
from yarl import URL

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.errors import PolicyViolation, StorageError
from imgpipe.common.storage import Storage
from imgpipe.common.tracing import REQUEST_ID_ATTRIBUTE
from imgpipe.ingest import metrics
from imgpipe.ingest.admission import ByteBudget
from imgpipe.ingest.csv_format import CsvLimits, parse_products
from imgpipe.ingest.errors import (
    InvalidOption,
    InvalidRequestId,
    QueuedQuotaExceeded,
    RequestNotFound,
    ResultNotReady,
    StorageUnavailable,
    SubmitRateExceeded,
)
from imgpipe.ingest.model import (
    Event,
    RequestStatus,
    StatusPage,
    Submission,
    WebhookSecret,
)
from imgpipe.ingest.notifications import Notifier
from imgpipe.ingest.rate_limit import RateLimiter
from imgpipe.ingest.result_csv import result_csv_lines
from imgpipe.ingest.retention import ObjectPurger
from imgpipe.ingest.store import Store
from imgpipe.ingest.tenants import Tenants
from imgpipe.ingest.watch import EventReader, WatchSettings, watch
from imgpipe.ingest.webhook_secrets import WebhookSecrets

DEFAULT_QUALITY = 50
MAX_QUALITY = 95
MAX_IDEMPOTENCY_KEY = 256
DEFAULT_PAGE_SIZE = 1000  # images per GetStatus answer
MAX_PAGE_SIZE = 10_000


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


def check_page_size(page_size: int) -> int:
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidOption(
            f"page_size must be 1-{MAX_PAGE_SIZE} (0 for the default, {DEFAULT_PAGE_SIZE})",
            violations=[("page_size", f"{page_size} is not in 1-{MAX_PAGE_SIZE}")],
        )
    return page_size


def page_token_after(position: int, index: int) -> str:
    """Opaque to callers: where the next page starts (the image after this one)."""
    return base64.urlsafe_b64encode(f"{position}.{index + 1}".encode()).decode()


def parse_page_token(token: str) -> tuple[int, int]:
    if not token:
        return (0, 0)
    try:
        position, index = base64.urlsafe_b64decode(token.encode()).decode().split(".")
        start = (int(position), int(index))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidOption(
            "page_token is not one this service handed out",
            violations=[("page_token", "not a next_page_token")],
        ) from None
    if min(start) < 0:
        raise InvalidOption("page_token is not one this service handed out")
    return start


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
        tenants: Tenants,
        webhook_secrets: WebhookSecrets,
        address_policy: AddressPolicy,
        submit_budget: ByteBudget,
        storage: Storage,
        purger: ObjectPurger,
        final_purge_after: float,
    ) -> None:
        self._tenants = tenants
        self._webhook_secrets = webhook_secrets
        self._purger = purger
        self._final_purge_after = final_purge_after
        self._address_policy = address_policy
        self._storage = storage
        # Submit bodies held at once; the transports reserve from it before they read one.
        self.submit_budget = submit_budget
        self._reader = EventReader(store)
        self._rate_limiter = rate_limiter
        self._store = store
        self._notifier = notifier
        self._csv_limits = csv_limits
        self._watch_settings = watch_settings

    async def submit(
        self, csv: bytes, *, quality: int, webhook_url: str, idempotency_key: str, caller: str
    ) -> Submission:
        limits = self._tenants.limits(caller)
        try:
            await self._rate_limiter.check(caller, limits)
        except SubmitRateExceeded:
            metrics.TENANT_SUBMITS_REFUSED.labels(caller, "rate").inc()
            raise
        quality = check_quality(quality)
        webhook_url = check_webhook_url(webhook_url, self._address_policy)
        key = check_idempotency_key(idempotency_key)
        products = await asyncio.to_thread(parse_products, csv, self._csv_limits)
        metrics.REQUESTS_SUBMITTED.inc()
        try:
            submission = await self._store.submit(
                products,
                quality=quality,
                webhook_url=webhook_url,
                idempotency_key=key,
                csv_sha256=hashlib.sha256(csv).digest(),
                owner=caller,
                max_queued=limits.max_queued,
            )
        except QueuedQuotaExceeded:
            metrics.TENANT_SUBMITS_REFUSED.labels(caller, "queued_quota").inc()
            raise
        metrics.TENANT_IMAGES_SUBMITTED.labels(caller).inc(submission.image_count)
        # The Submit span (when tracing) names the request, as its images' traces do.
        trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, str(submission.request_id))
        return submission

    async def status(
        self, request_id: str, *, page_size: int = 0, page_token: str = "", caller: str
    ) -> StatusPage:
        """The request and one page of its images: memory bounded by the page, whatever
        the request's size."""
        rid = parse_request_id(request_id)
        size = check_page_size(page_size)
        start = parse_page_token(page_token)
        status = await self._store.status(rid, caller)
        images = await self._store.images(rid, start, size + 1)
        more = len(images) > size
        last = images[size - 1] if more else None
        return StatusPage(
            status,
            images[:size],
            page_token_after(last.position, last.index) if last else "",
        )

    async def result_csv(self, request_id: str, *, caller: str) -> AsyncIterator[bytes]:
        """The result CSV of a terminal request, a line at a time, made now with its output
        URLs signed now; refused before the first line when it is not ready."""
        rid = parse_request_id(request_id)
        current = await self._store.status(rid, caller)  # one row, whatever the request's size
        if not current.state.terminal:
            raise ResultNotReady(
                f"the request is {current.state.value}; its result CSV is written once it is done"
            )
        if not (current.result_csv_key or current.result_csv_error):
            raise ResultNotReady("the result CSV is being written; try again in a moment")
        return result_csv_lines(self._store, rid, self.url_of)

    async def check_owner(self, request_id: str, *, caller: str) -> None:
        """RequestNotFound unless request_id names a request of caller's."""
        await self._store.status(parse_request_id(request_id), caller)

    def url_of(self, key: str) -> str:
        """A URL of the stored object at key, made now: presigned (a local computation, no
        I/O) or under the public base URL; "" for no key."""
        return self._storage.url_for(key) if key else ""

    def watch(
        self, request_id: str, after_sequence: int, *, caller: str
    ) -> AsyncIterator[tuple[Event, bool]]:
        rid = parse_request_id(request_id)
        after = check_after_sequence(after_sequence)
        return watch(self._reader, self._notifier, rid, after, self._watch_settings, caller)

    async def cancel(self, request_id: str, *, caller: str) -> RequestStatus:
        return await self._store.cancel(parse_request_id(request_id), caller)

    async def delete(self, request_id: str, *, caller: str) -> None:
        """Deletes the caller's request: its objects, then its rows (which stops its work:
        nothing of it is claimed again and results in flight are fenced off), then, after
        calls in flight have ended, its objects once more. NOT_FOUND when there is none."""
        rid = parse_request_id(request_id)
        await self._store.status(rid, caller)
        try:
            await self._purger.purge(rid)
        except StorageError as exc:
            raise StorageUnavailable(f"storage unavailable: {exc}") from exc
        if not await self._store.delete(rid, caller, self._final_purge_after):
            raise RequestNotFound()

    async def webhook_secrets(self, *, caller: str) -> list[WebhookSecret]:
        """The caller's webhook signing secrets, the current one first."""
        return await self._webhook_secrets.current(caller)

    async def rotate_webhook_secret(
        self, overlap_seconds: float, *, caller: str
    ) -> list[WebhookSecret]:
        return await self._webhook_secrets.rotate(caller, overlap_seconds)
