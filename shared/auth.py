"""Bearer tokens (IMGPIPE_AUTH_TOKENS): one check for gRPC metadata and HTTP headers alike."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from shared.grpc_errors import Unauthenticated

ANONYMOUS = ""


def principal_of(token: str) -> str:
    """A stable, non-secret name for a token: what requests are owned by and logs show."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenAuth:
    """Accepts `Bearer TOKEN` for any configured token; open (anonymous) when none are."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @classmethod
    def from_setting(cls, value: str) -> TokenAuth:
        return cls(t.strip() for t in value.split(","))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, authorization: str | None) -> str:
        """The caller's principal; raises Unauthenticated unless a configured token is given.

        Every configured token is compared, in constant time, whatever matches first."""
        if not self._tokens:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        candidate = presented.strip().encode()
        matched: bytes | None = None
        for token in self._tokens:
            if hmac.compare_digest(token, candidate):
                matched = token
        if scheme.lower() != "bearer" or matched is None:
            raise Unauthenticated("a valid `authorization: Bearer TOKEN` is required")
        return principal_of(matched.decode())
