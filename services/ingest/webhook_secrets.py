"""Each principal's webhook signing secrets (Standard Webhooks `whsec_` + base64 of 32
random bytes), so no tenant can sign, or replay, a delivery another tenant's receiver
accepts. A principal reads its own through the API; a rotation makes a new current secret
while the old one keeps signing for an overlap window (every delivery then carries a
signature by each), so receivers can switch over without losing a delivery.

With tokens off there is one principal, the anonymous one; IMGPIPE_WEBHOOK_SECRET, when
set, is its secret (and rotating it means changing the setting).
"""

from __future__ import annotations

import base64
import secrets

from imgpipe.common.auth import ANONYMOUS
from imgpipe.common.errors import FailedPrecondition, InvalidArgument
from imgpipe.ingest.model import WebhookSecret
from imgpipe.ingest.store import Store

SECRET_BYTES = 32
DEFAULT_OVERLAP_SECONDS = 86_400.0
MAX_OVERLAP_SECONDS = 30 * 86_400.0


class SecretFromSettings(FailedPrecondition):
    """This secret is set by IMGPIPE_WEBHOOK_SECRET; rotate it by changing the setting."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class WebhookSecrets:
    def __init__(self, store: Store, configured: str = "") -> None:
        """configured: IMGPIPE_WEBHOOK_SECRET, the anonymous principal's secret."""
        self._store = store
        self._configured = configured

    async def current(self, principal: str) -> list[WebhookSecret]:
        """The principal's secrets that sign, the current one first; the first read makes
        one."""
        if principal == ANONYMOUS and self._configured:
            return [WebhookSecret(self._configured, None, None)]
        found = await self._store.webhook_secrets(principal)
        if not found:
            await self._store.add_webhook_secret(principal, new_secret(), 0.0)
            found = await self._store.webhook_secrets(principal)
        return found

    async def rotate(self, principal: str, overlap_seconds: float) -> list[WebhookSecret]:
        """A new current secret; the one it replaces signs for overlap_seconds more."""
        if principal == ANONYMOUS and self._configured:
            raise SecretFromSettings()
        if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
            raise InvalidArgument(
                f"overlap must be 0 to {MAX_OVERLAP_SECONDS:g} seconds",
                violations=[("overlap", f"{overlap_seconds:g} s is out of range")],
            )
        await self._store.add_webhook_secret(principal, new_secret(), overlap_seconds)
        return await self._store.webhook_secrets(principal)
