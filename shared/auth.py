"""Bearer tokens (IMGPIPE_AUTH_TOKENS): one check for gRPC metadata and HTTP headers alike."""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from imgpipe.common.errors import Unauthenticated
from imgpipe.common.grpc_interceptors import Context, WrappingInterceptor

ANONYMOUS = ""
# The principal of the current gRPC call, set by AuthInterceptor.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("imgpipe_caller", default=ANONYMOUS)
# Methods anyone may call: health checks (probes carry no token) and reflection.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def principal_of(token: str) -> str:
    """A stable, non-secret name for a token: what requests are owned by and logs show."""
    return "tok_" + hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenAuth:
    """Accepts `Bearer TOKEN` for any configured token; open (anonymous) when none are."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

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


class AuthInterceptor(WrappingInterceptor):
    """Authenticates every call but health and reflection; the principal goes in CALLER."""

    def __init__(self, auth: TokenAuth) -> None:
        self._auth = auth

    def around(
        self, method: str, request: Any, context: Context
    ) -> AbstractAsyncContextManager[None] | None:
        if method.startswith(OPEN_METHOD_PREFIXES):
            return None
        return self._authenticated(context)

    @asynccontextmanager
    async def _authenticated(self, context: Context) -> AsyncIterator[None]:
        metadata = dict(context.invocation_metadata() or ())
        caller = self._auth.authenticate(metadata.get("authorization"))
        token = CALLER.set(caller)
        try:
            yield
        finally:
            CALLER.reset(token)
