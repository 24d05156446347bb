"""Webhook deliveries: a signed POST when a request becomes terminal.

At least once, with the same delivery id on every attempt; signed in the manner of the
Standard Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature:
v1,BASE64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`), so receivers can verify with the
existing libraries. A secret written `whsec_BASE64` is used as those libraries expect (the
key is the decoded bytes); any other secret is used as its UTF-8 bytes.

Retried on timeouts, connection errors, 408, 429 and 5xx with exponential backoff until
the retry period ends; any other answer but 2xx ends it (redirects are not followed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL

from imgpipe.common.address_policy import AddressPolicy
from imgpipe.common.backoff import Backoff
from imgpipe.common.errors import PolicyViolation
from imgpipe.ingest.errors import DatabaseUnavailable, WebhookFailed, WebhookRefused
from imgpipe.ingest.model import RequestState
from imgpipe.ingest.store import OutboxItem, Store

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class WebhookSettings:
    secret: str = ""
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 10.0
    retry_cap_seconds: float = 3600.0
    retry_period_seconds: float = 86400.0

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_base_seconds, cap=self.retry_cap_seconds, jitter=0.5)


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(row: Any) -> dict[str, Any]:
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
        "result_csv_url": row["result_csv_url"],
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
    ) -> None:
        """session must connect through policy.connector(), so the address finally
        connected to is checked too (DNS rebinding)."""
        self._policy = policy
        self._store = store
        self._session = session
        self._settings = settings

    async def __call__(self, item: OutboxItem) -> None:
        extra = {"request_id": str(item.request_id), "delivery_id": str(item.delivery_id)}
        try:
            row = await self._store.webhook_payload(item.request_id)
            await self._post(row["webhook_url"], str(item.delivery_id), payload(row))
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

    async def _end(self, item: OutboxItem, state: str, error: str, extra: dict[str, str]) -> None:
        await self._store.end_outbox(item, state, error[:MAX_ERROR_LENGTH])
        log.info("webhook delivery ended", extra={**extra, "state": state, "error": error})

    async def _post(self, url: str, delivery_id: str, body_json: dict[str, Any]) -> None:
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
        }
        if self._settings.secret:
            headers["webhook-signature"] = sign(self._settings.secret, delivery_id, timestamp, body)
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
        except aiohttp.ClientConnectorError as exc:
            raise WebhookFailed(f"cannot connect: {exc}") from None
        except aiohttp.ClientError as exc:
            raise WebhookFailed(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise WebhookFailed(f"HTTP {status}")
        if 300 <= status < 400:
            raise WebhookRefused(f"HTTP {status}: redirects are not followed")
        raise WebhookRefused(f"HTTP {status}")
