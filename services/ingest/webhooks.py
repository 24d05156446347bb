"""Webhook deliveries: a signed POST when a request becomes terminal.

At least once, with the same delivery id on every attempt; signed in the manner of the
Standard Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature:
v1,BASE64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`), so receivers can verify with the
existing libraries. Each request's owner has its own secrets (webhook_secrets); during a
rotation's overlap the header carries one signature by each, space-separated, as the
specification allows. A secret written `whsec_BASE64` is used as those libraries expect
(the key is the decoded bytes); any other secret is used as its UTF-8 bytes.

Retried on timeouts, connection errors, 408, 429 and 5xx with exponential backoff until
the retry period ends; any other answer but 2xx ends it (redirects are not followed).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.backoff import Backoff
from imgpipe.common.errors import PolicyViolation
from imgpipe.common.public_text import public_text
from imgpipe.ingest.errors import DatabaseUnavailable, WebhookFailed, WebhookRefused
from imgpipe.ingest.model import RequestState
from imgpipe.ingest.store import OutboxItem, Store
from imgpipe.ingest.webhook_secrets import WebhookSecrets

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})
# Seconds before a delivery to an endpoint that has its share in flight is claimed again.
ENDPOINT_BUSY_DELAY = 1.0
MAX_ERROR_LENGTH = 500


# Beyond a POST's timeout, what an attempt may spend reading its payload and recording its
# outcome.
LEASE_MARGIN_SECONDS = 10.0


@dataclass(frozen=True)
class WebhookSettings:
    secret: str = ""
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 10.0
    retry_cap_seconds: float = 3600.0
    retry_period_seconds: float = 86400.0
    # Deliveries in flight per replica, and to any one endpoint (scheme, host, port) among
    # them: a tenant whose endpoint never answers holds only per_endpoint of them.
    concurrency: int = 32
    per_endpoint: int = 4

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_base_seconds, cap=self.retry_cap_seconds, jitter=0.5)

    @property
    def lease_seconds(self) -> float:
        """How long an attempt holds its outbox row: its POST's timeout and time for the
        database on either side. After a crash mid-attempt, the delivery is tried again
        that long after the attempt began."""
        return self.timeout_seconds + LEASE_MARGIN_SECONDS


def _endpoint(url: str) -> str:
    """Where a delivery goes, as the per-endpoint limit counts it: scheme, host and port."""
    try:
        parsed = URL(url)
    except ValueError:
        return url
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret; ValueError when a `whsec_` one holds no base64 key."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("the part after whsec_ is not valid base64") from None
        if not key:
            raise ValueError("the part after whsec_ is empty: it must be a base64 key")
        return key
    return secret.encode()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(row: Any, url_of: Callable[[str], str]) -> dict[str, Any]:
    """The delivery's body; its result CSV URL made (signed) now, from the stored key."""
    state = RequestState(row["state"])
    completed_at: datetime | None = row["completed_at"]
    return {
        "type": f"request.{state.value.lower()}",
        "request_id": str(row["id"]),
        "state": f"REQUEST_STATE_{state.value}",
        "progress": {
            "total_images": row["image_count"],
            "succeeded_images": row["succeeded_count"],
            "failed_images": row["failed_count"],
            "cancelled_images": row["cancelled_count"],
        },
        "result_csv_url": url_of(row["result_csv_url"]) if row["result_csv_url"] else "",
        "completed_at": completed_at.astimezone(UTC).isoformat() if completed_at else None,
    }


class WebhookSender:
    """The outbox handler for webhook rows."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        settings: WebhookSettings,
        policy: AddressPolicy,
        url_of: Callable[[str], str],
        secrets: WebhookSecrets,
    ) -> None:
        """session must connect through policy.connector(), so the address finally
        connected to is checked too (DNS rebinding). url_of makes a stored object's URL."""
        self._url_of = url_of
        self._in_flight: Counter[str] = Counter()  # deliveries by endpoint
        self._policy = policy
        self._secrets = secrets
        self._store = store
        self._session = session
        self._settings = settings

    async def __call__(self, item: OutboxItem) -> None:
        try:
            row = await self._store.webhook_payload(item.request_id)
        except DatabaseUnavailable:
            return  # the lease runs out and the row is claimed again
        endpoint = _endpoint(row["webhook_url"])
        if self._in_flight[endpoint] >= self._settings.per_endpoint:
            # That endpoint has its share in flight: back in the queue, not an attempt.
            with contextlib.suppress(DatabaseUnavailable):
                await self._store.release_outbox(item, ENDPOINT_BUSY_DELAY)
            return
        self._in_flight[endpoint] += 1
        try:
            await self._deliver(item, row)
        finally:
            self._in_flight[endpoint] -= 1

    async def _deliver(self, item: OutboxItem, row: Any) -> None:
        extra = {"request_id": str(item.request_id), "delivery_id": str(item.delivery_id)}
        try:
            body = payload(row, self._url_of)
            keys = [s.secret for s in await self._secrets.current(row["owner"])]
            await self._post(row["webhook_url"], str(item.delivery_id), body, keys)
        except DatabaseUnavailable:
            return  # the lease runs out and the row is claimed again
        except WebhookRefused as exc:
            await self._end(item, "FAILED", f"attempt {item.attempts}: {exc}", extra)
            return
        except WebhookFailed as exc:
            error = f"attempt {item.attempts}: {exc}"
            elapsed = (datetime.now(UTC) - item.created_at).total_seconds()
            delay = self._settings.backoff.delay(item.attempts)
            if elapsed + delay > self._settings.retry_period_seconds:
                await self._end(item, "FAILED", f"{error} (retry period over)", extra)
                return
            log.info("webhook attempt failed; will retry", extra={**extra, "error": error})
            await self._store.retry_outbox(item, delay, error[:MAX_ERROR_LENGTH])
            return
        await self._end(item, "DELIVERED", "", extra)

    async def give_up(self, item: OutboxItem) -> None:
        error = f"gave up after {item.attempts - 1} attempts: {item.last_error or 'no answer'}"
        await self._store.end_outbox(item, "FAILED", error[:MAX_ERROR_LENGTH])

    async def _end(self, item: OutboxItem, state: str, error: str, extra: dict[str, str]) -> None:
        await self._store.end_outbox(item, state, error[:MAX_ERROR_LENGTH])
        log.info("webhook delivery ended", extra={**extra, "state": state, "error": error})

    async def _post(
        self, url: str, delivery_id: str, body_json: dict[str, Any], keys: list[str]
    ) -> None:
        try:
            self._policy.check_url(URL(url))
        except (PolicyViolation, ValueError) as exc:
            raise WebhookRefused(str(exc)) from None
        body = json.dumps(body_json, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "imgpipe-webhooks/1",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(k, delivery_id, timestamp, body) for k in keys),
        }
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds),
            ) as response:
                status = response.status
        except PolicyViolation as exc:
            raise WebhookRefused(str(exc)) from None
        except TimeoutError:
            raise WebhookFailed("timed out") from None
        except aiohttp.ClientConnectorError:
            raise WebhookFailed("cannot connect") from None
        except aiohttp.ClientError as exc:
            raise WebhookFailed(public_text(f"{type(exc).__name__}: {exc}")) from None
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise WebhookFailed(f"HTTP {status}")
        if 300 <= status < 400:
            raise WebhookRefused(f"HTTP {status}: redirects are not followed")
        raise WebhookRefused(f"HTTP {status}")
